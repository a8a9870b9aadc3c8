"""The HTTP server under the application: uvicorn, with a deadline for each request's headers.

uvicorn closes a connection that idles between requests (its keep-alive timeout) but waits without
limit for a request's line and headers once a client has connected or sent a first byte, so a
client that trickles header bytes holds a connection for as long as it likes. The protocol here
gives every request ``header_timeout_s`` from the connection's opening (or the request's first
byte on a kept-alive connection) to its last header; past it the client gets 408 and the
connection is closed. Bodies are timed in the application's middleware
(:class:`~imgembed.server.middleware.RequestContextMiddleware`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgembed.settings import ServerConfig

logger = logging.getLogger(__name__)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers.

    Attributes:
        header_timeout_s: Seconds a request may take to arrive up to its last header.
    """

    header_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # a new request on a kept-alive connection begins
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_timer()  # its headers are complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        """Answers 408 and closes the connection: the request's headers did not arrive in time."""
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        request_id = uuid.uuid4().hex
        logger.info(
            "request headers not complete after %.0f s; answered 408 and closed the connection "
            "request_id=%s client=%s",
            self.header_timeout_s,
            request_id,
            self.client,
        )
        self.transport.write(request_timeout_response(self.header_timeout_s, request_id))
        self.transport.close()


def request_timeout_response(header_timeout_s: float, request_id: str) -> bytes:
    """The raw HTTP/1.1 408 response to a request whose headers came too slowly."""
    body = json.dumps(
        {
            "error": {
                "code": "request_timeout",
                "message": (
                    f"the request's line and headers did not arrive within {header_timeout_s:g} s "
                    "(IMGEMBED_HEADER_TIMEOUT_S); send the whole header block at once"
                ),
                "field": "headers",
                "request_id": request_id,
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {request_id}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def protocol_class(header_timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """A :class:`HeaderTimeoutProtocol` subclass with its deadline set (uvicorn takes a class)."""
    return type(
        "HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": header_timeout_s}
    )


def uvicorn_config(app: Any, config: ServerConfig, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration ``imgembed serve`` runs ``app`` with.

    Args:
        app: The ASGI application (:func:`~imgembed.server.app.create_app`).
        config: Host, port, shutdown and header timeouts come from here.
        **overrides: Other :class:`uvicorn.Config` arguments (a test's port, ``log_level``).
    """
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": config.shutdown_timeout_s,
        "http": protocol_class(config.header_timeout_s),
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
