"""The admission policy on its own: plain data, no model (STYLE.md: the queue is tested as functions)."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.admission import AdmissionQueue, choose_slot, common_prefix, next_turn
from app.engine.prompt_cache import PromptCache, SavedState


@dataclass
class Entry:
    name: str
    cancelled: bool = False


def test_the_line_is_bounded_first_come_first_served_and_skips_the_departed():
    dropped: list[Entry] = []
    line: AdmissionQueue[Entry] = AdmissionQueue(max_waiting=2, on_drop=dropped.append)
    a, b, c = Entry("a"), Entry("b"), Entry("c")
    assert line.offer(a) and line.offer(b)
    assert not line.offer(c), "a full line refuses at once"
    a.cancelled = True
    assert line.offer(c), "a departed entry gives up its place"
    assert dropped == [a]
    assert [line.pop(), line.pop(), line.pop()] == [b, c, None]


def test_a_queue_of_size_zero_lets_requests_through_to_free_slots_only():
    line: AdmissionQueue[Entry] = AdmissionQueue(max_waiting=0)
    assert not line.offer(Entry("a"))
    assert line.offer(Entry("b"), free_slots=1)
    assert not line.offer(Entry("c"), free_slots=1), "b is about to take that slot"


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


def test_the_slot_holding_the_longest_prefix_wins_else_the_lowest_free_one():
    cached = {0: [9, 9], 1: [1, 2, 3], 2: [1, 2, 3, 4, 5], 3: []}
    assert choose_slot([0, 1, 3], cached, [1, 2, 3, 7]) == (1, 3)
    assert choose_slot([3, 1, 0], cached, [5, 6]) == (0, 0)
    # A prompt entirely cached still evaluates its last token: its logits give the first answer token.
    assert choose_slot([2], cached, [1, 2, 3, 4, 5]) == (2, 4)


def test_adapter_sets_take_turns_in_a_fixed_order():
    a, b, c = ((0, 1.0),), ((1, 1.0),), ((0, 0.5), (1, 0.5))
    none = ()
    assert next_turn([a], none, 0.0, 0.1) == a  # the only set running gets the context at once
    assert next_turn([a], a, 99.0, 0.1) == a  # and keeps it, with nobody waiting
    assert next_turn([a, b], a, 0.05, 0.1) == a  # its turn is not over
    assert next_turn([a, b], a, 0.1, 0.1) == b  # now it is
    assert next_turn([a, b, c], b, 0.2, 0.1) == c  # the order is fixed (by set), so every set comes round
    assert next_turn([a, b, c], c, 0.2, 0.1) == a
    assert next_turn([b, none], a, 0.0, 0.1) == b  # the set the context holds has no request left
    turns, current, since = [], none, 0.0
    for step in range(12):  # three sets, steps of 0.04 s, turns of 0.1 s: each gets 3 steps in turn
        key = next_turn([a, b, none], current, step * 0.04 - since, 0.1)
        if key != current:
            current, since = key, step * 0.04
        turns.append(key)
    assert turns == [none] * 3 + [a] * 3 + [b] * 3 + [none] * 3  # the context starts with no adapter


def state(tokens: list[int], size: int, adapters: tuple = ()) -> SavedState:
    return SavedState(tuple(tokens), adapters, bytearray(size))


def test_the_prompt_cache_keeps_the_longest_match_within_its_bound_dropping_the_least_recently_used():
    cache = PromptCache(budget_bytes=100)
    cache.put(state([1, 2, 3], 40))
    cache.put(state([7, 8], 40))
    assert cache.best([1, 2, 3, 4], ()) == (state([1, 2, 3], 40), 3)
    assert cache.best([1, 2, 3, 4], ((0, 1.0),)) == (None, 0)  # computed with another adapter set: no use
    cache.put(state([5, 6], 40))  # over the bound: [7, 8] goes, the least recently used ([1, 2, 3] was just used)
    assert cache.best([7, 8], ()) == (None, 0) and cache.best([5], ())[1] == 1
    assert cache.used_bytes == 80 <= cache.budget_bytes and len(cache) == 2
    cache.put(state([1, 2, 3, 4, 5], 30))  # the same conversation, further on: it replaces the earlier state
    assert len(cache) == 2 and cache.used_bytes == 70
    assert cache.best([1, 2, 3, 9], ()) == (state([1, 2, 3, 4, 5], 30), 3)
    cache.put(state([9], 101))  # larger than the whole budget: not kept, nothing dropped for it
    assert len(cache) == 2 and cache.used_bytes == 70
