"""Answers of Ollama's native API: chat and generate chunks (newline-delimited JSON, Ollama's default)
made from the chat path's `ChatDelta`s, whole answers from an `Answer`, and `/api/tags`, `/api/show`,
`/api/ps` and `/api/version`. Shapes, units (durations in nanoseconds) and timestamps (RFC 3339 with
nanoseconds, as Go writes a `time.Time`) are Ollama's (api/types.go).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from app.chat.output import Answer, ChatDelta
from app.chat.tool_calls import ToolCall
from app.modelfiles.gguf import ArrayInfo, TensorInfo, type_name
from app.modelfiles.library import LibraryEntry
from app.protocol.ollama import OllamaError
from app.protocol.openapi import inlined
from app.types import SamplingParams, TokenLogprob, TopLogprob, Usage

# What GET /api/version reports: the newest Ollama release when this was written. Clients compare it
# to the release that brought what they use (structured outputs 0.5, tool streaming 0.8, thinking 0.9)
# and turn features off, or refuse, below it; this server speaks the API of that release.
OLLAMA_VERSION = "0.32.15"
FOREVER_NS = 2**63 - 1  # Ollama's keep_alive -1: `ollama ps` shows "Forever"
MAX_SHOWN_ARRAY = 5  # Ollama's /api/show leaves out (as []) metadata arrays longer than this, unless verbose

# -- chat and generate -------------------------------------------------------------------------


class OllamaFunctionCallOut(BaseModel):
    index: int
    name: str
    arguments: dict[str, Any]  # an object, not JSON text


class OllamaToolCallOut(BaseModel):
    id: str
    function: OllamaFunctionCallOut


class OllamaAssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    thinking: str | None = None
    tool_calls: list[OllamaToolCallOut] | None = None


class OllamaTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class OllamaLogprob(OllamaTopLogprob):
    top_logprobs: list[OllamaTopLogprob] | None = None


class OllamaChatChunk(BaseModel):
    """A piece of a streamed chat answer; the last one (`done`) says why it ended and its counts and
    durations (nanoseconds); a whole answer (`"stream": false`) is one of these with everything."""

    model: str
    created_at: str
    message: OllamaAssistantMessage
    done: bool
    done_reason: Literal["stop", "length", "load", "unload"] | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[OllamaLogprob] | None = None


class OllamaGenerateChunk(BaseModel):
    """As `OllamaChatChunk`, for /api/generate: the text in `response`."""

    model: str
    created_at: str
    response: str
    thinking: str | None = None
    done: bool
    done_reason: Literal["stop", "length", "load", "unload"] | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[OllamaLogprob] | None = None


OllamaChunk = OllamaChatChunk | OllamaGenerateChunk


class OllamaChunks:
    """The chat path's deltas as Ollama's chunks: one per piece of thinking, answer or tool calls
    (with the token's logprob when asked), then the last, `done`, with the reason and the counts."""

    def __init__(self, model: str, kind: Literal["chat", "generate"], with_logprobs: bool = False):
        self.model, self.kind, self.with_logprobs = model, kind, with_logprobs
        self._calls = 0  # tool calls written so far: the index of the next one

    def chunks(self, delta: ChatDelta) -> list[OllamaChunk]:
        logprobs = [_logprob(delta.logprob)] if self.with_logprobs and delta.logprob else None
        chunks = []
        if delta.content or delta.reasoning or delta.tool_calls or logprobs:
            chunks.append(self._chunk(delta.content, delta.reasoning, delta.tool_calls, logprobs))
        if delta.finish_reason and delta.usage:
            chunks.append(self._chunk("", "", (), None, _done(delta.finish_reason, delta.usage)))
        return chunks

    def whole(self, answer: Answer) -> OllamaChunk:
        """The answer of `"stream": false`."""
        logprobs = [_logprob(lp) for lp in answer.logprobs] if self.with_logprobs else None
        done = _done(answer.finish_reason, answer.usage)
        return self._chunk(answer.content, answer.reasoning, answer.tool_calls, logprobs, done)

    def loaded(self) -> OllamaChunk:
        """Ollama's answer to a request without messages or prompt: the model is loaded."""
        return self._chunk("", "", (), None, {"done_reason": "load"})

    def unloaded(self) -> OllamaChunk:
        """Ollama's answer to one without messages or prompt, with keep_alive 0: the model is unloaded."""
        return self._chunk("", "", (), None, {"done_reason": "unload"})

    def _chunk(
        self,
        content: str,
        reasoning: str,
        calls: Sequence[ToolCall],
        logprobs: list[OllamaLogprob] | None,
        done: dict[str, Any] | None = None,
    ) -> OllamaChunk:
        head = {"model": self.model, "created_at": created_at(), "done": done is not None, **(done or {})}
        if self.kind == "generate":
            return OllamaGenerateChunk(**head, response=content, thinking=reasoning or None, logprobs=logprobs)
        tool_calls = [self._call(call) for call in calls] or None
        message = OllamaAssistantMessage(content=content, thinking=reasoning or None, tool_calls=tool_calls)
        return OllamaChatChunk(**head, message=message, logprobs=logprobs)

    def _call(self, call: ToolCall) -> OllamaToolCallOut:
        function = OllamaFunctionCallOut(index=self._calls, name=call.name, arguments=json.loads(call.arguments))
        self._calls += 1
        return OllamaToolCallOut(id=call.id, function=function)


def ndjson_line(chunk: BaseModel | Mapping[str, Any]) -> str:
    """One line of a stream. U+0085, U+2028 and U+2029 are escaped, as Go's encoder does for the
    last two: clients that split lines as Python's `str.splitlines` does (httpx's `iter_lines`, which
    the ollama client reads with) would cut a chunk at them."""
    data = chunk.model_dump(exclude_none=True) if isinstance(chunk, BaseModel) else chunk
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n"


def created_at(ns: int | None = None) -> str:
    """RFC 3339 in UTC with nanoseconds, trailing zeros dropped, as Go marshals a `time.Time`."""
    seconds, fraction = divmod(time.time_ns() if ns is None else ns, 10**9)
    digits = f"{fraction:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (f".{digits}" if digits else "") + "Z"


def _done(finish_reason: str, usage: Usage) -> dict[str, Any]:
    """The last chunk's fields. The model is loaded before any request: no load time. Prompt time
    runs to the first sampled token (a wait for a slot included); eval time is the rest."""
    total_ns, prompt_ns = round(usage.total_ms * 1e6), round(usage.ttft_ms * 1e6)
    return {
        "done_reason": "length" if finish_reason == "length" else "stop",  # Ollama says stop after tool calls
        "total_duration": total_ns,
        "load_duration": 0,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": usage.completion_tokens,
        "eval_duration": max(0, total_ns - prompt_ns),
    }


def _logprob(lp: TokenLogprob) -> OllamaLogprob:
    top = [_top_logprob(t) for t in lp.top] or None
    return OllamaLogprob(token=lp.token, logprob=lp.logprob, bytes=list(lp.bytes), top_logprobs=top)


def _top_logprob(lp: TopLogprob) -> OllamaTopLogprob:
    return OllamaTopLogprob(token=lp.token, logprob=lp.logprob, bytes=list(lp.bytes))


# -- models: /api/tags, /api/show, /api/ps, /api/version ---------------------------------------


class OllamaModelDetails(BaseModel):
    parent_model: str = ""
    format: str  # "gguf"; "safetensors" for a PyTorch checkpoint
    family: str
    families: list[str]
    parameter_size: str  # "135M", "7.6B"
    quantization_level: str  # "Q4_K_M"; the dtype for a PyTorch checkpoint ("F32", "BF16")


class OllamaModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaModelDetails


class OllamaTagsResponse(BaseModel):
    models: list[OllamaModel]


class OllamaRunningModel(OllamaModel):
    expires_at: str
    size_vram: int
    context_length: int


class OllamaPsResponse(BaseModel):
    models: list[OllamaRunningModel]


class OllamaTensor(BaseModel):
    name: str
    type: str
    shape: list[int]


class OllamaShowResponse(BaseModel):
    license: str | None = None
    modelfile: str
    parameters: str
    template: str
    details: OllamaModelDetails
    model_info: dict[str, Any]
    tensors: list[OllamaTensor] | None = None
    capabilities: list[str]
    modified_at: str


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]  # each of length 1
    total_duration: int  # ns
    load_duration: int = 0  # ns: models stay loaded
    prompt_eval_count: int


