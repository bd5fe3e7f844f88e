"""Without llama-cpp-python the service still imports, says so, and answers 503 instead of crashing.

llama_cpp is installed here, so its absence is simulated the way Python itself reports it: a
`None` entry in sys.modules makes `import llama_cpp` raise ImportError.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import json, sys
sys.modules["llama_cpp"] = None
from app.services.llamacpp_service import LLAMACPP_AVAILABLE, llamacpp_service
from app.errors import BackendUnavailableError
try:
    llamacpp_service.load_model(model_path="whatever.gguf")
    load_error = None
except BackendUnavailableError as error:
    load_error = str(error)
from fastapi.testclient import TestClient
from app.main import create_app
with TestClient(create_app()) as client:
    r = client.post("/api/chat", json={"messages": [{"role": "user", "content": "你好"}]})
    info = client.get("/api/info").json()
print(json.dumps({"available": LLAMACPP_AVAILABLE, "load_error": load_error, "status": r.status_code,
                  "body": r.json(), "info": info}, ensure_ascii=False))
"""


def test_missing_llama_cpp_is_reported_not_raised():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["available"] is False
    assert "llama-cpp-python is not installed" in out["load_error"]
    assert out["status"] == 503 and out["body"]["error"]["type"] == "backend_unavailable"
    assert out["info"]["backends"]["llamacpp"] == {"backend": "llamacpp", "available": False, "loaded": False}
