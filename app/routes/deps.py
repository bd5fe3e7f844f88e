"""Dependencies shared by the routes: settings, the API key check, the answering backend."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from app.errors import AuthenticationError
from app.services.backend import Backend
from app.services.registry import chat_backend
from config.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    if not settings.api_key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
    if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
        raise AuthenticationError("missing or wrong API key (send 'Authorization: Bearer <key>')")


def get_chat_backend(settings: SettingsDep) -> Backend:
    return chat_backend(settings)


ChatBackendDep = Annotated[Backend, Depends(get_chat_backend)]
