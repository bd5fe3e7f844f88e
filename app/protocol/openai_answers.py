"""Answers of the OpenAI-compatible API (`/v1`): completions, chunks, usage, and their making from the
chat path's `Answer` and `ChatDelta`s (reasoning, answer and tool calls already apart)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field, model_serializer

from app.chat.output import Answer, ChatDelta
from app.chat.tool_calls import ToolCall
from app.protocol.openai import FunctionCallBody, ToolCallBody
from app.types import PromptProgress, TokenLogprob, TopLogprob, Usage

# -- wire types ---------------------------------------------------------------------------------


def _unset(value: Any) -> bool:
    return value is None


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int | None = Field(None, exclude_if=_unset)  # chats
    # Speculative decoding's draft tokens (llama.cpp backend), in OpenAI's Predicted Outputs fields:
    # those that were the model's own next tokens, and the others. Only where there was a draft.
    accepted_prediction_tokens: int | None = Field(None, exclude_if=_unset)
    rejected_prediction_tokens: int | None = Field(None, exclude_if=_unset)


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails | None = None  # chats, and answers with a draft

    @model_serializer(mode="wrap")
    def _without_unset_details(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self))


class Timings(BaseModel):
    """llama-server's speeds of one answer (not OpenAI's): on its last chunk, and on /completion."""

    cache_n: int  # prompt tokens reused from the slot's cache
    prompt_n: int  # prompt tokens processed
    prompt_ms: float
    prompt_per_token_ms: float
    prompt_per_second: float
    predicted_n: int
    predicted_ms: float  # after the first token
    predicted_per_token_ms: float
    predicted_per_second: float
    # Speculative decoding: tokens drafted and of them accepted; only where there was a draft, as
    # llama-server's server_slot_stats::to_json.
    draft_n: int | None = Field(None, exclude_if=_unset)
    draft_n_accepted: int | None = Field(None, exclude_if=_unset)


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
    timings: Timings | None = None  # not OpenAI's: llama-server's, of the first choice
    verbose: dict[str, Any] | None = Field(None, serialization_alias="__verbose")  # llama-server's `verbose: true`

    @model_serializer(mode="wrap")
    def _said_when_truncated(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self), "truncated_messages", "timings", "verbose", "__verbose")


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
        return {k: v for k, v in handler(self).items() if v is not None or k in self.model_fields_set}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDeltaBody
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class PromptProgressBody(BaseModel):
    total: int  # the prompt's tokens
    cache: int  # reused from the slot's cache
    processed: int  # in the cache now, those reused included
    time_ms: int  # since the request got its slot


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None
    truncated_messages: int | None = None  # not OpenAI's, on the first chunk: as in the response
    # Not OpenAI's: llama-server's, on a choice's last chunk (each chunk with timings_per_token), and
    # how far the prompt is read (return_progress).
    timings: Timings | None = None
    prompt_progress: PromptProgressBody | None = None

    @model_serializer(mode="wrap")
    def _said_when_truncated(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self), "truncated_messages", "timings", "prompt_progress")


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
    timings: Timings | None = None  # not OpenAI's: llama-server's, on the last chunk (of the first choice)
    prompt_progress: PromptProgressBody | None = None  # llama-server's return_progress, streamed
    verbose: dict[str, Any] | None = Field(None, serialization_alias="__verbose")  # llama-server's `verbose: true`

    @model_serializer(mode="wrap")
    def _timed_when_done(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self), "timings", "prompt_progress", "verbose", "__verbose")


class InputTokens(BaseModel):
    """How many tokens a request's prompt is (OpenAI's POST /v1/responses/input_tokens; llama-server's
    /v1/chat/completions/input_tokens too)."""

    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


class ModelStatus(BaseModel):
    """Not OpenAI's (llama-server's router mode has `status.value`): loaded or not, and why it cannot load."""

    value: Literal["loaded", "unloaded", "failed"]
    memory_bytes: int | None = None  # loaded: the memory it takes, as estimated before loading
    expires_at: int | None = None  # loaded: the Unix time it will be unloaded if idle (None: kept)
    problem: str | None = None  # failed: why it cannot load (a damaged file, an adapter without its base)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hychat"
    backend: str  # not OpenAI's: which backend serves it
    aliases: list[str] = []  # llama-server's: the names it also answers to (--alias), and its --tags
    tags: list[str] = []
    status: ModelStatus | None = None


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
    """`reasoning_tokens`: for chats, how many of the completion's tokens were reasoning. Drafted
    tokens (speculative decoding) show as the accepted and rejected prediction tokens."""
    drafted = _prediction_tokens(usage) if usage.drafted_tokens > 0 else {}
    details = None
    if reasoning_tokens is not None or drafted:
        details = CompletionTokensDetails(reasoning_tokens=reasoning_tokens, **drafted)
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
        completion_tokens_details=details,
    )


def _prediction_tokens(usage: Usage) -> dict[str, int]:
    return {
        "accepted_prediction_tokens": usage.accepted_tokens,
        "rejected_prediction_tokens": usage.drafted_tokens - usage.accepted_tokens,
    }


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
    answers: Sequence[Answer], meta: ResponseMeta, with_logprobs: bool
) -> ChatCompletionResponse:
    """One choice per answer (a request's `n`), their usage together."""
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(
                content=answer.content if answer.content or not answer.tool_calls else None,
                reasoning_content=answer.reasoning or None,
                tool_calls=[_tool_call_body(call) for call in answer.tool_calls] or None,
            ),
            logprobs=chat_logprobs(answer.logprobs) if with_logprobs else None,
            finish_reason=answer.finish_reason,
        )
        for i, answer in enumerate(answers)
    ]
    usage = total_usage([a.usage for a in answers], sum(a.reasoning_tokens for a in answers))
    return ChatCompletionResponse(
        **meta.head(),
        choices=choices,
        usage=usage,
        truncated_messages=meta.truncated,
        timings=timings(answers[0].usage),
    )


