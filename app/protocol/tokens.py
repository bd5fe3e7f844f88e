"""Wire types of the tokenizer routes (`/tokenize`, `/detokenize`, `/apply-template`), shaped as
llama.cpp's `llama-server` has them, and their conversions.

Not llama-server's: the optional `model` on each, which picks the backend as on `/v1` (absent or
empty: the server's default backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, Field

from app.protocol.openai import ChatCompletionRequest
from app.protocol.simple import MAX_TEXT_CHARS
from app.protocol.strict import Strict

MAX_TOKEN_IDS = 200_000  # at least as many as MAX_TEXT_CHARS of text can make
MAX_TOKEN_ID = 2**31 - 1  # llama.cpp's llama_token is an int32

ModelName = Annotated[
    str, Field(max_length=256, description="Not llama-server's: a model or backend, as on /v1. Default: the default.")
]


class TokenizeRequest(Strict):
    content: str = Field(max_length=MAX_TEXT_CHARS)
    add_special: bool = Field(False, description="Add the BOS token, where the model's tokenizer adds one.")
    parse_special: bool = Field(True, description="Read special-token text (`<|im_start|>`) as the special token.")
    with_pieces: bool = Field(False, description="Answer each token's text (or bytes) beside its id.")
    model: ModelName = ""


class TokenPiece(BaseModel):
    id: int
    # The token's text, or the list of its bytes when they are not valid UTF-8 on their own (a piece
    # of a character split across tokens), as llama-server answers it.
    piece: str | list[int]


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]


class DetokenizeRequest(Strict):
    tokens: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]] = Field(max_length=MAX_TOKEN_IDS)
    model: ModelName = ""


class DetokenizeResponse(BaseModel):
    content: str


class ApplyTemplateRequest(ChatCompletionRequest):
    """The body of `/v1/chat/completions`; its sampling fields are checked, then unused."""

    model: ModelName = ""


class ApplyTemplateResponse(BaseModel):
    prompt: str  # exactly the text the model would be given for these messages


def token_pieces(ids: Sequence[int], pieces: Sequence[bytes]) -> list[TokenPiece]:
    """Each id with its piece: text where its bytes are valid UTF-8 alone, else the bytes."""
    return [TokenPiece(id=token, piece=_piece(data)) for token, data in zip(ids, pieces, strict=True)]


def _piece(data: bytes) -> str | list[int]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)
