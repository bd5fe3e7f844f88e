"""Token bytes in, text pieces out: never half a UTF-8 character, never a stop string."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class TextAssembler:
    """Holds back an incomplete UTF-8 character (the codec's incremental decoder does that) and any
    tail that could be the start of a stop string, so no emitted piece ever has to be taken back."""

    def __init__(self, stop: Sequence[str] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._pending = ""
        self.matched: str | None = None  # the stop string that ended the text

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def push(self, data: bytes) -> str:
        """Adds one token's bytes; returns the text that is now safe to emit."""
        return self.push_text(self._decoder.decode(data))

    def push_text(self, text: str) -> str:
        """Adds text that is already whole characters (from `WindowDecoder`)."""
        self._pending += text
        if not self._stop:
            text, self._pending = self._pending, ""
            return text
        found = [(i, s) for s in self._stop if (i := self._pending.find(s)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda hit: hit[0])
            text, self._pending = self._pending[:cut], ""
            return text
        keep = max(_overlap(self._pending, s) for s in self._stop)
        text, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        return text

    def flush(self) -> str:
        """The held-back text at the end of generation. Bytes of a character that the generation
        never finished (cut by max_new_tokens) are dropped rather than shown as U+FFFD."""
        text = "" if self.stopped else self._pending
        self._pending = ""
        self._decoder.reset()
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper start of `stop`."""
    for k in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


class WindowDecoder:
    """New text per token for tokenizers that only decode whole sequences (transformers).

    Decodes a short window of recent ids twice, with and without the new token, and emits the
    difference once it no longer ends in U+FFFD (a character still incomplete). The window starts
    inside the prompt so that tokenizers which drop a leading space at the start of a sequence still
    give the first generated token its space. This is TGI's `decode_token`.
    """

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int], context: int = 5):
        self._decode = decode
        self._ids = list(prompt_ids[-context:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""
