"""The FastAPI application: `create_app(settings)` wires routes, limits and error handling."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.errors import AuthenticationError, HychatError, QueueFullError, error_body
from app.limits import BodySizeLimit
from app.routes import api, health
from app.routes.deps import require_api_key
from app.services.registry import load_configured
from config.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(load_configured, settings)
        yield

    app = FastAPI(title="hychat", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.include_router(health.router)
    app.include_router(api.router, dependencies=[Depends(require_api_key)])
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HychatError)
    async def hychat_error(request: Request, error: HychatError) -> JSONResponse:
        headers = None
        if isinstance(error, AuthenticationError):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(error, QueueFullError):
            headers = {"Retry-After": str(error.retry_after_s)}
        return JSONResponse(error_body(error), status_code=error.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in error.errors()
        )
        body = {"error": {"message": problems, "type": "invalid_request"}}
        return JSONResponse(body, status_code=422)
