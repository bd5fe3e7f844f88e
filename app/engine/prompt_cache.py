"""The host-memory prompt cache: slots' KV states kept in RAM after their slot moves on to another
conversation, so that one returning restores its history instead of reading it again (llama-server's
--cache-ram). Plain data, no llama.cpp: the engine saves and restores the states
(`llama_state_seq_get_data`, `_set_data`); this holds them, bounded, least recently used out first,
to its disk tier (`state_files.StateFiles`) when it has one, and all of them there when it closes.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.engine.admission import common_prefix
from app.engine.state_files import StateFiles


@dataclass(frozen=True)
class SavedState:
    tokens: tuple[int, ...]  # whose KV the state holds, positions 0..n-1
    adapters: tuple  # the adapter set they were computed with (its key)
    data: mmap.mmap | bytearray  # what llama_state_seq_get_data wrote (an anonymous mmap; tests: a bytearray)


class PromptCache:
    def __init__(
        self, budget_bytes: int, files: StateFiles | None = None, names: Callable[[tuple], tuple] = lambda key: key
    ):
        """`files`: the disk tier; `names`: an adapter set's key as the stable names the files keep
        (a key's ids are indices that another process may give other adapters)."""
        self.budget_bytes, self.files, self.names = budget_bytes, files, names
        self._states: OrderedDict[tuple, SavedState] = OrderedDict()  # the least recently used first
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    def put(self, state: SavedState) -> None:
        """Keeps `state`, dropping the states it extends (the same conversation, earlier) and then the
        least recently used until it fits (to the disk tier); one larger than the whole budget is not kept."""
        if self.files is not None:
            self.files.drop_prefixes(state.tokens, self.names(state.adapters))
        if len(state.data) > self.budget_bytes:
            self._spill(state)
            return
        for key, old in list(self._states.items()):
            if old.adapters == state.adapters and state.tokens[: len(old.tokens)] == old.tokens:
                self._drop(key)
        while self.used_bytes + len(state.data) > self.budget_bytes:
            self._spill(self._drop(next(iter(self._states))))
        self._states[(state.adapters, state.tokens)] = state
        self.used_bytes += len(state.data)

    def best(self, prompt: Sequence[int], adapters: tuple) -> tuple[SavedState | None, int]:
        """The state sharing the longest prefix with `prompt` (computed with `adapters`), and how long;
        one from the disk tier comes back to RAM."""
        best, best_len = None, 0
        for state in self._states.values():
            if state.adapters == adapters and (n := common_prefix(state.tokens, prompt)) > best_len:
                best, best_len = state, n
        if best is not None:
            self._states.move_to_end((best.adapters, best.tokens))
        if self.files is not None:
            entry, n = self.files.best(prompt, self.names(adapters))
            if entry is not None and n > best_len and (data := self.files.take(entry)) is not None:
                best, best_len = SavedState(entry.tokens, adapters, data), n
                self.put(best)
        return best, best_len

    def close(self) -> None:
        """Everything it holds goes to the disk tier (the most recently used written last), or is dropped."""
        while self._states:
            self._spill(self._drop(next(iter(self._states))))

    def _spill(self, state: SavedState) -> None:
        if self.files is not None:
            self.files.write(state.tokens, self.names(state.adapters), state.data)

    def _drop(self, key: tuple) -> SavedState:
        state = self._states.pop(key)
        self.used_bytes -= len(state.data)
        return state