class OllamaEmbeddingsResponse(BaseModel):
    embedding: list[float]  # not normalised, as Ollama's older route answers


class OllamaVersion(BaseModel):
    version: str


@dataclass(frozen=True)
class ServedModel:
    """A loaded model, as its backend (`info()`) and its files tell it (the route reads them)."""

    name: str
    info: Mapping[str, Any]  # Backend.info() of the backend that serves it
    size: int  # bytes of its files
    modified_ns: int  # its file's (or folder's) modification time
    metadata: Mapping[str, Any]  # a GGUF header's; {} for a PyTorch checkpoint
    tensors: Sequence[TensorInfo] = ()
    template: str = ""  # the chat template it is served with


def tags_entry(m: ServedModel) -> OllamaModel:
    return OllamaModel(
        name=m.name, model=m.name, modified_at=created_at(m.modified_ns), size=m.size, digest=_digest(m),
        details=model_details(m),
    )  # fmt: skip


def running_entry(m: ServedModel, memory_bytes: int, expires_at: float | None) -> OllamaRunningModel:
    """A loaded model: `size` the memory it takes (as Ollama's ps), `expires_at` a Unix time (None:
    kept until unloaded, which Ollama shows as a time far ahead)."""
    expires_ns = time.time_ns() + FOREVER_NS if expires_at is None else int(expires_at * 1e9)
    return OllamaRunningModel(
        **(tags_entry(m).model_dump() | {"size": memory_bytes}),
        expires_at=created_at(expires_ns),
        size_vram=0,
        context_length=m.info.get("n_ctx") or 0,
    )


