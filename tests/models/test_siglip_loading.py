"""``load_siglip``: every place weights come from, and every way loading fails.

No test here reaches a network: hub tests read a hub cache laid out in ``tmp_path`` (the
``hub_cache_dir`` and ``add_to_hub_cache`` fixtures of ``conftest.py``) or talk to 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from siglip_checkpoints import (
    TINY_FIXRES,
    TINY_NAFLEX,
    build_siglip_model,
    save_siglip_folder,
)
from transformers import Siglip2Model, SiglipModel

from imgembed.errors import ModelLoadError
from imgembed.models.siglip_dummy import build_stand_in_tokenizer
from imgembed.models.siglip_loading import LoadedSiglip, load_siglip
from imgembed.models.siglip_variants import ImageProcessing
from imgembed.server.errors import http_status

CPU = torch.device("cpu")
AddToHubCache = Callable[[str, Mapping[str, Path | bytes]], Path]
FIX_HINTS = ("--weights", "dummy", "save_pretrained")


@pytest.fixture(scope="module")
def fixres_model() -> SiglipModel:
    return build_siglip_model(TINY_FIXRES)


@pytest.fixture(scope="module")
def fixres_folder(fixres_model: SiglipModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As the hub repositories hold it: ``preprocessor_config.json`` and tokenizer files."""
    return save_siglip_folder(fixres_model, TINY_FIXRES, tmp_path_factory.mktemp("fixres"))


@pytest.fixture(scope="module")
def naflex_model() -> Siglip2Model:
    return build_siglip_model(TINY_NAFLEX)


@pytest.fixture(scope="module")
def naflex_folder(naflex_model: Siglip2Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As ``Siglip2Processor.save_pretrained`` writes it today (``processor_config.json``)."""
    folder = tmp_path_factory.mktemp("naflex")
    return save_siglip_folder(naflex_model, TINY_NAFLEX, folder, layout="transformers5")


@pytest.fixture
def folder_copy(fixres_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the FixRes folder that a test may break."""
    return Path(shutil.copytree(fixres_folder, tmp_path / "copy"))


def assert_same_weights(model: torch.nn.Module, expected: torch.nn.Module) -> None:
    state, reference = model.state_dict(), expected.state_dict()
    assert sorted(state) == sorted(reference)
    assert [key for key in state if not torch.equal(state[key], reference[key])] == []


def assert_inference_ready(loaded: LoadedSiglip) -> None:
    assert not loaded.model.training
    assert all(parameter.dtype == torch.float32 for parameter in loaded.model.parameters())
    assert all(parameter.device == CPU for parameter in loaded.model.parameters())


def assert_says_how_to_fix(error: ModelLoadError) -> None:
    for hint in FIX_HINTS:
        assert hint in error.message
    assert http_status(error) == 500


# Dummy weights.


def test_dummy_is_seeded_untrained_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caller_random_state = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="imgembed.models.siglip_dummy"):
        first = load_siglip(TINY_FIXRES, "dummy", device=CPU)
    second = load_siglip(TINY_FIXRES, "dummy", device=CPU)
    other_seed = load_siglip(TINY_FIXRES, "dummy", device=CPU, dummy_seed=1)

    assert torch.equal(torch.random.get_rng_state(), caller_random_state)
    assert (first.source, first.weights_location, first.untrained) == ("dummy", "dummy", True)
    assert isinstance(first.model, SiglipModel)
    assert_inference_ready(first)
    assert_same_weights(second.model, first.model)
    probe = first.model.vision_model.head.probe
    assert not torch.equal(other_seed.model.vision_model.head.probe, probe)
    assert first.image_processing == TINY_FIXRES.image_processing()
    messages = [record.getMessage() for record in caplog.records]
    assert any("UNTRAINED" in message and "RANDOM weights" in message for message in messages)


def test_dummy_real_architecture_embeds_images_and_texts() -> None:
    """The default model as ``--weights dummy`` serves it: real shapes, stand-in tokenizer."""
    loaded = load_siglip("siglip2-base-patch16-224", "dummy", device=CPU)
    assert loaded.embedding_dim == 768
    input_ids = loaded.tokenizer(
        ["a photo of a cat"], padding="max_length", max_length=64, return_tensors="pt"
    )["input_ids"]
    with torch.inference_mode():
        text = loaded.model.get_text_features(input_ids=input_ids).pooler_output
        image = loaded.model.get_image_features(
            pixel_values=torch.zeros((1, 3, 224, 224))
        ).pooler_output
    assert text.shape == image.shape == (1, 768)
    assert torch.isfinite(text).all()
    assert torch.isfinite(image).all()


