"""Response bodies shared by every shell (HTTP, RunPod): one format, built in one place.

The JSON body keeps every field of the seed RunPod worker's response (``type``, ``encoding``,
``data``, ``shape``, ``dtype``, ``meta``, ``device``, ``model``) and adds what a client needs to
decode without guessing (``arrays``, ``meta.model_id``, ``meta.resize_mode``,
``meta.coordinate_transform``, ``compute_dtype``, ``weights``).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from imgembed.codecs import encode_binary, encode_npz
from imgembed.config import Encoding
from imgembed.engine import Sam2EmbedResult
from imgembed.models.sam2 import FEATURE_STRIDE
from imgembed.preprocess.sam2_frame import IMAGENET_MEAN, IMAGENET_STD

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
