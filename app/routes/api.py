"""The simple chat API: `POST /api/chat` (JSON or Server-Sent Events) and `GET /api/info`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.errors import HychatError, error_body
from app.protocol.api import ChatRequest, ChatResponse, DoneEvent, chat_response, to_generation_request, usage_body
from app.routes.deps import SettingsDep
from app.services.backend import Backend, Completion, Generation
from app.services.registry import BACKENDS, chat_backend

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/api/chat", response_model=ChatResponse)
async def chat(body: ChatRequest, settings: SettingsDep) -> Any:
    """Answers a chat (`messages`) or a raw `prompt`; with `"stream": true` as Server-Sent Events:
    `data: {"text": ...}` per piece, then `event: done` with finish reason and usage."""
    backend = chat_backend(settings, body.backend)
    generation = backend.start(to_generation_request(body, settings.max_tokens_limit))
    if body.stream:
        return EventSourceResponse(_events(generation, backend))
    completion = Completion.from_events([event async for event in generation])
    return chat_response(completion, backend.name, backend.model_name)


@router.get("/api/info")
def info() -> dict[str, Any]:
    return {"backends": {name: backend.info() for name, backend in BACKENDS.items()}}


async def _events(generation: Generation, backend: Backend) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in generation:
            if event.text:
                yield ServerSentEvent(json.dumps({"text": event.text}, ensure_ascii=False))
            if event.finish_reason:
                done = DoneEvent(
                    finish_reason=event.finish_reason,
                    backend=backend.name,
                    model=backend.model_name,
                    usage=usage_body(event.usage),
                )
                yield ServerSentEvent(done.model_dump_json(), event="done")
    except Exception as error:  # the response has started: report in-band, keep the server up
        if not isinstance(error, HychatError):
            log.exception("generation failed mid-stream")
        yield ServerSentEvent(json.dumps(error_body(error), ensure_ascii=False), event="error")
