"""Answers of Anthropic's Messages API: the chat path's `Answer` and `ChatDelta`s as a message or as
Anthropic's stream events, and errors in Anthropic's shape."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from app.chat.output import Answer, ChatDelta
from app.chat.tool_calls import ToolCall
from app.errors import HychatError
from app.types import Usage

# A thinking block's signature: Anthropic's proves Claude wrote the block; this server checks none, and
# drops thinking blocks that come back.
SIGNATURE = ""


# -- answers ------------------------------------------------------------------------------------


class _Sent(BaseModel):
    # The schema says every field is always there (`type` too, which has a default).
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class TextBlock(_Sent):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(_Sent):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = SIGNATURE


class ToolUseBlock(_Sent):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ThinkingBlock | ToolUseBlock, Field(discriminator="type")]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageUsage(_Sent):
    """As Anthropic counts: `input_tokens` are the prompt's tokens not read from the cache."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageResponse(_Sent):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None  # None only in message_start
    stop_sequence: str | None = None  # the request's stop sequence that ended the answer
    usage: MessageUsage


class MessageStartEvent(_Sent):
    type: Literal["message_start"] = "message_start"
    message: MessageResponse


class ContentBlockStartEvent(_Sent):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class TextDelta(_Sent):
    type: Literal["text_delta"] = "text_delta"
    text: str


class ThinkingDelta(_Sent):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class SignatureDelta(_Sent):
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


class InputJsonDelta(_Sent):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


BlockDelta = Annotated[TextDelta | ThinkingDelta | SignatureDelta | InputJsonDelta, Field(discriminator="type")]


class ContentBlockDeltaEvent(_Sent):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: BlockDelta


class ContentBlockStopEvent(_Sent):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(_Sent):
    stop_reason: StopReason
    stop_sequence: str | None = None


class MessageDeltaEvent(_Sent):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: MessageUsage  # the totals: Anthropic's clients take input and cache counts from here too


class MessageStopEvent(_Sent):
    type: Literal["message_stop"] = "message_stop"


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
)
STREAM_EVENTS = (
    MessageStartEvent,
    ContentBlockStartEvent,
    ContentBlockDeltaEvent,
    ContentBlockStopEvent,
    MessageDeltaEvent,
    MessageStopEvent,
)


class MessageMeta(NamedTuple):
    id: str
    model: str
    input_tokens: int = 0  # the prompt's, for message_start (message_delta then splits off what the cache held)


def message_meta(model: str, input_tokens: int = 0) -> MessageMeta:
    return MessageMeta(f"msg_{uuid.uuid4().hex[:24]}", model, input_tokens)


def usage_body(usage: Usage) -> MessageUsage:
    return MessageUsage(
        input_tokens=usage.prompt_tokens - usage.cached_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_input_tokens=usage.cached_tokens,
    )


_STOP_REASONS: dict[str, StopReason] = {"length": "max_tokens", "tool_calls": "tool_use"}


def stop_reason(finish_reason: str | None, stop_sequence: str | None) -> StopReason:
    if finish_reason == "stop" and stop_sequence is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(finish_reason or "", "end_turn")


def message_response(answer: Answer, meta: MessageMeta) -> MessageResponse:
    content: list[TextBlock | ThinkingBlock | ToolUseBlock] = []
    if answer.reasoning:
        content.append(ThinkingBlock(thinking=answer.reasoning))
    if answer.content:
        content.append(TextBlock(text=answer.content))
    content += [_tool_use_block(call) for call in answer.tool_calls]
    return MessageResponse(
        id=meta.id,
        model=meta.model,
        content=content,
        stop_reason=stop_reason(answer.finish_reason, answer.stop_sequence),
        stop_sequence=answer.stop_sequence,
        usage=usage_body(answer.usage),
    )


def _tool_use_block(call: ToolCall, with_input: bool = True) -> ToolUseBlock:
    """Anthropic's id prefix on the call's own id; the input an object (ToolCall's arguments are one)."""
    block_id = "toolu_" + call.id.removeprefix("call_")
    return ToolUseBlock(id=block_id, name=call.name, input=json.loads(call.arguments) if with_input else {})


