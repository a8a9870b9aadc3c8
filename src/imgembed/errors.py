"""Errors that reach users.

Every error a client can cause is an :class:`ImgembedError` subclass that carries an HTTP status,
a stable machine-readable ``code``, the request ``field`` at fault (when one is), and a message that
says what was expected, what came, and how to fix it. The HTTP server, the RunPod handler and the
CLI turn these into their own formats; anything else is an internal error whose details stay in the
server log.

This module is a leaf: it imports nothing from the rest of the package and nothing heavy.
"""

from __future__ import annotations


class ImgembedError(Exception):
    """Base class for errors with a user-facing message.

    Attributes:
        status_code: HTTP status the server answers with.
        code: Stable identifier clients can branch on.
        field: Name of the request field at fault, or ``None`` when no single field is.
    """

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str | int | None]:
        """The error as the JSON object every interface returns under ``"error"``."""
        return {"code": self.code, "message": self.message, "field": self.field}


class InvalidInputError(ImgembedError):
    """The request is well-formed JSON but a value in it is wrong."""

    status_code = 400
    code = "invalid_input"


class ImageDecodeError(InvalidInputError):
    """The bytes given are not a decodable image (not an image, truncated, unsupported format)."""

    code = "invalid_image"


class PayloadTooLargeError(ImgembedError):
    """A body, download or image exceeds a configured size limit."""

    status_code = 413
    code = "payload_too_large"


class ImageFetchError(InvalidInputError):
    """An image URL could not be fetched (refused address, HTTP error, timeout, too many redirects)."""

    code = "image_fetch_failed"


class ForbiddenURLError(ImageFetchError):
    """An image URL points at an address the server refuses to contact (server-side request forgery)."""

    code = "url_forbidden"


class UnknownModelError(ImgembedError):
    """The request names a model this server does not serve."""

    status_code = 404
    code = "model_not_found"


class ModelLoadError(ImgembedError):
    """Weights could not be found or loaded. Raised at start-up, not per request."""

    status_code = 500
    code = "model_load_failed"


class UnauthorizedError(ImgembedError):
    """The request lacks a valid API key."""

    status_code = 401
    code = "unauthorized"


class ServiceUnavailableError(ImgembedError):
    """The server cannot take the request now (not ready, shutting down, queue full)."""

    status_code = 503
    code = "unavailable"


class UnsupportedMediaTypeError(ImgembedError):
    """The request body's content type is not one the endpoint reads."""

    status_code = 415
    code = "unsupported_media_type"


class QueueFullError(ImgembedError):
    """A model's queue is at its limit; the client should retry after a short wait."""

    status_code = 429
    code = "queue_full"


class DeadlineExceededError(ImgembedError):
    """The request's deadline passed before its work ran; the work was dropped."""

    status_code = 504
    code = "deadline_exceeded"


class ResourceExhaustedError(ImgembedError):
    """One item does not fit on the device even alone (out of memory)."""

    status_code = 507
    code = "resource_exhausted"


class NotFoundError(ImgembedError):
    """A named resource (collection, cached image) does not exist; the message says how to get it."""

    status_code = 404
    code = "not_found"


class ConflictError(ImgembedError):
    """The request conflicts with stored state (an id that already exists, where upsert is off)."""

    status_code = 409
    code = "conflict"
