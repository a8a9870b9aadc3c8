"""Request parsing shared by every family and every adapter: a decoded JSON object validated against
a request model, and the one image source a request names. Validation errors become
:class:`~imgembed.errors.InvalidInputError` naming the field, never a stack trace."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from imgembed.errors import InvalidInputError
from imgembed.types import ImageBase64, ImageBytes, ImageInput, ImageURL

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_request(model_class: type[ModelT], payload: Any, *, prefix: str = "") -> ModelT:
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
