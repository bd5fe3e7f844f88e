"""`POST /v1/embeddings`: OpenAI's request and answer, and their conversions."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.errors import InvalidParameterError
from app.protocol.simple import MAX_TEXT_CHARS
from app.protocol.strict import Strict
from app.types import MAX_EMBEDDING_INPUTS, Embeddings

MAX_INPUT_TOKENS = 200_000  # token ids in one input; the context refuses far fewer
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(min_length=1, max_length=MAX_INPUT_TOKENS)]


class EmbeddingRequest(Strict):
    model: str | None = Field(None, max_length=256)  # none: the default model
    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Only the model's own: vectors are never shortened.")
    user: str | None = Field(None, max_length=256)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: little-endian float32, as OpenAI sends it


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def embedding_inputs(body: EmbeddingRequest) -> list[str] | list[list[int]]:
    """One text, a list of texts, one token list or a list of them, as a list of inputs."""
    given = body.input
    if isinstance(given, str) or (given and isinstance(given[0], int)):
        return [given]  # type: ignore[list-item]
    return list(given)  # type: ignore[arg-type]


def embedding_response(embeddings: Embeddings, body: EmbeddingRequest, model: str) -> EmbeddingResponse:
    n_embd = embeddings.vectors.shape[1]
    if body.dimensions is not None and body.dimensions != n_embd:
        raise InvalidParameterError(
            f"dimensions: this model's embeddings have {n_embd} dimensions, and they are never shortened",
            "dimensions",
        )
    if body.encoding_format == "base64":
        vectors = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in embeddings.vectors]
    else:
        vectors = [v.tolist() for v in embeddings.vectors]
    usage = EmbeddingUsage(prompt_tokens=embeddings.prompt_tokens, total_tokens=embeddings.prompt_tokens)
    return EmbeddingResponse(data=[EmbeddingData(index=i, embedding=v) for i, v in enumerate(vectors)], model=model,
                             usage=usage)  # fmt: skip
