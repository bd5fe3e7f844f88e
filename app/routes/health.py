"""Probes, open without the API key: `/health` (liveness: the process answers) and `/ready`
(readiness: some backend has a model loaded and can take requests)."""

from __future__ import annotations

from fastapi import APIRouter

from app.errors import BackendUnavailableError
from app.services.registry import BACKENDS

router = APIRouter()


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
def ready() -> dict[str, str | list[str]]:
    loaded = [name for name, backend in BACKENDS.items() if backend.is_loaded]
    if not loaded:
        raise BackendUnavailableError("no backend has a model loaded")
    return {"status": "ready", "backends": loaded}
