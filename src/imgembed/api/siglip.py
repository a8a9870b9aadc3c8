"""SigLIP 2: request bodies (HTTP and RunPod) and their translation into engine inputs, and the
responses: the seed worker's shape, plus what it lacked.

Image entries are strings: an ``http(s)`` URL, a ``data:`` URI, or bare base64 of the file. A
request whose list is malformed (not a list, empty, a non-string entry) is refused whole with 400;
an entry that is a string but cannot be fetched or decoded fails alone (see the warnings of the
response).

Images (``POST /v1/siglip/embed``, the seed's RunPod event)::

    {"model": "siglip2-base-patch16-224", "dimension": 768, "device": "cpu",
     "compute_dtype": "float32", "untrained": false,
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
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from imgembed.engine import ServedSiglip, SiglipImagesResult
from imgembed.errors import InvalidInputError
from imgembed.types import ImageBase64, ImageInput, ImageURL

URL_PREFIXES = ("http://", "https://", "data:")


NOT_BLANK = r"\S"
"""JSON Schema ``pattern`` of a string with something besides white space in it."""
IMAGE_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": NOT_BLANK,
    "description": "An http(s) URL, a data: URI, or base64 of the image file.",
}
"""One image entry as the JSON Schema documents it; :func:`image_input` checks it."""
TEXT_SCHEMA: dict[str, Any] = {"type": "string", "pattern": NOT_BLANK}
"""One text: a string that is not blank (the engine's ``check_texts`` checks it, with its length)."""


def required_in_json(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of a field the model leaves optional in Python only so that the
    operation, not pydantic, names what is missing: the documented property has no default (the
    model lists it under ``required``)."""
    schema.pop("default", None)


ImageList = Annotated[
    Any,
    WithJsonSchema({"type": "array", "minItems": 1, "items": IMAGE_ENTRY_SCHEMA}),
]
"""A non-empty list of image entries. Typed ``Any`` so that :func:`image_inputs` gives its own
messages (``images[2] must be a non-empty string ...``); the schema says what it accepts."""
TextList = Annotated[Any, WithJsonSchema({"type": "array", "minItems": 1, "items": TEXT_SCHEMA})]
"""A non-empty list of texts (checked by the engine's ``check_texts``, which names the entry)."""
OpenAIInput = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                TEXT_SCHEMA,
                {"type": "array", "minItems": 1, "items": TEXT_SCHEMA},
            ]
        }
    ),
]
"""One string or a non-empty list of strings (checked by the operation, which names the entry)."""


class SiglipEmbedRequest(BaseModel):
    """Body of ``POST /v1/siglip/embed`` and input of the seed's RunPod event.

    ``images`` is required in JSON; a multipart upload sends files instead.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"required": ["images"]})

    action: Literal["embed_images"] | None = Field(default=None, description="RunPod action.")
    images: ImageList = Field(
        default=None,
        description="Images: http(s) URLs, data: URIs or base64 strings (multipart: files). At "
        "most IMGEMBED_MAX_BATCH_IMAGES per request.",
        json_schema_extra=required_in_json,
    )
    model: str | None = Field(default=None, description="SigLIP model; the default when omitted.")


class SiglipTextRequest(BaseModel):
    """Body of ``POST /v1/siglip/embed-text`` and input of the RunPod ``embed_texts`` action."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"required": ["texts"]})

    action: Literal["embed_texts"] | None = Field(default=None, description="RunPod action.")
    texts: TextList = Field(
        default=None,
        description="Texts to embed (lower-cased, 64 tokens): at most IMGEMBED_MAX_TEXTS per "
        "request, each at most IMGEMBED_MAX_TEXT_CHARS characters.",
        json_schema_extra=required_in_json,
    )
    model: str | None = Field(default=None, description="SigLIP model; the default when omitted.")


class OpenAIEmbeddingsRequest(BaseModel):
    """Body of ``POST /v1/embeddings`` in OpenAI's shape."""

    model_config = ConfigDict(extra="forbid")

    input: OpenAIInput = Field(
        description="A string or a non-empty list of strings: http(s) image URLs and data: URIs "
        "are embedded as images, anything else as text."
    )
    model: str | None = Field(default=None, description="SigLIP model; the default when omitted.")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="float lists, or base64 of little-endian float32."
    )
    dimensions: int | None = Field(
        default=None, description="Must equal the model's embedding size when given."
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")


def image_inputs(entries: object, *, field: str = "images") -> list[ImageInput]:
    """The images of a list of strings, each named ``images[i]`` in errors.

    Raises:
        InvalidInputError: Not a non-empty list, or an entry is not a non-empty string.
    """
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError(
            f"{field} must be a non-empty list of image URLs, data: URIs or base64 strings, got "
            f"{_kind(entries)}",
            field=field,
        )
    return [image_input(entry, f"{field}[{index}]") for index, entry in enumerate(entries)]


def image_input(entry: object, field: str) -> ImageInput:
    """One image entry: a URL or ``data:`` URI, else base64.

    Raises:
        InvalidInputError: Not a non-empty string.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise InvalidInputError(
            f"{field} must be a non-empty string (an http(s) URL, a data: URI or base64 of the "
            f"file), got {_kind(entry)}",
            field=field,
        )
    if entry.startswith(URL_PREFIXES):
        return ImageURL(entry, field=field)
    return ImageBase64(entry, field=field)


def _kind(value: object) -> str:
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return "null" if value is None else type(value).__name__


def _url(image: ImageInput) -> str | None:
    if isinstance(image, ImageURL) and not image.url.startswith("data:"):
        return image.url
    return None


def _model_fields(served: ServedSiglip) -> dict[str, Any]:
    return {
        "model": served.name,
        "dimension": served.loaded.embedding_dim,
        "device": served.placement.device_name,
        "compute_dtype": served.placement.compute_dtype,
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
