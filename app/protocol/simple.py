"""Wire types of the simple chat API (`POST /api/chat`) and their conversion to internal types."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from app.chat.output import Answer, ChatDelta
from app.errors import MaxTokensTooLargeError
from app.protocol.speculative import SpeculativeFields, speculation
from app.protocol.strict import Strict
from app.types import MAX_STOP_SEQUENCES, ChatOptions, GenerationRequest, SamplingParams, Usage

NO_DEFAULTS: Mapping[str, Any] = MappingProxyType({})  # a converter's sampling defaults when the server sets none
MAX_MESSAGES = 512
MAX_TEXT_CHARS = 200_000
MAX_TOP_K = 2**31 - 1  # llama.cpp takes an int32
MAX_GRAMMAR_CHARS = 100_000
# Variables for the chat template (enable_thinking...), as llama-server and vLLM take them.
TemplateKwargs = Annotated[dict[str, Any], Field(max_length=64)]

# The ranges of `SamplingParams`, stated in the schema too: clients see them, and a value out of range
# is a 400 that names its field.
Stop = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_SEQUENCES)]
)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class ChatRequest(Strict, SpeculativeFields):  # speculative.*: llama-server's
    """Give `messages` (rendered with the model's chat template) or a raw `prompt`. The ranges are
    `SamplingParams`' own, stated here so that the schema shows them; the backend checks them again
    for the Python API."""

    # Exactly one of the two, and not null (a null is as good as leaving it out).
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
            ]
        },
    )

    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    prompt: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    stream: bool = False
    backend: Literal["llamacpp", "pytorch"] | None = Field(None, description="Default: the server's setting.")
    max_new_tokens: int = Field(256, ge=1, validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    temperature: float = Field(0.7, ge=0, allow_inf_nan=False)
    top_p: float = Field(0.95, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(40, ge=0, le=MAX_TOP_K, description="0 disables it.")
    min_p: float = Field(0.05, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float = Field(1.0, gt=0, allow_inf_nan=False)
    stop: Stop | None = None
    seed: int | None = Field(None, ge=0, lt=2**32)
    think: bool | None = Field(None, description="Let the model reason first; default: the server's, else the model's.")
    reasoning_format: Literal["auto", "none"] | None = Field(
        None, description="auto: the reasoning apart, in `reasoning`; none: the raw text. Default: the server's."
    )
    chat_template_kwargs: TemplateKwargs | None = None
    grammar: str | None = Field(
        None, min_length=1, max_length=MAX_GRAMMAR_CHARS, description="GBNF the answer must match (llama.cpp)."
    )


class UsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int  # of the completion's tokens
    ttft_ms: float
    tokens_per_s: float
    total_ms: float


class ChatResponse(BaseModel):
    response: str
    reasoning: str | None = None  # what the model wrote in its <think> block
    truncated_messages: int | None = None  # the oldest messages left out so that the prompt fits
    finish_reason: str
    backend: str
    model: str | None
    usage: UsageBody


class BackendInfo(BaseModel):
    """One backend's state; a loaded one adds its model's details (path, architecture, n_ctx, ...)."""

    model_config = ConfigDict(extra="allow")

    backend: str
    available: bool
    loaded: bool


class InfoResponse(BaseModel):
    backends: dict[str, BackendInfo]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    backends: list[str]  # those with a model loaded


class TextEvent(BaseModel):
    """A piece of a streamed answer (`data:` of a plain event)."""

    text: str


class ReasoningEvent(BaseModel):
    """A piece of the streamed reasoning, before the answer (`data:` of a plain event)."""

    reasoning: str


class DoneEvent(BaseModel):
    """The last Server-Sent Event of a stream (`event: done`)."""

    finish_reason: str
    backend: str
    model: str | None
    usage: UsageBody


def to_generation_request(
    body: ChatRequest,
    max_tokens_limit: int,
    *,
    think: bool | None = None,
    reasoning_format: str = "auto",
    truncate: bool = False,
    defaults: Mapping[str, Any] = NO_DEFAULTS,
) -> GenerationRequest:
    """`think`, `reasoning_format`, `truncate` and the sampling `defaults`: the server's defaults for
    what the request leaves unset (the body's own defaults apply where the server sets none)."""
    max_new_tokens = body.max_new_tokens
    if "max_new_tokens" not in body.model_fields_set:
        max_new_tokens = defaults.get("max_new_tokens", min(max_new_tokens, max_tokens_limit))  # bows to the limit
    elif max_new_tokens > max_tokens_limit:
        raise MaxTokensTooLargeError(max_new_tokens, max_tokens_limit, "max_new_tokens")
    sampled = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")
    given = {name: getattr(body, name) for name in sampled if name in body.model_fields_set or name not in defaults}
    given["speculative"] = speculation(body, defaults)
    # (a value the body's own default gives counts as set only where the server sets no default)
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        stop=stop_sequences(body.stop),
        grammar=body.grammar,
        **over_defaults(given, defaults),
    )
    chat = ChatOptions(
        think=body.think if body.think is not None else think,
        reasoning_format=body.reasoning_format or reasoning_format,
        template_kwargs=body.chat_template_kwargs or {},
        truncate=truncate,
    )
    messages = [m.model_dump() for m in body.messages] if body.messages is not None else None
    return GenerationRequest(params, prompt=body.prompt, messages=messages, chat=chat)


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    """`stop` as one string or a list (the wire's two shapes), as the internal tuple."""
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


def usage_body(usage: Usage, reasoning_tokens: int = 0) -> UsageBody:
    return UsageBody(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        reasoning_tokens=reasoning_tokens,
        ttft_ms=round(usage.ttft_ms, 2),
        tokens_per_s=round(usage.decode_tokens_per_s, 2),
        total_ms=round(usage.total_ms, 2),
    )


def chat_response(answer: Answer, backend: str, model: str | None, truncated: int) -> ChatResponse:
    return ChatResponse(
        response=answer.content,
        reasoning=answer.reasoning or None,
        truncated_messages=truncated or None,
        finish_reason=answer.finish_reason,
        backend=backend,
        model=model,
        usage=usage_body(answer.usage, answer.reasoning_tokens),
    )


def stream_events(delta: ChatDelta, backend: str, model: str | None) -> list[TextEvent | ReasoningEvent | DoneEvent]:
    """A delta as the stream's events: the reasoning, then the answer's text, then (last) `done`."""
    events: list[TextEvent | ReasoningEvent | DoneEvent] = []
    if delta.reasoning:
        events.append(ReasoningEvent(reasoning=delta.reasoning))
    if delta.content:
        events.append(TextEvent(text=delta.content))
    if delta.finish_reason and delta.usage:
        usage = usage_body(delta.usage, delta.reasoning_tokens)
        events.append(DoneEvent(finish_reason=delta.finish_reason, backend=backend, model=model, usage=usage))
    return events


def over_defaults(given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A request's sampling fields that are set, over the server's defaults (`hychat serve --temp`...;
    their `max_new_tokens` is each dialect's to apply), over SamplingParams' own."""
    server = {name: value for name, value in defaults.items() if name != "max_new_tokens"}
    return server | {name: value for name, value in given.items() if value is not None}
