"""Wire types of the OpenAI-compatible API (`/v1`) and their conversion to and from internal types.

Only what the service honours is accepted: an unknown field is a 400, never silently ignored. Unset
sampling fields take the service's defaults (those of `SamplingParams`), as with `/api/chat`.
Fields that are not OpenAI's are marked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from app.errors import InvalidParameterError, MaxTokensTooLargeError
from app.protocol.api import MAX_MESSAGES, MAX_TEXT_CHARS, MAX_TOP_K, Stop
from app.services.backend import (
    MAX_LOGPROBS,
    Completion,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from app.services.grammar import json_grammar, json_schema_grammar

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat answers run to the limit

# -- requests ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentPart(BaseModel):
    # Other kinds of part (images, audio) pass validation so that to_chat_messages can refuse them by name.
    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=64)
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]  # developer: OpenAI's new name for system
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | Annotated[list[ContentPart], Field(max_length=64)]
    name: str | None = Field(None, max_length=64)  # accepted; chat templates do not show it


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchema(_Strict):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the grammar enforces the schema either way


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class _GenerationFields(_Strict):
    """What chat and text completions share. Ranges are OpenAI's where it documents them."""

    model: str = Field(max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    stop: Stop | None = None
    seed: int | None = Field(None, ge=0, lt=2**32)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    response_format: ResponseFormat | None = None  # not OpenAI's on /v1/completions
    user: str | None = Field(None, max_length=256)  # accepted, unused
    # Not OpenAI's: llama.cpp's samplers, as /api/chat takes them.
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)


class ChatCompletionRequest(_GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class CompletionRequest(_GenerationFields):
    # One prompt per request: a string, or a list of exactly one.
    prompt: (
        Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
        | Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]], Field(min_length=1, max_length=1)
        ]
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


# -- responses ---------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TopLogprobBody(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobBody(TopLogprobBody):
    top_logprobs: list[TopLogprobBody]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobBody]
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _changed_fields_only(self, handler: Any) -> dict[str, Any]:  # as OpenAI sends deltas
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    """A text completion, and also each chunk of a streamed one (as OpenAI sends them)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hychat"
    backend: str  # not OpenAI's: which backend serves it


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ResponseMeta(NamedTuple):
    """What every response and chunk of one request repeats."""

    id: str
    created: int
    model: str


# -- requests to internal types ----------------------------------------------------------------


def to_chat_generation_request(body: ChatCompletionRequest, max_tokens_limit: int) -> GenerationRequest:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidParameterError("top_logprobs needs logprobs: true", "top_logprobs")
    if body.max_completion_tokens is not None:
        max_new_tokens = _max_new_tokens(body.max_completion_tokens, "max_completion_tokens", max_tokens_limit)
    else:
        max_new_tokens = _max_new_tokens(body.max_tokens, "max_tokens", max_tokens_limit)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return GenerationRequest(_sampling_params(body, max_new_tokens, logprobs), messages=to_chat_messages(body.messages))


def to_completion_generation_request(body: CompletionRequest, max_tokens_limit: int) -> GenerationRequest:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]  # a list holds exactly one
    default = min(COMPLETIONS_DEFAULT_MAX_TOKENS, max_tokens_limit)
    max_new_tokens = _max_new_tokens(body.max_tokens, "max_tokens", max_tokens_limit, default)
    return GenerationRequest(_sampling_params(body, max_new_tokens, body.logprobs), prompt=prompt)


def to_chat_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Roles and texts; a list of content parts becomes their texts, one per line."""
    converted = []
    for i, message in enumerate(messages):
        content = message.content
        if not isinstance(content, str):
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise InvalidParameterError(
                        f"messages[{i}].content[{j}] is a {part.type!r} part; only text parts are supported",
                        f"messages[{i}].content",
                    )
            content = "\n".join(part.text or "" for part in content)
        converted.append({"role": "system" if message.role == "developer" else message.role, "content": content})
    return converted


def response_format_grammar(response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None) -> str | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return json_grammar()
    return json_schema_grammar(response_format.json_schema.schema_, "response_format")


def _max_new_tokens(value: int | None, param: str, limit: int, default: int | None = None) -> int:
    """The request's bound (unset: `default`, else the server's limit; the backend also stops at the
    end of the context window)."""
    if value is None:
        return default or limit
    if value > limit:
        raise MaxTokensTooLargeError(value, limit, param)
    return value


def _sampling_params(body: _GenerationFields, max_new_tokens: int, logprobs: int | None) -> SamplingParams:
    if body.n != 1:
        raise InvalidParameterError("only n=1 is supported", "n")
    if body.stream_options is not None and not body.stream:
        raise InvalidParameterError("stream_options is only allowed with stream: true", "stream_options")
    given = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "repetition_penalty": body.repetition_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
    }
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        stop=body.stop or (),
        seed=body.seed,
        grammar=response_format_grammar(body.response_format),
        logprobs=logprobs,
        **{name: value for name, value in given.items() if value is not None},
    )


