"""The model label of a request's metrics and access log, known before the body is validated."""

from __future__ import annotations

from fastapi import Request

from imgembed.engine import Engine
from imgembed.errors import ImgembedError

UNRESOLVED_MODEL = "unresolved"
"""Label of a request that names no served model. The name it sent is never used as a label: a
client could create any number of label values."""


def label_model(
    request: Request, engine: Engine, named: object = None, family: str | None = None
) -> None:
    """Labels the request with the model it addresses, so a refusal still counts against it.

    Args:
        request: The request; its ``state.model`` is set.
        engine: The engine that resolves names.
        named: The ``model`` field as the client sent it (any JSON value); ``None`` for the
            family's default model.
        family: The route's model family (a registered family's name).
    """
    try:
        served = (
            engine.resolve_model(named, family=family)
            if named is None or isinstance(named, str)
            else None
        )
    except ImgembedError:
        served = None
    request.state.model = served.name if served is not None else UNRESOLVED_MODEL


def named_model(payload: object) -> object:
    """The ``model`` field of a JSON object body, ``None`` when absent or not an object."""
    return payload.get("model") if isinstance(payload, dict) else None
