"""Wire types of the simple chat API (`POST /api/chat`) and their conversion to internal types."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from app.errors import MaxTokensTooLargeError
from app.services.backend import MAX_STOP_SEQUENCES, Completion, GenerationRequest, SamplingParams, Usage

MAX_MESSAGES = 512
MAX_TEXT_CHARS = 200_000
MAX_TOP_K = 2**31 - 1  # llama.cpp takes an int32

# The ranges of `SamplingParams`, stated in the schema too: clients see them, and a value out of range
# is a 400 that names its field.
Stop = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_SEQUENCES)]
)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class ChatRequest(BaseModel):
    """Give `messages` (rendered with the model's chat template) or a raw `prompt`. The ranges are
    `SamplingParams`' own, stated here so that the schema shows them; the backend checks them again
    for the Python API."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["messages"]}, {"required": ["prompt"]}]}
    )

    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    prompt: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    stream: bool = False
    backend: Literal["llamacpp", "pytorch"] | None = Field(None, description="Default: the server's setting.")
    max_new_tokens: int = Field(256, ge=1, validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    temperature: float = Field(0.7, ge=0, allow_inf_nan=False)
    top_p: float = Field(0.95, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(40, ge=0, le=MAX_TOP_K, description="0 disables it.")
    min_p: float = Field(0.05, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float = Field(1.0, gt=0, allow_inf_nan=False)
    stop: Stop | None = None
    seed: int | None = Field(None, ge=0, lt=2**32)


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


class BackendInfo(BaseModel):
    """One backend's state; a loaded one adds its model's details (path, architecture, n_ctx, ...)."""

    model_config = ConfigDict(extra="allow")

    backend: str
    available: bool
    loaded: bool


class InfoResponse(BaseModel):
    backends: dict[str, BackendInfo]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    backends: list[str]  # those with a model loaded


class TextEvent(BaseModel):
    """A piece of a streamed answer (`data:` of a plain event)."""

    text: str


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
