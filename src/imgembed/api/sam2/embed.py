"""SAM 2 embed: the request (the HTTP body of ``POST /v1/sam2/embed`` and the ``input`` of the seed
RunPod worker's event are the same object) and the response.

The JSON response keeps every field of the seed RunPod worker's response (``type``, ``encoding``,
``data``, ``shape``, ``dtype``, ``meta``, ``device``, ``model``) and adds what a client needs to
decode without guessing (``arrays``, ``meta.model_id``, ``meta.resize_mode``,
``meta.coordinate_transform``, ``compute_dtype``, ``weights``).
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imgembed.api.parsing import image_source
from imgembed.codecs import encode_binary, encode_npz
from imgembed.engine import Sam2EmbedResult
from imgembed.errors import InvalidInputError
from imgembed.models.sam2 import FEATURE_STRIDE, IMAGENET_MEAN, IMAGENET_STD, SAM2_INPUT_SIZE
from imgembed.pipelines.sam2_embed import Sam2EmbedOptions
from imgembed.settings import Encoding, FeatureDtype, ResizeMode
from imgembed.types import ImageInput


class Sam2EmbedRequest(BaseModel):
    """Body of ``POST /v1/sam2/embed`` and input of the RunPod ``embed_image`` action: exactly one
    image source (``image_b64``, ``input_image_url``, ``image_id`` or a multipart file)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["embed_image"] | None = Field(
        default=None, description="The seed RunPod worker's action name; optional over HTTP."
    )
    image_b64: str | None = Field(
        default=None, description="Image file bytes as base64, with or without a data: prefix."
    )
    input_image_url: str | None = Field(
        default=None, description="http(s) URL of the image; private addresses are refused."
    )
    image_id: str | None = Field(
        default=None,
        description="An image_id from an earlier response, instead of the image: its features "
        "come from the embedding cache (404 once evicted: send the image again).",
    )
    model: str | None = Field(
        default=None, description="Model name or alias; the server's default model when omitted."
    )
    dtype: FeatureDtype = Field(default="float32", description="Numeric type of the features.")
    resize_longer_side: int | None = Field(
        default=None,
        description="Accepted for compatibility with the seed worker; must be 1024 if given.",
        json_schema_extra={
            "anyOf": [{"type": "integer", "const": SAM2_INPUT_SIZE}, {"type": "null"}]
        },
    )
    resize_mode: ResizeMode | None = Field(
        default=None,
        description="stretch (SAM 2's training resize, the default) or letterbox.",
    )
    include_high_res: bool = Field(
        default=True,
        description="Return high_res_feats_0/1 too; a SAM 2 decoder needs them.",
    )
    encoding: Encoding = Field(
        default="npz_base64",
        description="npz_base64 (deflate), npz_base64_uncompressed, or binary "
        "(JSON header + raw tensors; HTTP only).",
    )


def sam2_embed_inputs(
    request: Sam2EmbedRequest,
    *,
    default_resize_mode: ResizeMode,
    upload: bytes | None = None,
    upload_field: str = "file",
    prefix: str = "",
) -> tuple[ImageInput | None, Sam2EmbedOptions]:
    """The image and options an embed request asks for (``None`` as the image: use ``image_id``).

    Args:
        request: The validated request.
        default_resize_mode: Resize mode when the request names none.
        upload: Bytes of a multipart file upload, if the request carried one.
        upload_field: Form field the upload came in.
        prefix: Field path prefix for error messages.

    Raises:
        InvalidInputError: No image, more than one image, or a ``resize_longer_side`` SAM 2 cannot use.
    """
    image = image_source(request, upload=upload, upload_field=upload_field, prefix=prefix)
    if request.resize_longer_side is not None and request.resize_longer_side != SAM2_INPUT_SIZE:
        raise InvalidInputError(
            f"resize_longer_side must be {SAM2_INPUT_SIZE} for SAM 2 (its encoder's fixed input "
            f"size), got {request.resize_longer_side}; omit it or send {SAM2_INPUT_SIZE}",
            field=f"{prefix}resize_longer_side",
        )
    options = Sam2EmbedOptions(
        dtype=request.dtype,
        include_high_res=request.include_high_res,
        resize_mode=request.resize_mode or default_resize_mode,
    )
    return image, options


NPZ_KEYS = {
    "image_embed": "embedding",
    "high_res_feats_0": "high_res_feats_0",
    "high_res_feats_1": "high_res_feats_1",
}
"""Feature name to ``.npz`` member name; ``embedding`` is the seed's key for ``image_embed``."""


def sam2_embed_meta(result: Sam2EmbedResult) -> dict[str, Any]:
    """The ``meta`` object: seed fields plus model id, resize mode and the coordinate formula."""
    variant = result.model.loaded.variant
    return {
        "model": variant.meta_config.rsplit("/", 1)[-1],
        "model_id": variant.name,
        **result.embedding.mapping.to_meta(),
        "stride": FEATURE_STRIDE,
        "high_res_strides": [4, 8],
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    }


def _common_fields(result: Sam2EmbedResult) -> dict[str, Any]:
    served = result.model
    embedding = result.embedding
    return {
        "type": "map",
        "shape": list(embedding.arrays["image_embed"].shape),
        "dtype": embedding.dtype,
        "meta": sam2_embed_meta(result),
        "device": served.placement.device_name,
        "model": served.name,
        "compute_dtype": served.placement.compute_dtype,
        "weights": {
            "source": served.loaded.source,
            "location": served.loaded.weights_location,
            "untrained": served.loaded.untrained,
        },
        "image_id": result.image_id,
        "cache_hit": result.cache_hit,
        "timings_ms": result.timings_ms,
    }


def sam2_embed_json(result: Sam2EmbedResult, encoding: Encoding) -> dict[str, Any]:
    """The JSON response for an ``npz_base64`` or ``npz_base64_uncompressed`` encoding.

    Args:
        result: The engine's result.
        encoding: ``npz_base64`` (deflate, run-length strategy) or ``npz_base64_uncompressed``.

    Returns:
        A JSON-serialisable dict; ``data`` is base64 of an ``.npz`` whose members are named in
        ``arrays`` (``embedding`` holds ``image_embed``).
    """
    if encoding == "binary":
        raise ValueError("the binary encoding is not JSON; use sam2_embed_binary")
    started = time.perf_counter()
    arrays = {NPZ_KEYS[name]: array for name, array in result.embedding.arrays.items()}
    data = base64.b64encode(encode_npz(arrays, compress=encoding == "npz_base64")).decode("ascii")
    fields = _common_fields(result)
    fields["timings_ms"] = {
        **result.timings_ms,
        "serialize": round((time.perf_counter() - started) * 1000, 2),
    }
    return {
        **fields,
        "encoding": encoding,
        "data": data,
        "arrays": {key: list(array.shape) for key, array in arrays.items()},
    }


def sam2_embed_binary(result: Sam2EmbedResult) -> tuple[bytes, int]:
    """The ``binary`` body: a JSON header (all JSON fields but ``data``) then raw tensors.

    Framing copies the arrays once (about 1 ms for float16 features), so ``timings_ms`` has no
    ``serialize`` stage here, unlike the JSON encodings.

    Returns:
        The body and the JSON header's length in bytes, for ``Inference-Header-Content-Length``.
    """
    dtype_names = {name: result.embedding.dtype for name in result.embedding.arrays}
    header = {**_common_fields(result), "encoding": "binary"}
    return encode_binary(result.embedding.arrays, header, dtype_names=dtype_names)
