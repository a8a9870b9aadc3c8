"""The SigLIP preprocessing steps' ``model.py`` against imgembed's own preprocessing.

``triton_siglip_model.py`` runs in Triton's Python backend stub without imgembed, so it carries
its own copy of imgembed's image decoding, reduction, resize, normalisation and tokenization.
Here each is compared with imgembed's (:func:`imgembed.preprocess.image.decode_image`,
:func:`imgembed.pipelines.siglip_embed.prepare_image`,
:func:`imgembed.preprocess.siglip_text.tokenize_texts`) on images of every mode and on texts that
are cut, lower-cased and padded, and ``TritonPythonModel`` runs with a stand-in for Triton's
``triton_python_backend_utils``. Everything must be equal, not close: same pixels, same ids.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image
from siglip_checkpoints import TINY_FIXRES, gemma_tokenizer, photo_like

from imgembed.errors import ImgembedError
from imgembed.export import triton_siglip_model
from imgembed.export.siglip_onnx import preprocessing_settings
from imgembed.export.triton_siglip_model import (
    SETTINGS_FILE,
    PreprocessError,
    TextTokenizer,
    TritonPythonModel,
    decode_rgb,
    fixres_pixel_values,
)
from imgembed.models.siglip_variants import ImageProcessing
from imgembed.pipelines.siglip_embed import SiglipEmbedOptions, prepare_image
from imgembed.preprocess.image import decode_image
from imgembed.preprocess.siglip_text import tokenize_texts
from imgembed.settings import InputLimits

RELEASED = TINY_FIXRES.image_processing()
OTHER = ImageProcessing(
    family="fixres",
    image_size=48,
    patch_size=16,
    max_num_patches=None,
    resample="bicubic",
    image_mean=(0.48, 0.46, 0.41),
    image_std=(0.27, 0.26, 0.28),
)
TEXTS = ["A Photo of a CAT", "the quick brown fox " * 40, "naïve café ✓ 漢字", "x", " padded "]


def _settings(processing: ImageProcessing, limits: InputLimits | None = None) -> dict[str, Any]:
    loaded = SimpleNamespace(
        image_processing=processing,
        tokenizer=gemma_tokenizer(),
        text_max_length=TINY_FIXRES.text_max_length,
        variant=TINY_FIXRES,
    )
    return preprocessing_settings(loaded, limits or InputLimits())  # type: ignore[arg-type]


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encode(Image.fromarray(photo_like(40, 70, seed=3)), "JPEG", exif=exif, quality=90)


def _palette_with_transparency() -> bytes:
    image = Image.fromarray(gradient_rgb(30, 40)).convert("P")
    return encode(image, "PNG", transparency=0)


IMAGES = {
    "rgb-png": encode(Image.fromarray(photo_like(90, 120, seed=1)), "PNG"),
    "rgba-png": encode(
        Image.fromarray(
            np.dstack([gradient_rgb(50, 60), np.arange(60, dtype=np.uint8)[None].repeat(50, 0) * 4])
        ),
        "PNG",
    ),
    "gray": encode(Image.fromarray(gradient_rgb(33, 47)[..., 0]), "PNG"),
    "gray-16bit": encode(
        Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)), "PNG"
    ),
    "float-tiff": encode(
        Image.fromarray(np.linspace(-0.2, 1.3, 600, dtype=np.float32).reshape(20, 30)), "TIFF"
    ),
    "palette-transparent": _palette_with_transparency(),
    "cmyk-jpeg": encode(Image.fromarray(photo_like(40, 50, seed=4)).convert("CMYK"), "JPEG"),
    "exif-rotated-jpeg": _rotated_jpeg(),
    "webp": encode(Image.fromarray(photo_like(64, 48, seed=5)), "WEBP", quality=80),
    "long-side-reduced": encode(Image.fromarray(photo_like(700, 4500, seed=6)), "PNG"),
}


@pytest.mark.parametrize("processing", [RELEASED, OTHER], ids=["released", "bicubic-other-norm"])
@pytest.mark.parametrize("name", list(IMAGES))
def test_pixel_values_equal_imgembeds(name: str, processing: ImageProcessing) -> None:
    data = IMAGES[name]
    settings = _settings(processing)["image"]
    got = fixres_pixel_values(decode_rgb(data, settings, "image_bytes[0]"), settings)
    decoded = decode_image(data, InputLimits())
    expected = prepare_image(decoded, processing, SiglipEmbedOptions()).pixel_values.numpy()
    assert got.dtype == np.float32
    assert got.shape == expected.shape == (3, processing.image_size, processing.image_size)
    np.testing.assert_array_equal(got, expected)


def test_the_reduction_path_is_taken_for_a_long_side() -> None:
    settings = _settings(RELEASED)["image"]
    pixels = decode_rgb(IMAGES["long-side-reduced"], settings, "image_bytes[0]")
    reduced = triton_siglip_model.reduce_long_side(pixels, settings["max_intermediate_side"])
    assert pixels.shape == (700, 4500, 3)
    assert reduced.shape == (234, 1500, 3)  # k = ceil(4500 / 2048) = 3


@pytest.mark.parametrize(
    ("data", "limits", "phrase"),
    [
        (b"", InputLimits(), "is empty"),
        (b"GIF89a-not-really", InputLimits(), "not a recognised image"),
        (IMAGES["rgb-png"][:200], InputLimits(), "could not be decoded"),
        (IMAGES["rgb-png"], InputLimits(max_image_pixels=5000), "too many pixels"),
        (encode(Image.fromarray(gradient_rgb(1, 40)), "PNG"), InputLimits(), "at least 2"),
    ],
    ids=["empty", "not-an-image", "truncated", "too-many-pixels", "too-small"],
)
def test_images_imgembed_refuses_are_refused_with_the_item_named(
    data: bytes, limits: InputLimits, phrase: str
) -> None:
    settings = _settings(RELEASED, limits)["image"]
    with pytest.raises(PreprocessError, match=phrase) as caught:
        decode_rgb(data, settings, "image_bytes[0]")
    assert "image_bytes[0]" in str(caught.value)
    with pytest.raises(ImgembedError):  # imgembed refuses the same file
        decode_image(data, limits)


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text(gemma_tokenizer().backend_tokenizer.to_str(), encoding="utf-8")
    return path


def test_token_ids_equal_imgembeds(tokenizer_file: Path) -> None:
    settings = _settings(RELEASED)["text"]
    got = TextTokenizer(tokenizer_file, settings).input_ids(TEXTS)
    expected = tokenize_texts(gemma_tokenizer(), TEXTS).numpy()
    assert got.dtype == np.int64
    assert got.shape == (len(TEXTS), 64)
    np.testing.assert_array_equal(got, expected)
    assert (got[1] != settings["pad_id"]).all()  # cut at 64 tokens, no padding left
    assert got[3, -1] == settings["pad_id"]  # padded on the right


@pytest.mark.parametrize(
    ("value", "phrase"),
    [("   ", "is blank"), (b"\xff\xfe", "not UTF-8"), ("a" * 10_001, "at most 10000")],
    ids=["blank", "not-utf8", "too-long"],
)
def test_texts_imgembed_refuses_are_refused(
    tokenizer_file: Path, value: str | bytes, phrase: str
) -> None:
    tokenizer = TextTokenizer(tokenizer_file, _settings(RELEASED)["text"])
    with pytest.raises(PreprocessError, match=phrase) as caught:
        tokenizer.check(value, "text[2]")
    assert "text[2]" in str(caught.value)


class _Tensor:
    def __init__(self, name: str, value: np.ndarray) -> None:
        self.name, self.value = name, value

    def as_numpy(self) -> np.ndarray:
        return self.value


class _Error:
    INVALID_ARG = 3

    def __init__(self, message: str, code: int | None = None) -> None:
        self.message, self.code = message, code


def _response(
    output_tensors: list[_Tensor] | None = None, error: _Error | None = None
) -> dict[str, Any]:
    if error is not None:
        return {"error": error.message, "code": error.code}
    return {t.name: t.value for t in output_tensors or []}


def _model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, tokenizer_file: Path
) -> TritonPythonModel:
    monkeypatch.setattr(
        triton_siglip_model,
        "pb_utils",
        SimpleNamespace(
            Tensor=_Tensor,
            TritonError=_Error,
            InferenceResponse=_response,
            get_input_tensor_by_name=lambda request, name: _Tensor(name, request[name]),
        ),
    )
    version = tmp_path / step / "1"
    version.mkdir(parents=True)
    (version / SETTINGS_FILE).write_text(json.dumps(_settings(RELEASED)), encoding="utf-8")
    (version / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
    source, output = (
        ("image_bytes", "pixel_values") if step == "siglip_preprocess" else ("text", "input_ids")
    )
    config = {
        "input": [{"name": source}],
        "output": [{"name": output}],
        "parameters": {"imgembed_step": {"string_value": step}},
    }
    model = TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(tmp_path / step),
            "model_version": "1",
        }
    )
    return model


def test_preprocess_step_answers_each_request_or_names_its_bad_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer_file: Path
) -> None:
    model = _model(tmp_path, monkeypatch, "siglip_preprocess", tokenizer_file)
    files = [IMAGES["rgb-png"], IMAGES["gray"]]
    good = {"image_bytes": np.array(files, dtype=np.object_)}
    bad = {"image_bytes": np.array([IMAGES["rgb-png"], b"nope"], dtype=np.object_)}
    first, second = model.execute([good, bad])
    expected = np.stack(
        [
            prepare_image(
                decode_image(data, InputLimits()), RELEASED, SiglipEmbedOptions()
            ).pixel_values.numpy()
            for data in files
        ]
    )
    np.testing.assert_array_equal(first["pixel_values"], expected)
    assert second["code"] == _Error.INVALID_ARG
    assert "image_bytes[1] is not a recognised image" in second["error"]


def test_tokenize_step_answers_token_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer_file: Path
) -> None:
    model = _model(tmp_path, monkeypatch, "siglip_tokenize", tokenizer_file)
    (answer,) = model.execute([{"text": np.array([t.encode() for t in TEXTS], dtype=np.object_)}])
    np.testing.assert_array_equal(
        answer["input_ids"], tokenize_texts(gemma_tokenizer(), TEXTS).numpy()
    )


def test_an_unknown_step_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer_file: Path
) -> None:
    with pytest.raises(ValueError, match="imgembed_step must be"):
        _model(tmp_path, monkeypatch, "siglip_everything", tokenizer_file)


def test_model_file_imports_only_what_the_stub_environment_has() -> None:
    """The stub's Python has the standard library, numpy, Pillow, tokenizers and Triton's utils."""
    source = Path(triton_siglip_model.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = {"numpy", "PIL", "tokenizers", "triton_python_backend_utils"}
    assert imported - allowed <= set(sys.stdlib_module_names), imported
