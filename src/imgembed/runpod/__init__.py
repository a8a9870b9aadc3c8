"""RunPod serverless shell: the seed worker's event format over the engine.

    python -m imgembed.runpod                      # serve jobs (RunPod starts it like this)
    python -m imgembed.runpod --test_input '{"input": {"action": "embed_image", ...}}'

Actions: ``embed_image`` (the SAM 2 seed's, the default), ``segment``, ``segment_everything``,
``embed_images`` (the SigLIP seed's event, ``{"input": {"images": [...]}}``, needs no action) and
``embed_texts``. The handler is :func:`handler` (``imgembed.runpod.handler``). Configuration comes
from the same variables as ``imgembed serve`` (``IMGEMBED_*``, ``SAM2_CHECKPOINT``,
``SAM2_MODEL_CFG``). Errors come back as ``{"error": message, "code": ..., "field": ...}``, which
RunPod marks as a failed job.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from imgembed.engine import Engine, Sam2Service, SiglipService
from imgembed.errors import ImgembedError, InvalidInputError
from imgembed.schemas import Sam2EmbedRequest, image_source, parse_request, sam2_embed_inputs
from imgembed.segment_schemas import Sam2EverythingRequest, Sam2SegmentRequest, segment_objects
from imgembed.settings import server_config_from_env
from imgembed.siglip_schemas import SiglipEmbedRequest, SiglipTextRequest, image_inputs
from imgembed.wire import sam2_embed_json
from imgembed.wire_segment import sam2_everything_json, sam2_segment_json
from imgembed.wire_siglip import siglip_images_json, siglip_texts_json

logger = logging.getLogger(__name__)

ACTIONS = ("embed_image", "segment", "segment_everything", "embed_images", "embed_texts")
"""Actions the handler understands, as the seed worker names them."""

_engine: Engine | None = None


async def _get_engine() -> Engine:
    """The process's engine, started on the first job (RunPod keeps the worker warm)."""
    global _engine
    if _engine is None:
        engine = Engine(server_config_from_env(os.environ))
        await engine.start()
        _engine = engine
    return _engine


async def _embed_image(engine: Engine, job_input: dict[str, Any]) -> dict[str, Any]:
    body = parse_request(Sam2EmbedRequest, job_input, prefix="input.")
    assert isinstance(body, Sam2EmbedRequest)
    if body.encoding == "binary":
        raise InvalidInputError(
            "input.encoding 'binary' is only available over HTTP; RunPod returns JSON, so use "
            "npz_base64 or npz_base64_uncompressed",
            field="input.encoding",
        )
    served = engine.service(Sam2Service).resolve(body.model, field_name="input.model")
    image, options = sam2_embed_inputs(
        body, default_resize_mode=engine.config.default_resize_mode, prefix="input."
    )
    result = await engine.service(Sam2Service).embed(
        image, image_id=body.image_id, model=served.name, options=options, field_prefix="input."
    )
    return await engine.run_cpu(sam2_embed_json, result, body.encoding)


async def _segment(engine: Engine, job_input: dict[str, Any]) -> dict[str, Any]:
    body = parse_request(Sam2SegmentRequest, job_input, prefix="input.")
    assert isinstance(body, Sam2SegmentRequest)
    image = image_source(body, upload=None, prefix="input.")
    objects = segment_objects(body, engine.config.limits, prefix="input.")
    served = engine.service(Sam2Service).resolve(body.model, field_name="input.model")
    result = await engine.service(Sam2Service).segment(
        image,
        objects,
        image_id=body.image_id,
        model=served.name,
        resize_mode=body.resize_mode,
        options=body.options(),
        field_prefix="input.",
    )
    return await engine.run_cpu(
        lambda: sam2_segment_json(result, body.mask_format, with_logits=body.return_low_res_logits)
    )


async def _segment_everything(engine: Engine, job_input: dict[str, Any]) -> dict[str, Any]:
    body = parse_request(Sam2EverythingRequest, job_input, prefix="input.")
    assert isinstance(body, Sam2EverythingRequest)
    image = image_source(body, upload=None, prefix="input.")
    assert image is not None  # the request has no image_id field
    params = body.params(prefix="input.")
    served = engine.service(Sam2Service).resolve(body.model, field_name="input.model")
    result = await engine.service(Sam2Service).segment_everything(image, model=served.name, params=params)
    return await engine.run_cpu(sam2_everything_json, result, body.output_mode)


async def _embed_images(engine: Engine, job_input: dict[str, Any]) -> dict[str, Any]:
    body = parse_request(SiglipEmbedRequest, job_input, prefix="input.")
    assert isinstance(body, SiglipEmbedRequest)
    images = image_inputs(body.images, field="input.images")
    result = await engine.service(SiglipService).embed_images(images, model=body.model, field_prefix="input.")
    return await engine.run_cpu(siglip_images_json, result, images)


async def _embed_texts(engine: Engine, job_input: dict[str, Any]) -> dict[str, Any]:
    body = parse_request(SiglipTextRequest, job_input, prefix="input.")
    assert isinstance(body, SiglipTextRequest)
    vectors, served = await engine.service(SiglipService).embed_texts(
        body.texts, model=body.model, field_prefix="input."
    )
    return await engine.run_cpu(siglip_texts_json, vectors, served)


_RUNNERS = {
    "embed_images": _embed_images,
    "embed_texts": _embed_texts,
    "embed_image": _embed_image,
    "segment": _segment,
    "segment_everything": _segment_everything,
}


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
        return await _RUNNERS[action](engine, job_input)
    except ImgembedError as error:
        logger.warning("job %s refused: %s", job_id, error.message)
        return {"error": error.message, "code": error.code, "field": error.field}
