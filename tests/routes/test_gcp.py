"""Google Cloud Vertex AI's prediction route (llama-server's GCP compat) on real llama.cpp with the
embedded model: in process for its answers, and once as `hychat serve` the way Vertex AI starts a
container (AIP_MODE=PREDICTION, its port and routes in AIP_* variables). The conversions alone:
app/protocol/gcp.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from app.errors import InvalidParameterError
from app.main import create_app
from app.protocol.gcp import request_format
from config.settings import Settings
from tests.conftest import REPO, free_port

HELLO = [{"role": "user", "content": "Say hello"}]
GREEDY = {"temperature": 0, "max_tokens": 8}


def app(service, **settings):
    return create_app(Settings(_env_file=None, gcp_compat=True, **settings), backends={"llamacpp": service})


@pytest.fixture(scope="module")
def client(model_path):
    from app.services.llamacpp_service import llamacpp_service

    if not llamacpp_service.is_loaded:
        llamacpp_service.load_model(model_path=model_path, n_ctx=2048)
    with TestClient(app(llamacpp_service)) as client:
        yield client


def predict(client, *instances, **headers) -> list:
    r = client.post("/predict", json={"instances": list(instances)}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def invalid(message: str) -> dict:
    return {"error": {"code": 400, "message": message, "type": "invalid_request_error"}}


def test_each_instance_is_answered_by_the_route_its_request_format_names(client):
    direct = client.post("/v1/chat/completions", json={"messages": HELLO, **GREEDY}).json()
    completion = client.post("/completion", json={"prompt": "I believe", "n_predict": 4, "temperature": 0}).json()
    chat, by_path, native, tokens = predict(
        client,
        {"@requestFormat": "chatCompletions", "messages": HELLO, **GREEDY},
        {"@requestFormat": "/v1/chat/completions", "messages": HELLO, **GREEDY, "stream": True},  # answered whole
        {"@requestFormat": "completion", "prompt": "I believe", "n_predict": 4, "temperature": 0},
        {"@requestFormat": "tokenize", "content": "hello"},
    )
    for answer in (chat, by_path):
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"] != ""
    assert native["content"] == completion["content"] and native["stop"] is True
    assert tokens == client.post("/tokenize", json={"content": "hello"}).json()


def test_a_bad_instance_gets_its_error_in_its_place_the_others_their_answers(client):
    answers = predict(
        client,
        {"@requestFormat": "nothing", "x": 1},
        "text",
        {"messages": HELLO},
        {"@requestFormat": "chatCompletions", "messages": HELLO, "max_tokens": 10**9},  # the route's own check
        {"@requestFormat": "health"},
    )
    assert answers[:3] == [
        invalid("no handler registered for @requestFormat: nothing"),
        invalid("each instance must be a JSON object"),
        invalid("each instance must include a string @requestFormat"),
    ]
    assert answers[3]["error"]["param"] == "max_tokens" and answers[4] == {"status": "ok"}


def test_a_route_that_answers_with_a_stream_is_refused_and_stopped(client):
    body = {"@requestFormat": "apiGenerate", "prompt": "Count to a thousand:", "options": {"num_predict": 500}}
    started = time.monotonic()
    [answer] = predict(client, body)  # Ollama's generate streams unless told not to
    assert answer == invalid("predict route does not support streaming responses")
    assert time.monotonic() - started < 10  # not generated to its end
    assert not any(slot["is_processing"] for slot in client.get("/slots").json())


def test_the_body_is_checked_in_llama_servers_words(client):
    for body, message in [
        ([], "request body must be a JSON object"),
        ({"instance": []}, "request body must include an array field named instances"),
        ({"instances": [{}] * 129}, "instances array exceeds maximum size of 128"),
    ]:
        r = client.post("/predict", json=body)
        assert (r.status_code, r.json()) == (400, invalid(message))
    assert client.post("/predict", content=b"{").status_code == 400


def test_the_api_key_guards_the_route_and_goes_with_each_instance(service):
    with TestClient(app(service, api_key="s3cret")) as client:
        assert client.post("/predict", json={"instances": []}).status_code == 401
        [tokens] = predict(client, {"@requestFormat": "tokenize", "content": "hi"}, Authorization="Bearer s3cret")
        assert tokens["tokens"]


def test_off_unless_asked_and_never_over_a_served_route(service):
    with TestClient(create_app(Settings(_env_file=None), backends={"llamacpp": service})) as client:
        assert client.post("/predict", json={"instances": []}).status_code == 404
    with pytest.raises(InvalidParameterError, match="POST /completion is already served"):
        app(service, gcp_predict_route="/completion")


def test_request_formats_are_llama_servers_camel_case_names():
    assert [request_format(p) for p in ("/v1/chat/completions", "/apply-template", "/completion", "/api/chat",
                                        "/v1/messages/count_tokens", "/slots/{id_slot}")] == [
        "chatCompletions", "applyTemplate", "completion", "apiChat", "messagesCountTokens", "slots"]  # fmt: skip


def test_vertex_ai_starts_it_with_its_own_variables():
    port = free_port()
    env = {**os.environ, "AIP_MODE": "PREDICTION", "AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": "v1/m:predict",
           "AIP_HEALTH_ROUTE": "/alive", "HYCHAT_API_KEY": ""}  # fmt: skip
    # --port gives way to AIP_HTTP_PORT, where the platform sends the requests.
    command = [sys.executable, "-m", "app", "serve", "--port", str(free_port()), "--parallel", "1"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/alive", timeout=5).json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = {"instances": [{"@requestFormat": "chatCompletions", "messages": HELLO, **GREEDY}]}
        r = httpx.post(f"{url}/v1/m:predict", json=body, timeout=300)
        assert r.status_code == 200 and r.json()["predictions"][0]["choices"][0]["message"]["content"]
        assert httpx.post(f"{url}/predict", json=body, timeout=60).status_code == 404
    finally:
        process.terminate()
        process.wait(timeout=60)
