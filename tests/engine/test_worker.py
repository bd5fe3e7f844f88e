"""The worker's queueing and cancellation, with scripted jobs: pure scheduling logic, no model needed."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.engine.source import END, Failure, abatched
from app.engine.worker import Task, Worker


def counting_job(log: list[int], n: int = 1000, pace: threading.Event | None = None):
    def job(emit):
        for i in range(n):
            log.append(i)
            emit(i)
            if pace is not None:
                pace.wait(1)

    return job


def test_jobs_run_one_at_a_time():
    worker = Worker("test")
    active, overlaps = [0], []

    def job(tag):
        def run(emit):
            active[0] += 1
            overlaps.append(active[0])
            emit(tag)
            active[0] -= 1

        return run

    results = []
    threads = [threading.Thread(target=lambda t=t: results.extend(worker.stream(Task(job(t))))) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == list(range(8)) and max(overlaps) == 1


def test_closing_a_stream_cancels_its_job_at_the_next_event():
    worker = Worker("test")
    produced: list[int] = []
    pace = threading.Event()
    stream = worker.stream(Task(counting_job(produced, pace=pace)))
    assert next(stream) == 0
    stream.close()
    pace.set()
    assert list(worker.stream(Task(counting_job([], 3)))) == [0, 1, 2]  # queued behind it: the worker is free again
    assert len(produced) <= 3


def test_job_errors_reach_the_reader_and_the_worker_survives():
    worker = Worker("test")

    def failing(emit):
        emit(1)
        raise ValueError("boom")

    stream = worker.stream(Task(failing))
    assert next(stream) == 1
    with pytest.raises(ValueError, match="boom"):
        next(stream)
    assert list(worker.stream(Task(counting_job([], 2)))) == [0, 1]


def test_async_readers_get_events_and_cancel_on_exit():
    worker = Worker("test")
    produced: list[int] = []

    async def read_two():
        events = []
        async for event in worker.astream(Task(counting_job(produced, 10_000))):
            events.append(event)
            if len(events) == 2:
                break
        return events

    assert asyncio.run(read_two()) == [0, 1]
    assert list(worker.stream(Task(counting_job([], 2)))) == [0, 1]
    assert len(produced) < 10_000


def test_a_reader_whose_event_loop_is_gone_does_not_kill_the_worker():
    worker = Worker("test")

    async def start_and_leave():
        stream = worker.astream(Task(counting_job([], 100_000))).__aiter__()
        await stream.__anext__()

    asyncio.run(start_and_leave())  # the loop closes with the job still producing
    assert list(worker.stream(Task(counting_job([], 2)))) == [0, 1]


def test_items_waiting_together_are_read_as_one_batch_and_a_failure_after_them_raised():
    """What a coroutine reader gets (source.abatched): the items posted while it was busy, at once."""

    async def read(items):
        queue: asyncio.Queue = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        batches = []
        try:
            async for batch in abatched(queue):
                batches.append(batch)
        except RuntimeError as error:
            batches.append(str(error))
        return batches

    assert asyncio.run(read([1, 2, 3, END])) == [[1, 2, 3]]
    assert asyncio.run(read([1, 2, Failure(RuntimeError("engine stopped"))])) == [[1, 2], "engine stopped"]
    assert asyncio.run(read([END, 4])) == []
