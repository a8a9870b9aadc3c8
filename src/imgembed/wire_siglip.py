"""SigLIP responses, shared by HTTP and RunPod: the seed worker's shape, plus what it lacked.

Images (``POST /v1/siglip/embed``, the seed's RunPod event)::

    {"model": "siglip2-base-patch16-224", "dimension": 768, "untrained": false,
     "embeddings": [{"index": 0, "image_url": "https://...", "vector": [0.01, ...]}],
     "warnings": {"failed_urls": [{"index": 1, "url": "https://...", "error": "...",
                                   "code": "image_fetch_failed", "field": "images[1]"}],
                  "message": "1 of 2 images could not be processed"}}

``warnings`` appears only when an image failed (as in the seed). ``image_url`` is the URL the
client sent, or ``null`` for base64 and uploads (``index`` always says which input it is).
Vectors are float32 of norm 1, so their dot product is the cosine similarity.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from imgembed.engine import ServedSiglip, SiglipImagesResult
from imgembed.types import ImageInput, ImageURL


def _url(image: ImageInput) -> str | None:
    if isinstance(image, ImageURL) and not image.url.startswith("data:"):
        return image.url
    return None


def _model_fields(served: ServedSiglip) -> dict[str, Any]:
    return {
        "model": served.name,
        "dimension": served.loaded.embedding_dim,
        "device": served.placement.device_name,
        "untrained": served.untrained,
    }


def siglip_images_json(result: SiglipImagesResult, images: Sequence[ImageInput]) -> dict[str, Any]:
    """The response for a batch of images (see the module docstring)."""
    embeddings = []
    failed = []
    for outcome, image in zip(result.outcomes, images, strict=True):
        if outcome.vector is not None:
            embeddings.append(
                {
                    "index": outcome.index,
                    "image_url": _url(image),
                    "vector": outcome.vector.tolist(),
                }
            )
        else:
            assert outcome.error is not None
            failed.append(
                {
                    "index": outcome.index,
                    "url": _url(image),
                    "error": outcome.error.message,
                    "code": outcome.error.code,
                    "field": outcome.error.field,
                }
            )
    body: dict[str, Any] = {
        **_model_fields(result.model),
        "embeddings": embeddings,
        "timings_ms": result.timings_ms,
    }
    if failed:
        body["warnings"] = {
            "failed_urls": failed,
            "message": f"{len(failed)} of {len(images)} images could not be processed",
        }
    return body


def siglip_texts_json(vectors: np.ndarray, served: ServedSiglip) -> dict[str, Any]:
    """The response for texts: one ``{"index", "vector"}`` per text, in order."""
    return {
        **_model_fields(served),
        "embeddings": [
            {"index": index, "vector": vector.tolist()} for index, vector in enumerate(vectors)
        ],
    }


def openai_embeddings_json(
    vectors: np.ndarray, served: ServedSiglip, encoding_format: Literal["float", "base64"]
) -> dict[str, Any]:
    """OpenAI's embeddings response: ``data`` of ``{"object": "embedding", "index", "embedding"}``."""
    data = []
    for index, vector in enumerate(vectors):
        if encoding_format == "base64":
            value: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            value = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": served.name,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
