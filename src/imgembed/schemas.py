"""Request bodies shared by every shell, and their translation into engine calls.

The HTTP body of ``POST /v1/sam2/embed`` and the ``input`` of the seed's RunPod event are the same
object, validated here once. Validation errors become :class:`~imgembed.errors.InvalidInputError`
naming the field, never a stack trace.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgembed.config import Encoding, FeatureDtype, ResizeMode
from imgembed.errors import InvalidInputError
from imgembed.models.sam2 import SAM2_INPUT_SIZE
from imgembed.pipelines.sam2_embed import Sam2EmbedOptions
from imgembed.types import ImageBase64, ImageBytes, ImageInput, ImageURL


class Sam2EmbedRequest(BaseModel):
    """Body of ``POST /v1/sam2/embed`` and input of the RunPod ``embed_image`` action."""

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


def parse_request(model_class: type[BaseModel], payload: Any, *, prefix: str = "") -> BaseModel:
    """Validates a decoded JSON object against a request model.

    Args:
        model_class: The pydantic model.
        payload: The decoded JSON value.
        prefix: Field path prefix for error messages (``input.`` for RunPod events).

    Raises:
        InvalidInputError: The first problem, naming its field and what was expected.
    """
    if not isinstance(payload, dict):
        raise InvalidInputError(
            f"{prefix.rstrip('.') or 'body'} must be a JSON object, got {type(payload).__name__}",
            field=prefix.rstrip(".") or None,
        )
    try:
        return model_class.model_validate(payload)
    except ValidationError as error:
        raise validation_error_to_input_error(error, prefix=prefix) from error


def validation_error_to_input_error(
    error: ValidationError, *, prefix: str = ""
) -> InvalidInputError:
    """Turns pydantic's first error into a message naming the field, the problem and the value."""
    first = error.errors(include_url=False)[0]
    location = prefix + ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        message = f"unknown field {location!r}; check the spelling against the API documentation"
    else:
        received = first.get("input")
        shown = repr(received) if len(repr(received)) <= 80 else repr(received)[:77] + "..."
        message = f"{location}: {first['msg']}, got {shown}"
    return InvalidInputError(message, field=location or None)


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


def image_source(
    request: BaseModel, *, upload: bytes | None, upload_field: str = "file", prefix: str = ""
) -> ImageInput | None:
    """The one image source a request names: ``image_b64``, ``input_image_url``, an upload, or
    ``image_id`` (returned as ``None``: the caller reads the cache).

    Raises:
        InvalidInputError: None or several sources were given; the message lists what to send.
    """
    image_b64: str | None = getattr(request, "image_b64", None)
    image_url: str | None = getattr(request, "input_image_url", None)
    image_id: str | None = getattr(request, "image_id", None)
    given = {
        name: value
        for name, value in (
            ("image_b64", image_b64),
            ("input_image_url", image_url),
            (upload_field, upload),
            ("image_id", image_id),
        )
        if value is not None
    }
    if not given:
        raise InvalidInputError(
            "no image given; send exactly one of image_b64, input_image_url, a file upload, or "
            "the image_id of an earlier response",
            field=f"{prefix}image_b64",
        )
    if len(given) > 1:
        names = " and ".join(given)
        together = "both" if len(given) == 2 else "all"
        raise InvalidInputError(
            f"{names} were {together} given; send exactly one image source",
            field=prefix + next(iter(given)),
        )
    if image_b64 is not None:
        return ImageBase64(image_b64, field=f"{prefix}image_b64")
    if image_url is not None:
        return ImageURL(image_url, field=f"{prefix}input_image_url")
    if upload is not None:
        return ImageBytes(upload, field=upload_field)
    return None
