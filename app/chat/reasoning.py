"""Streaming split of model output into reasoning (`<think>…</think>`) and answer.

Hunyuan-7B writes `<think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>`; in its non-thinking mode the prompt
already holds the empty think block and the output is only the `<answer>` block. Qwen3 and DeepSeek-R1
templates may open `<think>` in the prompt, so the output starts inside the reasoning.
"""

from __future__ import annotations

from enum import Enum

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"


class _State(Enum):
    START = "start"  # nothing decided yet: leading whitespace, maybe `<think>` or `<answer>`
    REASONING_LEAD = "reasoning_lead"  # right after `<think>`: whitespace is dropped
    REASONING = "reasoning"
    CONTENT_LEAD = "content_lead"  # right after `</think>`: whitespace dropped, maybe `<answer>`
    ANSWER_LEAD = "answer_lead"  # right after `<answer>`: whitespace is dropped
    ANSWER = "answer"  # inside `<answer>`, looking for `</answer>`
    AFTER_ANSWER = "after_answer"  # after `</answer>`: trailing whitespace is dropped at the end
    CONTENT = "content"  # plain content to the end: nothing is held back any more


_REASONING_STATES = (_State.REASONING_LEAD, _State.REASONING)


def tag_prefix_len(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (it may still become the tag)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _hold_tail(text: str, tag: str) -> tuple[str, str]:
    """(text safe to emit, tail to hold): the tail is a possible start of `tag` and the whitespace before
    it, which must be dropped if the tag does follow."""
    partial = len(text) - tag_prefix_len(text, tag)
    body = text[:partial]
    kept = len(body.rstrip())
    return body[:kept], text[kept:]


class ReasoningSplitter:
    """Feed it the decoded text pieces of one generation; it returns (reasoning, content) that are final.

    Only a suffix that could still turn into a tag, or whitespace that a tag would make droppable, is held
    back, so each feed costs O(len(piece) + held) and the concatenated output never depends on how the
    text was split into pieces.
    """

    def __init__(self, in_reasoning: bool = False) -> None:
        self._state = _State.REASONING_LEAD if in_reasoning else _State.START
        self._held = ""

    @property
    def in_reasoning(self) -> bool:
        """Whether the text fed last ended inside the reasoning (to count reasoning tokens)."""
        return self._state in _REASONING_STATES

    def feed(self, text: str) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        rest: str | None = self._held + text
        self._held = ""
        # Each step consumes what its state can decide and hands the rest on, or holds it and stops.
        while rest is not None:
            rest = self._step(rest, reasoning, content)
        return "".join(reasoning), "".join(content)

    def finish(self) -> tuple[str, str]:
        """What was held back, at the end of the stream."""
        held, self._held = self._held, ""
        state = self._state
        if state == _State.REASONING:  # cut off before `</think>` (length limit): the rest is reasoning
            return held.rstrip(), ""
        if state == _State.START or state == _State.CONTENT_LEAD:
            return "", held  # a tag prefix that never completed is plain text
        if state == _State.ANSWER:
            return "", held.rstrip()
        return "", ""  # whitespace that a tag or the end makes droppable

    def _step(self, text: str, reasoning: list[str], content: list[str]) -> str | None:
        state = self._state
        if state == _State.START:
            return self._start(text, content)
        if state == _State.CONTENT_LEAD:
            return self._content_lead(text, content)
        if state == _State.REASONING_LEAD or state == _State.ANSWER_LEAD:
            stripped = text.lstrip()
            if not stripped:
                return None
            self._state = _State.REASONING if state == _State.REASONING_LEAD else _State.ANSWER
            return stripped
        if state == _State.REASONING:
            return self._until(text, THINK_CLOSE, reasoning, _State.CONTENT_LEAD)
        if state == _State.ANSWER:
            return self._until(text, ANSWER_CLOSE, content, _State.AFTER_ANSWER)
        if state == _State.AFTER_ANSWER:
            kept = len(text.rstrip())
            content.append(text[:kept])
            self._held = text[kept:]
            return None
        content.append(text)
        return None

    def _start(self, text: str, content: list[str]) -> str | None:
        stripped = text.lstrip()
        if stripped.startswith(THINK_OPEN):
            self._state = _State.REASONING_LEAD
            return stripped[len(THINK_OPEN) :]
        if stripped.startswith(ANSWER_OPEN):
            self._state = _State.ANSWER_LEAD
            return stripped[len(ANSWER_OPEN) :]
        if THINK_OPEN.startswith(stripped) or ANSWER_OPEN.startswith(stripped):
            self._held = text  # whitespace, or a start of either tag: undecided
            return None
        # No tag opens the output: it is content as written, leading whitespace included.
        self._state = _State.CONTENT
        return text

    def _content_lead(self, text: str, content: list[str]) -> str | None:
        stripped = text.lstrip()
        if stripped.startswith(ANSWER_OPEN):
            self._state = _State.ANSWER_LEAD
            return stripped[len(ANSWER_OPEN) :]
        if ANSWER_OPEN.startswith(stripped):
            self._held = stripped  # the whitespace after `</think>` is dropped whatever follows
            return None
        self._state = _State.CONTENT
        return stripped

    def _until(self, text: str, close: str, out: list[str], after: _State) -> str | None:
        at = text.find(close)
        if at >= 0:
            out.append(text[:at].rstrip())
            self._state = after
            return text[at + len(close) :]
        emit, self._held = _hold_tail(text, close)
        out.append(emit)
        return None


def split_reasoning(text: str, in_reasoning: bool = False) -> tuple[str, str]:
    """(reasoning, content) of a whole output."""
    splitter = ReasoningSplitter(in_reasoning=in_reasoning)
    reasoning, content = splitter.feed(text)
    tail_reasoning, tail_content = splitter.finish()
    return reasoning + tail_reasoning, content + tail_content
