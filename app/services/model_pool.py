"""The models held in memory: loaded when a request names one, unloaded when idle.

A `ModelPool` holds each loaded model's backend under a key (a library name, or a configured backend's
name). Loads run one at a time, off the event loop: requests naming the same model at the same moment
wait for that one load, as in Ollama's scheduler. Room is made before a load: at most `max_loaded`
models and `budget_bytes` of estimated memory, the least recently used idle models unloaded first and
a model with generations running never; when that is not enough, a 503 says what would be needed.
A model expires `keep_alive_s` after its last generation ended (inf: never); `run_expiry` checks
every second.

The pool's state is touched on the event loop only; loads and unloads run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic, time

from app.errors import NoRoomForModelError
from app.services.backend import Backend

log = logging.getLogger(__name__)
MIB = 1 << 20


@dataclass
class Held:
    key: str
    backend: Backend
    estimate_bytes: int  # memory it takes, as estimated before loading
    keep_alive_s: float  # after its last generation; inf: until unloaded or evicted
    aliases: tuple[str, ...] = ()  # other names requests may give it
    loaded_at: float = field(default_factory=time)

    @property
    def busy(self) -> bool:
        return self.backend.running > 0

    def expires_at(self) -> float | None:
        """The wall-clock time it will be unloaded if no request comes; None: not while busy, or never."""
        if self.busy or math.isinf(self.keep_alive_s):
            return None
        return time() + self.keep_alive_s - (monotonic() - self.backend.idle_since)

    def names(self) -> set[str]:
        return {name for name in (self.backend.model_name, self.key, *self.aliases) if name}


class ModelPool:
    def __init__(self, max_loaded: int, budget_bytes: int):
        self.max_loaded, self.budget_bytes = max_loaded, budget_bytes
        self.held: OrderedDict[str, Held] = OrderedDict()  # the least recently used first
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    @property
    def _loading(self) -> asyncio.Lock:
        """One load or unload at a time (a lock per event loop: an app served twice, by tests, has two)."""
        return self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())

    def loaded(self, key: str) -> Held | None:
        held = self.held.get(key)
        return held if held is not None and held.backend.is_loaded else None

    def adopt(self, held: Held) -> None:
        """A model loaded elsewhere (the configured ones, at start-up)."""
        self.held[held.key] = held

    def use(self, held: Held, keep_alive_s: float | None = None) -> None:
        """Marks it used now; a request's `keep_alive_s` replaces the model's (None: leaves it)."""
        self.held.move_to_end(held.key)
        held.backend.idle_since = monotonic()
        if keep_alive_s is not None:
            held.keep_alive_s = keep_alive_s

    async def ensure(
        self, key: str, estimate_bytes: int, load: Callable[[], Held], keep_alive_s: float | None = None
    ) -> Held:
        """The model under `key`, loaded by `load` (in a thread) unless it is already."""
        held = self.loaded(key)
        if held is None:
            async with self._loading:
                held = self.loaded(key)  # the request that held the lock may have loaded it
                if held is None:
                    for victim in self._room_for(key, estimate_bytes):
                        await self._unload(victim, "to make room for " + key)
                    held = await asyncio.to_thread(load)
                    self.held[key] = held
        self.use(held, keep_alive_s)
        return held

    async def unload(self, key: str) -> bool:
        """Unloads it now if idle (True); a busy one goes once its last generation ends (False)."""
        async with self._loading:
            held = self.held.get(key)
            if held is None:
                return True
            if held.busy:
                held.keep_alive_s = 0
                return False
            await self._unload(held, "as asked")
            return True

    async def expire(self) -> None:
        now = monotonic()
        for held in list(self.held.values()):
            if not held.busy and now - held.backend.idle_since >= held.keep_alive_s:
                async with self._loading:
                    if self.held.get(held.key) is held and not held.busy:
                        await self._unload(held, f"idle for {held.keep_alive_s:g} s (keep_alive)")

    async def run_expiry(self, every_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.expire()
            except Exception:  # the loop must outlive one failed unload
                log.exception("unloading an expired model failed")

    def _room_for(self, key: str, needs: int) -> list[Held]:
        """The idle models to unload, least recently used first, so that `key` fits."""
        if needs > self.budget_bytes:
            raise NoRoomForModelError(
                f"{key} needs about {needs // MIB} MiB, more than the {self.budget_bytes // MIB} MiB that loaded "
                "models may take (HYCHAT_MODELS_MEMORY_MIB)"
            )
        count, used = len(self.held), sum(h.estimate_bytes for h in self.held.values())
        idle = [held for held in self.held.values() if not held.busy]
        victims = []
        while count >= self.max_loaded or used + needs > self.budget_bytes:
            if not idle:
                raise NoRoomForModelError(
                    f"{key} needs about {needs // MIB} MiB; {count} models are loaded (at most "
                    f"{self.max_loaded}, HYCHAT_MAX_LOADED_MODELS), taking about {used // MIB} of the "
                    f"{self.budget_bytes // MIB} MiB budget (HYCHAT_MODELS_MEMORY_MIB), and each is "
                    "answering requests: try again when one is idle",
                    retry_after_s=5,
                )
            victim = idle.pop(0)
            victims.append(victim)
            count, used = count - 1, used - victim.estimate_bytes
        return victims

    async def _unload(self, held: Held, why: str) -> None:
        del self.held[held.key]
        log.info("unloading %s (%s)", held.backend.model_name or held.key, why)
        await asyncio.to_thread(held.backend.unload)