def test_dummy_naflex_builds_siglip2() -> None:
    loaded = load_siglip(TINY_NAFLEX, "dummy", device=CPU)
    assert isinstance(loaded.model, Siglip2Model)
    assert loaded.image_processing.max_num_patches == 24


def test_stand_in_tokenizer_fits_and_pads_like_siglip() -> None:
    tokenizer = build_stand_in_tokenizer(300)
    encoded = tokenizer(["a cat", "\u00e9t\u00e9 \u2603"], padding="max_length", max_length=8)
    assert list(encoded) == ["input_ids"]
    first, second = encoded["input_ids"]
    assert 1 in first  # <eos> after the text
    assert first[-1] == 0  # then <pad>, on the right
    assert max(first + second) < 300
    assert len(tokenizer) <= 300
    with pytest.raises(ValueError, match="vocab_size >= 261"):
        build_stand_in_tokenizer(100)


# Hugging Face format folders.


def test_folder_loads_model_tokenizer_and_processor_settings(
    fixres_folder: Path, fixres_model: SiglipModel
) -> None:
    loaded = load_siglip(TINY_FIXRES, str(fixres_folder), device=CPU)

    assert (loaded.source, loaded.weights_location, loaded.untrained) == (
        "folder",
        str(fixres_folder),
        False,
    )
    assert_inference_ready(loaded)
    assert_same_weights(loaded.model, fixres_model)
    assert type(loaded.tokenizer).__name__ == "GemmaTokenizer"
    assert loaded.image_processing == ImageProcessing(
        family="fixres", image_size=224, patch_size=16, max_num_patches=None, resample="bilinear"
    )


def test_processor_config_of_transformers_5_and_its_filter(
    fixres_model: SiglipModel, tmp_path: Path
) -> None:
    folder = save_siglip_folder(
        fixres_model, TINY_FIXRES, tmp_path / "bicubic", layout="transformers5", resample=3
    )
    assert not (folder / "preprocessor_config.json").exists()
    loaded = load_siglip(TINY_FIXRES, str(folder), device=CPU)
    assert loaded.image_processing.resample == "bicubic"


def test_naflex_folder(naflex_folder: Path, naflex_model: Siglip2Model) -> None:
    loaded = load_siglip(TINY_NAFLEX, str(naflex_folder), device=CPU)
    assert isinstance(loaded.model, Siglip2Model)
    assert_same_weights(loaded.model, naflex_model)
    assert loaded.image_processing.family == "naflex"
    assert loaded.image_processing.max_num_patches == 24


def test_folder_without_processor_config_uses_the_released_settings(folder_copy: Path) -> None:
    (folder_copy / "preprocessor_config.json").unlink()
    loaded = load_siglip(TINY_FIXRES, str(folder_copy), device=CPU)
    assert loaded.image_processing == TINY_FIXRES.image_processing()


# The hub, through the standard cache, without network.


def hub_files(folder: Path) -> dict[str, Path]:
    return {path.name: path for path in folder.iterdir() if path.is_file()}


def test_hub_snapshot_for_the_variant(
    hub_cache_dir: Path,
    add_to_hub_cache: AddToHubCache,
    fixres_folder: Path,
    fixres_model: SiglipModel,
) -> None:
    add_to_hub_cache(TINY_FIXRES.hub_id, hub_files(fixres_folder))

    loaded = load_siglip(
        TINY_FIXRES, None, device=CPU, hub_cache_dir=str(hub_cache_dir), hub_offline=True
    )

    assert (loaded.source, loaded.weights_location) == ("hub", TINY_FIXRES.hub_id)
    assert_same_weights(loaded.model, fixres_model)
    assert type(loaded.tokenizer).__name__ == "GemmaTokenizer"


def test_hub_id_as_weights(
    hub_cache_dir: Path, add_to_hub_cache: AddToHubCache, naflex_folder: Path
) -> None:
    add_to_hub_cache("someone/my-naflex", hub_files(naflex_folder))
    loaded = load_siglip(
        TINY_NAFLEX,
        "someone/my-naflex",
        device=CPU,
        hub_cache_dir=str(hub_cache_dir),
        hub_offline=True,
    )
    assert (loaded.source, loaded.weights_location) == ("hub", "someone/my-naflex")


