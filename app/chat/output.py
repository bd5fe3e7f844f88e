"""A chat answer's text, as it streams, split into reasoning, answer and tool calls."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.chat.format import ChatOptions
from app.chat.reasoning import ReasoningSplitter
from app.chat.tool_calls import ToolCall, ToolCallStream
from app.errors import ToolCallMissingError
from app.services.backend import Generation, GenerationRequest, Prompt


@dataclass(frozen=True)
class ChatDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


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


def output_parser(generation: Generation, request: GenerationRequest) -> ChatOutputParser | None:
    """The parser for a chat's answer; None for a raw prompt, whose text is given as it comes."""
    if request.messages is None or generation.prompt is None:
        return None
    return ChatOutputParser(generation.prompt, request.chat)
