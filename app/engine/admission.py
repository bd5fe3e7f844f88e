"""Who gets a slot next: the waiting line and the slot choice, as plain data and functions.

No llama.cpp and no threads here, so the policy is tested on its own (tests/engine/test_admission.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

K = TypeVar("K")


class Waiting(Protocol):
    @property
    def cancelled(self) -> bool: ...


W = TypeVar("W", bound=Waiting)


class AdmissionQueue(Generic[W]):
    """First come, first served, bounded: a full line refuses at once rather than making anyone wait
    without end. Entries whose client has gone are dropped without taking a place."""

    def __init__(self, max_waiting: int, on_drop: Callable[[W], None] = lambda entry: None):
        self.max_waiting, self._on_drop = max_waiting, on_drop
        self._line: deque[W] = deque()

    def offer(self, entry: W, free_slots: int = 0) -> bool:
        """Entries about to take a free slot pass through the line too: they do not count as waiting."""
        self._drop_cancelled()
        if len(self._line) >= self.max_waiting + free_slots:
            return False
        self._line.append(entry)
        return True

    def pop(self) -> W | None:
        self._drop_cancelled()
        return self._line.popleft() if self._line else None

    def __len__(self) -> int:
        return len(self._line)

    def __iter__(self) -> Iterator[W]:
        return iter(list(self._line))

    def _drop_cancelled(self) -> None:
        for entry in [e for e in self._line if e.cancelled]:
            self._line.remove(entry)
            self._on_drop(entry)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def choose_slot(free: Sequence[int], cached: dict[int, Sequence[int]], prompt: Sequence[int]) -> tuple[int, int]:
    """The free slot whose cached tokens share the longest prefix with `prompt`, and how many tokens of
    the prompt it can skip. Without any shared prefix, the lowest free slot: llama.cpp splits a batch
    whose sequence ids are not consecutive into extra micro-batches, so low ids keep batches dense.
    At least the last prompt token is always evaluated again, since its logits give the first token."""
    best, best_len = min(free), 0
    for slot in sorted(free):
        n = common_prefix(cached.get(slot, ()), prompt)
        if n > best_len:
            best, best_len = slot, n
    return best, min(best_len, len(prompt) - 1)


def next_turn(present: Sequence[K], current: K, turn_so_far_s: float, turn_s: float) -> K:
    """Which group of requests decodes next when the running ones need different LoRA adapter sets (one
    llama.cpp context applies one set to a whole batch). `present`: the groups with requests running,
    `current`: the one whose set the context holds, for `turn_so_far_s` seconds so far. It keeps the
    context for `turn_s`, since each change costs llama.cpp a graph reserve (a time, not a number of
    steps: a small model's steps are short, a large one's long); then the turn passes to the next group
    in a fixed order, so every group gets its turn and none waits on another's end."""
    groups = sorted(set(present))  # type: ignore[type-var]  # the keys are tuples of numbers
    if current in groups and (len(groups) == 1 or turn_so_far_s < turn_s):
        return current
    later = [group for group in groups if group > current]  # type: ignore[operator]
    return later[0] if later else groups[0]
