"""The host-memory prompt cache: slots' KV states kept in RAM after their slot moves on to another
conversation, so that one returning restores its history instead of reading it again (llama-server's
--cache-ram). Plain data, no llama.cpp: the engine saves and restores the states
(`llama_state_seq_get_data`, `_set_data`); this holds them, bounded, least recently used out first.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.admission import common_prefix


@dataclass(frozen=True)
class SavedState:
    tokens: tuple[int, ...]  # whose KV the state holds, positions 0..n-1
    adapters: tuple  # the adapter set they were computed with (its key)
    data: mmap.mmap | bytearray  # what llama_state_seq_get_data wrote (an anonymous mmap; tests: a bytearray)


class PromptCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._states: OrderedDict[tuple, SavedState] = OrderedDict()  # the least recently used first
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    def put(self, state: SavedState) -> None:
        """Keeps `state`, dropping the states it extends (the same conversation, earlier) and then the
        least recently used until it fits; one larger than the whole budget is not kept."""
        if len(state.data) > self.budget_bytes:
            return
        for key, old in list(self._states.items()):
            if old.adapters == state.adapters and state.tokens[: len(old.tokens)] == old.tokens:
                self._drop(key)
        while self.used_bytes + len(state.data) > self.budget_bytes:
            self._drop(next(iter(self._states)))
        self._states[(state.adapters, state.tokens)] = state
        self.used_bytes += len(state.data)

    def best(self, prompt: Sequence[int], adapters: tuple) -> tuple[SavedState | None, int]:
        """The state sharing the longest prefix with `prompt` (computed with `adapters`), and how long."""
        best, best_len = None, 0
        for state in self._states.values():
            if state.adapters == adapters and (n := common_prefix(state.tokens, prompt)) > best_len:
                best, best_len = state, n
        if best is not None:
            self._states.move_to_end((best.adapters, best.tokens))
        return best, best_len

    def _drop(self, key: tuple) -> None:
        self.used_bytes -= len(self._states.pop(key).data)
