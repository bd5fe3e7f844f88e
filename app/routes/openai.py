"""The OpenAI-compatible API: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.

Each route picks the backend the request's `model` names, starts the generation (which validates,
so a bad request fails before a response starts) and answers JSON, or Server-Sent Events
(`data: {chunk}` ... `data: [DONE]`) with `"stream": true`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.chat.output import output_parser
from app.errors import HychatError, error_body
from app.protocol.errors import error_responses
from app.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    to_chat_generation_request,
    to_completion_generation_request,
)
from app.protocol.openai_responses import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatStream,
    CompletionResponse,
    CompletionStream,
    ModelCard,
    ModelList,
    chat_completion_response,
    completion_response,
    response_meta,
)
from app.protocol.openapi import event_stream_response
from app.routes.deps import SettingsDep
from app.services.backend import Generation, GenerationRequest
from app.services.registry import backend_for_model, served_backends

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
GENERATION_ERRORS = error_responses(400, 404, 413, 429, 503)


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={
        **event_stream_response(
            "With `stream: true`: `data: {chat.completion.chunk}` lines, then `data: [DONE]`.",
            {"message": (ChatCompletionChunk,)},
            "[DONE]",
        ),
        **GENERATION_ERRORS,
    },
)
async def chat_completions(body: ChatCompletionRequest, settings: SettingsDep) -> Any:
    request = to_chat_generation_request(body, settings.max_tokens_limit, **settings.chat_defaults())
    return await _answer(body, request, settings, "chatcmpl")


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={
        **event_stream_response(
            "With `stream: true`: `data: {text_completion}` lines, then `data: [DONE]`.",
            {"message": (CompletionResponse,)},
            "[DONE]",
        ),
        **GENERATION_ERRORS,
    },
)
async def completions(body: CompletionRequest, settings: SettingsDep) -> Any:
    request = to_completion_generation_request(body, settings.max_tokens_limit)
    return await _answer(body, request, settings, "cmpl")


async def _answer(body: Any, request: GenerationRequest, settings: Any, kind: str) -> Any:
    """Starts the generation (a bad request fails here, before a response starts), then answers with
    Server-Sent Events or, once the generation is complete, JSON."""
    backend = backend_for_model(settings, body.model)
    generation = backend.start(request)
    meta = response_meta(kind, generation.model_name or body.model, generation.prompt.dropped_messages)
    log.debug("%s: %s on %s", meta.id, kind, backend.name)
    parser = output_parser(generation, request)
    with_logprobs = request.params.logprobs is not None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = ChatStream(meta, include_usage, parser) if parser else CompletionStream(meta, include_usage)
        return EventSourceResponse(_sse(generation, stream))
    events = [event async for event in generation]
    if parser:
        return chat_completion_response(events, meta, parser, with_logprobs)
    return completion_response(events, meta, with_logprobs)


@router.get("/models", response_model=ModelList)
def models(settings: SettingsDep) -> ModelList:
    cards: dict[str, ModelCard] = {}
    for backend in served_backends(settings):
        name = backend.model_name or backend.name
        cards.setdefault(name, ModelCard(id=name, created=int(time.time()), backend=backend.name))
    return ModelList(data=list(cards.values()))


async def _sse(generation: Generation, stream: ChatStream | CompletionStream) -> AsyncIterator[ServerSentEvent]:
    try:
        for chunk in stream.first():
            yield ServerSentEvent(chunk.model_dump_json())
        async for event in generation:
            for chunk in stream.chunks(event):
                yield ServerSentEvent(chunk.model_dump_json())
    except Exception as error:  # the response has started: report in-band (as OpenAI does), keep the server up
        if not isinstance(error, HychatError):
            log.exception("generation failed mid-stream")
        yield ServerSentEvent(json.dumps(error_body(error), ensure_ascii=False))
    yield ServerSentEvent("[DONE]")
