"""Admin routes: `POST /models/load` and `POST /models/unload` (llama-server's router mode) load and
unload a library model by name; `POST /admin/reload` loads another model file into a configured
backend, which then serves it as its default.

They need the API key, and are refused outright (403) on a server without one: an open server must
not be re-pointed by whoever can reach it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.errors import AdminDisabledError
from app.protocol.errors import error_responses
from app.routes.deps import RegistryDep, SettingsDep, require_api_key
from app.services.reload import reload_model
from config.settings import duration_s


def require_admin(request: Request, settings: SettingsDep) -> None:
    if not settings.api_key:
        raise AdminDisabledError("admin routes need HYCHAT_API_KEY: this server has no API key, so they are off")
    require_api_key(request, settings)


router = APIRouter(dependencies=[Depends(require_admin)])


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, max_length=256, description="A model's name or alias (GET /v1/models).")
    keep_alive: Annotated[float, BeforeValidator(duration_s)] | None = Field(
        None, description="load: how long it stays when idle (seconds or a duration; negative: until unloaded)."
    )


@router.post("/models/load", responses=error_responses(400, 401, 403, 404, 413, 503))
async def load(body: ModelRequest, registry: RegistryDep) -> dict[str, Any]:
    """Loads the model now (unloading idle ones to make room); its info once loaded."""
    backend = await registry.resolve(body.model, body.keep_alive)
    return {"success": True, **backend.info()}


@router.post("/models/unload", responses=error_responses(400, 401, 403, 404, 413))
async def unload(body: ModelRequest, registry: RegistryDep) -> dict[str, Any]:
    """Unloads the model: at once when idle (`unloaded`: true), else once its running requests end."""
    return {"success": True, "unloaded": await registry.unload(body.model)}


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_path: str = Field(min_length=1, max_length=4096, description="Inside a model folder (HYCHAT_MODEL_DIRS).")
    backend: Literal["llamacpp", "pytorch"] | None = Field(None, description="Default: the default backend.")


@router.post("/admin/reload", responses=error_responses(400, 401, 403, 409, 413, 503))
async def reload(body: ReloadRequest, registry: RegistryDep) -> dict[str, Any]:
    """Loads `model_path` into the backend; answers its new info (plus `previous_model`). A bad file is
    a 400 and the model loaded before keeps serving; a path outside the model folders a 403; a reload
    while another one runs a 409."""
    return await run_in_threadpool(reload_model, registry, body.model_path, body.backend)
