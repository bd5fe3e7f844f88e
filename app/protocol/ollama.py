"""Requests of Ollama's native API (`POST /api/chat` with Ollama's body, `POST /api/generate`,
`POST /api/show`), their conversion to internal types, and the errors in Ollama's shape (the answers:
`ollama_answers.py`). Field names, defaults and error wording are those of Ollama's api/types.go and
server/routes.go.

Unset options take the service's defaults (those of `SamplingParams`), as on every route. Options
Ollama has that hychat cannot honour are accepted and ignored where that is harmless (Ollama itself
ignores options it does not know); what would change the answer and cannot be done (images,
`template`, `context`, a larger `num_ctx`) is a 400 that says so. Fields that are not Ollama's are marked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.chat.grammar import json_grammar, json_schema_grammar
from app.errors import HychatError, InvalidParameterError, ModelNotFoundError
from app.protocol.openai import FunctionName, ToolDefinition, max_new_tokens_within
from app.protocol.simple import MAX_GRAMMAR_CHARS, MAX_MESSAGES, MAX_TEXT_CHARS, MAX_TOP_K, NO_DEFAULTS, over_defaults
from app.protocol.speculative import SpeculativeFields, speculation
from app.protocol.strict import Strict
from app.services.backend import Backend
from app.services.registry import Registry
from app.types import (
    MAX_EMBEDDING_INPUTS,
    MAX_LOGPROBS,
    MAX_STOP_SEQUENCES,
    ChatOptions,
    GenerationRequest,
    Infill,
    SamplingParams,
)
from config.settings import GO_DURATION, duration_s

log = logging.getLogger(__name__)


# What the schema says of a field whose only served value is empty. Validation lets any value through,
# so that the conversion refuses it by name (as /v1 does image parts).
NO_TEXT: dict[str, Any] = {"maxLength": 0}
NO_ITEMS: dict[str, Any] = {"maxItems": 0}


class OllamaOptions(BaseModel):
    """Ollama's `options`. The sampling ones are honoured; the others (model loading, mirostat,
    typical_p...) are accepted and ignored, and so is an option Ollama does not know either (it logs
    them and goes on; so does hychat)."""

    model_config = ConfigDict(extra="allow")

    num_predict: int | None = Field(None, description="Tokens to generate; -1, -2 or 0: up to the server's limit.")
    num_ctx: int | None = Field(
        None, ge=1, description="At most the context the model is loaded with (a smaller one is ignored)."
    )
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-(2**63), lt=2**32, description="Negative: a random seed (Ollama's -1).")
    stop: list[Annotated[str, Field(min_length=1)]] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    repeat_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    # Accepted and ignored: how Ollama loads a model (hychat loads it once, from its settings), and
    # samplers the engine does not have (Ollama's newest releases dropped mirostat and tfs_z too).
    num_keep: int | None = None
    typical_p: float | None = None
    repeat_last_n: int | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    penalize_newline: bool | None = None
    tfs_z: float | None = None
    numa: bool | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None
    num_thread: int | None = None
    draft_num_predict: int | None = None


class OllamaFunctionCall(Strict):
    index: int | None = Field(None, ge=0)  # the call's position, as Ollama writes it; not needed back
    name: FunctionName
    arguments: dict[str, Any] = Field(default_factory=dict)  # an object, not JSON text as on /v1


class OllamaToolCall(Strict):
    id: str | None = Field(None, max_length=256)
    function: OllamaFunctionCall


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value  # Ollama lower-cases the role


class OllamaMessage(Strict):
    role: Annotated[Literal["system", "user", "assistant", "tool"], BeforeValidator(_lower)]
    content: str = Field("", max_length=MAX_TEXT_CHARS)
    thinking: str | None = Field(None, max_length=MAX_TEXT_CHARS)  # an earlier answer's reasoning
    images: list[str] | None = Field(None, max_length=64, json_schema_extra=NO_ITEMS)  # refused: text only
    tool_calls: list[OllamaToolCall] | None = Field(None, max_length=128)
    tool_name: str | None = Field(None, max_length=64)  # which tool a "tool" message answers
    tool_call_id: str | None = Field(None, max_length=256)


Format = Literal["", "json"] | dict[str, Any]  # "" and null: free text; a dict: a JSON schema
Think = bool | Literal["low", "medium", "high", "max"]  # a level turns thinking on
KeepAlive = Annotated[str, Field(pattern=GO_DURATION, max_length=64)] | float


class _OllamaGeneration(Strict, SpeculativeFields):
    """What chat and generate share (Ollama's ChatRequest and GenerateRequest), and llama-server's
    `speculative.*` (SpeculativeFields)."""

    model: str = Field("", max_length=256)  # empty: the default model (/api/chat tells dialects apart by it)
    format: Format | None = None
    options: OllamaOptions | None = None
    stream: bool = True  # Ollama's default: newline-delimited JSON
    think: Think | None = Field(None, description="Default: the server's, else the model's.")
    keep_alive: KeepAlive | None = Field(
        None,
        description="How long the model stays loaded after this request: seconds or a duration (5m); "
        "negative: until unloaded; 0: unloaded at once. Default: the server's (HYCHAT_KEEP_ALIVE).",
    )
    truncate: bool | None = Field(None, description="Drop the oldest turns to fit; default: the server's.")
    shift: bool | None = Field(None, description="Accepted; an answer that fills the context ends with 'length'.")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # Not Ollama's: a GBNF grammar the answer must match (llama-server's field).
    grammar: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS)


class OllamaChatRequest(_OllamaGeneration):
    messages: list[OllamaMessage] = Field(default_factory=list, max_length=MAX_MESSAGES)  # none: load the model
    tools: list[ToolDefinition] | None = Field(None, max_length=128)


class OllamaGenerateRequest(_OllamaGeneration):
    prompt: str = Field("", max_length=MAX_TEXT_CHARS)  # empty: load the model
    system: str = Field("", max_length=MAX_TEXT_CHARS)
    raw: bool = False  # true: the prompt as it is, without the chat template
    suffix: str = Field("", max_length=MAX_TEXT_CHARS)  # fill-in-the-middle: the text after the prompt
    template: str = Field("", max_length=MAX_TEXT_CHARS, json_schema_extra=NO_TEXT)  # the model's own renders
    context: list[int] | None = Field(None, max_length=1_000_000, json_schema_extra=NO_ITEMS)  # Ollama deprecated it
    images: list[str] | None = Field(None, max_length=64, json_schema_extra=NO_ITEMS)


class OllamaShowRequest(Strict):
    model: str = Field("", max_length=256)
    name: str = Field("", max_length=256)  # Ollama's deprecated name for `model`
    verbose: bool = False  # arrays of more than 5 values in full, as far as the file header keeps them


class OllamaEmbedRequest(Strict):
    model: str = Field("", max_length=256)
    input: (
        Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
        | Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]],
                    Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    )  # fmt: skip
    truncate: bool = Field(True, description="Cut an input longer than the context; false: an error.")
    dimensions: int | None = Field(None, ge=1, description="Only the model's own: vectors are never shortened.")
    options: OllamaOptions | None = None  # accepted; nothing in them changes an embedding
    keep_alive: KeepAlive | None = Field(
        None,
        description="How long the model stays loaded after this request: seconds or a duration (5m); "
        "negative: until unloaded; 0: unloaded at once. Default: the server's (HYCHAT_KEEP_ALIVE).",
    )


class OllamaEmbeddingsRequest(Strict):
    """The older `POST /api/embeddings`: one `prompt`, one vector, not normalised (as Ollama's)."""

    model: str = Field("", max_length=256)
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    options: OllamaOptions | None = None
    keep_alive: KeepAlive | None = Field(
        None,
        description="How long the model stays loaded after this request: seconds or a duration (5m); "
        "negative: until unloaded; 0: unloaded at once. Default: the server's (HYCHAT_KEEP_ALIVE).",
    )


def embed_inputs(body: OllamaEmbedRequest) -> list[str]:
    return [body.input] if isinstance(body.input, str) else list(body.input)


def check_dimensions(dimensions: int | None, n_embd: int) -> None:
    if dimensions is not None and dimensions != n_embd:
        raise InvalidParameterError(
            f"dimensions: this model's embeddings have {n_embd} dimensions, and they are never shortened",
            "dimensions",
        )


class OllamaError(Strict):
    """`{"error": "..."}`, Ollama's error body for every status, and the last line of a stream that failed."""

    error: str


def error_body(error: Exception) -> dict[str, Any]:
    """Ollama's error shape (an unexpected exception shows no details)."""
    return {"error": str(error) if isinstance(error, HychatError) else "internal error"}


def is_ollama_body(body: Any) -> bool:
    """`POST /api/chat` in Ollama's dialect: its body always names the model, which hychat's own
    body (`ChatRequest`) forbids."""
    return isinstance(body, dict) and "model" in body


async def backend_for(registry: Registry, name: str, keep_alive: str | float | None = None) -> Backend:
    """The backend that answers for an Ollama model name (a backend's name, "default", a model's name,
    each with or without Ollama's default tag ":latest"), loaded if it was not; `keep_alive` (Ollama's)
    replaces how long the model stays after this request."""
    try:
        return await registry.resolve(model_name(name), None if keep_alive is None else duration_s(keep_alive))
    except ModelNotFoundError:
        raise ModelNotFoundError(f"model '{name}' not found") from None


def model_name(name: str) -> str:
    return name.removesuffix(":latest")


# -- requests to internal types ----------------------------------------------------------------


def to_chat_generation_request(
    body: OllamaChatRequest,
    max_tokens_limit: int,
    *,
    think: bool | None,
    reasoning_format: str,
    truncate: bool,
    defaults: Mapping[str, Any] = NO_DEFAULTS,
) -> GenerationRequest:
    """`think`, `reasoning_format`, `truncate` and the sampling `defaults`: the server's defaults for
    what the request leaves unset."""
    tools = tuple(tool.model_dump(exclude_none=True) for tool in body.tools or ())
    chat = _chat_options(body, think, reasoning_format, truncate, tools)
    return GenerationRequest(
        _sampling_params(body, max_tokens_limit, defaults), messages=to_chat_messages(body.messages), chat=chat
    )


def to_generate_generation_request(
    body: OllamaGenerateRequest,
    max_tokens_limit: int,
    *,
    think: bool | None,
    reasoning_format: str,
    truncate: bool,
    defaults: Mapping[str, Any] = NO_DEFAULTS,
) -> GenerationRequest:
    """The prompt as a user turn (after `system`) through the model's chat template, as Ollama renders
    it; with `raw`, the prompt as it is; with a `suffix`, the prompt and the suffix in the model's
    fill-in-the-middle tokens (raw or not: Ollama would drop the suffix of a raw prompt)."""
    refused = {
        "template": "template is not supported: prompts are rendered with the model's own chat template",
        "context": "context is not supported (Ollama deprecated it): send the conversation to /api/chat",
        "images": "images are not supported: the served models read text only",
    }
    for field, message in refused.items():
        if getattr(body, field):
            raise InvalidParameterError(message, field)
    if body.raw and body.system:
        raise InvalidParameterError("raw mode does not support template, system, or context", "raw")  # Ollama's words
    params = _sampling_params(body, max_tokens_limit, defaults)
    if body.suffix:
        if body.system:
            raise InvalidParameterError(
                "system does not go with suffix (a fill-in-the-middle prompt has none)", "system"
            )
        return GenerationRequest(params, infill=Infill(prefix=body.prompt, suffix=body.suffix))
    if body.raw:
        return GenerationRequest(params, prompt=body.prompt)
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": body.prompt})
    return GenerationRequest(params, messages=messages, chat=_chat_options(body, think, reasoning_format, truncate))


def to_chat_messages(messages: Sequence[OllamaMessage]) -> list[dict[str, Any]]:
    """Ollama's messages in the internal (OpenAI's) shape: a call's arguments as JSON text, a tool
    result's `tool_name` as `name`, an answer's `thinking` as `reasoning_content`."""
    converted = []
    for i, message in enumerate(messages):
        if message.images:
            raise InvalidParameterError(
                f"messages[{i}].images: images are not supported (the served models read text only)",
                f"messages[{i}].images",
            )
        entry: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            entry["tool_calls"] = [_openai_call(call, i, j) for j, call in enumerate(message.tool_calls)]
        if message.tool_name:
            entry["name"] = message.tool_name
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        if message.thinking and message.role == "assistant":
            entry["reasoning_content"] = message.thinking
        converted.append(entry)
    return converted


def check_num_ctx(body: _OllamaGeneration, n_ctx: int | None) -> None:
    """`options.num_ctx` cannot ask for more than the context the model is loaded with (hychat does
    not reload a model for one request, as Ollama does); a smaller or equal one is ignored."""
    asked = body.options.num_ctx if body.options else None
    if asked is not None and n_ctx is not None and asked > n_ctx:
        raise InvalidParameterError(
            f"options.num_ctx is {asked} but the model is loaded with a context of {n_ctx} tokens per request "
            "(set at start-up: HYCHAT_LLAMACPP_N_CTX or HYCHAT_TORCH_N_CTX)",
            "options.num_ctx",
        )


def format_grammar(format_: Format | None) -> str | None:
    if format_ is None or format_ == "":  # free text ({} is a schema: any JSON)
        return None
    if format_ == "json":
        return json_grammar()
    return json_schema_grammar(format_, "format")  # type: ignore[arg-type]


def _chat_options(
    body: _OllamaGeneration,
    think: bool | None,
    reasoning_format: str,
    truncate: bool,
    tools: tuple[dict[str, Any], ...] = (),
) -> ChatOptions:
    thinks = think if body.think is None else body.think is not False  # "low".."max": on
    return ChatOptions(
        tools=tools,
        think=thinks,
        reasoning_format="none" if reasoning_format == "none" else "auto",
        truncate=truncate if body.truncate is None else body.truncate,
    )


def _sampling_params(body: _OllamaGeneration, max_tokens_limit: int, defaults: Mapping[str, Any]) -> SamplingParams:
    options = body.options or OllamaOptions()
    if options.model_extra:
        log.warning("ignoring options Ollama or hychat do not know: %s", ", ".join(sorted(options.model_extra)))
    predict = options.num_predict if options.num_predict is not None and options.num_predict > 0 else None
    default = defaults.get("max_new_tokens")  # -1, -2, 0: no bound but the server's
    max_new_tokens = max_new_tokens_within(predict, "options.num_predict", max_tokens_limit, default)
    given = {
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k,
        "min_p": options.min_p,
        "repetition_penalty": options.repeat_penalty,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "seed": options.seed if options.seed is not None and options.seed >= 0 else None,
        "speculative": speculation(body, defaults),
    }
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        stop=tuple(options.stop or ()),
        grammar=format_grammar(body.format),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        **over_defaults(given, defaults),
    )
    if body.grammar is not None:
        if params.grammar is not None:
            raise InvalidParameterError("give either grammar or format", "grammar")
        params = replace(params, grammar=body.grammar)
    return params


def _openai_call(call: OllamaToolCall, i: int, j: int) -> dict[str, Any]:
    arguments = json.dumps(call.function.arguments, ensure_ascii=False)
    call_id = call.id or f"call_{i}_{j}"  # Ollama's older clients send none; templates may want one
    return {"id": call_id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}