def test_hub_repo_absent_offline(hub_cache_dir: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(
            "siglip2-large-patch16-512",
            None,
            device=CPU,
            hub_cache_dir=str(hub_cache_dir),
            hub_offline=True,
        )
    message = raised.value.message
    assert "google/siglip2-large-patch16-512" in message
    assert "offline, the hub was not contacted" in message
    assert str(hub_cache_dir) in message
    assert raised.value.__cause__ is not None
    assert_says_how_to_fix(raised.value)


def test_hub_unreachable(hub_cache_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(
            "siglip2-base-patch16-224",
            None,
            device=CPU,
            hub_cache_dir=str(hub_cache_dir),
            hub_endpoint=endpoint,
        )
    assert "google/siglip2-base-patch16-224" in raised.value.message
    assert endpoint in raised.value.message
    assert_says_how_to_fix(raised.value)


def test_hub_snapshot_without_weights(hub_cache_dir: Path, add_to_hub_cache: AddToHubCache) -> None:
    add_to_hub_cache("someone/readme-only", {"README.md": b"# nothing"})
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(
            TINY_FIXRES,
            "someone/readme-only",
            device=CPU,
            hub_cache_dir=str(hub_cache_dir),
            hub_offline=True,
        )
    assert "holds no SigLIP weights (no config.json" in raised.value.message
    assert_says_how_to_fix(raised.value)


# Failures: each one a ModelLoadError that says what to set.


def test_unknown_model_name() -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_siglip("siglip2-large-patch16-224", "dummy", device=CPU)
    assert "'siglip2-large-patch16-224'" in raised.value.message
    assert "siglip2-large-patch16-256" in raised.value.message


def test_missing_path_that_is_not_a_hub_id(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(TINY_FIXRES, str(missing), device=CPU)
    assert "is not a hub id" in raised.value.message
    assert_says_how_to_fix(raised.value)


def test_file_instead_of_folder(fixres_folder: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(TINY_FIXRES, str(fixres_folder / "model.safetensors"), device=CPU)
    assert "point at the folder holding config.json" in raised.value.message


def test_folder_of_another_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(TINY_FIXRES, str(tmp_path), device=CPU)
    assert "model_type 'bert'" in raised.value.message
    assert_says_how_to_fix(raised.value)


def test_fixres_weights_named_as_naflex(fixres_folder: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(TINY_NAFLEX, str(fixres_folder), device=CPU)
    assert "SiglipModel checkpoint (model_type 'siglip')" in raised.value.message
    assert "name a FixRes model" in raised.value.message


def test_weights_of_another_architecture(fixres_folder: Path) -> None:
    other = replace(TINY_FIXRES, name="test-tiny-patch16-256", image_size=256)
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(other, str(fixres_folder), device=CPU)
    message = raised.value.message
    assert "are no released SigLIP 2 variant (patch 16, image size 224" in message
    assert "not test-tiny-patch16-256" in message


def test_released_name_for_tiny_weights(fixres_folder: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_siglip("siglip2-base-patch16-224", str(fixres_folder), device=CPU)
    assert "not siglip2-base-patch16-224" in raised.value.message


def test_missing_weights_file(folder_copy: Path) -> None:
    (folder_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(TINY_FIXRES, str(folder_copy), device=CPU)
    assert "Cannot load the SigLIP weights" in raised.value.message
    assert raised.value.__cause__ is not None


def test_folder_without_tokenizer(folder_copy: Path) -> None:
    (folder_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(TINY_FIXRES, str(folder_copy), device=CPU)
    assert "holds no tokenizer (expected tokenizer.json or tokenizer.model" in raised.value.message
    assert_says_how_to_fix(raised.value)


def test_tokenizer_larger_than_the_vocabulary(folder_copy: Path) -> None:
    small = replace(TINY_FIXRES, vocab_size=300)
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(small, str(folder_copy), device=CPU)
    # The weights' vocabulary is checked first: a 400-row table is not the 300 asked for.
    assert "not test-siglip2-tiny-patch16-224" in raised.value.message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"do_normalize": False}, "turns off do_normalize"),
        ({"resample": 9}, "asks for resample=9"),
        ({"size": {"height": 256, "width": 256}}, "not to the model's 224x224"),
        ({"image_mean": [0.5, 0.5]}, "expected three per-channel values"),
    ],
)
def test_processor_config_imgembed_cannot_reproduce(
    folder_copy: Path, change: dict[str, object], expected: str
) -> None:
    path = folder_copy / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(TINY_FIXRES, str(folder_copy), device=CPU)
    assert expected in raised.value.message


def test_naflex_processor_config_with_a_bad_budget(naflex_folder: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(naflex_folder, tmp_path / "naflex"))
    path = folder / "processor_config.json"
    saved = json.loads(path.read_text())
    saved["image_processor"]["max_num_patches"] = 0
    path.write_text(json.dumps(saved))
    with pytest.raises(ModelLoadError) as raised:
        load_siglip(TINY_NAFLEX, str(folder), device=CPU)
    assert "has max_num_patches 0; expected a positive number" in raised.value.message
