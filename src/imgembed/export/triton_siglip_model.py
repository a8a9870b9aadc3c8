"""The ``model.py`` of the SigLIP preprocessing steps of a Triton repository.

``imgembed export triton --siglip MODEL`` copies this file, unchanged, into two Python-backend
models, each of which the config's ``imgembed_step`` parameter tells what to do:

- ``siglip_preprocess``: ``image_bytes`` BYTES ``[B]`` (encoded image files) to ``pixel_values``
  FP32 ``[B,3,S,S]``, what the image encoder graph takes;
- ``siglip_tokenize``: ``text`` BYTES ``[B]`` (UTF-8) to ``input_ids`` INT64 ``[B,L]``, what the
  text encoder graph takes.

Both do what imgembed does before its SigLIP model (:mod:`imgembed.preprocess.image`,
:mod:`imgembed.preprocess.siglip_pixels`, :mod:`imgembed.preprocess.siglip_text`), so the
ensemble ``siglip`` answers imgembed's embeddings: decode with Pillow (the accepted formats, the
pixel limits, EXIF orientation, every mode to 8-bit RGB by imgembed's rules, alpha over white),
box-reduce a long side over 2048 pixels, squash to S x S with the checkpoint's Pillow filter and
normalise through the same float32 table; lower-case each text, tokenize with the checkpoint's
``tokenizer.json``, cut and pad on the right to L. Tests compare every step with imgembed's own.

It runs inside Triton's Python backend stub, not in imgembed: it imports only the standard
library, numpy, Pillow and ``tokenizers`` (``scripts/triton_server.sh`` installs the versions
imgembed uses). Its settings are ``siglip-preprocess.json`` beside it (written by
:mod:`imgembed.export.triton_siglip`); the tokenizer is ``tokenizer.json`` beside it. A request
that cannot be preprocessed (not an image, too many pixels, a blank text) gets an error naming
the item; the others in the same execution are answered.
"""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton's stub (imgembed's own imports and tests)
    pb_utils = None

SETTINGS_FILE = "siglip-preprocess.json"
"""The preprocessing settings' file name in the model's version folder."""
STRIP_PIXELS = 1 << 20
"""Source pixels per strip of the intermediate reduction, as imgembed's."""
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class PreprocessError(ValueError):
    """An item that cannot be made model input; the message names the item and the fix."""


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """``[H,W]`` uint8 to ``[H,W,3]`` uint8 by channel replication."""
    return np.repeat(gray[:, :, None], 3, axis=2)  # [H,W] -> [H,W,3]


def to_rgb_array(image: Any, alpha_background: tuple[int, int, int]) -> np.ndarray:
    """Any Pillow mode to ``[H,W,3]`` uint8 RGB, by imgembed's rules (16/32-bit integers scaled
    by 255/65535, float read as [0, 1], alpha composited over ``alpha_background``)."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(values, 0, 65535) * (255.0 / 65535.0)
        return _gray_to_rgb(np.rint(gray).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        gray = np.clip(values, 0.0, 1.0) * 255.0
        return _gray_to_rgb(np.rint(gray).astype(np.uint8))
    if (mode == "P" and "transparency" in image.info) or mode in ("RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*alpha_background, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _corrupt(field: str, error: BaseException) -> str:
    return (
        f"{field} could not be decoded: {error}. The file may be truncated or corrupt; re-send "
        "the complete file"
    )


def decode_rgb(data: bytes, settings: dict[str, Any], field: str) -> np.ndarray:
    """Image file bytes to ``[H,W,3]`` uint8 RGB, EXIF orientation applied.

    Args:
        data: The encoded file.
        settings: The ``image`` settings.
        field: The item's name in errors (``image_bytes[2]``).

    Raises:
        PreprocessError: Empty, not an accepted image, corrupt, too many pixels or too small.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise PreprocessError(f"{field} is empty (0 bytes); expected an image file")
    formats = tuple(settings["accepted_formats"])
    limit = int(settings["max_image_pixels"])
    failures = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError as error:
        raise PreprocessError(
            f"{field} is not a recognised image ({len(data)} bytes starting {data[:8]!r}); "
            f"expected one of {', '.join(formats)}"
        ) from error
    except Image.DecompressionBombError as error:
        raise PreprocessError(f"{field} has too many pixels ({error})") from error
    except failures as error:
        raise PreprocessError(_corrupt(field, error)) from error
    width, height = image.size
    if width * height > limit:
        raise PreprocessError(
            f"{field} has too many pixels ({width}x{height}); the limit is {limit:,} pixels. "
            "Downscale the image before sending it"
        )
    if min(width, height) < int(settings["min_image_side"]):
        raise PreprocessError(
            f"{field} is {width}x{height} pixels; each side must be at least "
            f"{settings['min_image_side']} pixels"
        )
    try:
        image.seek(0)
        image.load()
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        oriented = ImageOps.exif_transpose(image) if orientation != 1 else image
    except Image.DecompressionBombError as error:
        raise PreprocessError(f"{field} has too many pixels ({error})") from error
    except failures as error:
        raise PreprocessError(_corrupt(field, error)) from error
    background = tuple(int(value) for value in settings["alpha_background"])
    return to_rgb_array(oriented, background)  # type: ignore[arg-type]


