"""The SigLIP 2 ONNX export: parity with imgembed's PyTorch embeddings, the files, the refusals.

A small FixRes model of the real design with seeded random weights, saved in the Hugging Face
format and loaded by ``load_siglip`` (tests/export/conftest.py), exported once; the graphs run on
ONNX Runtime's CPU provider and are compared with :func:`imgembed.models.siglip.embed_images` and
:func:`~imgembed.models.siglip.embed_texts` on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from checkpoints import relative_error
from siglip_checkpoints import TINY_FIXRES, TINY_NAFLEX, build_siglip_model, save_siglip_folder

from imgembed.errors import InvalidInputError
from imgembed.export import siglip_onnx
from imgembed.export.siglip_onnx import (
    SIGLIP_METADATA_FILE,
    SiglipExportResult,
    export_loaded_siglip_onnx,
    read_siglip_export,
)
from imgembed.models.siglip import embed_images, embed_texts
from imgembed.models.siglip_loading import LoadedSiglip, load_siglip
from imgembed.preprocess import image as image_preprocess
from imgembed.preprocess import siglip_pixels, siglip_text
from imgembed.preprocess.siglip_text import tokenize_texts
from imgembed.settings import InputLimits

TEXTS = ["a photo of a cat", "THE QUICK BROWN FOX " * 30, "naïve café ✓", "x"]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_image_graph_gives_imgembeds_embeddings(
    siglip_export: SiglipExportResult, siglip_loaded: LoadedSiglip, batch: int
) -> None:
    generator = torch.Generator().manual_seed(batch)
    pixel_values = torch.randn((batch, 3, 224, 224), generator=generator)
    (got,) = _session(siglip_export.files["image"]).run(
        None, {"pixel_values": pixel_values.numpy()}
    )
    expected = embed_images(siglip_loaded.model, pixel_values)
    assert got.shape == (batch, TINY_FIXRES.embedding_dim)
    assert relative_error(torch.from_numpy(got), expected) < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_text_graph_gives_imgembeds_embeddings(
    siglip_export: SiglipExportResult, siglip_loaded: LoadedSiglip
) -> None:
    input_ids = tokenize_texts(siglip_loaded.tokenizer, TEXTS)  # [4,64] int64
    (got,) = _session(siglip_export.files["text"]).run(None, {"input_ids": input_ids.numpy()})
    expected = embed_texts(siglip_loaded.model, input_ids)
    assert got.shape == (len(TEXTS), TINY_FIXRES.embedding_dim)
    assert relative_error(torch.from_numpy(got), expected) < 1e-4
    # Different texts give different embeddings (the graph does not ignore its input).
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_metadata_records_the_graphs_and_imgembeds_preprocessing(
    siglip_export: SiglipExportResult, siglip_loaded: LoadedSiglip
) -> None:
    metadata = json.loads(siglip_export.metadata_path.read_text(encoding="utf-8"))
    assert metadata == siglip_export.metadata
    assert metadata["model_id"] == TINY_FIXRES.name
    assert metadata["embedding_dim"] == TINY_FIXRES.embedding_dim
    image, text = metadata["graphs"]["image"], metadata["graphs"]["text"]
    assert [(t["name"], t["shape"]) for t in image["inputs"]] == [
        ("pixel_values", ["batch", 3, 224, 224])
    ]
    assert [(t["name"], t["shape"]) for t in text["inputs"]] == [("input_ids", ["batch", 64])]
    for graph in (image, text):
        assert [(t["name"], t["shape"]) for t in graph["outputs"]] == [
            ("embeddings", ["batch", TINY_FIXRES.embedding_dim])
        ]
    settings = metadata["preprocessing"]
    processing = siglip_loaded.image_processing
    assert settings["image"]["image_size"] == processing.image_size
    assert settings["image"]["resample"] == processing.resample
    assert settings["image"]["image_mean"] == list(processing.image_mean)
    assert settings["image"]["max_image_pixels"] == InputLimits().max_image_pixels
    assert settings["text"]["pad_id"] == siglip_loaded.tokenizer.pad_token_id
    assert settings["text"]["max_length"] == siglip_loaded.text_max_length


def test_the_copied_constants_are_imgembeds() -> None:
    """export/ may not import preprocess/ (a sibling layer): its copies must not drift."""
    assert siglip_onnx.ACCEPTED_FORMATS == image_preprocess.ACCEPTED_FORMATS
    assert siglip_onnx.ALPHA_BACKGROUND == image_preprocess.DEFAULT_ALPHA_BACKGROUND
    assert siglip_onnx.MAX_INTERMEDIATE_SIDE == siglip_pixels.MAX_INTERMEDIATE_SIDE
    assert siglip_onnx.MAX_TEXT_CHARACTERS == siglip_text.MAX_TEXT_CHARACTERS


def test_naflex_models_are_refused_before_tracing(tmp_path: Path) -> None:
    folder = save_siglip_folder(build_siglip_model(TINY_NAFLEX), TINY_NAFLEX, tmp_path / "w")
    loaded = load_siglip(TINY_NAFLEX, str(folder), device=torch.device("cpu"))
    with pytest.raises(InvalidInputError, match="NaFlex") as caught:
        export_loaded_siglip_onnx(loaded, tmp_path / "out")
    assert "FixRes" in caught.value.message
    assert not (tmp_path / "out" / SIGLIP_METADATA_FILE).exists()


def test_reading_a_folder_that_is_no_export_names_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=SIGLIP_METADATA_FILE):
        read_siglip_export(tmp_path)
    (tmp_path / SIGLIP_METADATA_FILE).write_text('{"format": "something-else"}', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="imgembed-siglip-onnx"):
        read_siglip_export(tmp_path)


def test_a_missing_graph_is_named(siglip_export: SiglipExportResult, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (SIGLIP_METADATA_FILE, "tokenizer.json", "siglip_image.onnx"):
        (copy / name).write_bytes((siglip_export.out_dir / name).read_bytes())
    with pytest.raises(InvalidInputError, match=r"siglip_text\.onnx"):
        read_siglip_export(copy)
