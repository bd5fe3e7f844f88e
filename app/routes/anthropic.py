"""Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

`model` picks the backend as on `/v1` (a model or backend name). The generation starts (and so
validates) before any response; it answers a message as JSON, or with `"stream": true` Anthropic's
Server-Sent Events (`event: <type>` and its `data`). Every error, a bad body and a wrong key
included, comes in Anthropic's shape; one after the stream started as `event: error`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import ServerSentEvent

from app.protocol import anthropic, anthropic_answers
from app.protocol.anthropic import CountTokensRequest, CountTokensResponse, MessagesRequest
from app.protocol.anthropic_answers import AnthropicErrorResponse, MessageEvents, MessageResponse, StreamEvent
from app.protocol.errors import error_responses
from app.protocol.openapi import event_stream_response
from app.routes.deps import RegistryDep, SettingsDep, behind_api_key, dialect_route
from app.routes.streaming import anthropic_error, event_stream, unless_gone
from app.services.chat import ChatStream, start_chat

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1", route_class=dialect_route(anthropic_answers.error_body), **behind_api_key(AnthropicErrorResponse)
)
# A body over the size limit is refused by app/limits.py before any route, in OpenAI's error shape.
ERRORS = {**error_responses(400, 404, 429, 503, model=AnthropicErrorResponse), **error_responses(413)}
COUNT_ERRORS = {**error_responses(400, 404, 503, model=AnthropicErrorResponse), **error_responses(413)}
EVENTS = {event.model_fields["type"].default: (event,) for event in anthropic_answers.STREAM_EVENTS}


@router.post(
    "/messages",
    response_model=MessageResponse,
    responses={
        **event_stream_response(
            "With `stream: true`: Anthropic's events, each as `event: <type>` and its JSON `data`.",
            {**EVENTS, "error": (AnthropicErrorResponse,)},
        ),
        **ERRORS,
    },
)
async def messages(body: MessagesRequest, settings: SettingsDep, registry: RegistryDep, client: Request) -> Any:
    defaults = registry.chat_defaults(body.model)
    request = anthropic.to_generation_request(body, settings.max_tokens_limit, **defaults)
    stream = start_chat(await registry.resolve(body.model), request)
    meta = anthropic_answers.message_meta(stream.model_name or body.model, stream.prompt_tokens)
    log.debug("%s: messages on %s", meta.id, stream.backend_name)
    if body.stream:
        return event_stream(_frames(stream, MessageEvents(meta)), anthropic_error)
    return anthropic_answers.message_response(await unless_gone(client, [stream], stream.answer()), meta)


@router.post("/messages/count_tokens", response_model=CountTokensResponse, responses=COUNT_ERRORS)
async def count_tokens(body: CountTokensRequest, registry: RegistryDep) -> CountTokensResponse:
    request = anthropic.to_prompt_request(body, **registry.chat_defaults(body.model))  # as /v1/messages renders it
    return CountTokensResponse(input_tokens=len((await registry.resolve(body.model)).prompt(request).ids))


async def _frames(stream: ChatStream, events: MessageEvents) -> AsyncIterator[ServerSentEvent]:
    for event in events.first():
        yield _frame(event)
    async for delta in stream:
        for event in events.events(delta):
            yield _frame(event)


def _frame(event: StreamEvent) -> ServerSentEvent:
    return ServerSentEvent(event.model_dump_json(), event=event.type)
