"""The PyTorch / transformers backend.

Its implementation lands with the PyTorch issue; until then it is importable, reports itself as not
available, and every call answers with BackendUnavailableError (HTTP 503), never a crash.
"""

from __future__ import annotations

from typing import Any, NoReturn

from app.errors import BackendUnavailableError
from app.services.backend import Backend, Generation, GenerationRequest

MODEL_AVAILABLE = False

_NOT_YET = "the PyTorch backend is not part of this build yet; use the llama.cpp backend"


class TorchBackend(Backend):
    name = "pytorch"
    available = MODEL_AVAILABLE

    def load_model(self, model_path: str, **kwargs: Any) -> NoReturn:
        raise BackendUnavailableError(_NOT_YET)

    def unload(self) -> None:
        pass

    @property
    def is_loaded(self) -> bool:
        return False

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "available": False, "loaded": False}

    def start(self, request: GenerationRequest) -> Generation:
        raise BackendUnavailableError(_NOT_YET)


model_service = TorchBackend()
