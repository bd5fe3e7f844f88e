"""Ollama's native API: `POST /api/generate`, `POST /api/embed` (and the older `/api/embeddings`),
`GET /api/tags`, `POST /api/show`, `GET /api/ps`, `GET /api/version`, and `HEAD /` for the clients
that probe it. `POST /api/chat` is shared with
hychat's own body: `app/routes/api.py`'s `chat()` hands a body in Ollama's dialect to `answer_chat`
here. Every error of these routes is Ollama's `{"error": "..."}`.

A generation answers newline-delimited JSON unless the request says `"stream": false` (Ollama's
default); an error after the first line is the stream's last line, `{"error": "..."}`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from app.errors import InvalidParameterError, ModelFileError, ModelNotFoundError
from app.modelfiles.gguf import read_gguf
from app.protocol import ollama
from app.protocol.errors import error_responses
from app.protocol.ollama import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaError,
    OllamaGenerateRequest,
    OllamaShowRequest,
)
from app.protocol.ollama_answers import (
    OLLAMA_VERSION,
    OllamaChunk,
    OllamaChunks,
    OllamaEmbeddingsResponse,
    OllamaEmbedResponse,
    OllamaGenerateChunk,
    OllamaPsResponse,
    OllamaShowResponse,
    OllamaTagsResponse,
    OllamaVersion,
    ServedModel,
    library_model,
    ndjson_line,
    ndjson_response,
    running_entry,
    show_response,
    tags_entry,
)
from app.routes.deps import RegistryDep, SettingsDep, behind_api_key, dialect_route
from app.routes.streaming import guarded, unless_gone
from app.services.backend import Backend
from app.services.chat import ChatStream, start_chat
from app.services.registry import Registry
from app.types import GenerationRequest, SamplingParams
from config.settings import Settings, duration_s

router = APIRouter()  # HEAD /, open as the probes are; the API below is behind the key
# Behind the key, every error in Ollama's shape; served through `router` (included at the end).
api = APIRouter(route_class=dialect_route(ollama.error_body), **behind_api_key(OllamaError))
# A body over the size limit is refused before any route is chosen: that 413 is OpenAI's shape.
GENERATION_ERRORS = {**error_responses(400, 404, 429, 503, model=OllamaError), **error_responses(413)}
STREAM_DESCRIPTION = (
    'The answer; by default (without `"stream": false`) newline-delimited JSON chunks, the last `done`.'
)


@router.head("/", include_in_schema=False)
def probe() -> PlainTextResponse:
    """Ollama's CLI asks `HEAD /` whether the server runs (`GET /` stays the chat page)."""
    return PlainTextResponse("Ollama is running")


@api.post(
    "/api/generate",
    response_model=OllamaGenerateChunk,
    responses={**ndjson_response(STREAM_DESCRIPTION, OllamaGenerateChunk), **GENERATION_ERRORS},
)
async def generate(
    body: OllamaGenerateRequest, settings: SettingsDep, registry: RegistryDep, client: Request
) -> Response:
    """Completes `prompt`, rendered as a user turn with the model's chat template (`raw`: as it is;
    with `suffix`: the middle between them)."""
    if not body.prompt and not body.suffix:
        return _json(await _load_or_unload(registry, body, "generate"))
    backend = await ollama.backend_for(registry, body.model, body.keep_alive)
    defaults = registry.chat_defaults(ollama.model_name(body.model))
    request = ollama.to_generate_generation_request(body, settings.max_tokens_limit, **defaults)
    return await _answer(body, request, registry, backend, client)


async def answer_chat(body: OllamaChatRequest, settings: Settings, registry: Registry, client: Request) -> Response:
    """`POST /api/chat` in Ollama's dialect."""
    if not body.messages:
        return _json(await _load_or_unload(registry, body, "chat"))
    backend = await ollama.backend_for(registry, body.model, body.keep_alive)
    defaults = registry.chat_defaults(ollama.model_name(body.model))
    request = ollama.to_chat_generation_request(body, settings.max_tokens_limit, **defaults)
    return await _answer(body, request, registry, backend, client)


@api.get("/api/tags", response_model=OllamaTagsResponse, response_model_exclude_none=True)
async def tags(registry: RegistryDep) -> OllamaTagsResponse:
    """Every model: those loaded, then the library's others that can load."""
    loaded = [tags_entry(_served(backend)) for backend in _served_backends(registry)]
    others = [tags_entry(library_model(entry)) for entry in registry.unloaded() if entry.problem is None]
    return OllamaTagsResponse(models=loaded + others)


@api.post(
    "/api/show",
    response_model=OllamaShowResponse,
    response_model_exclude_none=True,
    responses={**error_responses(400, 404, 503, model=OllamaError), **error_responses(413)},
)
async def show(body: OllamaShowRequest, registry: RegistryDep) -> OllamaShowResponse:
    name = body.model or body.name
    if not name:
        raise InvalidParameterError("model is required", "model")  # Ollama's words
    # The parameters a request leaving them unset gets.
    defaults = SamplingParams(**registry.sampling_defaults(ollama.model_name(name)))
    backend = await ollama.backend_for(registry, name)
    return show_response(_served(backend, files=True), defaults, body.verbose)


@api.get("/api/ps", response_model=OllamaPsResponse, response_model_exclude_none=True)
async def ps(registry: RegistryDep) -> OllamaPsResponse:
    """The loaded models: the memory each takes (estimated) and when it will be unloaded."""
    held = {id(h.backend): h for h in registry.held()}
    return OllamaPsResponse(
        models=[
            running_entry(_served(backend), held[id(backend)].estimate_bytes, held[id(backend)].expires_at())
            for backend in _served_backends(registry)
        ]
    )


