"""llama-server's native API (`POST /completion`, `/completions`, `/infill`; `GET /props`, `/slots`):
its request bodies as llama.cpp's tools/server reads them (server-schema.cpp, post_infill), their
conversion to `GenerationRequest`s, and its error body. The answers: `llama_server_answers.py`.

What llama-server accepts is accepted. A field that would change the answer and that hychat cannot
honour is a 400 that names it (samplers hychat does not have: DRY, XTC, typical-p, top-n-sigma,
dynamic temperature, mirostat, adaptive-p; another sampler order; LoRA scales); one that does not
change the answer is dropped with a log line (`IGNORED`: cache and slot controls, `verbose`,
chat-parser fields). As in llama-server, a null field is as good as an absent one,
values out of a sampler's range are clamped to it, and unset sampling fields take the server's
defaults (hychat's, or its `default_*` settings).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.chat.grammar import json_schema_grammar
from app.errors import HychatError, InvalidParameterError, PromptTooLongError
from app.protocol.openai import (
    MAX_CHOICES,
    LogitBias,
    Lora,
    logit_biases,
    lora_scales,
    max_new_tokens_within,
)
from app.protocol.simple import MAX_GRAMMAR_CHARS, MAX_TEXT_CHARS, over_defaults
from app.protocol.speculative import SpeculativeFields, speculation
from app.protocol.strict import Strict
from app.protocol.tokens import MAX_TOKEN_ID, MAX_TOKEN_IDS
from app.types import GenerationRequest, Infill, SamplingParams

log = logging.getLogger(__name__)

N_PREDICT = ("n_predict", "max_completion_tokens", "max_tokens")  # the first one given counts
MAX_ANSWERS = 64  # prompts times n_cmpl in one request (each answer takes a slot or a place in the line)
INT32_MAX = 2**31 - 1
RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a fresh draw (so is -1)
# hychat's sampler chain, in its order (app/engine/sampler.py); llama-server's default chain holds
# these in the same order, with its other samplers between them.
CHAIN = ("penalties", "top_k", "top_p", "min_p", "temperature")
DEFAULT_SAMPLERS = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
SAMPLER_CHARS = {"e": "penalties", "d": "dry", "s": "top_n_sigma", "k": "top_k", "y": "typ_p", "p": "top_p",
                 "m": "min_p", "x": "xtc", "t": "temperature", "i": "infill", "a": "adaptive_p"}  # fmt: skip
_CANONICAL = set(SAMPLER_CHARS.values())
# common_sampler_types_from_names: each name, kebab-case, without underscores, and a few aliases.
SAMPLER_NAMES = {
    **{alias: name for name in _CANONICAL for alias in (name, name.replace("_", "-"), name.replace("_", ""))},
    "nucleus": "top_p",
    "temp": "temperature",
    "typ": "typ_p",
}
# llama-server's fields that change nothing in hychat's answer, or that hychat has no use for:
# accepted, dropped with a log line. t_max_prompt_ms is llama.vim's (llama-server reads it no more).
IGNORED = frozenset({
    "verbose", "stream_options",
    "sse_ping_interval", "n_keep", "n_discard", "n_cache_reuse", "id_slot", "backend_sampling", "chat_format",
    "reasoning_format", "generation_prompt", "parse_tool_calls", "chat_parser", "continue_final_message", "echo",
    "preserved_tokens", "grammar_triggers", "grammar_type", "reasoning_control", "reasoning_budget_tokens",
    "reasoning_budget_start_tag", "reasoning_budget_end_tags", "reasoning_budget_end_tag",
    "reasoning_budget_message", "message_delimiters", "t_max_prompt_ms",
})  # fmt: skip

# -- requests -----------------------------------------------------------------------------------

TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Mixed = Annotated[list[TokenId | Text], Field(max_length=MAX_TOKEN_IDS)]  # token ids and texts


class PromptObject(BaseModel):
    """`{"prompt_string": ...}`; `multimodal_data` is refused (hychat serves text models)."""

    model_config = ConfigDict(extra="ignore")  # llama-server reads these two keys only

    prompt_string: Text | Mixed
    multimodal_data: list[str] | None = None


PromptField = (
    Text | PromptObject | Annotated[list[TokenId | Text | Mixed | PromptObject], Field(max_length=MAX_TOKEN_IDS)]
)


class CompletionRequest(Strict, SpeculativeFields):
    """`POST /completion`'s body: llama-server's fields (tools/server/server-schema.cpp); its
    `speculative.*` ones come from SpeculativeFields."""

    ignored = IGNORED

    prompt: PromptField = Field(
        description="A text, token ids, ids and texts mixed (one prompt: a BOS before a first text only), "
        "{prompt_string}, or a list of such prompts (no token id at its top level): one answer each."
    )
    model: str | None = Field(None, max_length=256, description="A model or backend, as on /v1 (none: the default).")
    stream: bool | None = None
    n_predict: int | None = Field(None, ge=-1, le=INT32_MAX, description="-1: up to the server's limit; 0: one token.")
    max_completion_tokens: int | None = Field(None, ge=-1, le=INT32_MAX)  # n_predict's other names
    max_tokens: int | None = Field(None, ge=-1, le=INT32_MAX)
    n_cmpl: int | None = Field(None, ge=1, le=MAX_CHOICES, description="Answers per prompt (alias: n).")
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    temperature: float | None = Field(None, allow_inf_nan=False)
    top_k: int | None = None
    top_p: float | None = Field(None, allow_inf_nan=False)
    min_p: float | None = Field(None, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-1, le=RANDOM_SEED, description="-1 or 4294967295: a fresh draw.")
    stop: str | Annotated[list[str], Field(max_length=64)] | None = None
    repeat_penalty: float | None = Field(None, allow_inf_nan=False)
    repeat_last_n: int | None = Field(None, ge=0, le=INT32_MAX, description="0 turns the penalties off.")
    presence_penalty: float | None = Field(None, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, allow_inf_nan=False)
    logit_bias: LogitBias | None = None
    ignore_eos: bool | None = None
    grammar: str | None = Field(None, max_length=MAX_GRAMMAR_CHARS)
    json_schema: dict[str, Any] | None = None
    n_probs: int | None = Field(None, description="Log-probabilities of the top N tokens for each (alias: logprobs).")
    logprobs: int | None = None
    post_sampling_probs: bool | None = Field(
        None, description="With n_probs: probabilities (`prob`, `top_probs`) of what the sampler chain drew from."
    )
    min_keep: int | None = Field(None, ge=0, le=INT32_MAX)
    samplers: Annotated[list[Annotated[str, Field(max_length=32)]], Field(max_length=64)] | str | None = None
    n_indent: int | None = Field(None, ge=0, le=INT32_MAX, description="Stop at a new line indented less.")
    t_max_predict_ms: int | None = Field(None, ge=-1, description="After this long, stop at the next new line.")
    response_fields: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=64)] | None = None
    return_tokens: bool | None = None  # the whole answer's token ids in `tokens` (a stream's chunks always have theirs)
    timings_per_token: bool | None = Field(None, description="Streamed: `timings` on every chunk, not only the last.")
    return_progress: bool | None = Field(
        None, description="Streamed: a `prompt_progress` chunk when the prompt starts and after each batch of it."
    )
    cache_prompt: bool = Field(True, description="false: the prompt is read whole again, no slot's cache reused.")
    # llama-server's samplers that hychat does not have: a 400 when set to act.
    dynatemp_range: float | None = Field(None, allow_inf_nan=False)
    dynatemp_exponent: float | None = Field(None, allow_inf_nan=False)
    top_n_sigma: float | None = Field(None, allow_inf_nan=False)
    xtc_probability: float | None = Field(None, allow_inf_nan=False)
    xtc_threshold: float | None = Field(None, allow_inf_nan=False)
    typical_p: float | None = Field(None, allow_inf_nan=False)
    dry_multiplier: float | None = Field(None, allow_inf_nan=False)
    dry_base: float | None = Field(None, allow_inf_nan=False)
    dry_allowed_length: int | None = Field(None, ge=0, le=INT32_MAX)
    dry_penalty_last_n: int | None = Field(None, ge=0, le=INT32_MAX)
    dry_sequence_breakers: Annotated[list[str], Field(max_length=64)] | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = Field(None, allow_inf_nan=False)
    mirostat_eta: float | None = Field(None, allow_inf_nan=False)
    adaptive_target: float | None = Field(None, allow_inf_nan=False)
    adaptive_decay: float | None = Field(None, ge=0, le=0.99)
    lora: Lora | None = None
    grammar_lazy: bool | None = None


class InfillChunk(BaseModel):
    """A file of the project, before the cursor's (llama.vim also sends a `time`: ignored, as there)."""

    model_config = ConfigDict(extra="ignore")

    text: Text
    filename: str | None = Field(None, max_length=1024, description="Default: tmp.")


