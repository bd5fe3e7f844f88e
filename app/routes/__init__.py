"""One module per dialect (and the page, the probes, admin and metrics), each with its `router`.
`create_app` serves every module here that has one: a new dialect is served by being added. A module
whose routes depend on the settings (gcp: Vertex AI's, where they say) has `router(settings)` instead,
which gives its router or None."""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import APIRouter

from app.errors import InvalidParameterError
from config.settings import Settings


def routers(settings: Settings) -> list[APIRouter]:
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    given = [getattr(module, "router", None) for module in modules]
    fixed = [router for router in given if isinstance(router, APIRouter)]
    chosen = [router(settings) for router in given if callable(router) and not isinstance(router, APIRouter)]
    # A path the settings give must not take one that is served: the other route would be unreachable.
    served = {(route.path, method) for router in fixed for route in router.routes for method in _methods(route)}
    for router in filter(None, chosen):
        for route in router.routes:
            if taken := next((m for m in _methods(route) if (route.path, m) in served), None):
                raise InvalidParameterError(f"{taken} {route.path} is already served: give another path")
    return fixed + [router for router in chosen if router is not None]


def _methods(route: object) -> set[str]:
    return getattr(route, "methods", None) or set()
