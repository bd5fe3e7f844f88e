"""The store behind `previous_response_id`, as a plain object with a fake clock: bounded by count
(least recently used first) and by age, copies in and out, safe across threads."""

from __future__ import annotations

import threading

from app.services.response_store import ResponseStore


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def conversation(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_the_least_recently_used_goes_first():
    store = ResponseStore(max_size=2, ttl_s=60, clock=Clock())
    store.put("a", "A", conversation("a"))
    store.put("b", "B", conversation("b"))
    assert store.get("a").body == "A"  # a is now the more recently used
    store.put("c", "C", conversation("c"))
    assert store.get("b") is None and store.get("a").body == "A" and store.get("c").body == "C"
    assert len(store) == 2


def test_a_response_expires_with_age_whatever_its_use():
    clock = Clock()
    store = ResponseStore(max_size=10, ttl_s=60, clock=clock)
    store.put("a", "A", conversation("a"))
    clock.now_s = 30
    store.put("b", "B", conversation("b"))
    assert store.get("a") is not None  # used: still expires 60 s after it was stored
    clock.now_s = 60
    assert store.get("a") is None and store.get("b").conversation == ({"role": "user", "content": "b"},)
    clock.now_s = 90
    assert len(store) == 0


def test_conversations_are_copied_in_and_out_and_delete_says_whether_it_held_one():
    store = ResponseStore(max_size=10, ttl_s=60, clock=Clock())
    given = conversation("a")
    store.put("a", "A", given)
    given[0]["content"] = "changed"
    got = store.get("a").conversation
    got[0]["content"] = "changed too"
    assert store.get("a").conversation[0]["content"] == "a"
    assert store.delete("a") and not store.delete("a") and store.get("a") is None


def test_a_size_of_zero_keeps_nothing():
    store = ResponseStore(max_size=0, ttl_s=60, clock=Clock())
    store.put("a", "A", conversation("a"))
    assert store.get("a") is None


def test_many_threads_at_once_keep_it_within_its_bound():
    store = ResponseStore(max_size=50, ttl_s=60)

    def work(n: int) -> None:
        for i in range(200):
            store.put(f"{n}-{i}", i, conversation(str(i)))
            store.get(f"{n}-{i // 2}")
            store.delete(f"{n}-{i - 5}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0 < len(store) <= 50
