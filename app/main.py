"""The FastAPI application: `create_app(settings, backends)` wires the backends (a `Registry` on
`app.state`), routes, limits and error handling."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from app import metrics, routes
from app.cors import Cors
from app.errors import AuthenticationError, HychatError, InvalidParameterError, error_body, error_object
from app.limits import BodySizeLimit
from app.protocol.errors import invalid_body
from app.protocol.openapi import without_validation_422
from app.protocol.strict import UNKNOWN_FIELDS_IGNORED
from app.routes import web
from app.routes.deps import ErrorBody
from app.services.backend import Backend
from app.services.registry import Registry
from app.services.response_store import ResponseStore
from app.telemetry import RequestTelemetry
from config.settings import Settings

log = logging.getLogger(__name__)
# llama-server's other paths for the same routes: OpenAI's without /v1 (clients whose base URL lacks
# it), /v1/health. (Its /embeddings is another format, its /completions its native one: not here.)
PATH_ALIASES = {
    "/chat/completions": "/v1/chat/completions",
    "/models": "/v1/models",
    "/responses": "/v1/responses",
    "/chat/completions/input_tokens": "/v1/chat/completions/input_tokens",
    "/responses/input_tokens": "/v1/responses/input_tokens",
    "/v1/health": "/health",
}


def create_app(settings: Settings | None = None, backends: Mapping[str, Backend] | None = None) -> FastAPI:
    """`backends`: by name ("llamacpp", "pytorch"); default: the user's module-level `llamacpp_service`
    and `model_service`. Start-up loads the configured models into those that have none."""
    settings = settings or Settings()
    registry = Registry(settings, backends)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(registry.load_configured)
        expiry = asyncio.create_task(registry.pool.run_expiry())  # unloads models idle past their keep_alive
        yield
        expiry.cancel()
        await run_in_threadpool(registry.keep_states)

    app = FastAPI(title="hychat", version="0.1.0", lifespan=lifespan)
    app.state.settings, app.state.registry = settings, registry
    app.state.response_store = ResponseStore(settings.responses_store_size, settings.responses_store_ttl_s)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(UnknownFields, ignore=settings.unknown_fields == "ignore")
    app.add_middleware(PathAliases)
    if settings.cors_origins:  # off unless configured: a browser page elsewhere cannot call the API
        app.add_middleware(Cors, origins=settings.cors_origins)
    app.add_middleware(RequestTelemetry)  # outermost: sees 413s too
    for router in routes.routers(settings):  # each says whether it needs the API key (admin: and off without one)
        app.include_router(router)
    web.mount_static(app)
    metrics.declare_backends(registry.backends)
    _install_error_handlers(app)
    app.openapi = lambda: without_validation_422(FastAPI.openapi(app))  # a bad body is our 400, not a 422
    return app


class UnknownFields:
    """Tells the request bodies' models (`protocol/strict.py`) whether to drop unknown fields."""

    def __init__(self, app: ASGIApp, ignore: bool):
        self.app, self.ignore = app, ignore

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = UNKNOWN_FIELDS_IGNORED.set(self.ignore)
        try:
            await self.app(scope, receive, send)
        finally:
            UNKNOWN_FIELDS_IGNORED.reset(token)


class PathAliases:
    """Serves each path of PATH_ALIASES as the route it stands for."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = PATH_ALIASES.get(scope.get("path", ""))
        await self.app({**scope, "path": target} if target else scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HychatError)
    async def hychat_error(request: Request, error: HychatError) -> JSONResponse:
        headers = None
        if isinstance(error, AuthenticationError):
            headers = {"WWW-Authenticate": "Bearer"}
        elif getattr(error, "retry_after_s", None):  # a full queue, a model being swapped
            headers = {"Retry-After": str(error.retry_after_s)}
        return JSONResponse(_error_body(request)(error), status_code=error.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return await hychat_error(request, invalid_body(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:  # unknown route, method
        if isinstance(error.__cause__, UnicodeDecodeError):  # FastAPI's "error parsing the body"
            return await hychat_error(request, InvalidParameterError(f"the body is not valid UTF-8: {error.__cause__}"))
        body = error_object(str(error.detail), error.status_code)
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:  # the server logs it
        return JSONResponse(_error_body(request)(error), status_code=HychatError.status_code)


def _error_body(request: Request) -> ErrorBody:
    """The error shape of the dialect whose body a shared route read (`body_dialect_route`), else of
    the dialect whose route took the request (`dialect_route`); OpenAI's by default, and for
    requests no route took."""
    chosen = getattr(request.state, "error_body", None)
    return chosen or getattr(request.scope.get("route"), "error_body", error_body)
