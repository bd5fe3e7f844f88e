"""Wire types of the simple chat API (`POST /api/chat`) and their conversion to internal types."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from app.errors import MaxTokensTooLargeError
from app.services.backend import Completion, GenerationRequest, SamplingParams, Usage

MAX_MESSAGES = 512
MAX_TEXT_CHARS = 200_000


class ChatMessage(BaseModel):
    role: str = Field(max_length=32)
    content: str = Field(max_length=MAX_TEXT_CHARS)


class ChatRequest(BaseModel):
    """Give `messages` (rendered with the model's chat template) or a raw `prompt`. Ranges are
    checked by the backend, so the Python API and HTTP answer the same errors."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] | None = Field(None, max_length=MAX_MESSAGES)
    prompt: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    stream: bool = False
    backend: Literal["llamacpp", "pytorch"] | None = Field(None, description="Default: the server's setting.")
    max_new_tokens: int = Field(256, validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    stop: list[str] | str | None = None
    seed: int | None = None


class UsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tokens_per_s: float
    total_ms: float


class ChatResponse(BaseModel):
    response: str
    finish_reason: str
    backend: str
    model: str | None
    usage: UsageBody


class DoneEvent(BaseModel):
    """The last Server-Sent Event of a stream (`event: done`)."""

    finish_reason: str
    backend: str
    model: str | None
    usage: UsageBody


def to_generation_request(body: ChatRequest, max_tokens_limit: int) -> GenerationRequest:
    max_new_tokens = body.max_new_tokens
    if "max_new_tokens" not in body.model_fields_set:
        max_new_tokens = min(max_new_tokens, max_tokens_limit)  # the default bows to a lower server limit
    elif max_new_tokens > max_tokens_limit:
        raise MaxTokensTooLargeError(max_new_tokens, max_tokens_limit, "max_new_tokens")
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        stop=body.stop or (),
        seed=body.seed,
    )
    messages = [m.model_dump() for m in body.messages] if body.messages is not None else None
    return GenerationRequest(params, prompt=body.prompt, messages=messages)


def usage_body(usage: Usage) -> UsageBody:
    return UsageBody(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        ttft_ms=round(usage.ttft_ms, 2),
        tokens_per_s=round(usage.decode_tokens_per_s, 2),
        total_ms=round(usage.total_ms, 2),
    )


def chat_response(completion: Completion, backend: str, model: str | None) -> ChatResponse:
    return ChatResponse(
        response=completion.text,
        finish_reason=completion.finish_reason,
        backend=backend,
        model=model,
        usage=usage_body(completion.usage),
    )
