"""Errors that reach users.

Every error a client can cause is an :class:`ImgembedError` subclass that carries a stable
machine-readable ``code``, the request ``field`` at fault (when one is), and a message that says what
was expected, what came, and how to fix it. They know nothing of transports: the HTTP server maps
each class to a status code (:mod:`imgembed.server.errors`), the RunPod handler and the CLI turn
them into their own formats; anything else is an internal error whose details stay in the server
log.

This module is a leaf: it imports nothing from the rest of the package and nothing heavy.
"""

from __future__ import annotations


class ImgembedError(Exception):
    """Base class for errors with a user-facing message.

    Attributes:
        code: Stable identifier clients can branch on.
        field: Name of the request field at fault, or ``None`` when no single field is.
    """

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

    code = "invalid_input"


class ImageDecodeError(InvalidInputError):
    """The bytes given are not a decodable image (not an image, truncated, unsupported format)."""

    code = "invalid_image"


class PayloadTooLargeError(ImgembedError):
    """A body, download or image exceeds a configured size limit."""

    code = "payload_too_large"


class RequestTimeoutError(ImgembedError):
    """The client sent its request's headers or body too slowly; the connection is closed."""

    code = "request_timeout"


class ImageFetchError(InvalidInputError):
    """An image URL could not be fetched (refused address, HTTP error, timeout, too many redirects)."""

    code = "image_fetch_failed"


class ForbiddenURLError(ImageFetchError):
    """An image URL points at an address the server refuses to contact (server-side request forgery)."""

    code = "url_forbidden"


class UnknownModelError(ImgembedError):
    """The request names a model this server does not serve."""

    code = "model_not_found"


class ModelLoadError(ImgembedError):
    """Weights could not be found or loaded. Raised at start-up, not per request."""

    code = "model_load_failed"


class UnauthorizedError(ImgembedError):
    """The request lacks a valid API key."""

    code = "unauthorized"


class ServiceUnavailableError(ImgembedError):
    """The server cannot take the request now (not ready, shutting down, queue full)."""

    code = "unavailable"


class UnsupportedMediaTypeError(ImgembedError):
    """The request body's content type is not one the endpoint reads."""

    code = "unsupported_media_type"


class QueueFullError(ImgembedError):
    """A model's queue is at its limit; the client should retry after a short wait."""

    code = "queue_full"


class DeadlineExceededError(ImgembedError):
    """The request's deadline passed before its work ran; the work was dropped."""

    code = "deadline_exceeded"


class ResourceExhaustedError(ImgembedError):
    """One item does not fit on the device even alone (out of memory)."""

    code = "resource_exhausted"


class NotFoundError(ImgembedError):
    """A named resource (collection, cached image) does not exist; the message says how to get it."""

    code = "not_found"


class ConflictError(ImgembedError):
    """The request conflicts with stored state (an id that already exists, where upsert is off)."""

    code = "conflict"
