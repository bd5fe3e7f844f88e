"""Probes, open without the API key: `/health` (liveness: the process answers) and `/ready`
(readiness: some backend has a model loaded and can take requests)."""

from __future__ import annotations

from fastapi import APIRouter

from app.errors import BackendUnavailableError
from app.protocol.errors import error_responses
from app.protocol.simple import HealthResponse, ReadyResponse
from app.routes.deps import RegistryDep

router = APIRouter()


@router.get("/health", response_model=HealthResponse)
def health() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get("/ready", response_model=ReadyResponse, responses=error_responses(503))
async def ready(registry: RegistryDep) -> ReadyResponse:
    loaded = sorted({backend.name for backend in registry.served()})  # a library model counts too
    if not loaded:
        raise BackendUnavailableError("no backend has a model loaded")
    return ReadyResponse(status="ready", backends=loaded)
