"""The presets file of the model library: one TOML table of settings per model (its format and what
each key does: `app.modelfiles.library`'s docstring). Load settings for the backend, defaults for the
requests naming the model, and the KV cache's element type, which llama.cpp takes as a ggml type."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.errors import InvalidParameterError
from config.settings import CacheType, duration_s

# Each KV cache type as ggml knows it: (its number in ggml.h's `enum ggml_type`, which llama.cpp's
# `type_k`/`type_v` take; values per block; bytes per block). Written here rather than asked of the
# ggml library: presets are read where llama.cpp is not installed (tests check these against ggml's).
KV_CACHE_TYPES: dict[str, tuple[int, int, int]] = {
    "f32": (0, 1, 4),
    "f16": (1, 1, 2),
    "bf16": (30, 1, 2),
    "q8_0": (8, 32, 34),
    "q4_0": (2, 32, 18),
    "q4_1": (3, 32, 20),
    "iq4_nl": (20, 32, 18),
    "q5_0": (6, 32, 22),
    "q5_1": (7, 32, 24),
}
# The preset keys that are defaults of the requests naming the model, and the SamplingParams keyword
# each gives (the settings' HYCHAT_DEFAULT_* are the same for every model).
SAMPLING_KEYS = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
}


class Preset(BaseModel):
    """One [name] table of the presets file. Strict: TOML gives typed values, so `n_ctx = "4096"` is a
    mistake to report, not a string to convert. Once parsed, `path` and `chat_template_file` are absolute."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    path: str | None = None  # a file or folder; None: the library model named like the section
    aliases: list[str] = []  # other names requests may use
    base: str | None = None  # an adapter's base model: its library name or alias
    lora_scale: float = 1.0
    n_ctx: int | None = Field(None, ge=0)  # 0: the model's training context
    parallel: int | None = Field(None, ge=1, le=64)
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int | None = Field(None, ge=-1)
    n_batch: int | None = Field(None, ge=1)
    kv_unified: bool | None = None
    chat_template: str | None = None  # a llama.cpp built-in template name or Jinja text
    chat_template_file: str | None = None  # read as UTF-8 by load_options()
    keep_alive: str | float | None = None  # seconds or a Go duration; negative: forever
    cache_type_k: CacheType | None = None  # the KV cache's element types (llama.cpp only); None: f16
    cache_type_v: CacheType | None = None  # quantized, it needs flash attention (on unless turned off)
    # What a request naming the model leaves unset takes, in place of the server's defaults (the same
    # ranges as the HYCHAT_DEFAULT_* settings); `think`: its thinking default, as HYCHAT_THINK.
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, lt=2**31)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, lt=2**32)
    think: bool | None = None

    @field_validator("keep_alive")
    @classmethod
    def _a_duration(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            duration_s(value)  # a typo is refused when the file is read, not at the first load
        return value

    @model_validator(mode="after")
    def _one_template(self) -> Preset:
        if self.chat_template is not None and self.chat_template_file is not None:
            raise ValueError("give either chat_template or chat_template_file")
        return self


def request_defaults(preset: Preset) -> dict[str, Any]:
    """The sampling defaults `preset` sets, as `SamplingParams` keywords (max_tokens: max_new_tokens)."""
    given = {keyword: getattr(preset, key) for key, keyword in SAMPLING_KEYS.items()}
    return {keyword: value for keyword, value in given.items() if value is not None}


def cache_types(preset: Preset) -> dict[str, int]:
    """The KV cache types `preset` sets, as llama-cpp-python's `Llama` keywords (`type_k`, `type_v`)."""
    return cache_type_keywords(preset.cache_type_k, preset.cache_type_v)


def cache_type_keywords(type_k: str | None, type_v: str | None) -> dict[str, int]:
    """KV cache type names as llama-cpp-python's `Llama` keywords (`type_k`, `type_v`); None: unset."""
    given = {"type_k": type_k, "type_v": type_v}
    return {keyword: KV_CACHE_TYPES[name][0] for keyword, name in given.items() if name is not None}


def cache_type_name(ggml_type: int) -> str:
    """A ggml type number's name, as llama-server's -ctk takes it."""
    return next((name for name, (number, _, _) in KV_CACHE_TYPES.items() if number == ggml_type), str(ggml_type))


def parse_presets(path: Path, text: str) -> dict[str, Preset]:
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidParameterError(f"{path}: not valid TOML: {error}") from None
    presets = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise InvalidParameterError(f"{path}: {name} = {table!r} is outside any [model] table")
        try:
            preset = Preset.model_validate(table)
        except ValidationError as error:
            raise InvalidParameterError(f"{path}: [{name}] {_explain(error, table)}") from None
        presets[name] = _anchored(preset, path.parent)
    return presets


def _explain(error: ValidationError, table: dict[str, Any]) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(map(str, item["loc"])) or "the table"
        if item["type"] != "extra_forbidden":
            problems.append(f"{key}: {item['msg'].removeprefix('Value error, ')}")
            continue
        # `[name.gguf]` unquoted is a table "name" holding a table "gguf": say so, it is the usual slip.
        dotted = ' (a model name with dots needs quotes: ["name.gguf"])' if isinstance(table.get(key), dict) else ""
        problems.append(f"unknown key {key!r}{dotted}; known keys: {', '.join(Preset.model_fields)}")
    return "; ".join(problems)


def _anchored(preset: Preset, folder: Path) -> Preset:
    """Relative paths of the presets file are relative to its folder, wherever the server runs."""
    paths = {key: getattr(preset, key) for key in ("path", "chat_template_file")}
    return preset.model_copy(update={k: str(folder / Path(v).expanduser()) for k, v in paths.items() if v})