class InfillRequest(CompletionRequest):
    """`POST /infill`'s body: /completion's fields around the code before and after the cursor."""

    input_prefix: Text
    input_suffix: Text
    input_extra: Annotated[list[InfillChunk], Field(max_length=1024)] | None = None
    prompt: Text = Field("", description="The start of the line being written: it follows the prefix.")


@dataclass(frozen=True)
class Cutoff:
    """When an answer stops early, beside n_predict and the stop strings (llama-server's FIM helpers)."""

    n_indent: int = 0  # a new line indented less than this ends the answer (at its indentation)
    t_max_predict_ms: int = 0  # once this long after the first token, a token with a new line ends it


@dataclass(frozen=True)
class Completion:
    """What a request asks for, in hychat's terms: one GenerationRequest per prompt, `n` answers each."""

    requests: list[GenerationRequest]
    n: int
    cutoff: Cutoff
    response_fields: tuple[str, ...] | None  # None: all of them
    return_tokens: bool
    timings_per_token: bool = False


# -- checks llama-server makes before anything else (post_infill) --------------------------------


def infill_problem(body: Any) -> str | None:
    """llama-server's own words for an /infill body it refuses, or None (the wire type checks the rest)."""
    if not isinstance(body, dict):
        return None
    if "prompt" in body and not isinstance(body["prompt"], str):
        return '"prompt" must be a string'
    for field in ("input_prefix", "input_suffix"):
        if field not in body:
            return f'"{field}" is required'
    extra = body.get("input_extra", [])
    if not isinstance(extra, list):
        return '"input_extra" must be an array of {"filename": string, "text": string}'
    for chunk in extra:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            return 'extra_context chunk must contain a "text" field with a string value'
        if "filename" in chunk and not isinstance(chunk["filename"], str):
            return 'extra_context chunk\'s "filename" field must be a string'
    return None


