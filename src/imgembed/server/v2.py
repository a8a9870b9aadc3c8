"""Open Inference Protocol (v2) routes, what Triton and KServe speak, so ``tritonclient`` works.

Health, server and model metadata, model readiness and configuration, and inference with JSON
tensors or the binary tensor data extension (``Inference-Header-Content-Length``). Each route is
also reachable with ``/versions/1`` after the model name, as clients send it when given a version.

Errors in these routes take the protocol's shape, ``{"error": "<message>"}`` (what ``tritonclient``
reads), not the native ``{"error": {"code", ...}}``: 400 for a bad request or tensor (the message
names the input and says what was expected), 404 for an unknown model or version, 413 for a body
over the limit, 429 when the model's queue is full and 503 while models load, both with
``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

import imgembed
from imgembed.codecs import BINARY_HEADER_LENGTH
from imgembed.engine import Engine
from imgembed.errors import ImgembedError, ServiceUnavailableError, UnknownModelError
from imgembed.server.disconnect import (
    CLIENT_CLOSED_REQUEST,
    ClientDisconnectedError,
    unless_disconnected,
)
from imgembed.server.errors import error_response, http_status
from imgembed.server.labels import UNRESOLVED_MODEL
from imgembed.server.openapi import MODEL_ERRORS, error_responses
from imgembed.server.v2_models import V2Model, v2_models
from imgembed.server.v2_request import INFER_REQUEST_SCHEMA, decompress_body, parse_infer_request
from imgembed.server.v2_siglip import siglip_v2_models
from imgembed.server.v2_tensors import OutputTensor, encode_infer_response, requested_outputs

logger = logging.getLogger(__name__)

EXTENSIONS = ("binary_tensor_data", "model_configuration", "parameters")
"""Protocol extensions this server implements, as ``GET /v2`` lists them."""
MODEL_VERSION = "1"
"""The one version of every model."""


def _error_response(request: Request, error: ImgembedError) -> JSONResponse:
    """The v2 error body for a user-facing error, with ``Retry-After`` on 429 and 503."""
    if http_status(error) >= 500:
        logger.error(
            "v2 request %s failed: %s", getattr(request.state, "request_id", "?"), error.message
        )
    request_id = getattr(request.state, "request_id", "unknown")
    return error_response(error, request_id, path=request.url.path)


class V2Route(APIRoute):
    """A route whose failures answer in the v2 error shape instead of the native one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ImgembedError as error:
                return _error_response(request, error)
            except Exception as error:
                request_id = getattr(request.state, "request_id", "unknown")
                logger.exception("v2 request %s failed unexpectedly", request_id, exc_info=error)
                return JSONResponse(
                    {
                        "error": f"internal server error; quote request id {request_id} when "
                        "reporting it"
                    },
                    status_code=500,
                )

        return handle


router = APIRouter(route_class=V2Route, tags=["v2"])


def all_v2_models(engine: Engine) -> dict[str, V2Model]:
    """Every v2 model the engine's models answer to: SAM 2 encoders and decoders, then SigLIP."""
    return {**v2_models(engine), **siglip_v2_models(engine)}


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _not_ready() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "the server is not ready: models are still loading or it is shutting down; retry "
        "after the Retry-After delay"
    )


def _model(request: Request, name: str, version: str = "") -> V2Model:
    """The v2 model a path names, its version checked.

    Raises:
        UnknownModelError: No such model or version (404).
    """
    models = all_v2_models(_engine(request))
    model = models.get(name)
    if model is None:
        request.state.model = UNRESOLVED_MODEL
        raise UnknownModelError(
            f"unknown model {name!r}; this server serves {sorted(models)}", field="model_name"
        )
    if version not in ("", MODEL_VERSION):
        request.state.model = UNRESOLVED_MODEL
        raise UnknownModelError(
            f"model {name!r} has no version {version!r}; its only version is {MODEL_VERSION!r}",
            field="model_version",
        )
    request.state.model = model.served.name
    return model


@router.get("/v2", summary="Server metadata (v2)")
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it implements."""
    return {"name": "imgembed", "version": imgembed.__version__, "extensions": list(EXTENSIONS)}


_NO_BODY: dict[int | str, dict[str, Any]] = {200: {"description": "Yes (no body)."}}
_NOT_READY = {**_NO_BODY, **error_responses(503, v2=True)}
_UNKNOWN_MODEL = error_responses(404, v2=True)
"""A route naming a model (and maybe a version): 404 for an unknown one."""


@router.get("/v2/health/live", summary="Liveness (v2)", response_class=Response, responses=_NO_BODY)
async def live() -> Response:
    """200 while the process serves HTTP."""
    return Response(status_code=200)


@router.get(
    "/v2/health/ready", summary="Readiness (v2)", response_class=Response, responses=_NOT_READY
)
async def ready(request: Request) -> Response:
    """200 once every model is loaded and warmed up, else 503."""
    if not _engine(request).ready:
        raise _not_ready()
    return Response(status_code=200)


@router.get("/v2/models", summary="Served models (v2 names)")
async def list_models(request: Request) -> dict[str, Any]:
    """Every v2 model's metadata. Not part of the protocol, but Triton users reach for it."""
    models = all_v2_models(_engine(request)).values()
    return {"models": [model.metadata() for model in models]}


