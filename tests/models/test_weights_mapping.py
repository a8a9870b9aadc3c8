"""Loading maps the weight files instead of copying them (issue 15, the cold-start fast path).

A Meta ``.pt`` checkpoint (zip format) is read with ``torch.load(mmap=True)`` and a Hugging Face
folder's safetensors by ``from_pretrained``'s own mapping, into a model built without storage:
every weight of the loaded model lies in a mapping of its file (``/proc/self/maps``), not in a
second copy on the heap; the mapping is private, so a weight changed in memory never reaches the
file. The converter's own tensors (the Fourier matrix copied to its second key, the four point
embeddings stacked into one) are the only exceptions. Before the fix a Meta checkpoint was read
whole and every weight lay on the heap.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from siglip_checkpoints import TINY_FIXRES, build_siglip_model, save_siglip_folder
from transformers import Sam2Model

from imgembed.errors import ModelLoadError
from imgembed.models.sam2_loading import load_sam2
from imgembed.models.sam2_meta import convert_meta_state_dict
from imgembed.models.siglip_loading import load_siglip

CPU = torch.device("cpu")
MADE_BY_THE_CONVERTER = {
    "shared_image_embedding.positional_embedding",  # a copy of the prompt encoder's matrix
    "prompt_encoder.point_embed.weight",  # 4 x [1,256] stacked into [4,256]
}


def mapped_files(model: torch.nn.Module) -> dict[str, str]:
    """Each weight's name -> the file whose mapping holds its data (``"[heap]"``, ``""`` for
    anonymous memory), read from ``/proc/self/maps``."""
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(address, 16) for address in fields[0].split("-"))
        regions.append((start, end, fields[5].strip() if len(fields) == 6 else ""))
    found = {}
    for name, tensor in model.state_dict().items():
        pointer = tensor.data_ptr()
        found[name] = next((path for start, end, path in regions if start <= pointer < end), "?")
    return found


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_meta_checkpoint_weights_are_the_mapped_file(
    meta_tiny_checkpoint: Path, meta_tiny_model: torch.nn.Module, tmp_path: Path
) -> None:
    checkpoint = Path(shutil.copy(meta_tiny_checkpoint, tmp_path / meta_tiny_checkpoint.name))
    before = digest(checkpoint)

    model = load_sam2("sam2.1-hiera-tiny", str(checkpoint), device=CPU).model

    places = mapped_files(model)
    elsewhere = {name for name, path in places.items() if path != str(checkpoint)}
    assert elsewhere == MADE_BY_THE_CONVERTER
    expected = convert_meta_state_dict(meta_tiny_model.state_dict())
    state = model.state_dict()
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    with torch.no_grad():  # a private mapping: the change stays in this process
        model.mask_decoder.iou_token.weight.add_(1.0)
    assert digest(checkpoint) == before


def test_hf_folder_weights_are_the_mapped_safetensors(
    hf_tiny_folder: Path, hf_tiny_model: Sam2Model
) -> None:
    model = load_sam2("sam2.1-hiera-tiny", str(hf_tiny_folder), device=CPU).model

    places = mapped_files(model)
    assert set(places.values()) == {str(hf_tiny_folder / "model.safetensors")}
    expected = hf_tiny_model.state_dict()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in model.state_dict().items())


def test_siglip_folder_weights_are_the_mapped_safetensors(tmp_path: Path) -> None:
    built = build_siglip_model(TINY_FIXRES)
    folder = save_siglip_folder(built, TINY_FIXRES, tmp_path / "fixres")

    model = load_siglip(TINY_FIXRES, str(folder), device=CPU).model

    assert set(mapped_files(model).values()) == {str(folder / "model.safetensors")}


def test_a_checkpoint_of_torch_legacy_format_is_read_whole(
    meta_tiny_model: torch.nn.Module, tmp_path: Path
) -> None:
    """``torch.save(..., _use_new_zipfile_serialization=False)`` cannot be mapped: it still loads."""
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    state = meta_tiny_model.state_dict()
    torch.save({"model": state}, checkpoint, _use_new_zipfile_serialization=False)

    model = load_sam2("sam2.1-hiera-tiny", str(checkpoint), device=CPU).model

    assert str(checkpoint) not in mapped_files(model).values()
    expected = convert_meta_state_dict(state)
    assert all(torch.equal(tensor, expected[key]) for key, tensor in model.state_dict().items())


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_checkpoint_is_a_load_error(
    meta_tiny_checkpoint: Path, tmp_path: Path, keep: float
) -> None:
    data = meta_tiny_checkpoint.read_bytes()
    truncated = tmp_path / "sam2.1_hiera_tiny.pt"
    truncated.write_bytes(data[: int(len(data) * keep)])

    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(truncated), device=CPU)

    assert "Cannot read the Meta checkpoint" in raised.value.message
    assert "truncated" in raised.value.message


def test_a_checkpoint_that_cannot_be_mapped_is_read_whole(
    meta_tiny_checkpoint: Path, meta_tiny_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without ``mmap`` (``torch.load`` raises for ``mmap=True``) still loads."""
    real_load = torch.load
    mapped_tries = []

    def load(*args: object, mmap: bool | None = None, **kwargs: object) -> object:
        if mmap:
            mapped_tries.append(args[0])
            raise RuntimeError("mmap is not supported on this file system")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)

    model = load_sam2("sam2.1-hiera-tiny", str(meta_tiny_checkpoint), device=CPU).model

    assert mapped_tries == [meta_tiny_checkpoint]
    assert str(meta_tiny_checkpoint) not in mapped_files(model).values()
    expected = convert_meta_state_dict(meta_tiny_model.state_dict())
    assert all(torch.equal(tensor, expected[key]) for key, tensor in model.state_dict().items())