class MessageEvents:
    """The chat path's deltas as Anthropic streams a message: message_start (no content yet; the usage
    comes at the end), then each block as content_block_start, its deltas and content_block_stop (a
    new block whenever the kind of text changes; a tool call is one block, its input in one
    input_json_delta), then message_delta (stop reason, usage) and message_stop."""

    def __init__(self, meta: MessageMeta):
        self.meta = meta
        self._index = -1  # the last block started
        self._open: Literal["thinking", "text"] | None = None

    def first(self) -> list[StreamEvent]:
        usage = MessageUsage(input_tokens=self.meta.input_tokens, output_tokens=0)
        message = MessageResponse(id=self.meta.id, model=self.meta.model, content=[], stop_reason=None, usage=usage)
        return [MessageStartEvent(message=message)]

    def events(self, delta: ChatDelta) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if delta.reasoning:
            events += self._into("thinking")
            events.append(ContentBlockDeltaEvent(index=self._index, delta=ThinkingDelta(thinking=delta.reasoning)))
        if delta.content:
            events += self._into("text")
            events.append(ContentBlockDeltaEvent(index=self._index, delta=TextDelta(text=delta.content)))
        for call in delta.tool_calls:
            events += self._close()
            self._index += 1
            events += [
                ContentBlockStartEvent(index=self._index, content_block=_tool_use_block(call, with_input=False)),
                ContentBlockDeltaEvent(index=self._index, delta=InputJsonDelta(partial_json=call.arguments)),
                ContentBlockStopEvent(index=self._index),
            ]
        if delta.finish_reason:
            events += self._close()
            usage = usage_body(delta.usage) if delta.usage else MessageUsage(input_tokens=0, output_tokens=0)
            reason = MessageDelta(
                stop_reason=stop_reason(delta.finish_reason, delta.stop_sequence), stop_sequence=delta.stop_sequence
            )
            events.append(MessageDeltaEvent(delta=reason, usage=usage))
            events.append(MessageStopEvent())
        return events

    def _into(self, kind: Literal["thinking", "text"]) -> list[StreamEvent]:
        if self._open == kind:
            return []
        events = self._close()
        self._index, self._open = self._index + 1, kind
        block = ThinkingBlock(thinking="") if kind == "thinking" else TextBlock(text="")
        return [*events, ContentBlockStartEvent(index=self._index, content_block=block)]

    def _close(self) -> list[StreamEvent]:
        if self._open is None:
            return []
        events: list[StreamEvent] = []
        if self._open == "thinking":  # as Anthropic ends a thinking block
            events.append(ContentBlockDeltaEvent(index=self._index, delta=SignatureDelta(signature=SIGNATURE)))
        self._open = None
        return [*events, ContentBlockStopEvent(index=self._index)]


# -- errors -------------------------------------------------------------------------------------

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]
ERROR_TYPES: dict[int, ErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


class AnthropicErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ErrorType
    message: str


class AnthropicErrorResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    """`{"type": "error", "error": {"type", "message"}}`: every error of these routes, and a streamed
    answer's `event: error`."""

    type: Literal["error"]
    error: AnthropicErrorDetail


def error_type(status_code: int, error: Exception) -> ErrorType:
    """Anthropic's type for a status. A 503 that says when to retry (a model being replaced) is
    Anthropic's overloaded_error (its 529); one that will not pass by itself (no model) an api_error."""
    if status_code in ERROR_TYPES:
        return ERROR_TYPES[status_code]
    if status_code == 503 and getattr(error, "retry_after_s", None):
        return "overloaded_error"
    return "invalid_request_error" if status_code < 500 else "api_error"


def error_body(error: Exception) -> dict[str, Any]:
    """Anthropic's error body for any error; an unexpected exception shows no details."""
    if isinstance(error, HychatError):
        status_code, message = error.status_code, str(error)
    else:
        status_code, message = HychatError.status_code, "internal error"
    return {"type": "error", "error": {"type": error_type(status_code, error), "message": message}}
