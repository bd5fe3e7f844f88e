"""Token bytes in, text pieces out: never half a UTF-8 character, never a stop string."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextAssembler:
    """Holds back an incomplete UTF-8 character (the codec's incremental decoder does that) and any
    tail that could be the start of a stop string, so no emitted piece ever has to be taken back."""

    def __init__(self, stop: Sequence[str] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._pending = ""
        self.stopped = False

    def push(self, data: bytes) -> str:
        """Adds one token's bytes; returns the text that is now safe to emit."""
        self._pending += self._decoder.decode(data)
        if not self._stop:
            text, self._pending = self._pending, ""
            return text
        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
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
