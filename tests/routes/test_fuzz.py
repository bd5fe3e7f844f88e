"""The HTTP API fuzzed from its own OpenAPI schema with schemathesis, against a real server.

`python -m app serve` on 127.0.0.1 with llama.cpp on the embedded model and the PyTorch backend on a
tiny random HunYuan checkpoint beside it, so generated requests that name `"backend": "pytorch"` or
`model: "pytorch"` reach real PyTorch generation too. Every operation in the schema (enumerated from
the app, so a new route is fuzzed without anyone listing it) gets EXAMPLES requests: schemathesis
draws bodies that fit the schema (positive) and bodies that break it (negative), and each response
must pass its checks: no 5xx, a documented status code, content type and headers, and a body that
matches the documented schema (a streamed answer: each Server-Sent Event). Answers stay cheap:
HYCHAT_MAX_TOKENS_LIMIT=4 and contexts of 256 tokens.

An operation without parameters or body (`GET /health`, ...) has exactly one possible request, so
schemathesis generates it once; that request is then sent EXAMPLES times, each answer checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from app.main import create_app

EXAMPLES = int(os.environ.get("HYCHAT_FUZZ_EXAMPLES", "500"))  # requests per operation; fewer for a quick look
API_KEY = "fuzz-key"
BACKEND_NAMES = ["default", "llamacpp", "pytorch"]
GENERATING = (
    "POST /api/chat",
    "POST /api/generate",
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/messages",
    "POST /v1/responses",
)
MAX_TOKENS = 4  # HYCHAT_MAX_TOKENS_LIMIT: answers stay cheap
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TIMEOUT_S = 60  # one request; a generation is at most 4 tokens
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
CHINESE = {"messages": [{"role": "user", "content": "请用中文介绍一下长城。"}], "max_tokens": 4, "temperature": 0}


@schemathesis.deserializer("application/x-ndjson")
def _ndjson(_context, response) -> list:
    """Ollama's streams, read as the array of their lines that the schema describes (OpenAPI 3.2's reading)."""
    return [json.loads(line) for line in response.content.decode().split("\n") if line]


OPERATIONS = sorted(
    f"{method.upper()} {path}" for path, operations in create_app().openapi()["paths"].items() for method in operations
)


@dataclass
class Tally:
    sent: int = 0
    distinct: set[str] = field(default_factory=set)
    statuses: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    answered_by: Counter = field(default_factory=Counter)  # backend (/api/chat) or model (/v1)
    streamed: int = 0  # answers as Server-Sent Events, each event checked against the schema

    def summary(self) -> str:
        return (
            f"sent {self.sent} ({len(self.distinct)} distinct, {dict(self.modes)}), statuses {dict(self.statuses)}, "
            f"answered by {dict(self.answered_by)}, {self.streamed} of them streamed"
        )


@pytest.fixture(scope="module")
def server(start_server, hunyuan_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("fuzz")
    env = {
        "HYCHAT_API_KEY": API_KEY,
        "HYCHAT_TORCH_ENABLED": "true",
        "HYCHAT_TORCH_MODEL_PATH": str(hunyuan_dir),
        "HYCHAT_TORCH_DTYPE": "float32",
        "HYCHAT_TORCH_N_CTX": "256",
        "HYCHAT_LLAMACPP_N_CTX": "256",
        "HYCHAT_MAX_TOKENS_LIMIT": str(MAX_TOKENS),
        # POST /admin/reload is fuzzed too: an empty model folder, so no fuzzed path can load a model.
        "HYCHAT_MODEL_DIRS": str(logs),
    }
    server = start_server(env, log_path=logs / "server.log")
    server.log_path = logs / "server.log"
    return server


@pytest.fixture(scope="module")
def schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_every_route_is_in_the_schema():
    assert {"POST /api/chat", "POST /v1/chat/completions", "POST /v1/completions", "GET /health"} <= set(OPERATIONS)
    assert {"POST /tokenize", "POST /detokenize", "POST /apply-template"} <= set(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzz_operation(schema, server, label):
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    tally = Tally()
    cases = []

    def send(case, repeat: bool = False) -> None:
        tally.sent += 1
        tally.distinct.add(_fingerprint(case))
        tally.modes["repeated" if repeat else case.meta.generation.mode.value] += 1
        try:
            response = case.call(base_url=server.url, headers=AUTH, timeout=TIMEOUT_S)
        except Exception as error:  # a hang or a dropped connection: as bad as a 5xx
            tally.failures.append(f"{type(error).__name__}: {error}\n{case.as_curl_command(headers=AUTH)}")
            return
        tally.statuses[response.status_code] += 1
        if label in GENERATING and response.status_code == 200:
            content_type = response.headers["content-type"][0]
            streamed = "json" not in content_type or "ndjson" in content_type  # SSE, or Ollama's JSON lines
            tally.streamed += streamed
            tally.answered_by[_answered_by(response, streamed)] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=AUTH)
        except FailureGroup as group:
            tally.failures.append(str(group)[:3000])

    modes = [schemathesis.GenerationMode.POSITIVE]
    if operation.body or any(True for _ in operation.iter_parameters()):
        modes.append(schemathesis.GenerationMode.NEGATIVE)
    strategy = st.one_of([operation.as_strategy(generation_mode=mode) for mode in modes])
    if method == "POST":
        served = [*BACKEND_NAMES, *(m["id"] for m in httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"])]
        strategy = st.builds(_steered, strategy, st.sampled_from([*served, None]), st.integers(1, MAX_TOKENS))

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @hypothesis.given(case=strategy)
    def fuzz(case) -> None:
        if _fingerprint(case) in tally.distinct:  # drawn before: not counted, hypothesis draws another
            hypothesis.reject()
        cases.append(case)
        send(case)

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # a request without parameters: one case
        fuzz()
    if len(tally.distinct) == 1:  # nothing to vary: the one request, sent until EXAMPLES
        while tally.sent < EXAMPLES:
            send(cases[0], repeat=True)

    print(f"{label}: {tally.summary()}")
    log_tail = server.log_path.read_text(errors="replace")[-4000:]
    assert not tally.failures, f"{len(tally.failures)} failing, first:\n{tally.failures[0]}\nserver log:\n{log_tail}"
    assert tally.sent >= EXAMPLES and (len(tally.distinct) == 1 or len(tally.distinct) >= EXAMPLES), tally.summary()
    if label in GENERATING:  # valid requests reached both backends and were answered
        assert len(tally.answered_by) == 2, tally.summary()
    assert not any(status >= 500 for status in tally.statuses), tally.summary()
    assert server.process.poll() is None, "the server died"


def test_without_the_api_key_every_protected_route_answers_a_documented_401(schema, server):
    for label in OPERATIONS:
        method, path = label.split(" ", 1)
        operation = schema[path][method]
        ids = {p.name: "resp_x" for p in operation.iter_parameters() if p.location == "path"}  # /v1/responses/{id}
        case = operation.Case(body={}, path_parameters=ids) if operation.body else operation.Case(path_parameters=ids)
        response = case.call(base_url=server.url, timeout=TIMEOUT_S)
        assert response.status_code == (200 if path in ("/health", "/ready") else 401), label
        case.validate_response(response, checks=CHECKS)


def test_the_server_is_healthy_after_fuzzing(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").status_code == 200
        for backend in ("llamacpp", "pytorch"):
            r = client.post("/api/chat", json={**CHINESE, "backend": backend})
            assert r.status_code == 200 and r.json()["backend"] == backend, r.text
            assert r.json()["usage"]["completion_tokens"] >= 1
        r = client.post("/v1/chat/completions", json={**CHINESE, "model": "default"})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        metrics = client.get("/metrics").text
        assert 'hychat_slots_busy{backend="llamacpp"} 0.0' in metrics
        assert 'hychat_queue_depth{backend="llamacpp"} 0.0' in metrics
    assert server.process.poll() is None


def _steered(case, model: str | None, max_tokens: int):
    """Most valid requests (not those drawn with `model` None) name a served model (on /api/chat: a
    backend) and stay within the server's max_tokens, so that they reach generation instead of ending
    as a 404 or 400."""
    body = case.body
    if model is None or not case.meta.generation.mode.is_positive or not isinstance(body, dict):
        return case
    if "model" in body or case.path.startswith("/v1/"):  # optional there: drawn bodies often leave it out
        body["model"] = model
    elif "backend" in body or case.path == "/api/chat":
        body["backend"] = model if model in BACKEND_NAMES[1:] else None
    for key in ("max_tokens", "max_new_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(key), int | float) and body[key] > MAX_TOKENS:  # JSON's integers come as 5431.0 too
            body[key] = max_tokens
    if body.get("grammar") is not None:  # a drawn string is hardly ever GBNF: the request would end as a 400
        del body["grammar"]
    if body.get("previous_response_id") is not None:  # a drawn id is never a stored response's: a 404
        del body["previous_response_id"]
    if body.get("top_logprobs") is not None:
        body["logprobs"] = True
    return case


def _answered_by(response, streamed: bool) -> str | None:
    """The model named in the answer (hychat's /api/chat: else the backend): in its body, or in a
    stream's events or lines."""
    if "ndjson" in response.headers["content-type"][0]:  # Ollama's stream: a JSON value per "\n"-ended line
        answers = [json.loads(line) for line in response.text.split("\n") if line]
    elif not streamed:
        answers = [response.json()]
    else:
        # SSE's line ends only: splitlines() would also cut at a U+0085 or U+2028 that a random answer holds.
        lines = re.split(r"\r\n|\r|\n", response.text)
        answers = [json.loads(line[5:]) for line in lines if line.startswith("data:") and line[5:].strip() != "[DONE]"]

    def named(a: dict) -> str | None:  # a stream's first event may name it: Anthropic's message, Responses' response
        message = a.get("message") or a.get("response")
        return a.get("model") or a.get("backend") or (message.get("model") if isinstance(message, dict) else None)

    return next((name for name in map(named, answers) if name), None)


def _fingerprint(case) -> str:
    sent = {"path": case.path_parameters, "query": case.query, "headers": case.headers, "body": case.body}
    return hashlib.sha256(json.dumps(sent, sort_keys=True, default=repr).encode()).hexdigest()
