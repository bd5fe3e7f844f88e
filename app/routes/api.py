"""The simple chat API: `POST /api/chat` (JSON or Server-Sent Events) and `GET /api/info`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from sse_starlette import ServerSentEvent

from app.errors import error_body
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
    stream_events,
    to_generation_request,
)
from app.routes.deps import BEHIND_API_KEY, RegistryDep, SettingsDep
from app.routes.streaming import event_stream
from app.services.chat import ChatStream, start_chat

router = APIRouter(**BEHIND_API_KEY)


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
async def chat(body: ChatRequest, settings: SettingsDep, registry: RegistryDep) -> Any:
    """Answers a chat (`messages`) or a raw `prompt`; with `"stream": true` as Server-Sent Events:
    `data: {"reasoning": ...}` and `data: {"text": ...}` pieces, then `event: done` with finish reason
    and usage."""
    request = to_generation_request(body, settings.max_tokens_limit, **settings.chat_defaults())
    stream = start_chat(registry, request, backend=body.backend)
    if body.stream:
        return event_stream(_frames(stream), _error_frame)
    answer = await stream.answer()
    return chat_response(answer, stream.backend_name, stream.model_name, stream.dropped_messages)


@router.get("/api/info", response_model=InfoResponse)
def info(registry: RegistryDep) -> dict[str, Any]:
    return {"backends": {name: backend.info() for name, backend in registry.backends.items()}}


async def _frames(stream: ChatStream) -> AsyncIterator[ServerSentEvent]:
    async for delta in stream:
        for event in stream_events(delta, stream.backend_name, stream.model_name):
            yield ServerSentEvent(event.model_dump_json(), event="done" if isinstance(event, DoneEvent) else None)


def _error_frame(error: Exception) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(error_body(error), ensure_ascii=False), event="error")
