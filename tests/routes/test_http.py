"""The HTTP API through a real uvicorn server on 127.0.0.1, started as `python -m app serve`."""

from __future__ import annotations

import json

import httpx
import pytest
from httpx_sse import connect_sse

CHINESE = [{"role": "user", "content": "请用中文介绍一下长城。"}]


@pytest.fixture(scope="module")
def server(start_server):
    return start_server()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def stream_events(client: httpx.Client, body: dict) -> list:
    with connect_sse(client, "POST", "/api/chat", json={**body, "stream": True}) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return list(source.iter_sse())


def test_health_and_info(client):
    assert client.get("/health").json() == {"status": "ok"}
    backends = client.get("/api/info").json()["backends"]
    assert backends["llamacpp"]["loaded"] and backends["llamacpp"]["quantization"] == "Q4_1"
    assert backends["pytorch"] == {"backend": "pytorch", "available": True, "loaded": False}


def test_chat_answers_json(client):
    r = client.post("/api/chat", json={"messages": CHINESE, "max_new_tokens": 32, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["backend"] == "llamacpp" and body["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert body["response"].strip() and body["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] > 10 and 0 < body["usage"]["completion_tokens"] <= 32


def test_streamed_chat_equals_the_json_answer(client):
    params = {"messages": CHINESE, "max_new_tokens": 40, "temperature": 0}
    events = stream_events(client, params)
    texts = [json.loads(e.data)["text"] for e in events if e.event == "message"]
    done = [json.loads(e.data) for e in events if e.event == "done"]
    assert events[-1].event == "done" and len(done) == 1
    assert "".join(texts) == client.post("/api/chat", json=params).json()["response"]
    assert all("\ufffd" not in t for t in texts)
    usage = done[0]["usage"]
    assert done[0]["backend"] == "llamacpp" and done[0]["finish_reason"] in ("stop", "length")
    assert usage["completion_tokens"] >= len(texts) and usage["ttft_ms"] > 0 and usage["tokens_per_s"] > 0


def test_raw_prompt_with_stop_sequence(client):
    full = client.post("/api/chat", json={"prompt": "1, 2, 3, 4,", "max_tokens": 30, "temperature": 0}).json()
    assert " 7" in full["response"]
    cut = client.post(
        "/api/chat", json={"prompt": "1, 2, 3, 4,", "max_tokens": 30, "temperature": 0, "stop": " 7"}
    ).json()
    assert cut["response"] == full["response"][: full["response"].index(" 7")] and cut["finish_reason"] == "stop"


def test_a_client_that_disconnects_mid_stream_does_not_hurt_the_server(client, server):
    for _ in range(3):
        with (
            httpx.Client(base_url=server.url, timeout=300) as other,
            connect_sse(
                other,
                "POST",
                "/api/chat",
                json={"prompt": "Once upon a time", "max_new_tokens": 500, "temperature": 0, "stream": True},
            ) as source,
        ):
            events = source.iter_sse()
            next(events), next(events)
    r = client.post("/api/chat", json={"messages": CHINESE, "max_new_tokens": 8, "temperature": 0})
    assert r.status_code == 200 and r.json()["response"]


def test_without_llamacpp_enabled_the_pytorch_backend_answers(start_server):
    server = start_server({"HYCHAT_LLAMACPP_ENABLED": "false", "HYCHAT_TORCH_DTYPE": "float32"})
    backends = httpx.get(f"{server.url}/api/info").json()["backends"]
    assert not backends["llamacpp"]["loaded"] and backends["pytorch"]["loaded"]
    r = httpx.post(f"{server.url}/api/chat", json={"messages": CHINESE, "max_new_tokens": 8}, timeout=120)
    assert r.status_code == 200 and r.json()["backend"] == "pytorch"
    r = httpx.post(f"{server.url}/api/chat", json={"messages": CHINESE, "backend": "llamacpp"}, timeout=300)
    assert r.status_code == 503 and r.json()["error"]["message"] == "the llamacpp backend has no model loaded"
