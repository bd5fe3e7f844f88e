"""Without llama-cpp-python, or without torch, the service still imports, says which backend is
missing, and answers 503 instead of crashing.

Both packages are installed here, so their absence is simulated the way Python itself reports it:
a `None` entry in sys.modules makes the import raise ImportError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = """
import json, sys
sys.modules[sys.argv[1]] = None
from app.services.llamacpp_service import LLAMACPP_AVAILABLE, llamacpp_service
from app.services.model_service import MODEL_AVAILABLE, model_service
from app.errors import BackendUnavailableError
service = {"llama_cpp": llamacpp_service, "torch": model_service}[sys.argv[1]]
try:
    service.load_model(model_path="whatever.gguf")
    load_error = None
except BackendUnavailableError as error:
    load_error = str(error)
from fastapi.testclient import TestClient
from app.main import create_app
body = {"messages": [{"role": "user", "content": "你好"}], "max_new_tokens": 4}
with TestClient(create_app()) as client:
    default = client.post("/api/chat", json=body)
    named = client.post("/api/chat", json={**body, "backend": sys.argv[2]})
    info = client.get("/api/info").json()
print(json.dumps({"llamacpp": LLAMACPP_AVAILABLE, "pytorch": MODEL_AVAILABLE, "load_error": load_error,
                  "default": [default.status_code, default.json()], "named": [named.status_code, named.json()],
                  "info": info}, ensure_ascii=False))
"""


@pytest.mark.parametrize(
    "module, backend, env, load_error, default_answer",
    [
        # The user's rule: without llama.cpp, PyTorch answers.
        ("llama_cpp", "llamacpp", {"HYCHAT_TORCH_DTYPE": "float32"}, "llama-cpp-python is not installed", "pytorch"),
        ("torch", "pytorch", {"HYCHAT_LLAMACPP_ENABLED": "false"}, "needs the torch extra", None),
    ],
)
def test_a_missing_backend_is_reported_not_raised(module, backend, env, load_error, default_answer):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, module, backend],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out[backend] is False and out["llamacpp" if backend == "pytorch" else "pytorch"] is True
    assert load_error in out["load_error"]
    missing = {
        "message": f"the {backend} backend is not installed",
        "type": "server_error",
        "param": None,
        "code": "backend_unavailable",
    }
    assert out["named"] == [503, {"error": missing}]
    if default_answer:
        assert out["default"][0] == 200 and out["default"][1]["backend"] == default_answer
    else:
        assert out["default"] == [503, {"error": missing}]
    assert out["info"]["backends"][backend] == {"backend": backend, "available": False, "loaded": False}