def library_model(entry: LibraryEntry) -> ServedModel:
    """A library model that is not loaded, as far as its file tells."""
    info = {"architecture": entry.architecture, "path": str(entry.path), "backend": entry.backend}
    if entry.backend == "llamacpp":
        info["quantization"] = entry.quantization
    return ServedModel(name=entry.name, info=info, size=entry.size_bytes, modified_ns=entry.modified_ns, metadata={})


def show_response(m: ServedModel, defaults: SamplingParams, verbose: bool) -> OllamaShowResponse:
    """Details, the GGUF metadata (Ollama leaves out the name and the chat template, which has its own
    field, and long arrays unless `verbose`: arrays of more than 64 values are never kept by the
    header reader, so they stay [] even then), the service's sampling defaults as the parameters."""
    info = {
        k: _shown(v, verbose) for k, v in m.metadata.items() if k not in ("general.name", "tokenizer.chat_template")
    }
    info.setdefault("general.architecture", m.info.get("architecture") or "")
    if m.info.get("n_params"):
        info.setdefault("general.parameter_count", m.info["n_params"])
    defaults_shown = {
        "num_ctx": m.info.get("n_ctx"),
        "temperature": defaults.temperature,
        "top_k": defaults.top_k,
        "top_p": defaults.top_p,
        "min_p": defaults.min_p,
        "repeat_penalty": defaults.repetition_penalty,
    }
    parameters = [
        (key, f"{value:g}" if isinstance(value, float) else str(value)) for key, value in defaults_shown.items()
    ]
    modelfile = (
        "# Modelfile generated by hychat (TEMPLATE is the model's Jinja chat template, not a Go template)\n"
        f'# FROM {m.name}\n\nFROM {m.info.get("path", m.name)}\nTEMPLATE """{m.template}"""\n'
        + "".join(f"PARAMETER {key} {value}\n" for key, value in parameters)
    )
    license_ = m.metadata.get("general.license")
    return OllamaShowResponse(
        license=license_ if isinstance(license_, str) else None,
        modelfile=modelfile,
        parameters="\n".join(f"{key:<30} {value}" for key, value in parameters),
        template=m.template,
        details=model_details(m),
        model_info=info,
        tensors=[OllamaTensor(name=t.name, type=type_name(t.ggml_type), shape=list(t.shape)) for t in m.tensors]
        or None,
        capabilities=capabilities(m),
        modified_at=created_at(m.modified_ns),
    )


def model_details(m: ServedModel) -> OllamaModelDetails:
    family = m.info.get("architecture") or ""
    gguf = "quantization" in m.info  # llama.cpp's info names the file's quantization; PyTorch's its dtype
    level = m.info.get("quantization") if gguf else str(m.info.get("dtype", "")).upper().replace("FLOAT", "F")
    return OllamaModelDetails(
        format="gguf" if gguf else "safetensors",
        family=family,
        families=[family] if family else [],
        parameter_size=human_number(m.info.get("n_params") or 0),
        quantization_level=level or "",
    )


def capabilities(m: ServedModel) -> list[str]:
    """An embedding model only embeds. Any other takes tools (a template that does not show them gets
    them described in the system prompt); it thinks when its template has a reasoning block, and
    inserts (a `suffix`) when it has fill-in-the-middle tokens."""
    if m.info.get("embeddings_only"):
        return ["embedding"]
    thinks = "<think>" in m.template or "enable_thinking" in m.template
    return ["completion", "tools", *(["thinking"] if thinks else []), *(["insert"] if m.info.get("infill") else [])]


def human_number(n: int) -> str:
    """A parameter count as Ollama writes it (format.HumanNumber): 135M, 134.52M, 7.6B, 8B."""
    for scale, unit, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.{decimals}f}{unit}"
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


def ndjson_response(description: str, *models: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The 200 of a route that streams newline-delimited JSON: the stream read as the array of its
    lines (what OpenAPI 3.2 makes `schema` of a sequential media type), each line a chunk or, last,
    an error."""
    line = {"anyOf": [inlined(model) for model in (*models, OllamaError)]}
    stream = {"type": "array", "items": line}
    return {200: {"description": description, "content": {"application/x-ndjson": {"schema": stream}}}}


def _digest(m: ServedModel) -> str:
    """Not the sha256 of the file (hashing gigabytes per listing is too slow): of its path, size and
    modification time, so it changes when the file does."""
    return hashlib.sha256(f"{m.info.get('path')}\0{m.size}\0{m.modified_ns}".encode()).hexdigest()


def _shown(value: Any, verbose: bool) -> Any:
    if isinstance(value, ArrayInfo) or (isinstance(value, list) and len(value) > MAX_SHOWN_ARRAY and not verbose):
        return []
    return value
