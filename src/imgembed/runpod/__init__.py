"""RunPod serverless shell: the seed worker's event format over the engine.

    python -m imgembed.runpod                      # serve jobs (RunPod starts it like this)
    python -m imgembed.runpod --test_input '{"input": {"action": "embed_image", ...}}'

Actions: ``embed_image`` (the SAM 2 seed's, the default), ``segment``, ``segment_everything``,
``embed_images`` (the SigLIP seed's event, ``{"input": {"images": [...]}}``, needs no action),
``embed_texts``, and the collections' ``list_collections``, ``get_collection``,
``delete_collection``, ``add_items``, ``list_items``, ``delete_items`` and ``search_collection``
(the collection named by ``name``: ``{"input": {"action": "search_collection", "name": "photos",
"text": "a cat"}}``). The other fields of ``input`` are the operation's request, as the body of its
HTTP route. The handler is :func:`handler` (``imgembed.runpod.handler``). Configuration comes
from the same variables as ``imgembed serve`` (``IMGEMBED_*``, ``SAM2_CHECKPOINT``,
``SAM2_MODEL_CFG``). Errors come back as ``{"error": message, "code": ..., "field": ...}``, which
RunPod marks as a failed job.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from imgembed.api import collections_operations, siglip_operations
from imgembed.api.json_body import check_json_value
from imgembed.api.operation import Context, Operation, run
from imgembed.api.sam2 import operations as sam2_operations
from imgembed.engine import Engine
from imgembed.errors import ImgembedError, InvalidInputError
from imgembed.settings import server_config_from_env

logger = logging.getLogger(__name__)

_engine: Engine | None = None


async def _get_engine() -> Engine:
    """The process's engine, started on the first job (RunPod keeps the worker warm)."""
    global _engine
    if _engine is None:
        engine = Engine(server_config_from_env(os.environ))
        await engine.start()
        _engine = engine
    return _engine


OPERATIONS: dict[str, Operation[Any, Any]] = {
    "embed_image": sam2_operations.EMBED,
    "segment": sam2_operations.SEGMENT,
    "segment_everything": sam2_operations.SEGMENT_EVERYTHING,
    "embed_images": siglip_operations.EMBED_IMAGES,
    "embed_texts": siglip_operations.EMBED_TEXTS,
    "list_collections": collections_operations.LIST_COLLECTIONS,
    "get_collection": collections_operations.GET_COLLECTION,
    "delete_collection": collections_operations.DELETE_COLLECTION,
    "add_items": collections_operations.ADD_ITEMS,
    "list_items": collections_operations.LIST_ITEMS,
    "delete_items": collections_operations.DELETE_ITEMS,
    "search_collection": collections_operations.SEARCH,
}
"""The api operation each action runs."""
ACTIONS = tuple(OPERATIONS)
"""Actions the handler understands, as the seed worker names them."""


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Runs one RunPod job: ``{"id": ..., "input": {"action": "embed_image", ...}}``.

    Returns:
        The seed's response fields (``type``, ``encoding``, ``data``, ``shape``, ``dtype``,
        ``meta``, ``device``, ``model``) and more, or ``{"error": ..., "code": ..., "field": ...}``.
    """
    job_id = job.get("id", "unknown") if isinstance(job, dict) else "unknown"
    try:
        job_input = job.get("input") if isinstance(job, dict) else None
        if not isinstance(job_input, dict):
            raise InvalidInputError(
                'the event must be {"input": {"action": "embed_image", ...}}; "input" is missing '
                "or not an object",
                field="input",
            )
        # The SigLIP seed's event has no action: {"input": {"images": [...]}}.
        action = job_input.get("action", "embed_images" if "images" in job_input else "embed_image")
        if action not in ACTIONS:
            raise InvalidInputError(
                f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}",
                field="input.action",
            )
        engine = await _get_engine()
        check_json_value(job_input, engine.config.limits, prefix="input")
        context = Context(engine, "runpod", field_prefix="input.")
        request = {name: value for name, value in job_input.items() if name != "action"}
        reply = await run(OPERATIONS[action], request, context)
        assert isinstance(reply, dict), "every operation answers JSON outside HTTP"
        return reply
    except ImgembedError as error:
        logger.warning("job %s refused: %s", job_id, error.message)
        return {"error": error.message, "code": error.code, "field": error.field}
