"""The FastAPI application: a thin shell over the :class:`~imgembed.engine.Engine`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import imgembed
from imgembed.engine import Engine
from imgembed.errors import ImgembedError
from imgembed.server import errors, openapi, v2
from imgembed.server.middleware import RequestContextMiddleware
from imgembed.server.routes import router
from imgembed.settings import ServerConfig
from imgembed.ui.routes import router as ui_router


def create_app(config: ServerConfig, *, engine: Engine | None = None) -> FastAPI:
    """Builds the HTTP application.

    Args:
        config: Server configuration.
        engine: An engine to serve; one is built from ``config`` when ``None``. Models not yet
            loaded are loaded at start-up; the app closes the engine at shutdown.

    Returns:
        The ASGI application.
    """
    served_engine = engine or Engine(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await served_engine.start()
        try:
            yield
        finally:
            await served_engine.close()

    app = FastAPI(
        title="imgembed",
        version=imgembed.__version__,
        summary="Image embeddings as a service: SAM 2 features for client-side mask decoding.",
        lifespan=lifespan,
    )
    app.state.engine = served_engine
    app.include_router(router)
    app.include_router(v2.router)
    app.include_router(ui_router)
    openapi.install(app)
    app.add_exception_handler(ImgembedError, errors.handle_imgembed_error)
    app.add_exception_handler(RequestValidationError, errors.handle_validation_error)
    app.add_exception_handler(ValidationError, errors.handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, errors.handle_http_exception)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=config.limits.max_body_bytes,
        metrics=served_engine.metrics,
        api_key=config.api_key,
        public_paths=config.public_paths,
        body_idle_timeout_s=config.body_idle_timeout_s,
        body_timeout_s=config.body_timeout_s,
    )
    return app
