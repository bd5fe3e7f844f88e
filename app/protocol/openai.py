"""Requests of the OpenAI-compatible API (`/v1`) and their conversion to internal types (the answers:
`openai_answers.py`).

Only what the service honours is accepted: an unknown field is a 400, never silently ignored. Unset
sampling fields take the service's defaults (those of `SamplingParams`), as with `/api/chat`.
Fields that are not OpenAI's are marked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.chat.grammar import json_grammar, json_schema_grammar
from app.errors import InvalidParameterError, MaxTokensTooLargeError
from app.protocol.simple import (
    MAX_GRAMMAR_CHARS,
    MAX_MESSAGES,
    MAX_TEXT_CHARS,
    MAX_TOP_K,
    NO_DEFAULTS,
    Stop,
    TemplateKwargs,
    over_defaults,
    stop_sequences,
)
from app.protocol.speculative import SpeculativeFields, speculation
from app.protocol.strict import Strict
from app.types import MAX_LOGPROBS, ChatOptions, GenerationRequest, SamplingParams

ANY_OBJECT = {"type": "object"}  # an empty schema, as llama-server reads it
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat answers run to the limit

# -- requests ----------------------------------------------------------------------------------


def _text_parts_only(schema: dict[str, Any]) -> None:
    schema["properties"]["type"]["enum"] = ["text"]
    schema["properties"]["text"] = {"type": "string", "maxLength": MAX_TEXT_CHARS}
    schema["required"] = ["type", "text"]


class ContentPart(BaseModel):
    # Other kinds of part (images, audio) pass validation so that to_chat_messages can refuse them by
    # name; the schema says what is served: text parts.
    model_config = ConfigDict(extra="allow", json_schema_extra=_text_parts_only)

    type: str = Field(max_length=64)
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)


FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]


class FunctionCallBody(Strict):
    name: FunctionName
    arguments: str = Field(max_length=MAX_TEXT_CHARS)  # JSON text


class ToolCallBody(Strict):
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallBody


Content = Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | Annotated[list[ContentPart], Field(max_length=64)]


class _Message(Strict):
    name: str | None = Field(None, max_length=64)  # a participant's name; a tool result's function name


class SystemMessage(_Message):
    role: Literal["system", "developer"]  # developer: OpenAI's new name for system
    content: Content


class UserMessage(_Message):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Message):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
                {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}},
            ]
        }
    )

    role: Literal["assistant"]
    content: Content | None = None  # None only with tool_calls
    tool_calls: list[ToolCallBody] | None = Field(None, max_length=128)  # an assistant's earlier calls
    # not OpenAI's (llama-server's, vLLM's): an earlier answer's reasoning, for templates that show it
    reasoning_content: str | None = Field(None, max_length=MAX_TEXT_CHARS)


class ToolMessage(_Message):
    role: Literal["tool"]
    content: Content
    tool_call_id: str | None = Field(None, max_length=256)  # which call this result answers


_ROLE_TAGS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def _role_tag(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return _ROLE_TAGS.get(role) if isinstance(role, str) else None


# One model per role, as OpenAI's schema has them, so the schema says which fields each role takes.
# The tags are capitalised because errors.py leaves union members (capitalised) out of a field's path.
ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("System")]
    | Annotated[UserMessage, Tag("User")]
    | Annotated[AssistantMessage, Tag("Assistant")]
    | Annotated[ToolMessage, Tag("Tool")],
    Discriminator(
        _role_tag,
        custom_error_type="invalid_role",
        custom_error_message="role must be one of system, developer, user, assistant, tool",
    ),
]


class FunctionDefinition(Strict):
    name: FunctionName
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: bool | None = None  # a grammar enforces the schema where tool_choice forces a call


class ToolDefinition(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: FunctionName


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(Strict):
    include_usage: bool = False


class JsonSchema(Strict):
    name: str | None = Field(None, max_length=64)  # OpenAI requires it; llama-server and vLLM do not
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the grammar enforces the schema either way


class TextFormat(Strict):
    type: Literal["text"]


class JsonObjectFormat(Strict):
    type: Literal["json_object"]
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # not OpenAI's (llama-server's): the object's schema


class JsonSchemaFormat(Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


MAX_CHOICES = 8  # n: more than the engine's slots wait their turn
# A token id (as text, OpenAI's keys) or a text whose tokens all get the bias (llama-server's); false
# bans the token (llama-server's). OpenAI's range.
BiasKey = Annotated[str, Field(min_length=1, max_length=256)]
BiasValue = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)] | Literal[False]
LogitBias = (
    Annotated[dict[BiasKey, BiasValue], Field(max_length=1024)]
    | Annotated[list[tuple[int | BiasKey, BiasValue]], Field(max_length=1024)]
)


class LoraScale(BaseModel):
    """One adapter of llama-server's per-request `lora`: its id (GET /lora-adapters) and scale."""

    id: int = Field(ge=0)
    scale: float = Field(allow_inf_nan=False)


