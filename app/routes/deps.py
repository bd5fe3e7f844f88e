"""Dependencies shared by the routes: settings, the app's backends (its registry), its stored responses
and the API key check."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.errors import AuthenticationError
from app.protocol.errors import error_responses
from app.services.registry import Registry
from app.services.response_store import ResponseStore
from config.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def get_response_store(request: Request) -> ResponseStore:
    return request.app.state.response_store


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
ResponseStoreDep = Annotated[ResponseStore, Depends(get_response_store)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    if not settings.api_key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
    if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
        raise AuthenticationError("missing or wrong API key (send 'Authorization: Bearer <key>')")


def behind_api_key(error_model: type[BaseModel] | None = None) -> dict[str, Any]:
    """A router behind the API key, its 401 documented with the dialect's error body (OpenAI's by
    default): `APIRouter(**behind_api_key())`."""
    return {"dependencies": [Depends(require_api_key)], "responses": error_responses(401, model=error_model)}


BEHIND_API_KEY = behind_api_key()

# A dialect's error body for any error (a HychatError, or anything else: then without details).
ErrorBody = Callable[[Exception], dict[str, Any]]


def dialect_route(error_body: ErrorBody) -> type[APIRoute]:
    """A route class whose errors (a bad body, a wrong key, whatever the route raises) `app.main`
    answers in `error_body`'s shape: `APIRouter(route_class=dialect_route(anthropic.error_body))`."""
    return type("DialectRoute", (APIRoute,), {"error_body": staticmethod(error_body)})


def body_dialect_route(error_body_of: Callable[[Any], ErrorBody]) -> type[APIRoute]:
    """A route class for a path that dialects share (`POST /api/chat`): before anything else runs
    (the API key, the body's validation), the JSON body (None when it is not JSON) picks the shape
    of every error of the request, `error_body_of(body)`; `app.main` reads it from `request.state`."""

    class BodyDialectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    body = await request.json()  # parsed once: FastAPI reads the same one
                except ValueError:  # not JSON, not UTF-8, empty: FastAPI's validation names the problem
                    body = None
                request.state.error_body = error_body_of(body)
                return await handler(request)

            return route

    return BodyDialectRoute
