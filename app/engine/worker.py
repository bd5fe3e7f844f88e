"""One thread that owns a model and runs its generations one at a time.

A job is a function that produces events by calling `emit(event)`; callers read the events back
through their own queue, from plain threads or from asyncio. A reader that stops reading (closed
generator, client gone, Ctrl-C) cancels its job: the job's next `emit` raises `JobCancelled`, which
unwinds it (out of transformers' `generate()` too) at the next token. Because the worker, not the
caller, holds the model, an abandoned stream can never block other callers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Emit = Callable[[Any], None]
Job = Callable[[Emit], None]

END = object()  # the last item of every stream


class JobCancelled(Exception):
    """Raised inside a job by `emit` once nobody reads its events any more."""


@dataclass
class Failure:
    """A job's error, raised again in its reader's own thread."""

    error: BaseException


@dataclass
class _Task:
    job: Job
    deliver: Callable[[Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Any) -> None:
        if self.cancelled.is_set():
            raise JobCancelled
        self.deliver(event)


class Worker:
    def __init__(self, name: str):
        self._tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stream(self, job: Job) -> Iterator[Any]:
        """Runs `job` on the worker; yields its events in the calling thread."""
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        task = _Task(job, events.put)
        self._tasks.put(task)
        try:
            yield from read(events)
        finally:
            task.cancelled.set()

    async def astream(self, job: Job) -> AsyncIterator[Any]:
        """Like `stream`, for a coroutine: events arrive through the event loop, no thread per event."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        task = _Task(job, lambda item: loop.call_soon_threadsafe(events.put_nowait, item))
        self._tasks.put(task)
        try:
            async for item in aread(events):
                yield item
        finally:
            task.cancelled.set()

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            try:
                self._execute(task)
            except RuntimeError:  # the reader's event loop is gone: nobody is listening
                task.cancelled.set()
            except Exception:  # the worker must outlive any single job
                log.exception("generation worker: unexpected failure")

    @staticmethod
    def _execute(task: _Task) -> None:
        try:
            task.job(task.emit)
        except JobCancelled:
            return
        except Exception as error:  # handed to the reader, who re-raises it in its own thread
            task.deliver(Failure(error))
        task.deliver(END)


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
