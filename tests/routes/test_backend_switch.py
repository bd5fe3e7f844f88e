"""Switching between the two backends through a real server: by setting and by request."""

from __future__ import annotations

import json

import httpx
import pytest
from httpx_sse import connect_sse

CHINESE = [{"role": "user", "content": "你好"}]


@pytest.fixture(scope="module")
def both(start_server):
    """`hychat serve --backend pytorch`: PyTorch is the default, llama.cpp is loaded beside it."""
    return start_server({"HYCHAT_TORCH_DTYPE": "float32"}, "--backend", "pytorch")


def chat(url: str, **body) -> httpx.Response:
    return httpx.post(
        f"{url}/api/chat", json={"messages": CHINESE, "max_new_tokens": 8, "temperature": 0, **body}, timeout=120
    )


def test_the_setting_picks_the_default_and_a_request_may_name_either(both):
    assert chat(both.url).json()["backend"] == "pytorch"
    for name in ("pytorch", "llamacpp"):
        body = chat(both.url, backend=name).json()
        assert body["backend"] == name and body["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and body["response"]


def test_the_final_stream_event_names_the_backend(both):
    with httpx.Client(base_url=both.url, timeout=120) as client:
        with connect_sse(
            client, "POST", "/api/chat", json={"messages": CHINESE, "max_new_tokens": 8, "stream": True}
        ) as source:
            done = [json.loads(e.data) for e in source.iter_sse() if e.event == "done"]
    assert done[0]["backend"] == "pytorch" and done[0]["usage"]["completion_tokens"] > 0


def test_info_lists_both_loaded_backends(both):
    backends = httpx.get(f"{both.url}/api/info").json()["backends"]
    assert backends["llamacpp"]["loaded"] and backends["llamacpp"]["quantization"] == "Q4_1"
    assert backends["pytorch"]["loaded"] and backends["pytorch"]["dtype"] == "float32"
    assert backends["pytorch"]["architecture"] == "llama"


def test_a_backend_that_is_not_loaded_answers_503(start_server):
    server = start_server()  # defaults: llama.cpp only
    r = chat(server.url, backend="pytorch")
    assert r.status_code == 503
    assert r.json()["error"] == {
        "message": "the pytorch backend has no model loaded",
        "type": "server_error",
        "param": None,
        "code": "backend_unavailable",
    }
    assert chat(server.url).json()["backend"] == "llamacpp"
    r = chat(server.url, backend="tensorflow")
    assert r.status_code == 400 and "backend" in r.json()["error"]["message"]