def completion_response(answers: Sequence[Answer], meta: ResponseMeta, with_logprobs: bool) -> CompletionResponse:
    choices = [
        CompletionChoice(
            index=i,
            text=answer.content,
            logprobs=completion_logprobs(answer.logprobs) if with_logprobs else None,
            finish_reason=answer.finish_reason,
        )
        for i, answer in enumerate(answers)
    ]
    usage = total_usage([a.usage for a in answers])
    return CompletionResponse(**meta.head(), choices=choices, usage=usage, timings=timings(answers[0].usage))


# What the choices of one request add up to: their answers' tokens and drafts.
SUMMED_USAGE = ("completion_tokens", "drafted_tokens", "accepted_tokens", "drafts")


def total_usage(usages: Sequence[Usage], reasoning_tokens: int | None = None) -> CompletionUsage:
    """The usage of a request's choices: its prompt once (each choice's is the same), their answers'
    tokens (and drafts) added up."""
    first = usages[0]
    summed = {name: sum(getattr(u, name) for u in usages) for name in SUMMED_USAGE}
    return usage_body(replace(first, **summed), reasoning_tokens)


class ChatChunks:
    """The chat path's deltas as `chat.completion.chunk`s: the assistant role first, then a chunk per
    piece of reasoning or answer (with its token's logprobs), each tool call as OpenAI streams it
    (id and name, then the arguments), one with the finish reason, then the usage when asked.
    llama-server's extras: `timed` (timings_per_token) puts the timings so far on each delta's last
    chunk; a progress delta (return_progress) is a chunk with the role and `prompt_progress`."""

    def __init__(self, meta: ResponseMeta, index: int = 0, timed: TimingsSoFar | None = None):
        self.meta, self.index, self.timed = meta, index, timed  # index: the choice's (a request's `n`)
        self._calls = 0  # tool calls streamed so far: the index of the next one

    def first(self) -> list[ChatCompletionChunk]:
        chunk = self._role()
        chunk.truncated_messages = self.meta.truncated
        return [chunk]

    def chunks(self, delta: ChatDelta) -> list[ChatCompletionChunk]:
        if delta.progress is not None:
            return [self._role().model_copy(update=progress_fields(delta.progress, self.timed))]
        logprobs = chat_logprobs([delta.logprob]) if delta.logprob else None
        chunks = []
        if delta.reasoning:
            chunks.append(self._chunk(ChatChunkChoice(delta=ChatDeltaBody(reasoning_content=delta.reasoning))))
        if delta.content or logprobs:  # a token whose text is held back still has its logprob
            content = delta.content or None  # a held-back text's logprob comes with none
            chunks.append(self._chunk(ChatChunkChoice(delta=ChatDeltaBody(content=content), logprobs=logprobs)))
        for call in delta.tool_calls:
            head = ToolCallDeltaBody(index=self._calls, id=call.id, type="function",
                                     function=FunctionDeltaBody(name=call.name, arguments=""))  # fmt: skip
            arguments = ToolCallDeltaBody(index=self._calls, function=FunctionDeltaBody(arguments=call.arguments))
            chunks += [self._chunk(ChatChunkChoice(delta=ChatDeltaBody(tool_calls=[d]))) for d in (head, arguments)]
            self._calls += 1
        if delta.finish_reason:
            chunks.append(self._chunk(ChatChunkChoice(delta=ChatDeltaBody(), finish_reason=delta.finish_reason)))
        stamp_timings(chunks, delta, self.timed)
        return chunks

    def usage(self, usage: CompletionUsage, timed: Timings | None = None) -> ChatCompletionChunk:
        """The last chunk, with the request's usage, when stream_options.include_usage asks for it (and
        llama-server's timings, of the first choice)."""
        return ChatCompletionChunk(**self.meta.head(), choices=[], usage=usage, timings=timed)

    def _role(self) -> ChatCompletionChunk:
        # content null, not "" (llama-server's; its clients take a "" for a piece of the answer)
        return self._chunk(ChatChunkChoice(delta=ChatDeltaBody(role="assistant", content=None)))

    def _chunk(self, choice: ChatChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.meta.head(), choices=[choice.model_copy(update={"index": self.index})])