def reduce_long_side(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """A k x k box average when the long side exceeds ``max_side`` (k = ceil(long / max_side)),
    strip by strip as imgembed does it; ``pixels`` itself otherwise.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB.
        max_side: Longest side allowed.

    Returns:
        ``[ceil(H/k),ceil(W/k),3]`` uint8 RGB.
    """
    from PIL import Image

    height, width = pixels.shape[:2]
    factor = max(1, math.ceil(max(height, width) / max_side))
    if factor == 1:
        return pixels
    rows_per_strip = factor * max(1, STRIP_PIXELS // (width * factor))
    reduced = np.empty((math.ceil(height / factor), math.ceil(width / factor), 3), np.uint8)
    for top in range(0, height, rows_per_strip):
        strip = Image.fromarray(pixels[top : top + rows_per_strip])
        reduced_rows = np.asarray(strip.reduce(factor))  # [ceil(rows/k),ceil(W/k),3]
        first_row = top // factor
        reduced[first_row : first_row + reduced_rows.shape[0]] = reduced_rows
    return reduced


def fixres_pixel_values(pixels: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """Decoded RGB pixels to FixRes model input.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB.
        settings: The ``image`` settings.

    Returns:
        ``[3,S,S]`` float32, the image squashed to S x S with the checkpoint's Pillow filter,
        values ``(v * rescale_factor - mean) / std`` (the product in float64, stored as float32).
    """
    from PIL import Image

    source = reduce_long_side(pixels, int(settings["max_intermediate_side"]))
    side = int(settings["image_size"])
    resample = getattr(Image.Resampling, str(settings["resample"]).upper())
    resized = np.asarray(Image.fromarray(source).resize((side, side), resample=resample))
    rescaled = (np.arange(256, dtype=np.float64) * float(settings["rescale_factor"])).astype(
        np.float32
    )
    mean = np.asarray(settings["image_mean"], dtype=np.float32)[:, None]  # [3,1]
    std = np.asarray(settings["image_std"], dtype=np.float32)[:, None]  # [3,1]
    table = (rescaled[None, :] - mean) / std  # [3,256]
    normalised = np.empty((3, side, side), dtype=np.float32)  # [3,S,S]
    for channel in range(3):
        np.take(table[channel], resized[:, :, channel], out=normalised[channel])
    return normalised


class TextTokenizer:
    """The checkpoint's ``tokenizer.json``, set to cut and pad on the right to L tokens."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.settings = settings
        self.length = int(settings["max_length"])
        pad_id = int(settings["pad_id"])
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length=self.length)
        pad_token = self.tokenizer.id_to_token(pad_id) or ""
        self.tokenizer.enable_padding(
            direction="right", pad_id=pad_id, pad_token=pad_token, length=self.length
        )

    def check(self, value: bytes | str, field: str) -> str:
        """One item as text: UTF-8, not blank, within the character limit.

        Raises:
            PreprocessError: Otherwise.
        """
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as error:
                raise PreprocessError(f"{field} is not UTF-8 ({error}); send UTF-8 text") from error
        if not value.strip():
            raise PreprocessError(f"{field} is blank; send the words to embed")
        limit = int(self.settings["max_characters"])
        if len(value) > limit:
            raise PreprocessError(
                f"{field} has {len(value)} characters; at most {limit} are accepted (only the "
                f"first {self.length} tokens are used)"
            )
        return value

    def input_ids(self, texts: list[str]) -> np.ndarray:
        """``[B,L]`` int64 token ids of checked texts, lower-cased when the settings say so."""
        if self.settings.get("lowercase", True):
            texts = [text.lower() for text in texts]
        encodings = self.tokenizer.encode_batch(texts)
        return np.asarray([encoding.ids for encoding in encodings], dtype=np.int64)  # [B,L]


def invalid_argument(message: str) -> Any:
    """A Triton error that clients see as a bad request (HTTP 400), where the stub can say so."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    if code is None:  # a Python backend older than Triton 23.06 has no error codes
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


class TritonPythonModel:
    """Triton's Python-backend entry points for ``siglip_preprocess`` and ``siglip_tokenize``."""

    def initialize(self, args: dict[str, str]) -> None:
        """Reads the step, its settings and (for texts) the tokenizer.

        Raises:
            ValueError: The config names no known ``imgembed_step``.
        """
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        self.step = str(parameters.get("imgembed_step", {}).get("string_value", ""))
        folder = Path(args["model_repository"]) / str(args["model_version"])
        settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        if self.step == "siglip_preprocess":
            self.image_settings = settings["image"]
        elif self.step == "siglip_tokenize":
            text = settings["text"]
            self.tokenizer = TextTokenizer(folder / text["tokenizer_file"], text)
        else:
            raise ValueError(
                f"config parameter imgembed_step must be siglip_preprocess or siglip_tokenize, "
                f"got {self.step!r}; export the repository again"
            )

    def run(self, items: np.ndarray) -> np.ndarray:
        """One request's items to its model input.

        Args:
            items: ``[B]`` object array of bytes.

        Returns:
            ``[B,3,S,S]`` float32 pixel values or ``[B,L]`` int64 token ids.

        Raises:
            PreprocessError: An item that cannot be used; the message names it.
        """
        flat = items.reshape(-1)  # [B]
        if flat.size == 0:
            raise PreprocessError(f"{self.input_name} is empty; send at least one item")
        fields = [f"{self.input_name}[{index}]" for index in range(flat.size)]
        if self.step == "siglip_preprocess":
            return np.stack(
                [
                    fixres_pixel_values(
                        decode_rgb(bytes(data), self.image_settings, field), self.image_settings
                    )
                    for data, field in zip(flat, fields, strict=True)
                ]
            )  # B x [3,S,S] -> [B,3,S,S]
        texts = [
            self.tokenizer.check(value, field) for value, field in zip(flat, fields, strict=True)
        ]
        return self.tokenizer.input_ids(texts)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answers each request with its model input, or with an error naming the bad item."""
        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            try:
                output = self.run(items)
            except PreprocessError as error:
                responses.append(pb_utils.InferenceResponse(error=invalid_argument(str(error))))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(self.output_name, output)]
                )
            )
        return responses
