"""Answers of OpenAI's Responses API (`/v1/responses`): the `response` object, its output items and the
streamed events, made from the chat path's `Answer` and `ChatDelta`s (reasoning, answer and tool calls
already apart).

The output holds, in order, a `reasoning` item (the reasoning as `reasoning_text` content; no summaries
are written), a `message` with one `output_text` part (also when it is empty, unless the answer is only
calls) and a `function_call` item per call. A stream is `response.created` and `response.in_progress`,
each item as `response.output_item.added`, its part and text deltas, the `.done` events, then
`response.completed` (or `response.incomplete` when `max_output_tokens` cut the answer), each event
with its `sequence_number`; a failure after the start is an `error` event.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.chat.output import Answer, ChatDelta
from app.chat.tool_calls import ToolCall
from app.errors import error_body
from app.protocol.openai_answers import PromptProgressBody, Timings, TimingsSoFar, progress_fields, stamp_timings
from app.protocol.responses import (
    Format,
    FunctionCallItem,
    FunctionTool,
    ItemStatus,
    MessageItem,
    ResponseRequest,
    TextFormat,
    ToolChoice,
    to_chat_messages,
)
from app.types import GenerationRequest, Usage

# -- wire types ---------------------------------------------------------------------------------


class _Sent(BaseModel):
    # The schema says every field is always there (`type` too, which has a default).
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class OutputText(_Sent):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)  # none are made
    logprobs: list[dict[str, Any]] = Field(default_factory=list)  # none are made


class OutputMessage(_Sent):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ReasoningText(_Sent):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class SummaryText(_Sent):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningOutput(_Sent):
    type: Literal["reasoning"] = "reasoning"
    id: str
    status: ItemStatus
    summary: list[SummaryText] = Field(default_factory=list)  # none are written
    content: list[ReasoningText]


class FunctionCall(_Sent):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str  # JSON text
    status: ItemStatus


OutputItem = Annotated[OutputMessage | ReasoningOutput | FunctionCall, Field(discriminator="type")]
ContentPart = Annotated[OutputText | ReasoningText, Field(discriminator="type")]


class InputTokensDetails(_Sent):
    cached_tokens: int  # read from the slot's KV cache: a known prefix is not decoded again
    cache_write_tokens: int = 0  # no explicit cache writes (OpenAI's prompt_cache_options)


class OutputTokensDetails(_Sent):
    reasoning_tokens: int


class ResponseUsage(_Sent):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(_Sent):
    reason: Literal["max_output_tokens"]


class ReasoningBody(_Sent):
    effort: str | None
    summary: str | None


class TextBody(_Sent):
    format: Format
    verbosity: str | None = None


class ResponseObject(_Sent):
    """The `response` object, as the answer, in the stream's lifecycle events and from
    `GET /v1/responses/{id}`."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    completed_at: int | None = None
    error: None = None  # a failure after the start is an `error` event
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ReasoningBody
    store: bool
    temperature: float  # the one sampled with (the service's default when the request set none)
    text: TextBody
    tool_choice: ToolChoice
    tools: list[FunctionTool]
    top_p: float
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsage | None = None  # None until it ends
    user: str | None
    background: bool = False


class DeletedResponse(_Sent):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


def _extras_optional(schema: dict[str, Any]) -> None:
    schema["required"] = [name for name in schema.get("required", []) if name not in LLAMA_SERVER_EXTRAS]


LLAMA_SERVER_EXTRAS = ("timings", "prompt_progress")


class _Event(_Sent):
    model_config = ConfigDict(json_schema_extra=_extras_optional)  # sent only when given

    type: str
    sequence_number: int
    # Not OpenAI's: llama-server's timings (on the last event; with timings_per_token on each delta's
    # last) and prompt progress (return_progress, on a response.in_progress event).
    timings: Timings | None = Field(None, exclude_if=lambda v: v is None)
    prompt_progress: PromptProgressBody | None = Field(None, exclude_if=lambda v: v is None)


class ResponseCreatedEvent(_Event):
    type: Literal["response.created"] = "response.created"
    response: ResponseObject


class ResponseInProgressEvent(_Event):
    type: Literal["response.in_progress"] = "response.in_progress"
    response: ResponseObject


class ResponseCompletedEvent(_Event):
    type: Literal["response.completed"] = "response.completed"
    response: ResponseObject


class ResponseIncompleteEvent(_Event):
    type: Literal["response.incomplete"] = "response.incomplete"
    response: ResponseObject


class OutputItemAddedEvent(_Event):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    output_index: int
    item: OutputItem


class OutputItemDoneEvent(_Event):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    output_index: int
    item: OutputItem


class ContentPartAddedEvent(_Event):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


class ContentPartDoneEvent(_Event):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


class OutputTextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class OutputTextDoneEvent(_Event):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ReasoningTextDeltaEvent(_Event):
    type: Literal["response.reasoning_text.delta"] = "response.reasoning_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningTextDoneEvent(_Event):
    type: Literal["response.reasoning_text.done"] = "response.reasoning_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str


class FunctionCallArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    arguments: str


class ErrorEvent(_Event):
    """A failure after the stream started (OpenAI's `error` event; the code is ours, as in error bodies)."""

    type: Literal["error"] = "error"
    code: str | None
    message: str
    param: str | None


STREAM_EVENTS = (
    ResponseCreatedEvent,
    ResponseInProgressEvent,
    OutputItemAddedEvent,
    ContentPartAddedEvent,
    OutputTextDeltaEvent,
    ReasoningTextDeltaEvent,
    FunctionCallArgumentsDeltaEvent,
    FunctionCallArgumentsDoneEvent,
    ReasoningTextDoneEvent,
    OutputTextDoneEvent,
    ContentPartDoneEvent,
    OutputItemDoneEvent,
    ResponseCompletedEvent,
    ResponseIncompleteEvent,
    ErrorEvent,
)
StreamEvent = _Event  # any of STREAM_EVENTS

# -- internal types to answers ------------------------------------------------------------------


def response_head(body: ResponseRequest, request: GenerationRequest, model: str) -> ResponseObject:
    """The response before its output: what the request asked, as it is answered."""
    reasoning = body.reasoning
    return ResponseObject(
        id=_new_id("resp"),
        created_at=int(time.time()),
        status="in_progress",
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        metadata=body.metadata or {},
        model=model,
        output=[],
        parallel_tool_calls=request.chat.parallel_tool_calls,
        previous_response_id=body.previous_response_id,
        reasoning=ReasoningBody(
            effort=reasoning.effort if reasoning else None,
            summary=(reasoning.summary or reasoning.generate_summary) if reasoning else None,
        ),
        store=body.store,
        temperature=request.params.temperature,
        text=TextBody(
            format=(body.text.format if body.text else None) or TextFormat(type="text"),
            verbosity=body.text.verbosity if body.text else None,
        ),
        tool_choice=body.tool_choice or "auto",
        tools=[tool for tool in body.tools or () if isinstance(tool, FunctionTool)],
        top_p=request.params.top_p,
        truncation="auto" if request.chat.truncate else "disabled",
        user=body.user,
    )


def usage_body(usage: Usage, reasoning_tokens: int) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_tokens),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens),
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


def response_body(answer: Answer, head: ResponseObject) -> ResponseObject:
    """A whole answer (not streamed)."""
    cut = answer.finish_reason == "length"
    items: list[Any] = []
    if answer.reasoning:
        items.append(
            ReasoningOutput(id=_new_id("rs"), status="completed", content=[ReasoningText(text=answer.reasoning)])
        )
    if answer.content or not answer.tool_calls:
        items.append(OutputMessage(id=_new_id("msg"), status="completed", content=[OutputText(text=answer.content)]))
    items += [_function_call(call, "completed") for call in answer.tool_calls]
    if cut:
        items[-1] = items[-1].model_copy(update={"status": "incomplete"})
    return _finished(head, items, usage_body(answer.usage, answer.reasoning_tokens), cut)


def output_messages(response: ResponseObject) -> list[dict[str, Any]]:
    """The output as chat messages, as a follow-up shows it to the model: what the input conversion
    makes of the same items sent back (reasoning dropped, calls in the message before them)."""
    items: list[Any] = []
    for item in response.output:
        if isinstance(item, OutputMessage):
            text = "".join(part.text for part in item.content)
            items.append(MessageItem.model_construct(type="message", role="assistant", content=text))
        elif isinstance(item, FunctionCall):
            fields = {"call_id": item.call_id, "name": item.name, "arguments": item.arguments}
            items.append(FunctionCallItem.model_construct(type="function_call", **fields))
    return to_chat_messages(items)


@dataclass
class _OpenItem:
    kind: Literal["reasoning", "message"]
    id: str
    output_index: int
    text: str = ""


