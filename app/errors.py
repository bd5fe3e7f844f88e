"""The errors the service raises on purpose. `app.main` maps them to HTTP answers in one place."""

from __future__ import annotations

from pathlib import Path


class HychatError(Exception):
    status_code = 500
    code = "internal_error"
    param: str | None = None  # the request field at fault, when known


class InvalidParameterError(HychatError, ValueError):
    """A generation parameter or message is out of range or malformed."""

    status_code = 400
    code = "invalid_parameter"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class MaxTokensTooLargeError(InvalidParameterError):
    def __init__(self, max_tokens: int, limit: int, param: str):
        super().__init__(
            f"{param} is {max_tokens} but this server allows at most {limit} tokens per answer "
            "(HYCHAT_MAX_TOKENS_LIMIT)",
            param,
        )


class PromptTooLongError(InvalidParameterError):
    code = "context_length_exceeded"

    def __init__(self, n_prompt: int, n_ctx: int, param: str = "messages"):
        super().__init__(
            f"the prompt is {n_prompt} tokens but the context window is {n_ctx} tokens per request "
            f"(at least one token must stay free for the answer); shorten it"
            + (", or set HYCHAT_CONTEXT_OVERFLOW=truncate to drop the oldest turns" if param == "messages" else ""),
            param,
        )
        self.n_prompt, self.n_ctx = n_prompt, n_ctx


class ToolCallMissingError(InvalidParameterError):
    code = "tool_call_missing"

    def __init__(self) -> None:
        super().__init__(
            "tool_choice asks for a tool call, but the answer holds none (a backend without grammars, PyTorch, "
            "cannot force one as llama.cpp does; or max_tokens cut it short)",
            "tool_choice",
        )


class ChatTemplateError(HychatError):
    """The model's chat template refused the conversation or tried something the sandbox forbids."""

    status_code = 400
    code = "chat_template_error"


class ModelFileError(HychatError):
    """A model file is missing, not a GGUF file, truncated or corrupt. A 400 when a request chose the
    file (`POST /admin/reload`); at start-up the server does not start and says why."""

    status_code = 400
    code = "model_file_error"

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


class NotSupportedError(HychatError):
    """A llama-server endpoint this server has switched off (llama-server's 501)."""

    status_code = 501
    code = "not_supported"


class NoSlotAvailableError(HychatError):
    """GET /slots?fail_on_no_slot=1 while every slot is busy."""

    status_code = 503
    code = "no_slot_available"


class ModelPathForbiddenError(HychatError):
    """A requested model path lies outside the configured model folders (HYCHAT_MODEL_DIRS)."""

    status_code = 403
    code = "model_path_forbidden"
    param = "model_path"


class AdminDisabledError(HychatError):
    """Admin routes are refused on a server without an API key: anyone could re-point it."""

    status_code = 403
    code = "admin_disabled"


class ReloadInProgressError(HychatError):
    """Another model reload is running; this one was not started."""

    status_code = 409
    code = "reload_in_progress"


class BackendUnavailableError(HychatError):
    """The chosen backend is not installed or has no model loaded."""

    status_code = 503
    code = "backend_unavailable"


class EngineClosedError(BackendUnavailableError):
    """The engine takes no more requests: its model was replaced or unloaded (503 with Retry-After)."""

    retry_after_s = 1


class NoRoomForModelError(BackendUnavailableError):
    """A model cannot be loaded: it would not fit the memory budget or the count of loaded models, even
    with every idle model unloaded (503; with Retry-After when busy models are in the way)."""

    code = "no_room_for_model"

    def __init__(self, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFullError(HychatError):
    """Every slot is busy and the waiting line is full: come back later (HTTP 429 with Retry-After)."""

    status_code = 429
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AuthenticationError(HychatError):
    status_code = 401
    code = "invalid_api_key"


class ModelNotFoundError(HychatError):
    """A request names a model that no loaded backend serves."""

    status_code = 404
    code = "model_not_found"
    param = "model"


class ClientGoneError(HychatError):
    """The client left before its answer was whole: its generation was stopped (nginx's 499; no one reads it)."""

    status_code = 499
    code = "client_closed_request"


class RequestTooLargeError(HychatError):
    status_code = 413
    code = "request_too_large"


# OpenAI's error types by status; `code` carries ours (context_length_exceeded, queue_full, ...).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_object(message: str, status_code: int, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""
    error_type = ERROR_TYPES.get(status_code, "server_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_body(error: Exception) -> dict:
    """The JSON error shape every route answers with (an unexpected exception shows no details)."""
    if isinstance(error, PromptTooLongError):
        # llama-server's type and fields (a client can shorten by so much) beside OpenAI's code, which
        # OpenAI's clients look for
        body = error_object(str(error), error.status_code, error.code, error.param)
        body["error"].update(type="exceed_context_size_error", n_prompt_tokens=error.n_prompt, n_ctx=error.n_ctx)
        return body
    if isinstance(error, HychatError):
        return error_object(str(error), error.status_code, error.code, error.param)
    return error_object("internal error", HychatError.status_code, HychatError.code)
