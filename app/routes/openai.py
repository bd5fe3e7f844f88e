"""The OpenAI-compatible API: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
`GET /v1/models`.

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
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.errors import error_body
from app.protocol.errors import error_responses
from app.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    to_chat_generation_request,
    to_completion_generation_request,
)
from app.protocol.openai_answers import (
    ChatChunks,
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChunks,
    CompletionResponse,
    ModelCard,
    ModelList,
    chat_completion_response,
    completion_response,
    response_meta,
)
from app.protocol.openai_embeddings import EmbeddingRequest, EmbeddingResponse, embedding_inputs, embedding_response
from app.protocol.openapi import event_stream_response
from app.routes.deps import BEHIND_API_KEY, RegistryDep, SettingsDep
from app.routes.streaming import event_stream
from app.services.chat import ChatStream, start_chat
from app.types import GenerationRequest

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", **BEHIND_API_KEY)
GENERATION_ERRORS = error_responses(400, 404, 413, 429, 503)
DONE = ServerSentEvent("[DONE]")


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
async def chat_completions(body: ChatCompletionRequest, settings: SettingsDep, registry: RegistryDep) -> Any:
    request = to_chat_generation_request(body, settings.max_tokens_limit, **settings.chat_defaults())
    return await _answer(body, request, registry, "chatcmpl")


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
async def completions(body: CompletionRequest, settings: SettingsDep, registry: RegistryDep) -> Any:
    request = to_completion_generation_request(body, settings.max_tokens_limit)
    return await _answer(body, request, registry, "cmpl")


async def _answer(body: Any, request: GenerationRequest, registry: RegistryDep, kind: str) -> Any:
    """Starts the generation (a bad request fails here, before a response starts), then answers with
    Server-Sent Events or, once the answer is whole, JSON."""
    stream = start_chat(registry, request, model=body.model)
    meta = response_meta(kind, stream.model_name or body.model, stream.dropped_messages)
    log.debug("%s: %s on %s", meta.id, kind, stream.backend_name)
    is_chat = kind == "chatcmpl"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = ChatChunks(meta, include_usage) if is_chat else CompletionChunks(meta, include_usage)
        return event_stream(_frames(stream, chunks), _error_frame, DONE)
    answer, with_logprobs = await stream.answer(), request.params.logprobs is not None
    return (chat_completion_response if is_chat else completion_response)(answer, meta, with_logprobs)


@router.post("/embeddings", response_model=EmbeddingResponse, responses=error_responses(400, 404, 413, 503))
async def embeddings(body: EmbeddingRequest, registry: RegistryDep) -> EmbeddingResponse:
    """Embeddings from llama.cpp, normalised to length 1, computed beside the chats, not between them."""
    backend = registry.for_model(body.model)
    result = await run_in_threadpool(backend.embed, embedding_inputs(body))
    return embedding_response(result, body, backend.model_name or body.model)


@router.get("/models", response_model=ModelList)
def models(registry: RegistryDep) -> ModelList:
    cards: dict[str, ModelCard] = {}
    for backend in registry.served():
        name = backend.model_name or backend.name
        cards.setdefault(name, ModelCard(id=name, created=int(time.time()), backend=backend.name))
    return ModelList(data=list(cards.values()))


async def _frames(stream: ChatStream, chunks: ChatChunks | CompletionChunks) -> AsyncIterator[ServerSentEvent]:
    for chunk in chunks.first():
        yield ServerSentEvent(chunk.model_dump_json())
    async for delta in stream:
        for chunk in chunks.chunks(delta):
            yield ServerSentEvent(chunk.model_dump_json())


def _error_frame(error: Exception) -> ServerSentEvent:  # in-band, as OpenAI does
    return ServerSentEvent(json.dumps(error_body(error), ensure_ascii=False))