# -- requests to internal types -----------------------------------------------------------------


def to_completion(body: CompletionRequest, max_tokens_limit: int, defaults: Mapping[str, Any]) -> Completion:
    """`defaults`: the sampling defaults of the model asked (`Registry.sampling_defaults`)."""
    params = to_sampling_params(body, max_tokens_limit, defaults)
    requests = [GenerationRequest(params, prompt=prompt) for prompt in prompts(body.prompt)]
    return _completion(body, requests)


def to_infill(body: InfillRequest, max_tokens_limit: int, defaults: Mapping[str, Any]) -> Completion:
    """The fill-in-the-middle prompt is laid out by the backend, in the model's FIM tokens."""
    extra = tuple((chunk.filename or "tmp", chunk.text) for chunk in body.input_extra or ())
    infill = Infill(prefix=body.input_prefix, suffix=body.input_suffix, extra=extra, prompt=body.prompt)
    return _completion(body, [GenerationRequest(to_sampling_params(body, max_tokens_limit, defaults), infill=infill)])


def _completion(body: CompletionRequest, requests: list[GenerationRequest]) -> Completion:
    n = _first(body.n_cmpl, body.n) or 1
    if len(requests) * n > MAX_ANSWERS:
        raise InvalidParameterError(f"at most {MAX_ANSWERS} answers per request (prompts times n_cmpl)", "prompt")
    cutoff = Cutoff(body.n_indent or 0, max(body.t_max_predict_ms or 0, 0))
    fields = tuple(body.response_fields) if body.response_fields else None  # [] filters nothing, as there
    if body.stream and body.return_progress:  # llama-server sends progress in streams only
        requests = [replace(r, params=replace(r.params, return_progress=True)) for r in requests]
    return Completion(requests, n, cutoff, fields, bool(body.return_tokens), bool(body.timings_per_token))