Lora = Annotated[list[LoraScale], Field(max_length=64)]


def lora_scales(lora: list[LoraScale] | None) -> tuple[tuple[int, float], ...] | None:
    """(id, scale) pairs; none or an empty list: the model's own adapters (llama-server's reading)."""
    return tuple((item.id, item.scale) for item in lora) if lora else None


# llama-server's and vLLM's request fields that change nothing here or that hychat does not have
# (other samplers, slots, progress events, cache controls): accepted, dropped with a log line.
IGNORED_EXTENSIONS = frozenset({
    # llama-server (tools/server/server-schema.cpp)
    "return_tokens", "sse_ping_interval",
    "n_indent", "n_keep", "n_discard", "n_cache_reuse", "t_max_predict_ms", "id_slot", "top_n_sigma",
    "xtc_probability", "xtc_threshold", "typical_p", "dynatemp_range", "dynatemp_exponent", "repeat_last_n",
    "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "mirostat",
    "mirostat_tau", "mirostat_eta", "adaptive_target", "adaptive_decay", "n_probs", "min_keep", "backend_sampling",
    "post_sampling_probs", "samplers", "grammar_lazy", "grammar_triggers", "preserved_tokens", "parse_tool_calls",
    "reasoning_budget_tokens", "thinking_budget_tokens", "reasoning_budget_message", "reasoning_control",
    "response_fields",
    # vLLM (entrypoints/openai/protocol.py)
    "best_of", "use_beam_search", "length_penalty", "stop_token_ids", "include_stop_str_in_output", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens", "prompt_logprobs",
    "add_special_tokens", "documents", "mm_processor_kwargs", "guided_decoding_backend", "guided_whitespace_pattern",
    "priority", "request_id", "return_tokens_as_token_ids", "cache_salt", "kv_transfer_params", "vllm_xargs",
    # OpenAI's that do not apply here
    "service_tier", "store", "metadata", "prediction", "modalities", "audio", "web_search_options",
    "safety_identifier", "prompt_cache_key", "verbosity",
})  # fmt: skip


class _GenerationFields(Strict, SpeculativeFields):
    """What chat and text completions share. Ranges are OpenAI's where it documents them."""

    model_config = ConfigDict(  # stream_options only with stream: true
        json_schema_extra={
            "if": {"required": ["stream_options"], "properties": {"stream_options": {"not": {"type": "null"}}}},
            "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
        }
    )

    ignored: ClassVar[frozenset[str]] = IGNORED_EXTENSIONS

    model: str | None = Field(None, max_length=256)  # none: the default model (llama-server's behaviour)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)  # choices sampled independently, decoded together
    max_tokens: int | None = Field(None, ge=1)
    logit_bias: LogitBias | None = None
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    stop: Stop | None = None
    seed: int | None = Field(None, ge=0, lt=2**32)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    response_format: ResponseFormat | None = None  # not OpenAI's on /v1/completions
    user: str | None = Field(None, max_length=256)  # accepted, unused
    # Not OpenAI's: llama.cpp's samplers, as /api/chat takes them, and llama-server's and vLLM's
    # fields that hychat honours.
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)
    repeat_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)  # llama-server's name for it
    n_predict: int | None = Field(None, ge=-1)  # llama-server's max_tokens; -1: up to the server's limit
    ignore_eos: bool | None = None
    json_schema: dict[str, Any] | None = None  # llama-server's: a schema the answer matches
    # llama-server's, streamed: the timings so far on each chunk; chunks while the prompt is read
    timings_per_token: bool = False
    return_progress: bool = False
    cache_prompt: bool = True  # false: the prompt is read whole again, no slot's cache reused
    lora: Lora | None = None  # llama-server's: the model's adapters and scales for this request
    verbose: bool = False  # llama-server's `__verbose`: its own answer's fields beside OpenAI's