class ResponseEvents:
    """The chat path's deltas as the Responses API's events: text of one kind (reasoning, answer) goes
    into one item until the other kind comes; each tool call is an item of its own, whole at once (the
    call's arguments in one delta). `response` is the finished response once the last delta is in."""

    def __init__(self, head: ResponseObject, timed: TimingsSoFar | None = None):
        self.head, self.timed = head, timed  # timed: timings_per_token's
        self.response: ResponseObject | None = None
        self._sequence = 0
        self._output: list[Any] = []  # finished items
        self._open: _OpenItem | None = None

    def first(self) -> list[StreamEvent]:
        return [
            self._event(ResponseCreatedEvent, response=self.head),
            self._event(ResponseInProgressEvent, response=self.head),
        ]

    def events(self, delta: ChatDelta) -> list[StreamEvent]:
        if delta.progress is not None:
            progress = progress_fields(delta.progress, self.timed)
            return [self._event(ResponseInProgressEvent, response=self.head, **progress)]
        events: list[StreamEvent] = []
        if delta.reasoning:
            events += self._text("reasoning", delta.reasoning)
        if delta.content:
            events += self._text("message", delta.content)
        for call in delta.tool_calls:
            events += self._close("completed") + self._call(call)
        if delta.finish_reason:
            cut = delta.finish_reason == "length"
            answered = any(isinstance(item, OutputMessage | FunctionCall) for item in self._output)
            if not answered and not (self._open and self._open.kind == "message"):
                events += self._text("message", "")  # an answer of no text still has its message
            events += self._close("incomplete" if cut else "completed")
            usage = usage_body(delta.usage, delta.reasoning_tokens) if delta.usage else None
            self.response = _finished(self.head, self._output, usage, cut)
            last = ResponseIncompleteEvent if cut else ResponseCompletedEvent
            events.append(self._event(last, response=self.response))
        stamp_timings(events, delta, self.timed)
        return events

    def error(self, error: Exception) -> ErrorEvent:
        event = error_event(error, self._sequence)
        self._sequence += 1
        return event

    def _text(self, kind: Literal["reasoning", "message"], text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        item = self._open
        if item is None or item.kind != kind:
            events += self._close("completed")
            item = self._open = _OpenItem(kind, _new_id("rs" if kind == "reasoning" else "msg"), len(self._output))
            events.append(
                self._event(OutputItemAddedEvent, output_index=item.output_index, item=_item(item, "in_progress"))
            )
            events.append(self._event(ContentPartAddedEvent, **_where(item), part=_part(item)))
        item.text += text
        if text:
            kind_event = ReasoningTextDeltaEvent if kind == "reasoning" else OutputTextDeltaEvent
            events.append(self._event(kind_event, **_where(item), delta=text))
        return events

    def _close(self, status: ItemStatus) -> list[StreamEvent]:
        item, self._open = self._open, None
        if item is None:
            return []
        done = ReasoningTextDoneEvent if item.kind == "reasoning" else OutputTextDoneEvent
        finished = _item(item, status)
        self._output.append(finished)
        return [
            self._event(done, **_where(item), text=item.text),
            self._event(ContentPartDoneEvent, **_where(item), part=_part(item)),
            self._event(OutputItemDoneEvent, output_index=item.output_index, item=finished),
        ]

    def _call(self, call: ToolCall) -> list[StreamEvent]:
        index, finished = len(self._output), _function_call(call, "completed")
        self._output.append(finished)
        where = {"item_id": finished.id, "output_index": index}
        started = finished.model_copy(update={"arguments": "", "status": "in_progress"})
        return [
            self._event(OutputItemAddedEvent, output_index=index, item=started),
            self._event(FunctionCallArgumentsDeltaEvent, **where, delta=call.arguments),
            self._event(FunctionCallArgumentsDoneEvent, **where, arguments=call.arguments),
            self._event(OutputItemDoneEvent, output_index=index, item=finished),
        ]

    def _event(self, kind: type[Any], **fields: Any) -> Any:
        event = kind(sequence_number=self._sequence, **fields)
        self._sequence += 1
        return event


def error_event(error: Exception, sequence_number: int) -> ErrorEvent:
    """The stream's last event, `error`, numbered after the events before it."""
    detail = error_body(error)["error"]
    return ErrorEvent(sequence_number=sequence_number, code=detail["code"], message=detail["message"],
                      param=detail["param"])  # fmt: skip


def _finished(head: ResponseObject, output: Sequence[Any], usage: ResponseUsage | None, cut: bool) -> ResponseObject:
    return head.model_copy(
        update={
            "status": "incomplete" if cut else "completed",
            "completed_at": None if cut else int(time.time()),
            "incomplete_details": IncompleteDetails(reason="max_output_tokens") if cut else None,
            "output": list(output),
            "usage": usage,
        }
    )


def _item(item: _OpenItem, status: ItemStatus) -> OutputMessage | ReasoningOutput:
    """The item as it stands: no content while it is in progress (as OpenAI adds it), its text when done."""
    done = status != "in_progress"
    if item.kind == "reasoning":
        return ReasoningOutput(id=item.id, status=status, content=[ReasoningText(text=item.text)] if done else [])
    return OutputMessage(id=item.id, status=status, content=[OutputText(text=item.text)] if done else [])


def _part(item: _OpenItem) -> ReasoningText | OutputText:
    return ReasoningText(text=item.text) if item.kind == "reasoning" else OutputText(text=item.text)


def _where(item: _OpenItem) -> dict[str, Any]:
    return {"item_id": item.id, "output_index": item.output_index, "content_index": 0}


def _function_call(call: ToolCall, status: ItemStatus) -> FunctionCall:
    return FunctionCall(id=_new_id("fc"), call_id=call.id, name=call.name, arguments=call.arguments, status=status)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"
