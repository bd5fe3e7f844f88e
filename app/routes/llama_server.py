"""llama-server's native API, for the editors and apps built on it (llama.vim, llama.vscode,
Continue's and SillyTavern's llama.cpp providers): `POST /completion` (and `/completions`, its other
name there; OpenAI's is `/v1/completions`), `POST /infill`, `GET /props`, `GET /slots`, `GET` and
`POST /lora-adapters`.

Each prompt is started on the chat path (a bad request fails before any response); the answer is
JSON (a list with several prompts), or with `"stream": true` Server-Sent Events as llama-server sends
them: `data: {chunk}` per token, then the summary with `"stop": true`, and no `[DONE]`. Every error,
a wrong key included, comes in llama-server's shape; one after the stream started as `data: {"error": ...}`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette import ServerSentEvent

from app.errors import InvalidParameterError, NoSlotAvailableError, NotSupportedError
from app.protocol import llama_server
from app.protocol.errors import error_responses
from app.protocol.llama_server import (
    Completion,
    CompletionRequest,
    InfillRequest,
    LlamaServerErrorResponse,
)
from app.protocol.llama_server_answers import (
    AnswerMeta,
    CompletionChunk,
    CompletionReader,
    CompletionResponse,
    LoraAdapterResponse,
    PropsResponse,
    SelectedFields,
    SlotResponse,
    lora_adapters_response,
    props_response,
    slots_response,
)
from app.protocol.openai import Lora, lora_scales
from app.protocol.openapi import event_stream_response
from app.routes.deps import RegistryDep, SettingsDep, behind_api_key, dialect_route
from app.routes.streaming import all_of, event_stream, llama_server_error, merged, unless_gone
from app.services.backend import Backend
from app.services.chat import ChatStream, start_choices
from app.services.registry import Registry

router = APIRouter(route_class=dialect_route(llama_server.error_body), **behind_api_key(LlamaServerErrorResponse))
# A body over the size limit is refused by app/limits.py before any route, in OpenAI's error shape.
ERRORS = {**error_responses(400, 404, 429, 503, model=LlamaServerErrorResponse), **error_responses(413)}
COMPLETION = {
    "response_model": CompletionResponse | SelectedFields | list[CompletionResponse | SelectedFields],
    "responses": {
        **event_stream_response(
            'With `stream: true`: `data: {chunk}` per token, then the answer with `"stop": true` (no [DONE]).',
            {"message": (CompletionChunk, CompletionResponse, SelectedFields, LlamaServerErrorResponse)},
        ),
        **ERRORS,
    },
}
Model = Annotated[str | None, Query(max_length=256, description="A model or backend, as on /v1 (none: the default).")]


async def completion(body: CompletionRequest, settings: SettingsDep, registry: RegistryDep, client: Request) -> Any:
    """A completion of each prompt: one answer, or a list of them (several prompts, or `n_cmpl`)."""
    asked = llama_server.to_completion(body, settings.max_tokens_limit, registry.sampling_defaults(body.model))
    return await _answer(asked, body, registry, client)


for path in ("/completion", "/completions"):
    router.add_api_route(path, completion, methods=["POST"], **COMPLETION)


async def _infill_checks(request: Request) -> None:
    """llama-server's own checks of an /infill body, in its words, before the wire type's."""
    try:
        body = await request.json()  # parsed once: FastAPI reads the same one
    except (ValueError, RecursionError):  # not JSON (or nested past the parser): the wire type's check says so
        return
    if (problem := llama_server.infill_problem(body)) is not None:
        raise InvalidParameterError(problem)


@router.post("/infill", dependencies=[Depends(_infill_checks)], **COMPLETION)
async def infill(body: InfillRequest, settings: SettingsDep, registry: RegistryDep, client: Request) -> Any:
    """The code between `input_prefix` and `input_suffix`, in the model's fill-in-the-middle tokens."""
    asked = llama_server.to_infill(body, settings.max_tokens_limit, registry.sampling_defaults(body.model))
    return await _answer(asked, body, registry, client)


@router.get(
    "/props", response_model=PropsResponse, responses=error_responses(400, 404, 503, model=LlamaServerErrorResponse)
)
async def props(settings: SettingsDep, registry: RegistryDep, model: Model = None) -> PropsResponse:
    backend = await registry.resolve(model)
    defaults = llama_server.default_params(settings.max_tokens_limit, registry.sampling_defaults(model))
    name = backend.model_name or backend.name
    return props_response(
        backend.info(), backend.chat_format(), defaults, name, settings.endpoint_slots, settings.endpoint_metrics
    )


