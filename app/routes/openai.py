"""The OpenAI-compatible API: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
`GET /v1/models`.

Each route picks the backend the request's `model` names, starts the generation (which validates,
so a bad request fails before a response starts) and answers JSON, or Server-Sent Events
(`data: {chunk}` ... `data: [DONE]`) with `"stream": true`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import ServerSentEvent

from app.chat.output import ChatDelta
from app.protocol.errors import error_responses
from app.protocol.llama_server_answers import AnswerMeta, verbose_body
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
    InputTokens,
    ModelCard,
    ModelList,
    ModelStatus,
    TimingsSoFar,
    chat_completion_response,
    completion_response,
    response_meta,
    timings,
    total_usage,
)
from app.protocol.openai_embeddings import EmbeddingRequest, EmbeddingResponse, embedding_inputs, embedding_response
from app.protocol.openapi import event_stream_response
from app.routes.deps import BEHIND_API_KEY, RegistryDep, SettingsDep
from app.routes.streaming import all_of, event_stream, merged, openai_error, unless_gone
from app.services.chat import ChatStream, start_choices
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
async def chat_completions(
    body: ChatCompletionRequest, settings: SettingsDep, registry: RegistryDep, client: Request
) -> Any:
    request = to_chat_generation_request(body, settings.max_tokens_limit, **registry.chat_defaults(body.model))
    return await _answer(body, request, registry, client, "chatcmpl", settings.log_level == "debug")


@router.post("/chat/completions/input_tokens", response_model=InputTokens, responses=GENERATION_ERRORS)
async def chat_input_tokens(body: ChatCompletionRequest, settings: SettingsDep, registry: RegistryDep) -> InputTokens:
    """llama-server's: the prompt's tokens, as /v1/chat/completions renders it."""
    request = to_chat_generation_request(body, settings.max_tokens_limit, **registry.chat_defaults(body.model))
    return InputTokens(input_tokens=len((await registry.resolve(body.model)).prompt(request).ids))


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
async def completions(body: CompletionRequest, settings: SettingsDep, registry: RegistryDep, client: Request) -> Any:
    request = to_completion_generation_request(body, settings.max_tokens_limit, registry.sampling_defaults(body.model))
    return await _answer(body, request, registry, client, "cmpl", settings.log_level == "debug")


async def _answer(
    body: Any, request: GenerationRequest, registry: RegistryDep, client: Request, kind: str, verbose: bool
) -> Any:
    """Starts the generations, one per choice (a bad request fails here, before a response starts),
    then answers with Server-Sent Events or, once the answers are whole, JSON."""
    streams = start_choices(await registry.resolve(body.model), request, body.n)
    first = streams[0]
    meta = response_meta(kind, first.model_name or body.model, first.dropped_messages)
    log.debug("%s: %s on %s, %d choice(s)", meta.id, kind, first.backend_name, len(streams))
    is_chat = kind == "chatcmpl"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = [
            (ChatChunks if is_chat else CompletionChunks)(meta, i, _per_token(body, stream))
            for i, stream in enumerate(streams)
        ]
        return event_stream(_frames(streams, chunks, include_usage), openai_error, DONE)
    answers = await unless_gone(client, streams, all_of([stream.answer() for stream in streams]))
    with_logprobs = request.params.logprobs is not None
    response = (chat_completion_response if is_chat else completion_response)(answers, meta, with_logprobs)
    if body.verbose or verbose:  # llama-server's: its own answer's fields, of the first choice
        native = AnswerMeta(meta.model, first.prompt_text, first.prompt_tokens, first.params, False, None)
        response.verbose = verbose_body(answers[0], native)
    return response


@router.post("/embeddings", response_model=EmbeddingResponse, responses=error_responses(400, 404, 413, 503))
async def embeddings(body: EmbeddingRequest, registry: RegistryDep) -> EmbeddingResponse:
    """Embeddings from llama.cpp, normalised to length 1, computed beside the chats, not between them."""
    backend = await registry.resolve(body.model)
    result = await backend.embed_in_thread(embedding_inputs(body))
    return embedding_response(result, body, backend.model_name or body.model)


@router.get("/models", response_model=ModelList)
async def models(registry: RegistryDep) -> ModelList:
    """Every model: the loaded ones (the default first), then the library's others, loadable or not."""
    cards: dict[str, ModelCard] = {}
    for held in registry.held():
        backend = held.backend
        name = backend.model_name or backend.name
        aliases, tags = registry.aliases(backend)
        expires_at = held.expires_at()
        status = ModelStatus(value="loaded", memory_bytes=held.estimate_bytes,
                             expires_at=None if expires_at is None else int(expires_at))  # fmt: skip
        card = ModelCard(id=name, created=int(held.loaded_at), backend=backend.name, aliases=aliases, tags=tags,
                         status=status)  # fmt: skip
        cards.setdefault(name, card)
    for entry in registry.unloaded():
        status = ModelStatus(value="failed", problem=entry.problem) if entry.problem else ModelStatus(value="unloaded")
        card = ModelCard(id=entry.name, created=entry.modified_ns // 10**9, backend=entry.backend,
                         aliases=list(entry.aliases), status=status)  # fmt: skip
        cards.setdefault(entry.name, card)
    return ModelList(data=list(cards.values()))


def _per_token(body: Any, stream: ChatStream) -> TimingsSoFar | None:
    return TimingsSoFar(stream.prompt_tokens) if body.timings_per_token else None


async def _frames(
    streams: list[ChatStream], chunks: list[ChatChunks] | list[CompletionChunks], include_usage: bool
) -> AsyncIterator[ServerSentEvent]:
    for choice in chunks:
        for chunk in choice.first():
            yield ServerSentEvent(chunk.model_dump_json())
    last: dict[int, ChatDelta] = {}
    async for i, delta in merged(streams):
        for chunk in chunks[i].chunks(delta):
            yield ServerSentEvent(chunk.model_dump_json())
        if delta.usage:
            last[i] = delta
    if include_usage and last:
        ends = [last[i] for i in sorted(last)]
        reasoning = sum(d.reasoning_tokens for d in ends) if isinstance(chunks[0], ChatChunks) else None
        usage = total_usage([d.usage for d in ends if d.usage], reasoning)
        timed = timings(ends[0].usage) if ends[0].usage else None
        yield ServerSentEvent(chunks[0].usage(usage, timed).model_dump_json())
