"""One thread that owns a model and runs its generations one at a time.

Callers submit a job (a function returning an iterator of events) and read the events back through
their own queue, from plain threads or from asyncio. A reader that stops reading (closed generator,
client gone, Ctrl-C) cancels its job: the worker stops it after the next event. Because the worker,
not the caller, holds the model, an abandoned stream can never block other callers.
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

Job = Callable[[], Iterator[Any]]

_END = object()


@dataclass
class _Failure:
    error: BaseException


@dataclass
class _Task:
    job: Job
    emit: Callable[[Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


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
            while (item := events.get()) is not _END:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            task.cancelled.set()

    async def astream(self, job: Job) -> AsyncIterator[Any]:
        """Like `stream`, for a coroutine: events arrive through the event loop, no thread per event."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        task = _Task(job, lambda item: loop.call_soon_threadsafe(events.put_nowait, item))
        self._tasks.put(task)
        try:
            while (item := await events.get()) is not _END:
                if isinstance(item, _Failure):
                    raise item.error
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
        if task.cancelled.is_set():
            task.emit(_END)
            return
        try:
            events = task.job()
            try:
                for event in events:
                    task.emit(event)
                    if task.cancelled.is_set():
                        break
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
        except Exception as error:  # handed to the reader, who re-raises it in its own thread
            task.emit(_Failure(error))
        task.emit(_END)