def prompts(prompt: Any) -> list[str | tuple[int | str, ...]]:
    """llama-server's `tokenize_input_prompts`: a list with a token id at its top level is one mixed
    prompt; any other list holds several prompts."""
    if isinstance(prompt, list) and not any(isinstance(piece, int) for piece in prompt):
        found = [_one_prompt(item) for item in prompt]
        if not found:
            raise InvalidParameterError('"prompt" must not be empty', "prompt")
        return found
    return [_one_prompt(prompt)]


def _one_prompt(prompt: str | list[Any] | PromptObject) -> str | tuple[int | str, ...]:
    if isinstance(prompt, PromptObject):
        if prompt.multimodal_data is not None:
            raise InvalidParameterError(
                "Multimodal data provided, but model does not support multimodal requests.", "prompt"
            )
        prompt = prompt.prompt_string
    if isinstance(prompt, list) and not all(isinstance(piece, int | str) for piece in prompt):
        raise InvalidParameterError(
            '"prompt" elements must be a string, a list of tokens, a JSON object containing a prompt string, '
            "or a list of mixed strings & tokens.",
            "prompt",
        )
    return prompt if isinstance(prompt, str) else tuple(prompt)


def to_sampling_params(body: CompletionRequest, max_tokens_limit: int, defaults: Mapping[str, Any]) -> SamplingParams:
    base = SamplingParams(**over_defaults({}, defaults))
    chain = samplers(body.samplers)
    _refuse_what_cannot_be_done(body, chain)
    n_probs = _first(body.n_probs, body.logprobs) or 0
    params = SamplingParams(
        max_new_tokens=_max_new_tokens(body, max_tokens_limit, defaults.get("max_new_tokens")),
        temperature=max(_first(body.temperature, base.temperature), 0.0),  # below 0: greedy, as 0
        top_k=min(max(_first(body.top_k, base.top_k), 0), INT32_MAX),
        top_p=min(max(_first(body.top_p, base.top_p), 0.0), 1.0),
        min_p=min(max(_first(body.min_p, base.min_p), 0.0), 1.0),
        repetition_penalty=_first(body.repeat_penalty, base.repetition_penalty),
        presence_penalty=_first(body.presence_penalty, base.presence_penalty),
        frequency_penalty=_first(body.frequency_penalty, base.frequency_penalty),
        stop=_stop(body.stop),
        seed=base.seed if body.seed is None else None if body.seed in (-1, RANDOM_SEED) else body.seed,
        grammar=_grammar(body),
        logprobs=n_probs if n_probs > 0 else None,
        post_sampling_probs=bool(body.post_sampling_probs) and n_probs > 0,
        ignore_eos=bool(body.ignore_eos),
        logit_bias=logit_biases(body.logit_bias),
        cache_prompt=body.cache_prompt,
        lora=lora_scales(body.lora),
        speculative=speculation(body, defaults),
    )
    return replace(_in_chain(params, body, chain), infill="infill" in chain)


