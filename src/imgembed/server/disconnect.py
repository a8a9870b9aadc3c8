"""Dropping the work of clients that hang up: nobody computes an answer that nobody will read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

ResultT = TypeVar("ResultT")

CLIENT_CLOSED_REQUEST = 499
"""Status recorded (nginx's convention) for a request whose client left before the answer."""


class ClientDisconnectedError(Exception):
    """The client closed the connection before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[ResultT]) -> ResultT:
    """Awaits ``work``, cancelling it if the client disconnects first.

    Cancelling drops the request's place in its model's queue, so nobody computes an answer that
    nobody will read. The body must already be read: the next ASGI message is the disconnect.

    Raises:
        ClientDisconnectedError: The client went away; ``work`` was cancelled.
    """
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnectedError(request.url.path)
    return task.result()
