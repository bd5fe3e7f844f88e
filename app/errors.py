"""The errors the service raises on purpose. `app.main` maps them to HTTP answers in one place."""

from __future__ import annotations

from pathlib import Path


class HychatError(Exception):
    status_code = 500
    code = "internal_error"


class InvalidParameterError(HychatError, ValueError):
    """A generation parameter or message is out of range or malformed."""

    status_code = 400
    code = "invalid_parameter"


class PromptTooLongError(InvalidParameterError):
    code = "context_length_exceeded"

    def __init__(self, n_prompt: int, n_ctx: int):
        super().__init__(
            f"prompt is {n_prompt} tokens but the context window is {n_ctx} tokens "
            f"(at least one token must stay free for the answer)"
        )
        self.n_prompt, self.n_ctx = n_prompt, n_ctx


class ChatTemplateError(HychatError):
    """The model's chat template refused the conversation or tried something the sandbox forbids."""

    status_code = 400
    code = "chat_template_error"


class ModelFileError(HychatError):
    """A model file is missing, not a GGUF file, truncated or corrupt."""

    code = "model_file_error"

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


class BackendUnavailableError(HychatError):
    """The chosen backend is not installed or has no model loaded."""

    status_code = 503
    code = "backend_unavailable"


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


def error_body(error: Exception) -> dict:
    """The JSON error shape every route answers with."""
    if isinstance(error, HychatError):
        return {"error": {"message": str(error), "type": error.code}}
    return {"error": {"message": "internal error", "type": HychatError.code}}