@api.get("/api/version", response_model=OllamaVersion)
def version() -> OllamaVersion:
    return OllamaVersion(version=OLLAMA_VERSION)


EMBED_ERRORS = {**error_responses(400, 404, 503, model=OllamaError), **error_responses(413)}


@api.post("/api/embed", response_model=OllamaEmbedResponse, responses=EMBED_ERRORS)
async def embed(body: OllamaEmbedRequest, registry: RegistryDep) -> OllamaEmbedResponse:
    """Embeddings from llama.cpp, normalised, an input longer than the context cut unless `truncate` is false."""
    backend, t_start = await ollama.backend_for(registry, body.model, body.keep_alive), time.perf_counter_ns()
    result = await backend.embed_in_thread(ollama.embed_inputs(body), body.truncate)
    ollama.check_dimensions(body.dimensions, result.vectors.shape[1])
    return OllamaEmbedResponse(model=backend.model_name or body.model, embeddings=result.vectors.tolist(),
                               total_duration=time.perf_counter_ns() - t_start,
                               prompt_eval_count=result.prompt_tokens)  # fmt: skip


@api.post("/api/embeddings", response_model=OllamaEmbeddingsResponse, responses=EMBED_ERRORS)
async def embeddings(body: OllamaEmbeddingsRequest, registry: RegistryDep) -> OllamaEmbeddingsResponse:
    """Ollama's older route: one `prompt`, its vector as the model gives it (not normalised)."""
    backend = await ollama.backend_for(registry, body.model, body.keep_alive)
    result = await backend.embed_in_thread([body.prompt], True, False)
    return OllamaEmbeddingsResponse(embedding=result.vectors[0].tolist())


async def _answer(
    body: OllamaChatRequest | OllamaGenerateRequest,
    request: GenerationRequest,
    registry: Registry,
    backend: Backend,
    client: Request,
) -> Response:
    """Starts the generation (a bad request fails here, before a response starts), then streams its
    chunks or, once the answer is whole, answers one object."""
    if body.options and body.options.num_ctx is not None:
        ollama.check_num_ctx(body, backend.info().get("n_ctx"))
    stream = start_chat(backend, request)
    kind = "generate" if isinstance(body, OllamaGenerateRequest) else "chat"
    chunks = OllamaChunks(stream.model_name, kind, with_logprobs=request.params.logprobs is not None)
    if body.stream:
        return _ndjson(_lines(stream, chunks))
    return _json(chunks.whole(await unless_gone(client, [stream], stream.answer())))


async def _lines(stream: ChatStream, chunks: OllamaChunks) -> AsyncIterator[str]:
    async for delta in stream:
        for chunk in chunks.chunks(delta):
            yield ndjson_line(chunk)


def _ndjson(lines: AsyncIterator[str]) -> StreamingResponse:
    """Once the response has started, an error can no longer change its status: it is the last line."""
    error_line = lambda error: ndjson_line(ollama.error_body(error))  # noqa: E731
    return StreamingResponse(guarded(lines, error_line), media_type="application/x-ndjson")


def _json(chunk: OllamaChunk) -> JSONResponse:
    return JSONResponse(chunk.model_dump(exclude_none=True))


async def _load_or_unload(
    registry: Registry, body: OllamaChatRequest | OllamaGenerateRequest, kind: str
) -> OllamaChunk:
    """Ollama's answer to a request with nothing to answer: the model loaded (`done_reason` "load"), or
    with `keep_alive` 0 unloaded ("unload")."""
    if body.keep_alive is not None and duration_s(body.keep_alive) == 0:
        name = ollama.model_name(body.model)
        try:
            served_as = registry.name_of(name)
        except ModelNotFoundError:
            raise ModelNotFoundError(f"model '{body.model}' not found") from None
        await registry.unload(name)
        return OllamaChunks(served_as, kind).unloaded()
    backend = await ollama.backend_for(registry, body.model, body.keep_alive)
    return OllamaChunks(backend.model_name or body.model, kind).loaded()


def _served_backends(registry: Registry) -> list[Backend]:
    """The backends with a model loaded, one per model name (the default backend's first)."""
    by_name: dict[str, Backend] = {}
    for backend in registry.served():
        by_name.setdefault(backend.model_name or backend.name, backend)
    return list(by_name.values())


def _served(backend: Backend, files: bool = False) -> ServedModel:
    """What the backend says of its model, with its file's size and time; `files`: also the GGUF
    header (metadata, tensors) and the chat template it is served with."""
    info = backend.info()
    path = Path(info.get("path", ""))
    try:
        modified_ns = path.stat().st_mtime_ns
    except OSError:  # moved or deleted since it was loaded: the model in memory still serves
        modified_ns = 0
    served: dict[str, Any] = {"metadata": {}}
    if files and path.is_file():
        try:
            header = read_gguf(path)
        except ModelFileError:  # replaced on disk by something else since
            header = None
        if header is not None:
            served = {"metadata": header.metadata, "tensors": header.tensors}
    if files:
        served["template"] = backend.chat_format().template  # the model's own, or the server's override
    name = backend.model_name or backend.name
    return ServedModel(name=name, info=info, size=info.get("size_bytes") or 0, modified_ns=modified_ns, **served)


router.include_router(api)  # last: every route of `api` is defined by now
