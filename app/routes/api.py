"""The simple chat API: `POST /api/chat` (JSON or Server-Sent Events) and `GET /api/info`.

`POST /api/chat` is shared with Ollama's dialect: a body with `model` is Ollama's (hychat's own forbids
the field) and is answered, errors included, as Ollama does (`app/routes/ollama.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import Discriminator, Tag
from sse_starlette import ServerSentEvent

from app.errors import error_body
from app.protocol import ollama
from app.protocol.errors import ErrorResponse, error_responses
from app.protocol.ollama import OllamaChatRequest, OllamaError, is_ollama_body
from app.protocol.ollama_answers import OllamaChatChunk, ndjson_response
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
from app.routes import ollama as ollama_routes
from app.routes.deps import BEHIND_API_KEY, RegistryDep, SettingsDep, body_dialect_route
from app.routes.streaming import event_stream, hychat_error, unless_gone
from app.services.chat import ChatStream, start_chat

router = APIRouter(**BEHIND_API_KEY)


def _dialect(body: Any) -> str | None:
    """Ollama's body always names its model; hychat's forbids the field. The tags are capitalised so
    that an error's field path leaves them out (app/protocol/errors.py)."""
    return None if not isinstance(body, dict) else "Ollama" if is_ollama_body(body) else "Hychat"


ChatBody = Annotated[
    Annotated[ChatRequest, Tag("Hychat")] | Annotated[OllamaChatRequest, Tag("Ollama")],
    Discriminator(_dialect, custom_error_type="model_attributes_type"),  # pydantic's error for a body that is no object
]
# The 200's other kinds of content: hychat's Server-Sent Events, Ollama's JSON lines.
SSE = event_stream_response("", {"message": (TextEvent, ReasoningEvent), "done": (DoneEvent,), "error": ()})[200]
CHAT_STREAMS = {**SSE["content"], **ndjson_response("", OllamaChatChunk)[200]["content"]}


async def chat(body: ChatBody, settings: SettingsDep, registry: RegistryDep, client: Request) -> Any:
    """Answers in the dialect of the body. Hychat's own (no `model`): a chat (`messages`) or a raw
    `prompt`; with `"stream": true` as Server-Sent Events: `data: {"reasoning": ...}` and
    `data: {"text": ...}` pieces, then `event: done` with finish reason and usage. Ollama's (with
    `model`): Ollama's chat, newline-delimited JSON chunks unless `"stream": false`. Errors come in
    the shape of the body's dialect."""
    if isinstance(body, OllamaChatRequest):
        return await ollama_routes.answer_chat(body, settings, registry, client)
    request = to_generation_request(body, settings.max_tokens_limit, **registry.chat_defaults(body.backend))
    stream = start_chat(await registry.resolve(body.backend), request)
    if body.stream:
        return event_stream(_frames(stream), hychat_error)
    answer = await unless_gone(client, [stream], stream.answer())
    return chat_response(answer, stream.backend_name, stream.model_name, stream.dropped_messages)


router.add_api_route(
    "/api/chat",
    chat,
    methods=["POST"],
    response_model=ChatResponse | OllamaChatChunk,
    responses={
        200: {
            "description": 'The answer: JSON; streamed, Server-Sent Events (hychat\'s body with `"stream": true`) '
            'ending with `event: done`, or newline-delimited JSON chunks (Ollama\'s body, unless `"stream": false`).',
            "content": CHAT_STREAMS,
        },
        **error_responses(400, 401, 404, 413, 429, 503, model=ErrorResponse | OllamaError),  # the body's dialect's
    },
    route_class_override=body_dialect_route(lambda body: ollama.error_body if is_ollama_body(body) else error_body),
)


@router.get("/api/info", response_model=InfoResponse)
def info(registry: RegistryDep) -> dict[str, Any]:
    return {"backends": {name: backend.info() for name, backend in registry.backends.items()}}


async def _frames(stream: ChatStream) -> AsyncIterator[ServerSentEvent]:
    async for delta in stream:
        for event in stream_events(delta, stream.backend_name, stream.model_name):
            yield ServerSentEvent(event.model_dump_json(), event="done" if isinstance(event, DoneEvent) else None)
