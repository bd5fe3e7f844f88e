"""Dependencies shared by the routes: settings, the app's backends (its registry) and the API key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from app.errors import AuthenticationError
from app.protocol.errors import error_responses
from app.services.registry import Registry
from config.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    if not settings.api_key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
    if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
        raise AuthenticationError("missing or wrong API key (send 'Authorization: Bearer <key>')")


# A router behind the API key: `APIRouter(**BEHIND_API_KEY)`.
BEHIND_API_KEY = {"dependencies": [Depends(require_api_key)], "responses": error_responses(401)}
