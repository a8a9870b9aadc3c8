"""HTTP routes of the browser page: the page, its scripts, onnxruntime-web and the decoder graphs.

``GET /ui`` (redirects to ``/ui/``), ``/ui/static/{name}``, ``/ui/vendor/{name}``,
``/ui/config.json`` and ``/ui/models/{model}/{decoder|decoder_single_mask}.onnx``. Everything the
page needs comes from these routes and the service's own API, so it works with no other network
access. Every answer is cross-origin isolated (COOP/COEP), which lets onnxruntime-web use
WebAssembly threads, and the page's Content-Security-Policy allows only this origin.

The decoder folder is ``app.state.ui_export_dir`` when the application sets it, else
:func:`~imgembed.export.decoder_cache.default_export_dir`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from imgembed.engine import Engine
from imgembed.errors import NotFoundError
from imgembed.export.decoder_cache import (
    DECODER_FILES,
    DecoderExportCache,
    DecoderGraph,
    default_export_dir,
)
from imgembed.models.sam2_loading import LoadedSam2
from imgembed.server.openapi import error_responses
from imgembed.ui.assets import (
    FETCH_COMMAND,
    StaticAsset,
    read_vendor_manifest,
    static_asset,
    vendor_asset,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ui"])

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
"""On every ``/ui`` answer: cross-origin isolation (WebAssembly threads need it), no sniffing."""

PAGE_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "img-src 'self' blob: data:",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""The page loads scripts, WebAssembly, data and styles from this origin only."""

REVALIDATE = "no-cache"
"""Browsers keep the files and ask again with ``If-None-Match``; unchanged files answer 304."""


def _file_response(
    request: Request, asset: StaticAsset, extra: dict[str, str] | None = None
) -> Response:
    etag = f'"{asset.etag}"'
    headers = {"ETag": etag, "Cache-Control": REVALIDATE, **ISOLATION_HEADERS, **(extra or {})}
    if etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return FileResponse(asset.path, media_type=asset.media_type, headers=headers)


def _etags(header: str) -> set[str]:
    """Entity tags of an ``If-None-Match`` header (weak ones compare as strong)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@router.get("/ui", include_in_schema=False)
async def ui_redirect() -> RedirectResponse:
    # Relative, so the page also works behind a reverse proxy that adds a path prefix.
    return RedirectResponse("ui/", status_code=307)


_NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the If-None-Match entity tag is current."}
}


@router.api_route(
    "/ui/",
    methods=["GET", "HEAD"],
    summary="Browser page: segment an image, decoded in the browser",
    response_class=HTMLResponse,
    responses=_NOT_MODIFIED,
)
async def ui_page(request: Request) -> Response:
    asset = static_asset("index.html")
    assert asset is not None
    return _file_response(request, asset, {"Content-Security-Policy": PAGE_SECURITY_POLICY})


@router.api_route("/ui/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def ui_static(request: Request, name: str) -> Response:
    asset = static_asset(name)
    if asset is None:
        raise NotFoundError(f"/ui/static/{name} is not a file of the browser page", field="path")
    return _file_response(request, asset)


@router.api_route("/ui/vendor/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def ui_vendor(request: Request, name: str) -> Response:
    asset = vendor_asset(name)
    if asset is None:
        if read_vendor_manifest() is None:
            raise NotFoundError(
                "onnxruntime-web is not installed on this server; the operator runs "
                f"{FETCH_COMMAND} once (it installs it from the npm registry)",
                field="path",
            )
        raise NotFoundError(f"/ui/vendor/{name} is not a file of onnxruntime-web", field="path")
    return _file_response(request, asset)


@router.get("/ui/config.json", summary="What the browser page needs to know about this server")
async def ui_config() -> dict[str, Any]:
    manifest = read_vendor_manifest()
    runtime: dict[str, Any] | None = None
    if manifest is not None:
        runtime = {"package": manifest.package, "version": manifest.version}
    return {
        "runtime": runtime,
        "runtime_missing_message": None
        if manifest
        else "The server has no copy of onnxruntime-web, which the page needs to decode masks. "
        f"The operator runs {FETCH_COMMAND} once on the server, then reloads this page.",
        "decoder_graphs": sorted(DECODER_FILES),
    }


def _decoder_cache(request: Request) -> DecoderExportCache:
    state = request.app.state
    cache = getattr(state, "ui_decoder_cache", None)
    if cache is None:
        export_dir = getattr(state, "ui_export_dir", None)
        cache = DecoderExportCache(Path(export_dir) if export_dir else default_export_dir())
        state.ui_decoder_cache = cache
    return cache


@router.get(
    "/ui/models/{model}/{graph}.onnx",
    summary="The SAM 2 decoder graph of a served model, as ONNX",
    description="decoder (three masks per prompt) or decoder_single_mask; exported from the "
    "served weights on first request (cached on disk), so the first request takes a while.",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        },
        **_NOT_MODIFIED,
        **error_responses(404, 503),
    },
)
async def ui_decoder(request: Request, model: str, graph: str) -> Response:
    if graph not in DECODER_FILES:
        raise NotFoundError(
            f"no graph {graph!r}; expected one of {', '.join(sorted(DECODER_FILES))}",
            field="path",
        )
    engine: Engine = request.app.state.engine
    served = engine.resolve_model(model)
    if not isinstance(served.loaded, LoadedSam2):
        raise NotFoundError(
            f"{served.name} is not a SAM 2 model; the page decodes SAM 2 masks", field="model"
        )
    path = await _decoder_cache(request).graph_path(served.loaded, cast(DecoderGraph, graph))
    # The folder name holds the weights key, so it is a strong validator of the file.
    asset = StaticAsset(path, "application/octet-stream", path.parent.name)
    return _file_response(request, asset)
