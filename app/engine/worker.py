"""One thread that owns a model and runs its generations one at a time.

A `Task` holds a function that produces events by calling `emit(event)`; callers read the events
back through their own queue, from plain threads or from asyncio. A reader that stops reading (closed
generator, client gone, Ctrl-C) cancels its task: the task's next `emit` raises `JobCancelled`, which
unwinds it (out of transformers' `generate()` too) at the next token. Because the worker, not the
caller, holds the model, an abandoned stream can never block other callers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.engine.source import END, Failure, TokenSource

log = logging.getLogger(__name__)

Emit = Callable[[Any], None]
Decode = Callable[[Emit], None]  # one generation: produces its events by calling emit


class JobCancelled(Exception):
    """Raised inside a job by `emit` once nobody reads its events any more."""


@dataclass
class Task:
    """One generation for the worker, read once."""

    decode: Decode
    cancelled: threading.Event = field(default_factory=threading.Event)
    deliver: Callable[[Any], None] = lambda event: None  # set by the reader

    def emit(self, event: Any) -> None:
        if self.cancelled.is_set():
            raise JobCancelled
        self.deliver(event)


class Worker(TokenSource[Task]):
    def __init__(self, name: str):
        self._tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def cancel(self, task: Task) -> None:
        task.cancelled.set()

    def _attach(self, task: Task, loop: asyncio.AbstractEventLoop | None, events: Any) -> None:
        """Queues `task` on the worker, its events going to `events`."""
        task.deliver = events.put if loop is None else lambda item: loop.call_soon_threadsafe(events.put_nowait, item)
        self._tasks.put(task)

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
    def _execute(task: Task) -> None:
        try:
            task.decode(task.emit)
        except JobCancelled:
            return
        except Exception as error:  # handed to the reader, who re-raises it in its own thread
            task.deliver(Failure(error))
        task.deliver(END)
