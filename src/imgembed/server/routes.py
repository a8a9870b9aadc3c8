"""HTTP routes of SAM 2, models, health and metrics: each runs an api operation (see
:mod:`imgembed.server.operations`). No model logic lives here."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from imgembed.api.sam2 import operations as sam2_operations
from imgembed.api.sam2.embed import (
    Sam2EmbedRequest,
)
from imgembed.api.sam2.everything import Sam2EverythingRequest
from imgembed.api.sam2.segment import Sam2SegmentRequest
from imgembed.codecs import BINARY_MEDIA_TYPE
from imgembed.engine import Engine
from imgembed.engine.metrics import CONTENT_TYPE
from imgembed.server.bodies import Body, image_body
from imgembed.server.collection_routes import router as collection_router
from imgembed.server.openapi import (
    EXAMPLE_PNG_BASE64,
    MODEL_ERRORS,
    Multipart,
    error_responses,
    request_body,
)
from imgembed.server.operations import serve_operation
from imgembed.server.siglip_routes import router as siglip_router

logger = logging.getLogger(__name__)
router = APIRouter()
router.include_router(siglip_router)
router.include_router(collection_router)


_EMBED_OPENAPI: dict[str, Any] = {
    **request_body(
        Sam2EmbedRequest,
        multipart=Multipart("Sam2EmbedForm"),
        example={"image_b64": EXAMPLE_PNG_BASE64, "dtype": "float16"},
        description="JSON, or a multipart upload (field 'file') with the other fields as form "
        "fields.",
    ),
    "responses": {
        "200": {
            "description": "Features: JSON with base64 npz, or the binary framing "
            f"({BINARY_MEDIA_TYPE}) when encoding is binary.",
            "content": {"application/json": {}, BINARY_MEDIA_TYPE: {}},
        }
    },
}
_JSON_VALUES_FORM = (
    "JSON, or a multipart upload (field 'file') whose other fields are JSON values "
    "(points as [[10, 20]], multimask_output as false)."
)


def _engine(request: Request) -> Engine:
    return request.app.state.engine


async def _image_body_with_json_values(request: Request) -> Body:
    """JSON, or multipart with each form value read as JSON (their fields are lists)."""
    return await image_body(request, json_form_values=True)


@router.post(
    "/v1/sam2/embed",
    summary="SAM 2 image features",
    description="Encodes one image with the SAM 2 image encoder. The image comes as JSON "
    "(image_b64 or input_image_url) or as a multipart upload (field 'file').",
    openapi_extra=_EMBED_OPENAPI,
    responses=error_responses(*MODEL_ERRORS),
    tags=["sam2"],
)
async def sam2_embed(request: Request) -> Response:
    return await serve_operation(request, sam2_operations.EMBED, image_body)


@router.post(
    "/v1/sam2/segment",
    summary="SAM 2 masks from prompts",
    description="Segments objects from points, boxes and earlier masks, in pixels of the original "
    "image. The image comes as JSON (image_b64, input_image_url, or the image_id of an earlier "
    "response, which skips the encoder) or as a multipart upload (field 'file'; other fields as "
    "JSON values). Masks come back as COCO RLE, PNG, polygons or npz.",
    openapi_extra=request_body(
        Sam2SegmentRequest,
        multipart=Multipart("Sam2SegmentForm", json_values=True),
        description=_JSON_VALUES_FORM,
        example={"image_b64": EXAMPLE_PNG_BASE64, "points": [[8, 8]], "point_labels": [1]},
    ),
    responses=error_responses(*MODEL_ERRORS),
    tags=["sam2"],
)
async def sam2_segment(request: Request) -> Response:
    return await serve_operation(request, sam2_operations.SEGMENT, _image_body_with_json_values)


@router.post(
    "/v1/sam2/segment-everything",
    summary="SAM 2 automatic masks",
    description="Every object in the image: Meta's automatic mask generator (a grid of point "
    "prompts, optional crops, quality and stability filters, non-maximum suppression) with its "
    "parameter names and defaults, and its output records. JSON (image_b64 or input_image_url) "
    "or multipart (field 'file'; other fields as JSON values).",
    openapi_extra=request_body(
        Sam2EverythingRequest,
        multipart=Multipart(
            "Sam2EverythingForm", omit=("image_b64", "input_image_url"), json_values=True
        ),
        description=_JSON_VALUES_FORM,
        example={"image_b64": EXAMPLE_PNG_BASE64, "points_per_side": 4},
    ),
    responses=error_responses(*MODEL_ERRORS),
    tags=["sam2"],
)
async def sam2_segment_everything(request: Request) -> Response:
    return await serve_operation(
        request, sam2_operations.SEGMENT_EVERYTHING, _image_body_with_json_values
    )


@router.get("/v1/models", summary="Served models", tags=["models"])
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model.describe() for model in _engine(request).models]}


def _health(engine: Engine) -> dict[str, Any]:
    return {
        "status": "ok" if engine.ready else "loading",
        "models": {model.name: {"ready": engine.ready} for model in engine.models},
    }


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Models are still loading (status: loading); the same body as 200.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


@router.get("/health", summary="Service health", tags=["health"], responses=_NOT_READY)
async def health(request: Request) -> JSONResponse:
    engine = _engine(request)
    return JSONResponse(_health(engine), status_code=200 if engine.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["health"],
    response_class=PlainTextResponse,
)
async def metrics(request: Request) -> Response:
    engine = _engine(request)
    return Response(engine.metrics.render(engine.device_memory()), media_type=CONTENT_TYPE)


@router.get("/health/live", summary="Liveness", tags=["health"])
async def health_live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/health/ready", summary="Readiness", tags=["health"], responses=_NOT_READY)
async def health_ready(request: Request) -> JSONResponse:
    return await health(request)
