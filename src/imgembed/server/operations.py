"""Serving an :class:`~imgembed.api.operation.Operation` over HTTP: the route skeleton, once.

Label the request's metrics with the model (the family default before the body is read, the
named model once it is; none for an operation of no family), read the body, parse it with the
route's path and query parameters, resolve the model, run the engine call (dropped with status 499
when the client leaves), and build and serialise the response on the CPU pool.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from imgembed.api.operation import BinaryReply, Context, Operation
from imgembed.engine import Engine
from imgembed.server.bodies import Body
from imgembed.server.disconnect import (
    CLIENT_CLOSED_REQUEST,
    ClientDisconnectedError,
    unless_disconnected,
)
from imgembed.server.labels import label_model, named_model

logger = logging.getLogger(__name__)

BodyReader = Callable[[Request], Awaitable[Body]]
"""Reads a request's JSON value and uploads (see :mod:`imgembed.server.bodies`)."""


def engine_of(request: Request) -> Engine:
    """The engine the app serves."""
    return request.app.state.engine


async def no_body(request: Request) -> Body:
    """The body of a route that reads none (``GET``, ``DELETE``): an empty object, no uploads."""
    return {}, []


async def serve_operation(
    request: Request,
    operation: Operation[Any, Any],
    read_body: BodyReader,
    *,
    query: Mapping[str, Any] | None = None,
) -> Response:
    """Runs ``operation`` for an HTTP request and answers it.

    Args:
        request: The request.
        operation: The api operation the route runs.
        read_body: Reads the body's JSON value and uploads (:func:`no_body` for none).
        query: The query parameters the route declares, as FastAPI validated them (a route's
            path parameters are always passed); both are parsed with the body, which may not
            repeat them.

    Raises:
        ImgembedError: The request is refused (the app's handler answers with its status).
    """
    engine = engine_of(request)
    if operation.family is not None:
        label_model(request, engine, family=operation.family)
    payload, uploads = await read_body(request)
    if operation.family is not None:
        label_model(request, engine, named_model(payload), operation.family)
    context = Context(engine, "http", uploads)
    parsed = operation.parse(payload, params={**request.path_params, **(query or {})})
    served = operation.resolve(parsed, context)
    if served is not None:
        request.state.model = served.name
    try:
        result = await unless_disconnected(request, operation.call(parsed, served, context))
    except ClientDisconnectedError:
        logger.info("client closed the connection; request %s dropped", request.state.request_id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    def encode() -> Response:
        reply = operation.respond(parsed, result)
        if isinstance(reply, BinaryReply):
            return Response(reply.content, media_type=reply.media_type, headers=reply.headers)
        return Response(json.dumps(reply).encode(), media_type="application/json")

    return await engine.run_cpu(encode)
