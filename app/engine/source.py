"""The one contract of whatever runs generations: the llama.cpp batch engine (`batch.BatchEngine`,
jobs are `Ticket`s) and the PyTorch worker thread (`worker.Worker`, jobs are `Task`s).

A source posts a job's events, from its own thread, into the queue its reader attached: a plain
queue for a thread, an asyncio queue (through `call_soon_threadsafe`) for a coroutine. The stream
ends with END; a Failure carries the job's error into the reader's own thread. A reader that stops
reading cancels its job.
"""

from __future__ import annotations

import asyncio
import queue
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.types import TokenEvent

END = object()  # the last item of every stream
JobT = TypeVar("JobT")


@dataclass
class Failure:
    """A job's error, raised again in its reader's own thread."""

    error: BaseException


class TokenSource(ABC, Generic[JobT]):
    def stream(self, job: JobT) -> Iterator[TokenEvent]:
        """The job's events in the calling thread; closing the iterator cancels the job."""
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._attach(job, None, events)
        try:
            yield from read(events)
        finally:
            self.cancel(job)

    async def astream(self, job: JobT) -> AsyncIterator[TokenEvent]:
        """The same for a coroutine: events arrive through the event loop, no thread per event."""
        events: asyncio.Queue[Any] = asyncio.Queue()
        self._attach(job, asyncio.get_running_loop(), events)
        try:
            async for item in aread(events):
                yield item
        finally:
            self.cancel(job)

    @abstractmethod
    def cancel(self, job: JobT) -> None:
        """Stops the job at its next token; its reader gets no more events."""

    @abstractmethod
    def _attach(self, job: JobT, loop: asyncio.AbstractEventLoop | None, events: Any) -> None:
        """From now on the job's events go to `events` (through `loop`, when given)."""


def read(events: queue.SimpleQueue[Any]) -> Iterator[Any]:
    """A stream's items from a thread-side queue, up to END; a Failure is raised here."""
    while (item := events.get()) is not END:
        if isinstance(item, Failure):
            raise item.error
        yield item


async def aread(events: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while (item := await events.get()) is not END:
        if isinstance(item, Failure):
            raise item.error
        yield item