class ChatCompletionRequest(_GenerationFields):
    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES)  # none: the generation prompt alone, as llama-server
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[ToolDefinition] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Not OpenAI's (llama-server's and vLLM's): variables for the chat template, the thinking switch,
    # whether to split the reasoning from the answer, a GBNF grammar the answer must match.
    chat_template_kwargs: TemplateKwargs | None = None
    think: bool | None = None
    reasoning_format: Literal["auto", "deepseek", "none"] | None = None  # deepseek: llama-server's name for auto
    grammar: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS)
    # llama-server's and vLLM's (transformers' names): whether the prompt ends with the start of the
    # assistant's turn, and whether the answer continues the last (assistant) message instead.
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None  # none: no thinking


class CompletionRequest(_GenerationFields):
    # One prompt per request: a string, a list of exactly one, or its token ids (no BOS added to them).
    prompt: (
        Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
        | Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]], Field(min_length=1, max_length=1)
        ]
        | Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


# -- requests to internal types ----------------------------------------------------------------


def to_chat_generation_request(
    body: ChatCompletionRequest,
    max_tokens_limit: int,
    *,
    think: bool | None = None,
    reasoning_format: str = "auto",
    truncate: bool = False,
    defaults: Mapping[str, Any] = NO_DEFAULTS,
) -> GenerationRequest:
    """`think`, `reasoning_format`, `truncate` and the sampling `defaults` (`Registry.chat_defaults`):
    the server's defaults for what the request leaves unset, a library model's presets over them."""
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidParameterError("top_logprobs needs logprobs: true", "top_logprobs")
    default = defaults.get("max_new_tokens")
    if body.max_completion_tokens is not None:
        max_new_tokens = max_new_tokens_within(body.max_completion_tokens, "max_completion_tokens", max_tokens_limit)
    else:
        max_new_tokens = _max_tokens(body, max_tokens_limit, default)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = _sampling_params(body, max_new_tokens, logprobs, defaults)
    if body.grammar is not None:
        if params.grammar is not None:
            raise InvalidParameterError("give either grammar or response_format", "grammar")
        params = replace(params, grammar=body.grammar)
    if body.reasoning_effort is not None and body.think is None:
        think = body.reasoning_effort != "none"
    chat = to_chat_options(body, think, reasoning_format, truncate)
    messages = to_chat_messages(body.messages)
    if messages and chat.continues(messages):  # a continued answer's parts join with a blank line, as llama-server's
        messages[-1]["content"] = _text(len(messages) - 1, body.messages[-1].content, "\n\n")
    return GenerationRequest(params, messages=messages, chat=chat)


def to_chat_options(
    body: ChatCompletionRequest, think: bool | None, reasoning_format: str, truncate: bool
) -> ChatOptions:
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        choice = choice.function.name
    tools = tuple(tool.model_dump(exclude_none=True) for tool in body.tools or ())
    if choice is not None and choice != "none" and not tools:
        raise InvalidParameterError("tool_choice needs tools", "tool_choice")
    return ChatOptions(
        tools=tools,
        tool_choice=choice or "auto",
        parallel_tool_calls=body.parallel_tool_calls is not False,
        think=body.think if body.think is not None else think,
        reasoning_format="none" if (body.reasoning_format or reasoning_format) == "none" else "auto",
        template_kwargs=body.chat_template_kwargs or {},
        truncate=truncate,
        add_generation_prompt=body.add_generation_prompt,
        continue_final_message=body.continue_final_message,
    )


def to_completion_generation_request(
    body: CompletionRequest, max_tokens_limit: int, defaults: Mapping[str, Any] = NO_DEFAULTS
) -> GenerationRequest:
    prompt: str | tuple[int | str, ...] = body.prompt if isinstance(body.prompt, str) else tuple(body.prompt)
    if isinstance(prompt, tuple) and isinstance(prompt[0], str):
        prompt = prompt[0]  # a list of texts holds exactly one; else the list is token ids
    default = defaults.get("max_new_tokens", min(COMPLETIONS_DEFAULT_MAX_TOKENS, max_tokens_limit))
    max_new_tokens = _max_tokens(body, max_tokens_limit, default)
    return GenerationRequest(_sampling_params(body, max_new_tokens, body.logprobs, defaults), prompt=prompt)