class CompletionChunks:
    """The deltas of a raw prompt as streamed `text_completion`s, the usage last when asked;
    llama-server's extras as in ChatChunks."""

    def __init__(self, meta: ResponseMeta, index: int = 0, timed: TimingsSoFar | None = None):
        self.meta, self.index, self.timed = meta, index, timed
        self._text_offset = 0

    def first(self) -> list[CompletionResponse]:
        return []

    def chunks(self, delta: ChatDelta) -> list[CompletionResponse]:
        if delta.progress is not None:
            chunk = CompletionResponse(**self.meta.head(), choices=[CompletionChoice(index=self.index, text="")])
            return [chunk.model_copy(update=progress_fields(delta.progress, self.timed))]
        chunks = []
        if delta.content or delta.logprob or delta.finish_reason:
            logprobs = None
            if delta.logprob:
                logprobs = completion_logprobs([delta.logprob], self._text_offset)
                self._text_offset += len(delta.logprob.token)
            choice = CompletionChoice(
                index=self.index, text=delta.content, logprobs=logprobs, finish_reason=delta.finish_reason
            )
            chunks.append(CompletionResponse(**self.meta.head(), choices=[choice]))
        stamp_timings(chunks, delta, self.timed)
        return chunks

    def usage(self, usage: CompletionUsage, timed: Timings | None = None) -> CompletionResponse:
        return CompletionResponse(**self.meta.head(), choices=[], usage=usage, timings=timed)


def progress_fields(progress: PromptProgress, timed: TimingsSoFar | None) -> dict[str, Any]:
    """A return_progress report's fields (on a chunk or event): `prompt_progress`, and with
    timings_per_token (`timed`, which takes the engine's prompt timings from here on) the timings so far."""
    if timed is not None:
        timed.progress = progress
    return {"prompt_progress": progress_body(progress), "timings": timed.now() if timed else None}


