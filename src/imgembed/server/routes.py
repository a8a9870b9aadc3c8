"""HTTP routes: parse, call the engine, format. No model logic lives here."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from imgembed.codecs import BINARY_HEADER_LENGTH, BINARY_MEDIA_TYPE
from imgembed.engine import Engine, Sam2Service
from imgembed.errors import InvalidInputError, UnsupportedMediaTypeError
from imgembed.metrics import CONTENT_TYPE
from imgembed.schemas import Sam2EmbedRequest, image_source, parse_request, sam2_embed_inputs
from imgembed.segment_schemas import Sam2EverythingRequest, Sam2SegmentRequest, segment_objects
from imgembed.server.collection_routes import router as collection_router
from imgembed.server.disconnect import (
    CLIENT_CLOSED_REQUEST,
    ClientDisconnectedError,
    unless_disconnected,
)
from imgembed.server.errors import invalid_json
from imgembed.server.labels import label_model, named_model
from imgembed.server.siglip_routes import router as siglip_router
from imgembed.wire import sam2_embed_binary, sam2_embed_json
from imgembed.wire_segment import sam2_everything_json, sam2_segment_json

logger = logging.getLogger(__name__)
router = APIRouter()
router.include_router(siglip_router)
router.include_router(collection_router)

UPLOAD_FIELDS = ("file", "image")
"""Multipart field names an image upload may use."""

_EMBED_SCHEMA = Sam2EmbedRequest.model_json_schema()
_EMBED_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _EMBED_SCHEMA},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **{
                            name: prop
                            for name, prop in _EMBED_SCHEMA["properties"].items()
                            if name not in ("image_b64", "input_image_url", "action")
                        },
                    },
                    "required": ["file"],
                }
            },
        },
    },
    "responses": {
        "200": {
            "description": "Features: JSON with base64 npz, or the binary framing "
            f"({BINARY_MEDIA_TYPE}) when encoding is binary.",
            "content": {"application/json": {}, BINARY_MEDIA_TYPE: {}},
        }
    },
}


def _engine(request: Request) -> Engine:
    return request.app.state.engine


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise invalid_json(error) from error


async def _read_multipart(request: Request) -> tuple[dict[str, str], bytes | None, str]:
    """Form fields as strings, the uploaded file's bytes, and the field it came in."""
    form = await request.form(max_files=1, max_fields=32)
    fields: dict[str, str] = {}
    upload: bytes | None = None
    upload_field = UPLOAD_FIELDS[0]
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in UPLOAD_FIELDS:
                raise InvalidInputError(
                    f"file uploaded as {name!r}; upload the image as 'file'", field=name
                )
            upload = await value.read()
            upload_field = name
        else:
            fields[name] = value
    await form.close()
    return fields, upload, upload_field