@router.post("/v2/repository/index", summary="Model repository index (v2)")
async def repository_index(request: Request) -> list[dict[str, str]]:
    """Every v2 model name with its version and state (``READY`` or ``UNAVAILABLE``)."""
    engine = _engine(request)
    state = "READY" if engine.ready else "UNAVAILABLE"
    return [
        {"name": name, "version": MODEL_VERSION, "state": state} for name in all_v2_models(engine)
    ]


@router.get("/v2/models/{model_name}", summary="Model metadata (v2)", responses=_UNKNOWN_MODEL)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    summary="Model metadata (v2)",
    responses=_UNKNOWN_MODEL,
)
async def model_metadata(request: Request, model_name: str, model_version: str = "") -> Any:
    """Name, versions, platform and input/output tensors (-1 for dynamic dimensions)."""
    return _model(request, model_name, model_version).metadata()


@router.get(
    "/v2/models/{model_name}/config", summary="Model configuration (v2)", responses=_UNKNOWN_MODEL
)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/config",
    summary="Model configuration (v2)",
    responses=_UNKNOWN_MODEL,
)
async def model_config(request: Request, model_name: str, model_version: str = "") -> Any:
    """The model as Triton's JSON model configuration describes it."""
    return _model(request, model_name, model_version).config()


_MODEL_READY = {**_NOT_READY, **_UNKNOWN_MODEL}


@router.get(
    "/v2/models/{model_name}/ready",
    summary="Model readiness (v2)",
    response_class=Response,
    responses=_MODEL_READY,
)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    summary="Model readiness",
    response_class=Response,
    responses=_MODEL_READY,
)
async def model_ready(request: Request, model_name: str, model_version: str = "") -> Response:
    """200 when the model can serve, 503 while not ready, 404 for an unknown model."""
    _model(request, model_name, model_version)
    if not _engine(request).ready:
        raise _not_ready()
    return Response(status_code=200)


_INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A v2 inference request: JSON, or JSON followed by binary tensor data "
        f"with its length in the {BINARY_HEADER_LENGTH} header.",
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            },
        },
    },
    "responses": {
        "200": {
            "description": "The outputs: JSON, or a JSON header followed by binary tensor data "
            f"(application/octet-stream, with its length in {BINARY_HEADER_LENGTH}).",
            "content": {"application/json": {}, "application/octet-stream": {}},
        }
    },
}
_INFER_ERRORS = error_responses(*MODEL_ERRORS, v2=True)


@router.post(
    "/v2/models/{model_name}/infer",
    summary="Inference (v2)",
    openapi_extra=_INFER_OPENAPI,
    responses=_INFER_ERRORS,
)
@router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer",
    summary="Inference (v2)",
    openapi_extra=_INFER_OPENAPI,
    responses=_INFER_ERRORS,
)
async def infer(request: Request, model_name: str, model_version: str = "") -> Response:
    """Runs a model on JSON or binary tensors; outputs binary where the request asks."""
    arrived = time.monotonic()
    engine = _engine(request)
    model = _model(request, model_name, model_version)
    if not engine.ready:
        raise _not_ready()
    body = decompress_body(
        await request.body(),
        request.headers.get("content-encoding"),
        engine.config.limits.max_body_bytes,
    )
    parsed = await engine.run_cpu(
        parse_infer_request,
        body,
        request.headers.get(BINARY_HEADER_LENGTH),
        engine.config.limits,
    )
    wanted = requested_outputs(parsed, model.outputs, model.name)
    tensors = await engine.run_cpu(model.read_inputs, parsed)
    timeout_s = min(parsed.timeout_s or math.inf, engine.config.request_timeout_s)
    try:
        results = await unless_disconnected(
            request, model.infer(engine, tensors, deadline=arrived + timeout_s)
        )
    except ClientDisconnectedError:
        logger.info("client closed the connection; request %s dropped", request.state.request_id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    datatypes = {spec.name: spec.datatype for spec in model.outputs}
    outputs = [
        OutputTensor(name, datatypes[name], results[name], binary)
        for name, binary in wanted.items()
    ]
    content, header_length = await engine.run_cpu(
        encode_infer_response, model.name, MODEL_VERSION, parsed.id, outputs
    )
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={BINARY_HEADER_LENGTH: str(header_length)},
    )
