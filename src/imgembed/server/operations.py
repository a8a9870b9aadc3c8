"""Serving an :class:`~imgembed.api.operation.Operation` over HTTP: the route skeleton, once.

Label the request's metrics with the model (the family default before the body is read, the
named model once it is), read the body, parse, resolve the model, run the engine call (dropped
with status 499 when the client leaves), and build and serialise the response on the CPU pool.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
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


async def serve_operation(
    request: Request, operation: Operation[Any, Any], read_body: BodyReader
) -> Response:
    """Runs ``operation`` for an HTTP request and answers it.

    Raises:
        ImgembedError: The request is refused (the app's handler answers with its status).
    """
    engine = engine_of(request)
    label_model(request, engine, family=operation.family)
    payload, uploads = await read_body(request)
    label_model(request, engine, named_model(payload), operation.family)
    context = Context(engine, "http", uploads)
    parsed = operation.parse(payload)
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
