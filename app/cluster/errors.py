"""The gateway's own errors in the caller's dialect, told by the request's path as the replicas' routes
tell it: a replica lost before it answered (a status) or while it streamed (the dialect's in-band error,
the stream's last frame)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sse_starlette import ServerSentEvent

from app.errors import BackendUnavailableError, error_body
from app.protocol import anthropic_answers, llama_server, ollama
from app.protocol.ollama_answers import ndjson_line
from app.routes.streaming import anthropic_error, hychat_error, llama_server_error, openai_error, responses_error

ErrorBody = Callable[[Exception], dict[str, Any]]
LLAMA_SERVER_PATHS = ("/completion", "/completions", "/infill", "/tokenize", "/detokenize", "/apply-template")
SEQUENCE_NUMBER = re.compile(rb'"sequence_number":\s*(\d+)')


class ReplicaLostError(BackendUnavailableError):
    """The replica answering stopped (its process died, its node left); the others still serve, so a
    retry is answered (503 with Retry-After; Anthropic's overloaded_error)."""

    retry_after_s = 1

    def __init__(self, cause: BaseException):
        super().__init__(f"the replica serving this request stopped ({type(cause).__name__}); retry it")


def body_of(path: str) -> ErrorBody:
    if path.startswith("/v1/messages"):
        return anthropic_answers.error_body
    if path.startswith("/api/") and path not in ("/api/chat", "/api/info"):
        return ollama.error_body
    if path in LLAMA_SERVER_PATHS:
        return llama_server.error_body
    return error_body


def stream_error(path: str, content_type: str, error: Exception, sent: bytes = b"") -> bytes:
    """The last frame of a stream cut short, as the route that streamed it writes its errors (the
    routes' own frames, so their line endings match the frames before it). `sent`: the last piece
    that went out, whose numbering a Responses error event goes on from."""
    if "ndjson" in content_type:
        return ndjson_line(ollama.error_body(error)).encode()
    if path.startswith("/v1/responses"):
        numbers = SEQUENCE_NUMBER.findall(sent)
        return responses_error(error, int(numbers[-1]) + 1 if numbers else 0).encode()
    if path.startswith("/v1/messages"):
        return anthropic_error(error).encode()
    if path == "/api/chat":
        return hychat_error(error).encode()
    if path in LLAMA_SERVER_PATHS:
        return llama_server_error(error).encode()
    return openai_error(error).encode() + ServerSentEvent("[DONE]").encode()  # ends with [DONE] however it ends
