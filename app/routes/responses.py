"""OpenAI's Responses API: `POST /v1/responses`, `GET /v1/responses/{id}`, `DELETE /v1/responses/{id}`.

`model` picks the backend as on `/v1/chat/completions`. A stored response's conversation (its input
and output) continues with `previous_response_id`, from the app's `ResponseStore`. The generation
starts (and so validates) before any response; it answers the `response` object as JSON, or with
`"stream": true` OpenAI's events (`event: <type>` and its JSON `data`, no `[DONE]`). Errors come in
OpenAI's shape; one after the stream started as an `error` event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import ServerSentEvent

from app.protocol import responses
from app.protocol.errors import ErrorResponse, error_responses
from app.protocol.openai_answers import InputTokens, TimingsSoFar
from app.protocol.openapi import event_stream_response
from app.protocol.responses_answers import (
    STREAM_EVENTS,
    DeletedResponse,
    ResponseEvents,
    ResponseObject,
    output_messages,
    response_body,
    response_head,
)
from app.routes.deps import RegistryDep, ResponseStoreDep, SettingsDep, behind_api_key
from app.routes.streaming import event_stream, responses_event, unless_gone
from app.services.chat import ChatStream, start_chat
from app.services.registry import Registry
from app.services.response_store import ResponseNotFoundError, ResponseStore, StoredResponse
from config.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", **behind_api_key())
NOT_FOUND = {
    "model": ErrorResponse,
    "description": "Unknown model, or no stored response has the previous_response_id.",
}
COUNT_ERRORS = error_responses(400, 413)
NOT_STORED = {404: {"model": ErrorResponse, "description": "No stored response has that id."}}
EVENTS = {event.model_fields["type"].default: (event,) for event in STREAM_EVENTS}


@router.post(
    "/responses",
    response_model=ResponseObject,
    responses={
        **event_stream_response(
            "With `stream: true`: OpenAI's Responses events, each as `event: <type>` and its JSON `data`.", EVENTS
        ),
        **error_responses(400, 413, 429, 503),
        404: NOT_FOUND,
    },
)
async def create_response(
    body: responses.ResponseRequest,
    settings: SettingsDep,
    registry: RegistryDep,
    store: ResponseStoreDep,
    client: Request,
) -> Any:
    turn = _turn(body, settings, registry, store)
    stream = start_chat(await registry.resolve(body.model), turn.request)
    head = response_head(body, turn.request, stream.model_name or body.model)
    log.debug("%s: responses on %s", head.id, stream.backend_name)
    if body.stream:
        events = ResponseEvents(head, TimingsSoFar(stream.prompt_tokens) if body.timings_per_token else None)
        return event_stream(_frames(stream, events, store, turn), lambda error: responses_event(events.error(error)))
    response = response_body(await unless_gone(client, [stream], stream.answer()), head)
    _keep(store, response, turn)
    return response


@router.post("/responses/input_tokens", response_model=InputTokens, responses={**COUNT_ERRORS, 404: NOT_FOUND})
async def input_tokens(
    body: responses.ResponseRequest, settings: SettingsDep, registry: RegistryDep, store: ResponseStoreDep
) -> InputTokens:
    """OpenAI's: the prompt's tokens, as POST /v1/responses renders it."""
    turn = _turn(body, settings, registry, store)
    return InputTokens(input_tokens=len((await registry.resolve(body.model)).prompt(turn.request).ids))


@router.get("/responses/{response_id}", response_model=ResponseObject, responses=NOT_STORED)
def get_response(response_id: str, store: ResponseStoreDep) -> Any:
    return _stored(store, response_id).body


@router.delete("/responses/{response_id}", response_model=DeletedResponse, responses=NOT_STORED)
def delete_response(response_id: str, store: ResponseStoreDep) -> DeletedResponse:
    if not store.delete(response_id):
        raise ResponseNotFoundError(response_id, "response_id", "response_not_found")
    return DeletedResponse(id=response_id)


def _turn(
    body: responses.ResponseRequest, settings: Settings, registry: Registry, store: ResponseStore
) -> responses.Turn:
    history = _history(store, body.previous_response_id)
    defaults = registry.chat_defaults(body.model)
    return responses.to_generation_request(body, history, settings.max_tokens_limit, **defaults)


def _history(store: ResponseStore, previous_response_id: str | None) -> tuple[dict[str, Any], ...]:
    if previous_response_id is None:
        return ()
    stored = store.get(previous_response_id)
    if stored is None:
        raise ResponseNotFoundError(previous_response_id, "previous_response_id", "previous_response_not_found")
    return stored.conversation


def _stored(store: ResponseStore, response_id: str) -> StoredResponse:
    stored = store.get(response_id)
    if stored is None:
        raise ResponseNotFoundError(response_id, "response_id", "response_not_found")
    return stored


def _keep(store: ResponseStore, response: ResponseObject, turn: responses.Turn) -> None:
    if response.store:
        store.put(response.id, response, [*turn.conversation, *output_messages(response)])


async def _frames(
    stream: ChatStream, events: ResponseEvents, store: ResponseStore, turn: responses.Turn
) -> AsyncIterator[ServerSentEvent]:
    for event in events.first():
        yield responses_event(event)
    async for delta in stream:
        batch = events.events(delta)
        if events.response is not None:  # stored before the last event goes out: a follow-up may come at once
            _keep(store, events.response, turn)
        for event in batch:
            yield responses_event(event)
