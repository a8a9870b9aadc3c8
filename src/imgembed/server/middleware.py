"""ASGI middleware: request ids, the body size limit and timeouts, one access-log line per request,
and the last guard: no exception reaches the HTTP server."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgembed.engine.metrics import Metrics
from imgembed.errors import PayloadTooLargeError, RequestTimeoutError, UnauthorizedError
from imgembed.server.errors import error_response, unexpected_error_response

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Gives each request an id, checks its API key, caps and times its body, logs it, counts it,
    and answers any exception the application lets through.

    The id is the client's ``X-Request-ID`` when it is a short token, else a fresh one; it is
    stored in ``scope["state"]["request_id"]`` and returned in the ``X-Request-ID`` header. Bodies
    larger than ``max_body_bytes`` are refused from ``Content-Length`` before reading, and while
    streaming when the length is absent or wrong. A body whose next part takes longer than
    ``body_idle_timeout_s``, or that takes longer than ``body_timeout_s`` in all, is refused with
    408 and the connection closed. An unexpected exception is logged once with its traceback and
    answered 500 with the request id (when the response has not started), so the HTTP server never
    sees it and the connection stays usable.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        api_key: str | None = None,
        public_paths: tuple[str, ...] = (),
        body_idle_timeout_s: float = 30.0,
        body_timeout_s: float = 300.0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_idle_timeout_s = body_idle_timeout_s
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics
        self._expected_authorization = f"Bearer {api_key}".encode() if api_key else None
        self.public_paths = frozenset(path for path in public_paths if not path.endswith("*"))
        self.public_prefixes = tuple(path[:-1] for path in public_paths if path.endswith("*"))

    def _authorized(self, path: str, headers: dict[bytes, bytes]) -> bool:
        """Whether the request may proceed: no key configured, a public path (exact, or under a
        ``prefix*`` entry), or the right key (compared in constant time)."""
        if self._expected_authorization is None or path in self.public_paths:
            return True
        if self.public_prefixes and "/../" not in path and path.startswith(self.public_prefixes):
            return True
        given = headers.get(b"authorization", b"")
        return hmac.compare_digest(given, self._expected_authorization)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        client_id = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = client_id if _CLIENT_REQUEST_ID.match(client_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status: dict[str, int] = {"code": 0}
        body = _BodyState(deadline=time.monotonic() + self.body_timeout_s)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                response_headers = list(message.get("headers", []))
                if not any(
                    name.lower() == REQUEST_ID_HEADER.encode() for name, _ in response_headers
                ):
                    response_headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                if body.timed_out:  # the rest of the body may never come: do not wait for it
                    response_headers.append((b"connection", b"close"))
                message["headers"] = response_headers
            await send(message)

        declared = headers.get(b"content-length")
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            if body.complete:
                return await receive()  # past the body: only a disconnect can come
            wait_s = min(self.body_idle_timeout_s, body.deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait_s, 0.0))
            except TimeoutError as error:
                body.timed_out = True
                raise self._body_too_slow(body.received_bytes) from error
            if message["type"] == "http.request":
                body.received_bytes += len(message.get("body", b""))
                body.complete = not message.get("more_body", False)
                if body.received_bytes > limit:
                    raise _too_large(body.received_bytes, limit)
            else:
                body.complete = True
            return message

        try:
            if not self._authorized(scope["path"], headers):
                refusal = UnauthorizedError(
                    "missing or wrong API key; send the header 'Authorization: Bearer <key>' "
                    "with the key the operator set in IMGEMBED_API_KEY",
                    field="authorization",
                )
                response = error_response(refusal, request_id, path=scope["path"])
                response.headers["www-authenticate"] = "Bearer"
                await response(scope, receive, send_with_id)
            elif declared is not None and declared.isdigit() and int(declared) > limit:
                too_large = _too_large(int(declared), limit)
                response = error_response(too_large, request_id, path=scope["path"])
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        except Exception:  # the last guard: log once, answer 500 if still possible
            logger.exception("request %s failed unexpectedly", request_id)
            if status["code"] == 0:
                response = unexpected_error_response(request_id, path=scope["path"])
                await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            model = scope["state"].get("model", "")
            self.metrics.requests.labels(template, model, str(status["code"])).inc()
            self.metrics.request_seconds.labels(template, model).observe(seconds)
            logger.info(
                "%s %s %s %.1fms request_id=%s",
                scope.get("method"),
                scope.get("path"),
                status["code"],
                seconds * 1000,
                request_id,
                extra={
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "route": template,
                    "status": status["code"],
                    "duration_ms": round(seconds * 1000, 2),
                    "model": model,
                },
            )

    def _body_too_slow(self, received_bytes: int) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the request body stopped arriving after {received_bytes:,} bytes: no part came "
            f"within {self.body_idle_timeout_s:g} s (IMGEMBED_BODY_IDLE_TIMEOUT_S) or the "
            f"whole body took over {self.body_timeout_s:g} s (IMGEMBED_BODY_TIMEOUT_S); send the "
            "body as fast as the connection allows, or pass a large image by URL",
            field="body",
        )


class _BodyState:
    """How much of a request's body has come, and until when the rest may take."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.received_bytes = 0
        self.complete = False
        self.timed_out = False


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body is {size:,} bytes or more; the limit is {limit:,} bytes "
        "(IMGEMBED_MAX_BODY_BYTES). Send a smaller image or pass it by URL",
        field="body",
    )
