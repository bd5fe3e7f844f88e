"""A streamed answer (Server-Sent Events, or any stream of frames). Once the response has started, an
error can no longer change its status: it goes out in-band, in the dialect's shape, and the server
stays up."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from sse_starlette import EventSourceResponse, ServerSentEvent

from app.errors import HychatError

log = logging.getLogger(__name__)
T = TypeVar("T")


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
