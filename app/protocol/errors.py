"""The error body every route answers (OpenAI's shape), its declaration in the OpenAPI schema, and
the 400 for a body that does not fit its wire type.

`app.errors.error_object` writes the body; the models here only describe it, so that the schema
says what a client (or a schema-driven fuzzer) really gets for each status.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.errors import InvalidParameterError

# pydantic names the member of a union that failed in an error's location ("constrained-str",
# "list[ContentPart]", "int"); a client knows the field by its name alone.
_UNION_MEMBER = re.compile(r"[\[\-]|^[A-Z]|^(str|int|float|bool|dict|list)$")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    type: Literal[
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "server_error",
        "exceed_context_size_error",  # llama-server's, for a prompt over the context
    ]
    param: str | None  # the request field at fault, when known
    code: str | None  # ours: invalid_parameter, context_length_exceeded, model_not_found, queue_full, ...
    # A prompt over the context (context_length_exceeded): its tokens and the context, as llama-server says.
    n_prompt_tokens: int | None = None
    n_ctx: int | None = None


class ErrorResponse(BaseModel):
    """`{"error": {"message", "type", "param", "code"}}`, on every route and for every error status."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a wrong type or value, an unknown field, max_tokens above the "
    "server's limit, or a prompt longer than the context window.",
    401: "Missing or wrong API key.",
    403: "Refused: admin routes on a server without an API key, or a model path outside the model folders.",
    404: "Unknown model.",
    409: "Conflict: another model reload is running.",
    413: "Request body over the size limit (HYCHAT_MAX_REQUEST_BYTES).",
    429: "Every slot is busy and the queue is full: retry after Retry-After seconds.",
    503: "No backend can answer (not installed, or no model loaded).",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait.", "required": True, "schema": {"type": "integer"}}},
}


def error_responses(*status_codes: int, model: type[BaseModel] | None = None) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these error statuses, each with the error body (`model`: a dialect's
    own, OpenAI's by default) and its headers."""
    return {
        code: {
            "model": model or ErrorResponse,
            "description": _DESCRIPTIONS[code],
            **({"headers": _HEADERS[code]} if code in _HEADERS else {}),
        }
        for code in status_codes
    }


def invalid_body(errors: Sequence[dict[str, Any]]) -> InvalidParameterError:
    """pydantic's errors for a body that does not fit its wire type: a 400 that names each field at fault."""
    problems = [(_field_path(e["loc"]), e) for e in errors]
    message = "; ".join(dict.fromkeys(_problem(path, e) for path, e in problems)) or "invalid request"
    path, first = problems[0] if problems else ("", {})
    return InvalidParameterError(message, path if path and first.get("type") != "json_invalid" else None)


def _field_path(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in loc[1:] if not (isinstance(p, str) and _UNION_MEMBER.search(p)))


def _problem(path: str, error: dict[str, Any]) -> str:
    if error["type"] == "json_invalid":  # the location is where parsing stopped
        return f"the body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])} (at character {path})"
    if not path and error["type"] == "model_attributes_type":  # also a body sent without a JSON content type
        return "the body must be a JSON object, sent with Content-Type: application/json"
    return f"{path or 'body'}: {error['msg']}"