@router.get(
    "/slots",
    response_model=list[SlotResponse],
    response_model_exclude_none=True,  # an idle slot has no request's fields
    responses={
        **error_responses(400, 404, model=LlamaServerErrorResponse),
        501: {"model": LlamaServerErrorResponse, "description": "The endpoint is off (HYCHAT_ENDPOINT_SLOTS=false)."},
        503: {
            "model": LlamaServerErrorResponse,
            "description": "No model loaded; with fail_on_no_slot, every slot busy.",
        },
    },
)
async def slots(
    settings: SettingsDep, registry: RegistryDep, model: Model = None, fail_on_no_slot: Annotated[str, Query()] = ""
) -> Any:
    """Each llama.cpp slot: idle, or the request it runs. `fail_on_no_slot` (any value): a 503 when all are busy."""
    if not settings.endpoint_slots:
        raise NotSupportedError("This server does not support slots endpoint. Start it with HYCHAT_ENDPOINT_SLOTS=true")
    backend = await registry.resolve(model)
    states = backend.slots()
    if fail_on_no_slot and states and all(state.busy for state in states):
        raise NoSlotAvailableError("no slot available")
    return slots_response(states, backend.info()["n_ctx"])


@router.get("/lora-adapters", response_model=list[LoraAdapterResponse],
            responses=error_responses(400, 404, 503, model=LlamaServerErrorResponse))  # fmt: skip
async def lora_adapters(registry: RegistryDep, model: Model = None) -> list[LoraAdapterResponse]:
    """The model's LoRA adapters: the ids a request's `lora` names, each one's scale for requests that name none."""
    return lora_adapters_response((await registry.resolve(model)).lora_adapters())


@router.post("/lora-adapters", responses=error_responses(400, 404, 503, model=LlamaServerErrorResponse))
async def set_lora_adapters(body: Lora, registry: RegistryDep, model: Model = None) -> dict[str, bool]:
    """The scales of requests that name no adapters: those given, the others 0 (llama-server's)."""
    (await registry.resolve(model)).set_lora_scales(lora_scales(body) or ())
    return {"success": True}


async def _answer(asked: Completion, body: CompletionRequest, registry: Registry, client: Request) -> Any:
    streams = _start(await registry.resolve(body.model), asked)
    readers = [CompletionReader(i, _meta(body, asked, stream), asked.cutoff) for i, stream in enumerate(streams)]
    if body.stream:
        return event_stream(_frames(streams, readers), llama_server_error)
    answers = await unless_gone(client, streams, all_of([_whole(s, r) for s, r in zip(streams, readers, strict=True)]))
    return JSONResponse(answers[0] if len(answers) == 1 else answers)


def _start(backend: Backend, asked: Completion) -> list[ChatStream]:
    """Every answer started (index: prompt by prompt, `n` each), or none: those started are cancelled."""
    streams: list[ChatStream] = []
    try:
        for request in asked.requests:
            streams += start_choices(backend, request, asked.n)
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise
    return streams


def _meta(body: CompletionRequest, asked: Completion, stream: ChatStream) -> AnswerMeta:
    name, fields = stream.model_name or body.model or "", asked.response_fields
    # The prompt as the model got it (token ids and an infill as the backend laid them out), and the
    # sampling it got (logit_bias in token ids, ignore_eos's bans included).
    return AnswerMeta(
        name,
        stream.prompt_text,
        stream.prompt_tokens,
        stream.params,
        bool(body.stream),
        fields,
        asked.return_tokens,
        asked.timings_per_token and bool(body.stream),  # timings on each chunk: of a stream
    )


async def _read(stream: ChatStream, reader: CompletionReader) -> AsyncIterator[CompletionChunk | dict[str, Any]]:
    """One answer's chunks, then the answer; a cut (n_indent, t_max_predict_ms) stops the generation."""
    # A chunk per token, drafts included, as llama-server streams (its `tokens` and n_indent cuts are per token).
    async with aclosing(stream.each_token()) as deltas:
        async for delta in deltas:
            for chunk in reader.feed(delta):
                yield chunk
            if reader.done:
                break
    if reader.cut:
        stream.cancel()
    yield reader.final()


async def _whole(stream: ChatStream, reader: CompletionReader) -> Any:
    items = [item async for item in _read(stream, reader)]
    return items[-1]  # the answer


async def _frames(streams: list[ChatStream], readers: list[CompletionReader]) -> AsyncIterator[ServerSentEvent]:
    async for _, item in merged([_read(stream, reader) for stream, reader in zip(streams, readers, strict=True)]):
        data = item if isinstance(item, dict) else item.model_dump(exclude_none=True)
        yield ServerSentEvent(json.dumps(data, ensure_ascii=False))
