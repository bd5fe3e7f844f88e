"""The model pool's policy as plain logic: one load under many simultaneous requests, the least recently
used idle model evicted first and a busy one never, the memory budget, keep_alive. The backends here
are scripted stand-ins (pure scheduling logic: the real loads, on llama.cpp, are in
tests/routes/test_model_library.py)."""

from __future__ import annotations

import asyncio
import math
import threading
from time import monotonic

import pytest

from app.errors import NoRoomForModelError
from app.services.model_pool import MIB, Held, ModelPool


class ScriptedBackend:
    """What the pool reads of a backend: loaded or not, its running generations, when it went idle."""

    def __init__(self, name: str):
        self.model_name, self.is_loaded, self.running, self.idle_since = name, True, 0, monotonic()

    def unload(self) -> None:
        self.is_loaded = False


class Loads:
    """Counts loads; each takes a moment, as a real one, so that simultaneous requests overlap it."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.lock = threading.Lock()

    def of(self, key: str, mib: int = 100, keep_alive_s: float = math.inf):
        def load() -> Held:
            with self.lock:
                self.count[key] = self.count.get(key, 0) + 1
            threading.Event().wait(0.05)
            return Held(key, ScriptedBackend(key), mib * MIB, keep_alive_s)

        return key, mib * MIB, load


def run(coroutine):
    return asyncio.run(coroutine)


def test_simultaneous_requests_for_one_model_load_it_once():
    pool, loads = ModelPool(max_loaded=3, budget_bytes=1000 * MIB), Loads()

    async def many():
        return await asyncio.gather(*[pool.ensure(*loads.of("q8")) for _ in range(8)])

    held = run(many())
    assert loads.count == {"q8": 1} and len({id(h) for h in held}) == 1


def test_the_least_recently_used_idle_model_goes_first_and_a_busy_one_never():
    pool, loads = ModelPool(max_loaded=2, budget_bytes=1000 * MIB), Loads()

    async def scenario():
        a = await pool.ensure(*loads.of("a"))
        b = await pool.ensure(*loads.of("b"))
        await pool.ensure(*loads.of("a"))  # a is now the more recently used
        await pool.ensure(*loads.of("c"))  # so b goes
        assert list(pool.held) == ["a", "c"] and not b.backend.is_loaded and a.backend.is_loaded
        pool.held["a"].backend.running = pool.held["c"].backend.running = 1  # both answering
        with pytest.raises(NoRoomForModelError, match="each is answering requests") as refused:
            await pool.ensure(*loads.of("d"))
        assert refused.value.retry_after_s and list(pool.held) == ["a", "c"]
        pool.held["a"].backend.running = 0
        await pool.ensure(*loads.of("d"))  # the idle one goes, though c was used before it
        assert list(pool.held) == ["c", "d"]

    run(scenario())


def test_the_memory_budget_decides_what_goes_and_what_cannot_load():
    pool, loads = ModelPool(max_loaded=10, budget_bytes=300 * MIB), Loads()

    async def scenario():
        await pool.ensure(*loads.of("small", 100))
        await pool.ensure(*loads.of("medium", 150))
        await pool.ensure(*loads.of("other", 100))  # 350 > 300: the oldest idle goes
        assert list(pool.held) == ["medium", "other"]
        with pytest.raises(NoRoomForModelError, match="needs about 400 MiB, more than the 300 MiB"):
            await pool.ensure(*loads.of("huge", 400))
        assert list(pool.held) == ["medium", "other"]  # nothing was unloaded for a load that cannot fit

    run(scenario())


def test_keep_alive_unloads_an_idle_model_and_waits_for_a_busy_one():
    pool, loads = ModelPool(max_loaded=3, budget_bytes=1000 * MIB), Loads()

    async def scenario():
        kept = await pool.ensure(*loads.of("kept"))  # inf: stays
        brief = await pool.ensure(*loads.of("brief", keep_alive_s=60))
        now = await pool.ensure(*loads.of("now"), keep_alive_s=0)  # a request's keep_alive replaces the model's
        now.backend.running = 1
        brief.backend.idle_since -= 61
        await pool.expire()
        assert list(pool.held) == ["kept", "now"] and not brief.backend.is_loaded
        assert now.expires_at() is None and kept.expires_at() is None
        now.backend.running = 0
        await pool.expire()
        assert list(pool.held) == ["kept"]
        assert await pool.unload("missing") is True  # nothing to wait for
        kept.backend.running = 1
        assert await pool.unload("kept") is False and kept.keep_alive_s == 0  # goes once idle
        kept.backend.running = 0
        await pool.expire()
        assert list(pool.held) == []

    run(scenario())
