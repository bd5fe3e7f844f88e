"""The simple chat API: `POST /api/chat` (JSON or Server-Sent Events) and `GET /api/info`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.chat.output import ChatDelta, ChatOutputParser, output_parser
from app.errors import HychatError, error_body
from app.protocol.errors import error_responses
from app.protocol.openapi import event_stream_response
from app.protocol.simple import (
    ChatRequest,
    ChatResponse,
    DoneEvent,
    InfoResponse,
    ReasoningEvent,
    TextEvent,
    chat_response,
    to_generation_request,
    usage_body,
)
from app.routes.deps import SettingsDep
from app.services.backend import Backend, Generation
from app.services.registry import BACKENDS, chat_backend

log = logging.getLogger(__name__)
router = APIRouter()


@router.post(
    "/api/chat",
    response_model=ChatResponse,
    responses={
        **event_stream_response(
            "The answer; with `stream: true`, Server-Sent Events ending with `event: done`.",
            {"message": (TextEvent, ReasoningEvent), "done": (DoneEvent,), "error": ()},
        ),
        **error_responses(400, 413, 429, 503),
    },
)
async def chat(body: ChatRequest, settings: SettingsDep) -> Any:
    """Answers a chat (`messages`) or a raw `prompt`; with `"stream": true` as Server-Sent Events:
    `data: {"reasoning": ...}` and `data: {"text": ...}` pieces, then `event: done` with finish reason
    and usage."""
    backend = chat_backend(settings, body.backend)
    request = to_generation_request(body, settings.max_tokens_limit, **settings.chat_defaults())
    generation = backend.start(request)
    parser = output_parser(generation, request)
    if body.stream:
        return EventSourceResponse(_events(generation, parser, backend))
    events = [event async for event in generation]
    return chat_response(events, parser, backend.name, generation.model_name, generation.prompt.dropped_messages)


@router.get("/api/info", response_model=InfoResponse)
def info() -> dict[str, Any]:
    return {"backends": {name: backend.info() for name, backend in BACKENDS.items()}}


async def _events(
    generation: Generation, parser: ChatOutputParser | None, backend: Backend
) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in generation:
            delta = parser.feed(event.text) if parser else ChatDelta(content=event.text)
            if event.finish_reason and parser:
                end = parser.finish()
                delta = ChatDelta(delta.reasoning + end.reasoning, delta.content + end.content)
            for key, text in (("reasoning", delta.reasoning), ("text", delta.content)):
                if text:
                    yield ServerSentEvent(json.dumps({key: text}, ensure_ascii=False))
            if event.finish_reason:
                done = DoneEvent(
                    finish_reason=event.finish_reason,
                    backend=backend.name,
                    model=generation.model_name,
                    usage=usage_body(event.usage, parser.reasoning_tokens if parser else 0),
                )
                yield ServerSentEvent(done.model_dump_json(), event="done")
    except Exception as error:  # the response has started: report in-band, keep the server up
        if not isinstance(error, HychatError):
            log.exception("generation failed mid-stream")
        yield ServerSentEvent(json.dumps(error_body(error), ensure_ascii=False), event="error")
