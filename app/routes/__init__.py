"""One module per dialect (and the page, the probes, admin and metrics), each with its `router`.
`create_app` serves every module here that has one: a new dialect is served by being added."""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    return [module.router for module in modules if isinstance(getattr(module, "router", None), APIRouter)]
