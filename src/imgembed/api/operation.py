"""The operation contract: parse a request, call the engine, build the response, once per operation.

Every adapter (the HTTP routes, the RunPod handler, the CLI) runs an operation the same way, so
the steps between "a decoded JSON object came in" and "a JSON object goes out" exist once:

1. :meth:`Operation.parse` validates the object against the operation's request model (errors
   name the field, with the adapter's prefix: ``input.points`` for a RunPod event), together with
   the fields an HTTP route reads from its path and query (``params``: a collection's ``name``),
   which a RunPod event or the CLI sends in the object itself;
2. :meth:`Operation.resolve` finds the served model the request names (the adapter labels its
   metrics with it before any work, so a refusal counts against the model);
3. :meth:`Operation.call` runs the engine;
4. :meth:`Operation.respond` builds the response on the engine's CPU pool (serialisation of
   megabytes of features never blocks the event loop).

:func:`run` chains them. Adapters add only what is theirs: reading the body, cancelling work when
an HTTP client leaves, the event envelope of RunPod, files and printing for the CLI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from imgembed.api.parsing import parse_request
from imgembed.engine import Engine, ServedModel
from imgembed.errors import InvalidInputError
from imgembed.types import ImageBytes

RequestT = TypeVar("RequestT", bound=BaseModel)
ResultT = TypeVar("ResultT")

Adapter = Literal["http", "runpod", "cli"]
"""Who runs the operation; an operation may refuse options only one adapter can deliver."""


@dataclass(frozen=True)
class BinaryReply:
    """A response that is not JSON: raw bytes with their media type and headers (HTTP only).

    Attributes:
        content: The body.
        media_type: Its media type.
        headers: Extra response headers.
    """

    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


Reply = dict[str, Any] | BinaryReply
"""What :meth:`Operation.respond` builds: a JSON object, or bytes for HTTP."""


@dataclass(frozen=True)
class Context:
    """What an adapter hands an operation besides the JSON object.

    Attributes:
        engine: The engine to call.
        adapter: Which adapter runs it.
        uploads: Files uploaded beside the JSON (multipart), each with its field name.
        field_prefix: Prefix of field names in errors (``input.`` for RunPod events).
    """

    engine: Engine
    adapter: Adapter = "http"
    uploads: Sequence[ImageBytes] = ()
    field_prefix: str = ""

    def field(self, name: str) -> str:
        """``name`` as errors call it here (``input.name`` in a RunPod event)."""
        return self.field_prefix + name


@dataclass(frozen=True)
class Operation(Generic[RequestT, ResultT]):
    """One operation: its request model, the engine call, and the response it builds.

    Attributes:
        name: ``family.verb`` (``sam2.embed``), for logs and documentation.
        family: The registry family whose models it uses (``sam2``); ``None`` for an operation
            that resolves no model itself (the collections', whose service picks the SigLIP
            model only when it embeds something); adapters then label its metrics with none.
        request: The pydantic model its JSON object must match.
        call: Runs the engine for a parsed request and the served model it names.
        respond: Builds the response from the request and the call's result (runs on the
            engine's CPU pool).
    """

    name: str
    family: str | None
    request: type[RequestT]
    call: Callable[[RequestT, ServedModel | None, Context], Awaitable[ResultT]]
    respond: Callable[[RequestT, ResultT], Reply]

    def parse(
        self, payload: Any, *, field_prefix: str = "", params: Mapping[str, Any] | None = None
    ) -> RequestT:
        """Validates a decoded JSON value against :attr:`request` (needs no engine, so an adapter
        may refuse a bad request before it loads a model).

        Args:
            payload: The decoded JSON value (an HTTP body, a RunPod event's ``input``).
            field_prefix: Prefix of field names in errors (``input.`` for RunPod events).
            params: Fields the adapter read elsewhere than ``payload`` (an HTTP route's path and
                query parameters: the ``name`` of ``/v1/collections/{name}``), validated with it.
                ``payload`` may not hold one of them.

        Raises:
            InvalidInputError: The first problem, naming its field with ``field_prefix``.
        """
        if params and isinstance(payload, dict):
            payload = _with_params(payload, params, field_prefix)
        return parse_request(self.request, payload, prefix=field_prefix)

    def resolve(self, request: RequestT, context: Context) -> ServedModel | None:
        """The served model the request's ``model`` field names, or the family's default.

        Raises:
            UnknownModelError: No such model of the family is served.
        """
        if self.family is None:
            return None
        return context.engine.resolve_model(
            getattr(request, "model", None), field_name=context.field("model"), family=self.family
        )

    async def reply(self, request: RequestT, result: ResultT, context: Context) -> Reply:
        """:attr:`respond` on the engine's CPU pool."""
        return await context.engine.run_cpu(self.respond, request, result)


def _with_params(
    payload: dict[str, Any], params: Mapping[str, Any], field_prefix: str
) -> dict[str, Any]:
    """``payload`` with ``params`` added.

    Raises:
        InvalidInputError: ``payload`` holds a field that ``params`` gives: the body does not take
            it (the message a request model gives for any unknown field).
    """
    for name in params:
        if name in payload:
            location = field_prefix + name
            raise InvalidInputError(
                f"unknown field {location!r}; check the spelling against the API documentation",
                field=location,
            )
    return {**payload, **params}


async def run(operation: Operation[Any, Any], payload: Any, context: Context) -> Reply:
    """Parses, resolves, calls and responds, for adapters with nothing to do between the steps.

    Raises:
        ImgembedError: Whatever the steps raise; the adapter formats it.
    """
    request = operation.parse(payload, field_prefix=context.field_prefix)
    served = operation.resolve(request, context)
    result = await operation.call(request, served, context)
    return await operation.reply(request, result, context)
