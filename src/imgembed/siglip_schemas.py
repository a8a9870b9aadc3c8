"""SigLIP request bodies shared by HTTP and RunPod, and their translation into engine inputs.

Image entries are strings: an ``http(s)`` URL, a ``data:`` URI, or bare base64 of the file. A
request whose list is malformed (not a list, empty, a non-string entry) is refused whole with 400;
an entry that is a string but cannot be fetched or decoded fails alone (see the warnings of the
response).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imgembed.errors import InvalidInputError
from imgembed.types import ImageBase64, ImageInput, ImageURL

URL_PREFIXES = ("http://", "https://", "data:")


class SiglipEmbedRequest(BaseModel):
    """Body of ``POST /v1/siglip/embed`` and input of the seed's RunPod event."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["embed_images"] | None = Field(default=None, description="RunPod action.")
    images: Any = Field(
        default=None,
        description="Images: http(s) URLs, data: URIs or base64 strings (multipart: files).",
    )
    model: str | None = Field(default=None, description="SigLIP model; the default when omitted.")


class SiglipTextRequest(BaseModel):
    """Body of ``POST /v1/siglip/embed-text`` and input of the RunPod ``embed_texts`` action."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["embed_texts"] | None = Field(default=None, description="RunPod action.")
    texts: Any = Field(default=None, description="Texts to embed (lower-cased, 64 tokens).")
    model: str | None = Field(default=None, description="SigLIP model; the default when omitted.")


class OpenAIEmbeddingsRequest(BaseModel):
    """Body of ``POST /v1/embeddings`` in OpenAI's shape."""

    model_config = ConfigDict(extra="forbid")

    input: Any = Field(
        description="A string or a list: http(s) image URLs and data: URIs are embedded as "
        "images, anything else as text."
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