# -- internal types to responses ---------------------------------------------------------------


def response_meta(prefix: str, model: str) -> ResponseMeta:
    return ResponseMeta(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)


def usage_body(usage: Usage) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def chat_logprobs(logprobs: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprobBody(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.bytes),
                top_logprobs=[_top_logprob(top) for top in lp.top],
            )
            for lp in logprobs
        ]
    )


def completion_logprobs(logprobs: Sequence[TokenLogprob], text_offset: int = 0) -> CompletionLogprobs:
    """`text_offset` counts characters of the token texts before the first of these tokens."""
    offsets = []
    for lp in logprobs:
        offsets.append(text_offset)
        text_offset += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in logprobs],
        token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=[{t.token: t.logprob for t in lp.top} for lp in logprobs],
        text_offset=offsets,
    )


def chat_completion_response(
    events: Sequence[TokenEvent], meta: ResponseMeta, with_logprobs: bool
) -> ChatCompletionResponse:
    completion = Completion.from_events(events)
    logprobs = chat_logprobs(_logprobs(events)) if with_logprobs else None
    choice = ChatChoice(
        message=AssistantMessage(content=completion.text), logprobs=logprobs, finish_reason=completion.finish_reason
    )
    return ChatCompletionResponse(**meta._asdict(), choices=[choice], usage=usage_body(completion.usage))


def completion_response(events: Sequence[TokenEvent], meta: ResponseMeta, with_logprobs: bool) -> CompletionResponse:
    completion = Completion.from_events(events)
    logprobs = completion_logprobs(_logprobs(events)) if with_logprobs else None
    choice = CompletionChoice(text=completion.text, logprobs=logprobs, finish_reason=completion.finish_reason)
    return CompletionResponse(**meta._asdict(), choices=[choice], usage=usage_body(completion.usage))


class ChatStream:
    """A generation's events as `chat.completion.chunk`s: the assistant role first, a chunk per piece
    of text (with its token's logprobs), one with the finish reason, then the usage when asked."""

    def __init__(self, meta: ResponseMeta, include_usage: bool):
        self.meta, self.include_usage = meta, include_usage

    def first(self) -> list[ChatCompletionChunk]:
        return [self._chunk(ChatChunkChoice(delta=ChatDelta(role="assistant", content="")))]

    def chunks(self, event: TokenEvent) -> list[ChatCompletionChunk]:
        chunks = []
        if event.text or event.logprob:  # a token whose text is held back still has its logprob
            logprobs = chat_logprobs([event.logprob]) if event.logprob else None
            chunks.append(self._chunk(ChatChunkChoice(delta=ChatDelta(content=event.text), logprobs=logprobs)))
        if event.finish_reason:
            chunks.append(self._chunk(ChatChunkChoice(delta=ChatDelta(), finish_reason=event.finish_reason)))
            if self.include_usage and event.usage:
                chunks.append(ChatCompletionChunk(**self.meta._asdict(), choices=[], usage=usage_body(event.usage)))
        return chunks

    def _chunk(self, choice: ChatChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.meta._asdict(), choices=[choice])


class CompletionStream:
    """A generation's events as streamed `text_completion`s, the usage last when asked."""

    def __init__(self, meta: ResponseMeta, include_usage: bool):
        self.meta, self.include_usage = meta, include_usage
        self._text_offset = 0

    def first(self) -> list[CompletionResponse]:
        return []

    def chunks(self, event: TokenEvent) -> list[CompletionResponse]:
        chunks = []
        if event.text or event.logprob or event.finish_reason:
            logprobs = None
            if event.logprob:
                logprobs = completion_logprobs([event.logprob], self._text_offset)
                self._text_offset += len(event.logprob.token)
            choice = CompletionChoice(text=event.text, logprobs=logprobs, finish_reason=event.finish_reason)
            chunks.append(CompletionResponse(**self.meta._asdict(), choices=[choice]))
        if event.finish_reason and self.include_usage and event.usage:
            chunks.append(CompletionResponse(**self.meta._asdict(), choices=[], usage=usage_body(event.usage)))
        return chunks


def _top_logprob(lp: TopLogprob) -> TopLogprobBody:
    return TopLogprobBody(token=lp.token, logprob=lp.logprob, bytes=list(lp.bytes))


def _logprobs(events: Sequence[TokenEvent]) -> list[TokenLogprob]:
    return [e.logprob for e in events if e.logprob is not None]
