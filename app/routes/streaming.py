"""A streamed answer (Server-Sent Events, or any stream of frames). Once the response has started, an
error can no longer change its status: it goes out in-band, in the dialect's shape, and the server
stays up."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from app.errors import ClientGoneError, HychatError, error_body
from app.protocol import anthropic_answers, llama_server
from app.protocol.responses_answers import StreamEvent, error_event
from app.services.chat import ChatStream

log = logging.getLogger(__name__)
T = TypeVar("T")


# Each dialect's in-band error: the last frame of a stream cut short. (The gateway of app.cluster
# writes them too, for a replica lost mid-stream; OpenAI's stream then ends with its [DONE].)
def _sse_error(body: dict, event: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(body, ensure_ascii=False), event=event)


def openai_error(error: Exception) -> ServerSentEvent:
    return _sse_error(error_body(error))


def hychat_error(error: Exception) -> ServerSentEvent:  # /api/chat's own stream
    return _sse_error(error_body(error), "error")


def anthropic_error(error: Exception) -> ServerSentEvent:
    return _sse_error(anthropic_answers.error_body(error), "error")


def llama_server_error(error: Exception) -> ServerSentEvent:
    return _sse_error(llama_server.error_body(error))


def responses_event(event: StreamEvent) -> ServerSentEvent:
    return ServerSentEvent(event.model_dump_json(by_alias=True), event=event.type)


def responses_error(error: Exception, sequence_number: int) -> ServerSentEvent:
    """OpenAI Responses' `error` event, numbered after the stream's events before it."""
    return responses_event(error_event(error, sequence_number))


def event_stream(
    frames: AsyncIterator[ServerSentEvent],
    error_frame: Callable[[Exception], ServerSentEvent],
    last: ServerSentEvent | None = None,
) -> EventSourceResponse:
    """`frames`, then `last` (OpenAI's `[DONE]`) whether they ended well or not."""
    return EventSourceResponse(guarded(frames, error_frame, last))


async def guarded(
    frames: AsyncIterator[T], error_frame: Callable[[Exception], T], last: T | None = None
) -> AsyncIterator[T]:
    """`frames` of any stream (SSE events, JSON lines), an error that cuts them short as the dialect's
    `error_frame`, then `last` if given."""
    try:
        async for frame in frames:
            yield frame
    except Exception as error:
        if not isinstance(error, HychatError):
            log.exception("generation failed mid-stream")
        yield error_frame(error)
    if last is not None:
        yield last


async def merged(sources: Sequence[AsyncIterable[T]]) -> AsyncIterator[tuple[int, T]]:
    """The items of all `sources` as they come, each with the index of its source. A failure in one
    source, or leaving the loop, stops them all."""
    if len(sources) == 1:
        async for item in sources[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, T | _End | Exception]] = asyncio.Queue()

    async def pump(i: int, source: AsyncIterable[T]) -> None:
        try:
            async for item in source:
                await queue.put((i, item))
            await queue.put((i, _END))
        except Exception as error:
            await queue.put((i, error))

    tasks = [asyncio.create_task(pump(i, source)) for i, source in enumerate(sources)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, _End):
                running -= 1
                continue
            yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def all_of(work: Sequence[Awaitable[T]]) -> list[T]:
    """The results of `work`, run together; the first failure cancels the rest and is raised as it
    is (a TaskGroup's ExceptionGroup would reach the client as a 500)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(item) for item in work]  # type: ignore[arg-type]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def unless_gone(client: Request, streams: Sequence[ChatStream], work: Awaitable[T]) -> T:
    """`work` (the whole answers of `streams`), unless the client leaves first: then the generations
    stop, as a stream's do when its reader goes, and their slots are free again (llama-server's
    behaviour; else a long answer would run on for no one)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.create_task(_disconnected(client))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        for stream in streams:
            stream.cancel()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGoneError("the client left before its answer was whole")
    finally:
        gone.cancel()


async def _disconnected(client: Request) -> None:
    """Returns once the client has left (its body is read: the next message is the disconnect)."""
    while (await client.receive())["type"] != "http.disconnect":
        pass


class _End:
    pass


_END = _End()