def stamp_timings(chunks: Sequence[Any], delta: ChatDelta, timed: TimingsSoFar | None) -> None:
    """llama-server's timings: the whole answer's on its last chunk (or event); with timings_per_token,
    those so far on the last chunk of each token's."""
    if delta.finish_reason is None and timed is not None:
        timed.token(len(delta.tokens))
    if chunks and delta.finish_reason and delta.usage:
        chunks[-1].timings = timings(delta.usage)
    elif chunks and timed is not None:
        chunks[-1].timings = timed.now()


def _tool_call_body(call: ToolCall) -> ToolCallBody:
    return ToolCallBody(id=call.id, function=FunctionCallBody(name=call.name, arguments=call.arguments))


def _without_none(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`body` without None values (of `keys` only, when given)."""
    return {k: v for k, v in body.items() if v is not None or (keys and k not in keys)}


def _top_logprob(lp: TopLogprob) -> TopLogprobBody:
    return TopLogprobBody(token=lp.token, logprob=lp.logprob, bytes=list(lp.bytes))


def timings(usage: Usage) -> Timings:
    prompt_n, predicted_ms = usage.prompt_tokens - usage.cached_tokens, max(usage.total_ms - usage.ttft_ms, 0.0)
    measured = rates(usage.cached_tokens, prompt_n, usage.ttft_ms, usage.completion_tokens, predicted_ms)
    if usage.drafted_tokens == 0:
        return measured
    return measured.model_copy(update={"draft_n": usage.drafted_tokens, "draft_n_accepted": usage.accepted_tokens})


class TimingsSoFar:
    """An answer's timings at any point of its stream (llama-server's timings_per_token, and those of an
    answer cut short, which gets no usage): the prompt's as the engine last reported them
    (return_progress), else measured here (the prompt until the first token)."""

    def __init__(self, prompt_tokens: int, clock: Callable[[], float] = time.monotonic):
        self.prompt_tokens, self._clock = prompt_tokens, clock
        self.start, self.first, self.n_decoded = clock(), None, 0
        self.progress: PromptProgress | None = None

    def token(self, n: int = 1) -> None:
        """`n` more sampled tokens (the first one's time starts the decode's)."""
        if self.first is None:
            self.first = self._clock()
        self.n_decoded += n

    def since_first_ms(self) -> float:
        return (self._clock() - self.first) * 1000 if self.first is not None else 0.0

    def now(self) -> Timings:
        p, predicted_ms = self.progress, self.since_first_ms()
        if p is not None:
            return rates(p.cache, p.processed - p.cache, p.prompt_ms, self.n_decoded, predicted_ms)
        prompt_ms = ((self.first if self.first is not None else self._clock()) - self.start) * 1000
        return rates(0, self.prompt_tokens, prompt_ms, self.n_decoded, predicted_ms)


def progress_body(p: PromptProgress) -> PromptProgressBody:
    return PromptProgressBody(total=p.total, cache=p.cache, processed=p.processed, time_ms=int(p.time_ms))


def rates(cache_n: int, prompt_n: int, prompt_ms: float, predicted_n: int, predicted_ms: float) -> Timings:
    """llama-server's rates: the first token comes with the prompt, so the decode steps are n - 1."""
    steps = max(predicted_n - 1, 0)
    return Timings(
        cache_n=cache_n,
        prompt_n=prompt_n,
        prompt_ms=prompt_ms,
        prompt_per_token_ms=prompt_ms / prompt_n if prompt_n else 0.0,
        prompt_per_second=1000 * prompt_n / prompt_ms if prompt_ms > 0 else 0.0,
        predicted_n=predicted_n,
        predicted_ms=predicted_ms,
        predicted_per_token_ms=predicted_ms / steps if steps else 0.0,
        predicted_per_second=1000 * steps / predicted_ms if predicted_ms > 0 else 0.0,
    )