def to_chat_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Roles and texts (a list of content parts becomes their texts, one per line), and the fields of
    tool calling."""
    converted = []
    for i, message in enumerate(messages):
        entry: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role}
        entry["content"] = _text(i, message.content)
        if isinstance(message, AssistantMessage) and message.reasoning_content:
            entry["reasoning_content"] = message.reasoning_content
        if isinstance(message, AssistantMessage) and message.tool_calls:
            entry["tool_calls"] = [call.model_dump() for call in message.tool_calls]
        elif message.content is None:
            raise InvalidParameterError(f"messages[{i}] has neither content nor tool_calls", f"messages[{i}].content")
        if isinstance(message, ToolMessage):
            entry.update({k: v for k, v in (("tool_call_id", message.tool_call_id), ("name", message.name)) if v})
        converted.append(entry)
    return converted


def _text(i: int, content: str | list[ContentPart] | None, separator: str = "\n") -> str | None:
    if content is None or isinstance(content, str):
        return content
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise InvalidParameterError(
                f"messages[{i}].content[{j}] is a {part.type!r} part; only text parts are supported "
                "(image input is not supported: the served models read text)",
                f"messages[{i}].content",
            )
    return separator.join(part.text or "" for part in content)


def response_format_grammar(response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None) -> str | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        schema = response_format.schema_
        return json_grammar() if schema is None else json_schema_grammar(schema or ANY_OBJECT, "response_format")
    return json_schema_grammar(response_format.json_schema.schema_ or ANY_OBJECT, "response_format")


def _max_tokens(body: _GenerationFields, limit: int, default: int | None = None) -> int:
    """max_tokens, or llama-server's n_predict in its place (-1: the limit)."""
    if body.n_predict is None:
        return max_new_tokens_within(body.max_tokens, "max_tokens", limit, default)
    if body.n_predict == 0:
        raise InvalidParameterError("n_predict must be -1 (up to the limit) or at least 1", "n_predict")
    return max_new_tokens_within(None if body.n_predict < 0 else body.n_predict, "n_predict", limit, limit)


def max_new_tokens_within(value: int | None, param: str, limit: int, default: int | None = None) -> int:
    """Every dialect's bound on an answer's tokens: the request's (unset: `default`, else the server's
    limit; the backend also stops at the end of the context window); above the limit, a 400."""
    if value is None:
        return default or limit
    if value > limit:
        raise MaxTokensTooLargeError(value, limit, param)
    return value


def _sampling_params(
    body: _GenerationFields, max_new_tokens: int, logprobs: int | None, defaults: Mapping[str, Any]
) -> SamplingParams:
    if body.stream_options is not None and not body.stream:
        raise InvalidParameterError("stream_options is only allowed with stream: true", "stream_options")
    given = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "repetition_penalty": body.repetition_penalty if body.repetition_penalty is not None else body.repeat_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "ignore_eos": body.ignore_eos,
        "seed": body.seed,
        "speculative": speculation(body, defaults),
    }
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        stop=stop_sequences(body.stop),
        grammar=_output_grammar(body),
        logprobs=logprobs,
        logit_bias=logit_biases(body.logit_bias),
        return_progress=body.return_progress and body.stream,
        cache_prompt=body.cache_prompt,
        lora=lora_scales(body.lora),
        **over_defaults(given, defaults),
    )


def _output_grammar(body: _GenerationFields) -> str | None:
    grammar = response_format_grammar(body.response_format)
    if body.json_schema is None:
        return grammar
    if grammar is not None:
        raise InvalidParameterError("give either json_schema or response_format", "json_schema")
    return json_schema_grammar(body.json_schema or ANY_OBJECT, "json_schema")


def logit_biases(logit_bias: dict[str, float | bool] | list[tuple[int | str, float | bool]] | None) -> tuple:
    """OpenAI's {"token id": bias} and llama-server's [[token or text, bias]] as (token or text, bias)
    pairs; a bias of false bans the token (-inf)."""
    pairs = logit_bias.items() if isinstance(logit_bias, dict) else logit_bias or ()
    return tuple((_token_or_text(key), -math.inf if bias is False else float(bias)) for key, bias in pairs)


def _token_or_text(key: int | str) -> int | str:
    # ASCII digits only: "³" and "٣" are digits to str.isdigit, text to a tokenizer (and "³" to int()).
    return int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else key
