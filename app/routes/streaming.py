"""A streamed answer as Server-Sent Events. Once the response has started, an error can no longer
change its status: it goes out in-band, in the dialect's shape, and the server stays up."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from sse_starlette import EventSourceResponse, ServerSentEvent

from app.errors import HychatError

log = logging.getLogger(__name__)


def event_stream(
    frames: AsyncIterator[ServerSentEvent],
    error_frame: Callable[[Exception], ServerSentEvent],
    last: ServerSentEvent | None = None,
) -> EventSourceResponse:
    """`frames`, then `last` (OpenAI's `[DONE]`) whether they ended well or not."""

    async def guarded() -> AsyncIterator[ServerSentEvent]:
        try:
            async for frame in frames:
                yield frame
        except Exception as error:
            if not isinstance(error, HychatError):
                log.exception("generation failed mid-stream")
            yield error_frame(error)
        if last is not None:
            yield last

    return EventSourceResponse(guarded())