def default_params(max_tokens_limit: int, defaults: Mapping[str, Any]) -> SamplingParams:
    """What a /completion that sets no sampling field gets (GET /props)."""
    return to_sampling_params(CompletionRequest(prompt=""), max_tokens_limit, defaults)


def _max_new_tokens(body: CompletionRequest, limit: int, default: int | None) -> int:
    """n_predict (or its other names): -1 runs up to the server's default or limit; 0 still samples
    one token, as llama-server does (its limit is checked after each token)."""
    given = [(name, getattr(body, name)) for name in N_PREDICT if getattr(body, name) is not None]
    name, value = given[0] if given else ("n_predict", -1)
    if value < 0:
        return default or limit
    return max_new_tokens_within(max(value, 1), name, limit)


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    words = [stop] if isinstance(stop, str) else stop or []
    return tuple(word for word in words if word)  # llama-server skips empty ones


def _grammar(body: CompletionRequest) -> str | None:
    """json_schema, unless a grammar is given too (then the grammar, as llama-server's code does)."""
    if body.json_schema is not None and not body.grammar:
        return json_schema_grammar(body.json_schema or {"type": "object"}, "json_schema")
    return body.grammar or None


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


# -- samplers -----------------------------------------------------------------------------------


def samplers(given: list[str] | str | None) -> list[str]:
    """The chain a request names (names or llama-server's letters); unknown names are skipped, as
    llama-server does. None: llama-server's default chain."""
    if given is None:
        return list(DEFAULT_SAMPLERS)
    names = list(given) if isinstance(given, str) else given
    table = SAMPLER_CHARS if isinstance(given, str) else SAMPLER_NAMES
    chain = [table[name if isinstance(given, str) else name.lower()] for name in names if _known(table, name, given)]
    if len(chain) < len(names):
        log.info("samplers: skipping the unknown %s", ", ".join(repr(n) for n in names if not _known(table, n, given)))
    return chain


def _known(table: Mapping[str, str], name: str, given: Any) -> bool:
    return (name if isinstance(given, str) else name.lower()) in table


def _refuse_what_cannot_be_done(body: CompletionRequest, chain: list[str]) -> None:
    acting = {
        "mirostat": bool(body.mirostat and body.mirostat > 0),  # llama-server clamps it to [0, 2]
        "dry": "dry" in chain and bool(body.dry_multiplier) and body.dry_penalty_last_n != 0,
        "top_n_sigma": "top_n_sigma" in chain and (body.top_n_sigma or -1) > 0,
        "typical_p": "typ_p" in chain and body.typical_p is not None and body.typical_p < 1,
        "xtc_probability": "xtc" in chain
        and (body.xtc_probability or 0) > 0
        and _first(body.xtc_threshold, 0.1) <= 0.5,
        "dynatemp_range": "temperature" in chain and (body.dynatemp_range or 0) > 0,
        "adaptive_target": "adaptive_p" in chain and _first(body.adaptive_target, -1.0) >= 0,
        "grammar_lazy": bool(body.grammar_lazy),
    }
    if name := next((name for name, yes in acting.items() if yes), None):
        raise InvalidParameterError(f"{name}: {_CANNOT[name]}", name)
    if body.dry_sequence_breakers is not None and not body.dry_sequence_breakers:
        raise InvalidParameterError(
            "dry_sequence_breakers must be a non-empty array of strings", "dry_sequence_breakers"
        )


