"""Answers of the OpenAI-compatible API (`/v1`): completions, chunks, usage, and their making from the
chat path's `Answer` and `ChatDelta`s (reasoning, answer and tool calls already apart)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, model_serializer

from app.chat.output import Answer, ChatDelta
from app.chat.tool_calls import ToolCall
from app.protocol.openai import FunctionCallBody, ToolCallBody
from app.types import TokenLogprob, TopLogprob, Usage

# -- wire types ---------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails | None = None  # chats

    @model_serializer(mode="wrap")
    def _without_unset_details(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self))


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
    content: str | None
    reasoning_content: str | None = None  # not OpenAI's: DeepSeek's, llama-server's and vLLM's field
    tool_calls: list[ToolCallBody] | None = None

    @model_serializer(mode="wrap")
    def _without_unused(self, handler: Any) -> dict[str, Any]:  # OpenAI leaves out tool_calls when there are none
        return _without_none(handler(self), "reasoning_content", "tool_calls")


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
    truncated_messages: int | None = None  # not OpenAI's: the oldest messages left out to fit the context

    @model_serializer(mode="wrap")
    def _said_when_truncated(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self), "truncated_messages")


class FunctionDeltaBody(BaseModel):
    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _changed_fields_only(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self))


class ToolCallDeltaBody(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDeltaBody

    @model_serializer(mode="wrap")
    def _changed_fields_only(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self))


class ChatDeltaBody(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None  # not OpenAI's, as in the message
    tool_calls: list[ToolCallDeltaBody] | None = None

    @model_serializer(mode="wrap")
    def _changed_fields_only(self, handler: Any) -> dict[str, Any]:  # as OpenAI sends deltas
        return _without_none(handler(self))


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDeltaBody
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None
    truncated_messages: int | None = None  # not OpenAI's, on the first chunk: as in the response

    @model_serializer(mode="wrap")
    def _said_when_truncated(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self), "truncated_messages")


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
    truncated: int | None = None  # messages left out to fit the context (said once, not in each chunk)

    def head(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model}


# -- internal types to responses ---------------------------------------------------------------


def response_meta(prefix: str, model: str, truncated: int = 0) -> ResponseMeta:
    return ResponseMeta(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, truncated or None)


def usage_body(usage: Usage, reasoning_tokens: int | None = None) -> CompletionUsage:
    """`reasoning_tokens`: for chats, how many of the completion's tokens were reasoning."""
    details = CompletionTokensDetails(reasoning_tokens=reasoning_tokens) if reasoning_tokens is not None else None
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
        completion_tokens_details=details,
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


def chat_completion_response(answer: Answer, meta: ResponseMeta, with_logprobs: bool) -> ChatCompletionResponse:
    message = AssistantMessage(
        content=answer.content if answer.content or not answer.tool_calls else None,
        reasoning_content=answer.reasoning or None,
        tool_calls=[_tool_call_body(call) for call in answer.tool_calls] or None,
    )
    choice = ChatChoice(
        message=message,
        logprobs=chat_logprobs(answer.logprobs) if with_logprobs else None,
        finish_reason=answer.finish_reason,
    )
    usage = usage_body(answer.usage, answer.reasoning_tokens)
    return ChatCompletionResponse(**meta.head(), choices=[choice], usage=usage, truncated_messages=meta.truncated)


def completion_response(answer: Answer, meta: ResponseMeta, with_logprobs: bool) -> CompletionResponse:
    logprobs = completion_logprobs(answer.logprobs) if with_logprobs else None
    choice = CompletionChoice(text=answer.content, logprobs=logprobs, finish_reason=answer.finish_reason)
    return CompletionResponse(**meta.head(), choices=[choice], usage=usage_body(answer.usage))


class ChatChunks:
    """The chat path's deltas as `chat.completion.chunk`s: the assistant role first, then a chunk per
    piece of reasoning or answer (with its token's logprobs), each tool call as OpenAI streams it
    (id and name, then the arguments), one with the finish reason, then the usage when asked."""

    def __init__(self, meta: ResponseMeta, include_usage: bool):
        self.meta, self.include_usage = meta, include_usage
        self._calls = 0  # tool calls streamed so far: the index of the next one

    def first(self) -> list[ChatCompletionChunk]:
        chunk = self._chunk(ChatChunkChoice(delta=ChatDeltaBody(role="assistant", content="")))
        chunk.truncated_messages = self.meta.truncated
        return [chunk]

    def chunks(self, delta: ChatDelta) -> list[ChatCompletionChunk]:
        logprobs = chat_logprobs([delta.logprob]) if delta.logprob else None
        chunks = []
        if delta.reasoning:
            chunks.append(self._chunk(ChatChunkChoice(delta=ChatDeltaBody(reasoning_content=delta.reasoning))))
        if delta.content or logprobs:  # a token whose text is held back still has its logprob
            chunks.append(self._chunk(ChatChunkChoice(delta=ChatDeltaBody(content=delta.content), logprobs=logprobs)))
        for call in delta.tool_calls:
            head = ToolCallDeltaBody(index=self._calls, id=call.id, type="function",
                                     function=FunctionDeltaBody(name=call.name, arguments=""))  # fmt: skip
            arguments = ToolCallDeltaBody(index=self._calls, function=FunctionDeltaBody(arguments=call.arguments))
            chunks += [self._chunk(ChatChunkChoice(delta=ChatDeltaBody(tool_calls=[d]))) for d in (head, arguments)]
            self._calls += 1
        if delta.finish_reason:
            chunks.append(self._chunk(ChatChunkChoice(delta=ChatDeltaBody(), finish_reason=delta.finish_reason)))
            if self.include_usage and delta.usage:
                usage = usage_body(delta.usage, delta.reasoning_tokens)
                chunks.append(ChatCompletionChunk(**self.meta.head(), choices=[], usage=usage))
        return chunks

    def _chunk(self, choice: ChatChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.meta.head(), choices=[choice])


class CompletionChunks:
    """The deltas of a raw prompt as streamed `text_completion`s, the usage last when asked."""

    def __init__(self, meta: ResponseMeta, include_usage: bool):
        self.meta, self.include_usage = meta, include_usage
        self._text_offset = 0

    def first(self) -> list[CompletionResponse]:
        return []

    def chunks(self, delta: ChatDelta) -> list[CompletionResponse]:
        chunks = []
        if delta.content or delta.logprob or delta.finish_reason:
            logprobs = None
            if delta.logprob:
                logprobs = completion_logprobs([delta.logprob], self._text_offset)
                self._text_offset += len(delta.logprob.token)
            choice = CompletionChoice(text=delta.content, logprobs=logprobs, finish_reason=delta.finish_reason)
            chunks.append(CompletionResponse(**self.meta.head(), choices=[choice]))
        if delta.finish_reason and self.include_usage and delta.usage:
            chunks.append(CompletionResponse(**self.meta.head(), choices=[], usage=usage_body(delta.usage)))
        return chunks


def _tool_call_body(call: ToolCall) -> ToolCallBody:
    return ToolCallBody(id=call.id, function=FunctionCallBody(name=call.name, arguments=call.arguments))


def _without_none(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`body` without None values (of `keys` only, when given)."""
    return {k: v for k, v in body.items() if v is not None or (keys and k not in keys)}


def _top_logprob(lp: TopLogprob) -> TopLogprobBody:
    return TopLogprobBody(token=lp.token, logprob=lp.logprob, bytes=list(lp.bytes))
