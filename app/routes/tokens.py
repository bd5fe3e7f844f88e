"""llama-server's tokenizer routes, so that a user can check what the model sees: `POST /tokenize`,
`POST /detokenize` and `POST /apply-template` (the exact prompt text of a chat request).

Each answers for the backend its `model` names, as on `/v1`, or the default one without it. The
backend is called on the event loop, as the /v1 routes call `start()`: no backend method runs in two
threads at once.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.protocol.errors import error_responses
from app.protocol.openai import to_chat_generation_request
from app.protocol.tokens import (
    ApplyTemplateRequest,
    ApplyTemplateResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    token_pieces,
)
from app.routes.deps import BEHIND_API_KEY, RegistryDep, SettingsDep

router = APIRouter(**BEHIND_API_KEY)
TOKEN_ERRORS = error_responses(400, 404, 413, 503)


@router.post("/tokenize", response_model=TokenizeResponse, responses=TOKEN_ERRORS)
async def tokenize(body: TokenizeRequest, registry: RegistryDep) -> TokenizeResponse:
    backend = await registry.resolve(body.model)
    ids = backend.tokenize(body.content, add_special=body.add_special, parse_special=body.parse_special)
    if not body.with_pieces:
        return TokenizeResponse(tokens=ids)
    return TokenizeResponse(tokens=token_pieces(ids, [backend.token_piece(token) for token in ids]))


@router.post("/detokenize", response_model=DetokenizeResponse, responses=TOKEN_ERRORS)
async def detokenize(body: DetokenizeRequest, registry: RegistryDep) -> DetokenizeResponse:
    return DetokenizeResponse(content=(await registry.resolve(body.model)).detokenize(body.tokens))


@router.post("/apply-template", response_model=ApplyTemplateResponse, responses=TOKEN_ERRORS)
async def apply_template(
    body: ApplyTemplateRequest, settings: SettingsDep, registry: RegistryDep
) -> ApplyTemplateResponse:
    defaults = registry.chat_defaults(body.model)
    request = to_chat_generation_request(body, settings.max_tokens_limit, **defaults)  # as /v1's
    return ApplyTemplateResponse(prompt=(await registry.resolve(body.model)).prompt(request).text)