_CANNOT = {
    "mirostat": "hychat has no mirostat sampler (0 turns it off)",
    "dry": "hychat has no DRY sampler (dry_multiplier 0 turns it off)",
    "top_n_sigma": "hychat has no top-n-sigma sampler (-1 turns it off)",
    "typical_p": "hychat has no locally typical sampler (1 turns it off)",
    "xtc_probability": "hychat has no XTC sampler (0 turns it off)",
    "dynatemp_range": "hychat has no dynamic temperature (0 turns it off)",
    "adaptive_target": "hychat has no adaptive-p sampler (a negative target turns it off)",
    "grammar_lazy": "hychat has no lazy grammars (triggered by a word)",
}


def _in_chain(params: SamplingParams, body: CompletionRequest, chain: list[str]) -> SamplingParams:
    """`params` as the request's chain applies them: a sampler it leaves out does nothing (its
    neutral value), the ones that act must come in hychat's order, and top_p 0 keeps one token."""
    if body.repeat_last_n == 0:  # llama.cpp's penalties look at no token at all
        chain = [name for name in chain if name != "penalties"]
    neutral = {
        "penalties": {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0},
        "top_k": {"top_k": 0},
        "top_p": {"top_p": 1.0},
        "min_p": {"min_p": 0.0},
        "temperature": {"temperature": 1.0},  # no temperature sampler: the distribution as it is
    }
    for name in CHAIN:
        if name not in chain:
            params = replace(params, **neutral[name])
    acting = [name for name in chain if name in CHAIN and _acts(name, params)]
    _check_order(acting, params)
    if (body.min_keep or 0) > 1 and ("top_p" in acting or "min_p" in acting):
        raise InvalidParameterError("min_keep: hychat's top_p and min_p keep at least one token, not more", "min_keep")
    if params.top_p == 0:  # only the most likely token is left: what top_k 1 keeps
        params = replace(params, top_p=1.0, top_k=1)
    return params


def _check_order(acting: list[str], params: SamplingParams) -> None:
    if params.temperature <= 0 and "penalties" not in acting:
        return  # greedy: the most likely token survives every other sampler, in any order
    if acting != sorted(set(acting), key=CHAIN.index):
        raise InvalidParameterError(
            f"samplers: hychat applies {', '.join(CHAIN)} in this order, each once; {', '.join(acting)} cannot be",
            "samplers",
        )


def _acts(name: str, p: SamplingParams) -> bool:
    return {
        "penalties": p.repetition_penalty != 1 or bool(p.presence_penalty) or bool(p.frequency_penalty),
        "top_k": p.top_k > 0,
        "top_p": p.top_p < 1,
        "min_p": p.min_p > 0,
        "temperature": p.temperature != 1,
    }[name]


# -- errors -------------------------------------------------------------------------------------

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "server_error",
    "unavailable_error",
    "not_supported_error",
    "exceed_context_size_error",
]
ERROR_TYPES: dict[int, ErrorType] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "unavailable_error",  # every slot busy and the line full: llama-server's "no slot available"
    501: "not_supported_error",
    503: "unavailable_error",
}


class LlamaServerErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: int  # the HTTP status
    message: str
    type: ErrorType
    n_prompt_tokens: int = Field(0, description="exceed_context_size_error only: the prompt's tokens.")
    n_ctx: int = Field(0, description="exceed_context_size_error only: the context of a request.")


class LlamaServerErrorResponse(BaseModel):
    """`{"error": {"code", "message", "type"}}`: every error of these routes, and a stream's `data: {"error": ...}`."""

    model_config = ConfigDict(extra="forbid")

    error: LlamaServerErrorDetail


def error_body(error: Exception) -> dict[str, Any]:
    """llama-server's error body for any error (format_error_response); an unexpected exception shows
    no details."""
    if isinstance(error, HychatError):
        status, message = error.status_code, str(error)
    else:
        status, message = HychatError.status_code, "internal error"
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    detail: dict[str, Any] = {"code": status, "message": message, "type": kind}
    if isinstance(error, PromptTooLongError):
        detail |= {"type": "exceed_context_size_error", "n_prompt_tokens": error.n_prompt, "n_ctx": error.n_ctx}
    return {"error": detail}
