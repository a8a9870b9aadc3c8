"""Error responses: one JSON shape for every failure, with the request id and no stack trace.

{"error": {"code": "invalid_image", "message": "...", "field": "image_b64", "request_id": "..."}}
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgembed.api.parsing import validation_error_to_input_error
from imgembed.errors import (
    ConflictError,
    DeadlineExceededError,
    ImgembedError,
    InvalidInputError,
    ModelLoadError,
    NotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    RequestTimeoutError,
    ResourceExhaustedError,
    ServiceUnavailableError,
    UnauthorizedError,
    UnknownModelError,
    UnsupportedMediaTypeError,
)

logger = logging.getLogger(__name__)


HTTP_STATUS: dict[type[ImgembedError], int] = {
    InvalidInputError: 400,
    UnauthorizedError: 401,
    UnknownModelError: 404,
    NotFoundError: 404,
    RequestTimeoutError: 408,
    ConflictError: 409,
    PayloadTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    QueueFullError: 429,
    ModelLoadError: 500,
    ServiceUnavailableError: 503,
    DeadlineExceededError: 504,
    ResourceExhaustedError: 507,
}
"""The HTTP status of each domain error; a subclass answers with its nearest listed base's."""


class HTTPProtocolError(ImgembedError):
    """A failure Starlette reports itself: unknown route, wrong method, malformed multipart.

    Args:
        message: What went wrong.
        status: The status Starlette chose.
        field: The request field at fault, if one is.
    """

    code = "http_error"

    def __init__(self, message: str, *, status: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status


def http_status(error: ImgembedError) -> int:
    """The status code the server answers ``error`` with (500 for an unlisted class)."""
    if isinstance(error, HTTPProtocolError):
        return error.status
    for kind in type(error).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 500


V2_PREFIX = "/v2"
"""Routes of the Open Inference Protocol, whose errors take that protocol's shape."""


def error_response(error: ImgembedError, request_id: str, *, path: str = "") -> JSONResponse:
    """The JSON response for a user-facing error.

    Under ``/v2`` the body is the Open Inference Protocol's ``{"error": "<message>"}`` (what
    ``tritonclient`` reads); elsewhere the native ``{"error": {"code", "message", "field",
    "request_id"}}``. Both carry ``X-Request-ID``, and ``Retry-After`` on 429 and 503.
    """
    headers = {"x-request-id": request_id}
    status = http_status(error)
    if status in (429, 503):
        headers["retry-after"] = "1"
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        body: dict[str, object] = {"error": error.message}
    else:
        body = {"error": {**error.to_dict(), "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "unknown")


async def handle_imgembed_error(request: Request, error: Exception) -> JSONResponse:
    """Answers an :class:`ImgembedError` with its status, code, field and message."""
    assert isinstance(error, ImgembedError)
    if http_status(error) >= 500:
        logger.error("request %s failed: %s", _request_id(request), error.message)
    return error_response(error, _request_id(request), path=request.url.path)


async def handle_validation_error(request: Request, error: Exception) -> JSONResponse:
    """Answers FastAPI's own parameter validation failures in the common error shape."""
    if isinstance(error, RequestValidationError):
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"] if part not in ("body", "query"))
        converted = InvalidInputError(f"{location}: {first['msg']}", field=location or None)
    else:
        assert isinstance(error, ValidationError)
        converted = validation_error_to_input_error(error)
    return error_response(converted, _request_id(request), path=request.url.path)


async def handle_http_exception(request: Request, error: Exception) -> JSONResponse:
    """Answers Starlette's own HTTP errors (404, 405, bad multipart) in the common error shape."""
    assert isinstance(error, StarletteHTTPException)
    converted = HTTPProtocolError(
        str(error.detail),
        status=error.status_code,
        field="body" if error.status_code == 400 else None,
    )
    response = error_response(converted, _request_id(request), path=request.url.path)
    response.headers.update(error.headers or {})
    return response


def unexpected_error_response(request_id: str, *, path: str = "") -> JSONResponse:
    """The 500 response to an unexpected failure: only the request id, never the cause.

    Under ``/v2`` in the Open Inference Protocol's shape, elsewhere in the native one.
    """
    message = f"internal server error; quote request id {request_id} when reporting it"
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        body: dict[str, object] = {"error": message}
    else:
        body = {
            "error": {
                "code": "internal_error",
                "message": message,
                "field": None,
                "request_id": request_id,
            }
        }
    return JSONResponse(body, status_code=500, headers={"x-request-id": request_id})
