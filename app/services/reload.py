"""Hot reload: a running server loads another model file into one backend (`POST /admin/reload`,
`hychat reload`).

The requested path must lie inside a configured model folder once symlinks and `..` are resolved
(403 otherwise, before the file is even looked at, so the answer says nothing about files elsewhere);
a relative path is taken inside the first folder. The file is then checked and loaded by the
backend's own `load_model`, which swaps only on success: a damaged file is a 400 naming the problem
and the model loaded before keeps serving. Generations running on the old model finish on it.

One reload at a time: a second one that arrives while one is loading is refused at once (409) rather
than queued, so a client never waits minutes behind another load without knowing it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from app.errors import InvalidParameterError, ModelPathForbiddenError, ReloadInProgressError
from app.services.registry import Registry
from config.settings import Settings

log = logging.getLogger(__name__)


def reload_model(registry: Registry, model_path: str, backend_name: str | None = None) -> dict[str, Any]:
    """Loads `model_path` into the named backend (default: the default backend) with the configured
    load settings; returns the backend's new info plus `previous_model`. Blocks: call it off the event
    loop."""
    backend = registry.named(backend_name)
    path = allowed_model_path(registry.settings, model_path)
    if not registry.reloading.acquire(blocking=False):
        raise ReloadInProgressError("another model reload is in progress; try again when it has finished")
    try:
        previous = backend.model_name
        log.info("reloading %s: %s -> %s", backend.name, previous, path)
        # Not the configured LoRA adapter: it was made for the configured base model.
        registry.load(backend, str(path), with_lora=False)
        log.info("reloaded %s: now serving %s", backend.name, backend.model_name)
        return {**backend.info(), "previous_model": previous}
    finally:
        registry.reloading.release()


def allowed_model_path(settings: Settings, model_path: str) -> Path:
    """`model_path` with symlinks and `..` resolved, if that lies inside a model folder; relative
    paths are taken inside the first folder. ModelPathForbiddenError (403) otherwise."""
    if not model_path or "\0" in model_path:
        raise InvalidParameterError("model_path must be a non-empty path without NUL bytes", "model_path")
    folders = settings.model_folders()
    if not folders:
        raise ModelPathForbiddenError("no model folders are configured (set HYCHAT_MODEL_DIRS)")
    path = Path(model_path)
    resolved = Path(os.path.realpath(path if path.is_absolute() else folders[0] / path))
    if not any(resolved.is_relative_to(folder) for folder in folders):
        raise ModelPathForbiddenError(
            f"{model_path}: outside the model folders ({', '.join(map(str, folders))}; HYCHAT_MODEL_DIRS)"
        )
    return resolved
