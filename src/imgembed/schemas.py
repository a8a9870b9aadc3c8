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
) -> tuple[ImageInput, Sam2EmbedOptions]:
    """The image and options an embed request asks for.

    Args:
        request: The validated request.
        default_resize_mode: Resize mode when the request names none.
        upload: Bytes of a multipart file upload, if the request carried one.
        upload_field: Form field the upload came in.
        prefix: Field path prefix for error messages.

    Raises:
        InvalidInputError: No image, more than one image, or a ``resize_longer_side`` SAM 2 cannot use.
    """
    given = {
        name: value
        for name, value in (
            ("image_b64", request.image_b64),
            ("input_image_url", request.input_image_url),
            (upload_field, upload),
        )
        if value is not None
    }
    if not given:
        raise InvalidInputError(
            "no image given; send exactly one of image_b64, input_image_url, or a file upload",
            field=f"{prefix}image_b64",
        )
    if len(given) > 1:
        names = " and ".join(given)
        raise InvalidInputError(
            f"{names} were both given; send exactly one image source",
            field=prefix + next(iter(given)),
        )
    if request.resize_longer_side is not None and request.resize_longer_side != SAM2_INPUT_SIZE:
        raise InvalidInputError(
            f"resize_longer_side must be {SAM2_INPUT_SIZE} for SAM 2 (its encoder's fixed input "
            f"size), got {request.resize_longer_side}; omit it or send {SAM2_INPUT_SIZE}",
            field=f"{prefix}resize_longer_side",
        )
    if request.image_b64 is not None:
        image: ImageInput = ImageBase64(request.image_b64, field=f"{prefix}image_b64")
    elif request.input_image_url is not None:
        image = ImageURL(request.input_image_url, field=f"{prefix}input_image_url")
    else:
        image = ImageBytes(upload or b"", field=upload_field)
    options = Sam2EmbedOptions(
        dtype=request.dtype,
        include_high_res=request.include_high_res,
        resize_mode=request.resize_mode or default_resize_mode,
    )
    return image, options
