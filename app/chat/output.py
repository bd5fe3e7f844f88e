"""A chat answer's text, as it streams, split into reasoning, answer and tool calls: the `ChatDelta`s
every dialect reads (`app.services.chat` builds and feeds the parser, once for all of them)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.chat.reasoning import ReasoningSplitter
from app.chat.tool_calls import ToolCall, ToolCallStream
from app.errors import ToolCallMissingError
from app.types import ChatOptions, Prompt, PromptProgress, TokenLogprob, Usage


@dataclass(frozen=True)
class ChatDelta:
    """A piece of an answer. The parser fills the text fields; the chat path adds the token's
    logprob, and on the last delta why the answer ended and its usage."""

    reasoning: str = ""
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprob: TokenLogprob | None = None
    tokens: tuple[int, ...] = ()  # the sampled tokens this delta's text comes from (none: the last delta)
    finish_reason: str | None = None  # the last delta: "stop" | "length" | "tool_calls" (the answer called)
    usage: Usage | None = None  # the last delta
    reasoning_tokens: int = 0  # the last delta: how many of the completion's tokens were reasoning
    stop_sequence: str | None = None  # the last delta: the request's stop string that ended the answer
    progress: PromptProgress | None = None  # no text: how far the prompt is read (asked for with return_progress)

    def __add__(self, later: ChatDelta) -> ChatDelta:
        """The text and tokens of both, in order (what a token's text and the parser's last words make)."""
        calls = self.tool_calls + later.tool_calls
        return ChatDelta(self.reasoning + later.reasoning, self.content + later.content, calls,
                         tokens=self.tokens + later.tokens)  # fmt: skip

    @property
    def plain(self) -> bool:
        """Only text and tokens: no logprob, progress report or end of the answer to keep apart."""
        return self.logprob is None and self.progress is None and self.finish_reason is None and self.usage is None


def joined(deltas: Iterable[ChatDelta]) -> list[ChatDelta]:
    """Consecutive plain deltas as one, their text, calls and tokens in order."""
    out: list[ChatDelta] = []
    for delta in deltas:
        if out and out[-1].plain and delta.plain:
            out[-1] = out[-1] + delta
        else:
            out.append(delta)
    return out


@dataclass(frozen=True)
class Answer:
    """A whole answer, as the non-streamed responses give it."""

    content: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str  # "stop" | "length" | "tool_calls"
    usage: Usage
    reasoning_tokens: int
    logprobs: tuple[TokenLogprob, ...]  # each token's, when the request asked
    stop_sequence: str | None = None  # the request's stop string that ended the answer

    @classmethod
    def of(cls, deltas: Sequence[ChatDelta]) -> Answer:
        last = deltas[-1]
        assert last.usage is not None, "a stream ends with its usage"
        return cls(
            content="".join(d.content for d in deltas),
            reasoning="".join(d.reasoning for d in deltas),
            tool_calls=tuple(call for d in deltas for call in d.tool_calls),
            finish_reason=last.finish_reason or "stop",
            usage=last.usage,
            reasoning_tokens=last.reasoning_tokens,
            logprobs=tuple(d.logprob for d in deltas if d.logprob is not None),
            stop_sequence=last.stop_sequence,
        )


class ChatOutputParser:
    """Feed each token's text; get back what is final. Tags split over tokens are held back until
    they are whole, so no fragment of one reaches either stream."""

    def __init__(self, prompt: Prompt, options: ChatOptions):
        in_reasoning = prompt.chat is not None and prompt.chat.in_reasoning
        self._split = ReasoningSplitter(in_reasoning) if options.reasoning_format == "auto" else None
        self._tools = ToolCallStream(prompt.tool_format, prompt.tool_names) if prompt.tool_names else None
        self._call_required = options.calls_tools and options.tool_choice != "auto"
        self._max_calls = None if options.parallel_tool_calls else 1
        self.reasoning_tokens = 0
        self._undecided = 0  # tokens whose text is held back, not yet known to be reasoning or answer
        self.tool_calls: list[ToolCall] = []

    def feed(self, text: str) -> ChatDelta:
        """One token's text (empty when the detokenizer holds it back: it still counts)."""
        if self._split is None:
            return self._content("", text, final=False)
        was_reasoning = self._split.in_reasoning
        reasoning, content = self._split.feed(text)
        if was_reasoning or self._split.in_reasoning:
            self.reasoning_tokens += 1 + self._undecided  # "<th" then "ink>": both were reasoning
            self._undecided = 0
        else:
            self._undecided = 0 if content else self._undecided + 1
        return self._content(reasoning, content, final=False)

    def read(self, texts: Iterable[str]) -> ChatDelta:
        """A whole answer at once, its tokens' texts in order (the calls are in `tool_calls`)."""
        deltas = [self.feed(text) for text in texts] + [self.finish()]
        return ChatDelta("".join(d.reasoning for d in deltas), "".join(d.content for d in deltas))

    def finish(self) -> ChatDelta:
        """The rest, at the end of the stream. A call that tool_choice demanded but the answer lacks
        (a backend without grammars, or a call cut short by max_tokens) is an error."""
        reasoning, content = self._split.finish() if self._split is not None else ("", "")
        delta = self._content(reasoning, content, final=True)
        if self._call_required and not self.tool_calls:
            raise ToolCallMissingError()
        return delta

    def _content(self, reasoning: str, content: str, final: bool) -> ChatDelta:
        calls: list[ToolCall] = []
        if self._tools is not None:
            content, calls = self._tools.feed(content)
            if final:
                rest, more = self._tools.finish()
                content, calls = content + rest, calls + more
            if self._max_calls is not None:  # parallel_tool_calls false: the first call only
                calls = calls[: max(0, self._max_calls - len(self.tool_calls))]
            self.tool_calls += calls
        return ChatDelta(reasoning, content, tuple(calls))