async def _read_body(
    request: Request, *, json_form_values: bool = False
) -> tuple[Any, bytes | None, str]:
    """The request's JSON object (or form fields), the uploaded file's bytes and its field.

    Args:
        request: The request.
        json_form_values: Parse each multipart form value as JSON where it is JSON (``[[10, 20]]``,
            ``false``), keeping it as a string otherwise; for endpoints whose fields are lists.

    Raises:
        UnsupportedMediaTypeError: The body is neither JSON nor multipart.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        fields, upload, upload_field = await _read_multipart(request)
        if json_form_values:
            return (
                {name: _form_value(value) for name, value in fields.items()},
                upload,
                upload_field,
            )
        return fields, upload, upload_field
    if content_type in ("application/json", ""):
        return await _read_json(request), None, UPLOAD_FIELDS[0]
    raise UnsupportedMediaTypeError(
        f"Content-Type {content_type!r} is not accepted; send application/json or "
        "multipart/form-data",
        field="content-type",
    )


def _form_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@router.post(
    "/v1/sam2/embed",
    summary="SAM 2 image features",
    description="Encodes one image with the SAM 2 image encoder. The image comes as JSON "
    "(image_b64 or input_image_url) or as a multipart upload (field 'file').",
    openapi_extra=_EMBED_OPENAPI,
    tags=["sam2"],
)
async def sam2_embed(request: Request) -> Response:
    engine = _engine(request)
    label_model(request, engine, family="sam2")
    payload, upload, upload_field = await _read_body(request)
    label_model(request, engine, named_model(payload), "sam2")
    body = parse_request(Sam2EmbedRequest, payload)
    assert isinstance(body, Sam2EmbedRequest)
    image, options = sam2_embed_inputs(
        body,
        default_resize_mode=engine.config.default_resize_mode,
        upload=upload,
        upload_field=upload_field,
    )
    served = engine.service(Sam2Service).resolve(body.model)
    request.state.model = served.name
    try:
        result = await unless_disconnected(
            request,
            engine.service(Sam2Service).embed(image, image_id=body.image_id, model=served.name, options=options),
        )
    except ClientDisconnectedError:
        logger.info("client closed the connection; request %s dropped", request.state.request_id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if body.encoding == "binary":
        content, header_length = await engine.run_cpu(sam2_embed_binary, result)
        return Response(
            content,
            media_type=BINARY_MEDIA_TYPE,
            headers={BINARY_HEADER_LENGTH: str(header_length)},
        )
    encoded = await engine.run_cpu(
        lambda: json.dumps(sam2_embed_json(result, body.encoding)).encode()
    )
    return Response(encoded, media_type="application/json")


@router.post(
    "/v1/sam2/segment",
    summary="SAM 2 masks from prompts",
    description="Segments objects from points, boxes and earlier masks, in pixels of the original "
    "image. The image comes as JSON (image_b64, input_image_url, or the image_id of an earlier "
    "response, which skips the encoder) or as a multipart upload (field 'file'; other fields as "
    "JSON values). Masks come back as COCO RLE, PNG, polygons or npz.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": Sam2SegmentRequest.model_json_schema()}},
        }
    },
    tags=["sam2"],
)
async def sam2_segment(request: Request) -> Response:
    engine = _engine(request)
    label_model(request, engine, family="sam2")
    payload, upload, upload_field = await _read_body(request, json_form_values=True)
    label_model(request, engine, named_model(payload), "sam2")
    body = parse_request(Sam2SegmentRequest, payload)
    assert isinstance(body, Sam2SegmentRequest)
    image = image_source(body, upload=upload, upload_field=upload_field)
    objects = segment_objects(body, engine.config.limits)
    served = engine.service(Sam2Service).resolve(body.model)
    request.state.model = served.name
    work = engine.service(Sam2Service).segment(
        image,
        objects,
        image_id=body.image_id,
        model=served.name,
        resize_mode=body.resize_mode,
        options=body.options(),
    )
    try:
        result = await unless_disconnected(request, work)
    except ClientDisconnectedError:
        logger.info("client closed the connection; request %s dropped", request.state.request_id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    encoded = await engine.run_cpu(
        lambda: json.dumps(
            sam2_segment_json(result, body.mask_format, with_logits=body.return_low_res_logits)
        ).encode()
    )
    return Response(encoded, media_type="application/json")


@router.post(
    "/v1/sam2/segment-everything",
    summary="SAM 2 automatic masks",
    description="Every object in the image: Meta's automatic mask generator (a grid of point "
    "prompts, optional crops, quality and stability filters, non-maximum suppression) with its "
    "parameter names and defaults, and its output records. JSON (image_b64 or input_image_url) "
    "or multipart (field 'file'; other fields as JSON values).",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": Sam2EverythingRequest.model_json_schema()}},
        }
    },
    tags=["sam2"],
)
async def sam2_segment_everything(request: Request) -> Response:
    engine = _engine(request)
    label_model(request, engine, family="sam2")
    payload, upload, upload_field = await _read_body(request, json_form_values=True)
    label_model(request, engine, named_model(payload), "sam2")
    body = parse_request(Sam2EverythingRequest, payload)
    assert isinstance(body, Sam2EverythingRequest)
    image = image_source(body, upload=upload, upload_field=upload_field)
    params = body.params()
    served = engine.service(Sam2Service).resolve(body.model)
    request.state.model = served.name
    assert image is not None  # the request has no image_id field
    work = engine.service(Sam2Service).segment_everything(image, model=served.name, params=params)
    try:
        result = await unless_disconnected(request, work)
    except ClientDisconnectedError:
        logger.info("client closed the connection; request %s dropped", request.state.request_id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    encoded = await engine.run_cpu(
        lambda: json.dumps(sam2_everything_json(result, body.output_mode)).encode()
    )
    return Response(encoded, media_type="application/json")


@router.get("/v1/models", summary="Served models", tags=["models"])
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model.describe() for model in _engine(request).models]}


def _health(engine: Engine) -> dict[str, Any]:
    return {
        "status": "ok" if engine.ready else "loading",
        "models": {model.name: {"ready": engine.ready} for model in engine.models},
    }


@router.get("/health", summary="Service health", tags=["health"])
async def health(request: Request) -> JSONResponse:
    engine = _engine(request)
    return JSONResponse(_health(engine), status_code=200 if engine.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", tags=["health"])
async def metrics(request: Request) -> Response:
    engine = _engine(request)
    return Response(engine.metrics.render(engine.device_memory()), media_type=CONTENT_TYPE)


@router.get("/health/live", summary="Liveness", tags=["health"])
async def health_live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/health/ready", summary="Readiness", tags=["health"])
async def health_ready(request: Request) -> JSONResponse:
    return await health(request)
