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
from contextlib import aclosing
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
        async with aclosing(self.abatches(job)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def abatches(self, job: JobT) -> AsyncIterator[list[TokenEvent]]:
        """The same, as lists of the events that arrived together (a speculative step's tokens, or
        those a slow reader let pile up), so that a reader may write one frame for each list."""
        events: asyncio.Queue[Any] = asyncio.Queue()
        self._attach(job, asyncio.get_running_loop(), events)
        try:
            async for batch in abatched(events):
                yield batch
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


async def abatched(events: asyncio.Queue[Any]) -> AsyncIterator[list[Any]]:
    """A stream's items from an event loop's queue, as lists of those waiting together, up to END; a
    Failure is raised here, after the items before it."""
    while True:
        batch = [await events.get()]
        while not (batch[-1] is END or isinstance(batch[-1], Failure) or events.empty()):
            batch.append(events.get_nowait())
        last = batch.pop() if batch[-1] is END or isinstance(batch[-1], Failure) else None
        if batch:
            yield batch
        if isinstance(last, Failure):
            raise last.error
        if last is END:
            return
