"""Bad requests against a real server (`python -m app serve`, llama.cpp on the embedded model and
PyTorch on a tiny random checkpoint): each gets a 4xx in OpenAI's error shape whose message names the
problem, and nothing else changes: after the whole table the same greedy Chinese request answers
exactly as before, no slot is busy, nothing is queued and the server process is alive. Values that
are odd but valid (the fuzzer's finds) are answered by both backends.

The table covers /api/chat (A), /v1/chat/completions (C) and /v1/completions (T), each case on the
routes where it applies. Bodies JSON cannot hold (NaN, 1e999, invalid UTF-8, lone surrogates) are
sent as raw bytes: Python's json, which the server uses, reads `NaN` and `Infinity` literals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest

from app.errors import ERROR_TYPES

CHINESE = [{"role": "user", "content": "请用中文介绍一下长城。"}]
ROUTES = {"A": "/api/chat", "C": "/v1/chat/completions", "T": "/v1/completions"}
BASE = {
    "A": {"messages": CHINESE},
    "C": {"model": "default", "messages": CHINESE},
    "T": {"model": "default", "prompt": "长城"},
}
MAX_TOKENS = {"A": "max_new_tokens", "C": "max_tokens", "T": "max_tokens"}
GREEDY = {"messages": CHINESE, "max_new_tokens": 24, "temperature": 0}
JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Case:
    name: str
    routes: str  # which of A, C, T
    status: int
    needle: str  # a piece of the message that names the problem
    fields: dict | None = None  # merged into the route's valid body
    raw: str | bytes | None = None  # appended (as JSON text) inside the route's valid body, or the whole body
    code: str = "invalid_parameter"
    param: str | None = "?"  # "?": not checked; else the exact param (a {max_tokens} is the route's name)
    headers: dict | None = None

    def body(self, route: str) -> bytes:
        fields = {k.format(max_tokens=MAX_TOKENS[route]): v for k, v in (self.fields or {}).items()}
        text = json.dumps({**BASE[route], **fields})  # ASCII: a lone surrogate goes as its \u escape
        if isinstance(self.raw, bytes):
            return self.raw if self.raw.startswith((b"{", b"[")) else text[:-1].encode() + b", " + self.raw + b"}"
        if self.raw is not None:
            text = text[:-1] + ", " + self.raw.format(max_tokens=MAX_TOKENS[route]) + "}"
        return text.encode()


TOO_LONG = "你好" * 3000  # ~6000 tokens, past the 2048-token context
CASES = [
    # -- bodies that are not a JSON object of the right types
    Case("malformed JSON", "ACT", 400, "not valid JSON", raw=b'{"messages": [', param=None),
    Case("a JSON array", "ACT", 400, "must be a JSON object", raw=b"[1, 2]", param=None),
    Case(
        "not sent as JSON",
        "ACT",
        400,
        "Content-Type: application/json",
        param=None,
        headers={"content-type": "text/plain"},
    ),
    Case("invalid UTF-8", "ACT", 400, "not valid UTF-8", raw=b'"user": "\xff\xfe"', param=None),
    Case(
        "lone UTF-16 surrogate",
        "AC",
        400,
        "unicode",
        {"messages": [{"role": "user", "content": "\ud800"}]},
        param="messages.0.content",
    ),
    Case("lone UTF-16 surrogate", "T", 400, "unicode", {"prompt": "\udfff"}, param="prompt"),
    Case("unknown field", "ACT", 400, "Extra inputs are not permitted", {"max_token": 5}, param="max_token"),
    Case("wrong type: string temperature", "ACT", 400, "valid number", {"temperature": "hot"}, param="temperature"),
    Case("wrong type: messages a string", "AC", 400, "messages", {"messages": "hi"}, param="messages"),
    Case("wrong type: max_tokens a float", "ACT", 400, "integer", {"{max_tokens}": 2.5}, param="{max_tokens}"),
    # -- messages and prompts
    Case("missing messages", "C", 400, "Field required", raw=b'{"model": "default"}', param="messages"),
    Case("missing prompt", "T", 400, "Field required", raw=b'{"model": "default"}', param="prompt"),
    Case("model not a string", "CT", 400, "valid string", {"model": 5}, param="model"),  # optional: the default
    Case("empty messages", "A", 400, "at least 1 item", {"messages": []}, param="messages"),
    Case(
        "unknown role",
        "A",
        400,
        "'user'",
        {"messages": [{"role": "wizard", "content": "hi"}]},
        param="messages.0.role",
    ),
    Case(
        "message without content",
        "AC",
        400,
        "Field required",
        {"messages": [{"role": "user"}]},
        param="messages.0.content",
    ),
    Case(  # on /v1 content may be missing, but only for an assistant message that calls tools
        "assistant message without content or tool calls",
        "C",
        400,
        "messages[0] has neither content nor tool_calls",
        {"messages": [{"role": "assistant"}]},
        param="messages[0].content",
    ),
    Case(
        "tool calls on a user message",
        "C",
        400,
        "messages.0.tool_calls: Extra inputs",
        {"messages": [{"role": "user", "content": "你好", "tool_calls": []}]},
        param="messages.0.tool_calls",
    ),
    Case(
        "unknown role",
        "C",
        400,
        "role must be one of system, developer, user, assistant, tool",
        {"messages": [{"role": "wizard", "content": "hi"}]},
        param="messages.0",
    ),
    Case(
        "image content part",
        "C",
        400,
        "only text parts",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    ),
    Case("empty prompt", "AT", 400, "at least 1 character", {"prompt": ""}, param="prompt"),
    Case("two prompts", "T", 400, "at most 1 item", {"prompt": ["a", "b"]}, param="prompt"),
    Case("both prompt and messages", "A", 400, "exactly one", {"prompt": "hi"}, param=None),
    Case("neither prompt nor messages", "A", 400, "exactly one", raw=b"{}", param=None),
    Case(
        "prompt longer than the context",
        "AC",
        400,
        "context window",
        {"messages": [{"role": "user", "content": TOO_LONG}]},
        code="context_length_exceeded",
        param="messages",
    ),
    Case(
        "prompt longer than the context",
        "T",
        400,
        "context window",
        {"prompt": TOO_LONG},
        code="context_length_exceeded",
        param="prompt",
    ),
    # -- generation parameters
    Case("huge max_tokens", "ACT", 400, "HYCHAT_MAX_TOKENS_LIMIT", {"{max_tokens}": 1_000_000}, param="{max_tokens}"),
    Case(
        "max_tokens past int64", "ACT", 400, "HYCHAT_MAX_TOKENS_LIMIT", {"{max_tokens}": 10**30}, param="{max_tokens}"
    ),
    Case("zero max_tokens", "ACT", 400, "greater than or equal to 1", {"{max_tokens}": 0}, param="{max_tokens}"),
    Case("NaN max_tokens", "ACT", 400, "finite number", raw='"{max_tokens}": NaN', param="{max_tokens}"),
    Case("negative temperature", "ACT", 400, "greater than or equal to 0", {"temperature": -1}, param="temperature"),
    Case("NaN temperature", "ACT", 400, "finite number", raw='"temperature": NaN', param="temperature"),
    Case("infinite temperature (1e999)", "ACT", 400, "finite number", raw='"temperature": 1e999', param="temperature"),
    Case("-Infinity top_p", "ACT", 400, "finite number", raw='"top_p": -Infinity', param="top_p"),
    Case("top_p above 1", "ACT", 400, "less than or equal to 1", {"top_p": 2}, param="top_p"),
    Case("huge top_k", "ACT", 400, "less than or equal to", {"top_k": 10**30}, param="top_k"),
    Case(
        "NaN repetition_penalty",
        "ACT",
        400,
        "finite number",
        raw='"repetition_penalty": NaN',
        param="repetition_penalty",
    ),
    Case("negative seed", "ACT", 400, "greater than or equal to 0", {"seed": -1}, param="seed"),
    Case("empty stop string", "ACT", 400, "at least 1 character", {"stop": [""]}, param="stop"),
    Case("too many stop strings", "ACT", 400, "at most 16 items", {"stop": ["a"] * 20}, param="stop"),
    Case("n=9", "CT", 400, "n: Input should be less than or equal to 8", {"n": 9}, param="n"),
    Case("top_logprobs without logprobs", "C", 400, "needs logprobs", {"top_logprobs": 3}, param="top_logprobs"),
    Case("too many logprobs", "T", 400, "less than or equal to 20", {"logprobs": 21}, param="logprobs"),
    Case(
        "stream_options without stream",
        "CT",
        400,
        "stream: true",
        {"stream_options": {"include_usage": True}},
        param="stream_options",
    ),
    Case(
        "unknown response_format",
        "C",
        400,
        "json_schema",
        {"response_format": {"type": "xml"}},
        param="response_format",
    ),
    # -- models and backends
    Case("unknown model", "CT", 404, "'gpt-4o'", {"model": "gpt-4o"}, code="model_not_found", param="model"),
    Case("unknown backend", "A", 400, "'llamacpp' or 'pytorch'", {"backend": "tensorflow"}, param="backend"),
    # -- size
    Case("10 MB body", "ACT", 413, "exceeds", {"prompt": "x" * 10_000_000}, code="request_too_large", param=None),
]
TABLE = [pytest.param(case, route, id=f"{route}: {case.name}") for case in CASES for route in case.routes]


@pytest.fixture(scope="module")
def server(start_server, torch_beside_env):
    # PyTorch on a tiny random checkpoint beside llama.cpp, for the values only it choked on.
    return start_server(torch_beside_env)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def before(client):
    """What the server answers before the table runs."""
    r = client.post("/api/chat", json=GREEDY)
    assert r.status_code == 200
    return {"answer": r.json()["response"], "info": client.get("/api/info").json()}


def assert_error(r: httpx.Response, status: int, code: str | None, needle: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    fields = {"message", "type", "param", "code"} | (
        {"n_prompt_tokens", "n_ctx"} if code == "context_length_exceeded" else set()
    )
    assert set(body) == {"error"} and set(body["error"]) == fields, body
    error = body["error"]
    llama_servers = {"context_length_exceeded": "exceed_context_size_error"}  # its type, OpenAI's code
    assert error["type"] == llama_servers.get(code, ERROR_TYPES[status]) and error["code"] == code, error
    assert needle in error["message"], error
    return error


@pytest.mark.parametrize("case, route", TABLE)
def test_a_bad_request_gets_a_4xx_naming_the_problem(client, before, case, route):
    r = client.post(ROUTES[route], content=case.body(route), headers=case.headers or JSON)
    error = assert_error(r, case.status, case.code, case.needle.format(max_tokens=MAX_TOKENS[route]))
    if case.param != "?":
        assert error["param"] == (case.param and case.param.format(max_tokens=MAX_TOKENS[route])), error


@pytest.mark.parametrize("route", "ACT")
def test_a_body_over_the_limit_without_content_length_is_413(client, before, route):
    def chunks():  # no Content-Length: the limit must count what arrives
        for _ in range(40):
            yield b"x" * 50_000

    r = client.post(ROUTES[route], content=chunks(), headers=JSON)
    assert_error(r, 413, "request_too_large", "exceeds")


@pytest.mark.parametrize("backend", ["llamacpp", "pytorch"])
@pytest.mark.parametrize(
    "extreme",
    [
        {"temperature": 5e-324},  # PyTorch divided the logits by it in float32: inf, then NaN probabilities (500)
        {"temperature": 1e-300, "top_k": 0},
        {"repetition_penalty": 5e-324},  # the same overflow (500)
        {"repetition_penalty": 1e308},
        {"top_p": 5e-324, "min_p": 5e-324},
        {"top_k": 2**31 - 1, "seed": 2**32 - 1},
        {"stop": ["\u0000"], "prompt": "a\u0000b"},
    ],
    ids=repr,
)
def test_extreme_but_valid_values_are_answered(client, before, backend, extreme):
    body = {"messages": CHINESE, "max_new_tokens": 4, "backend": backend, **extreme}
    if "prompt" in extreme:
        del body["messages"]
    r = client.post("/api/chat", json=body)
    assert r.status_code == 200 and r.json()["backend"] == backend, r.text


def test_nothing_else_changed(client, server, before):
    r = client.post("/api/chat", json=GREEDY)
    assert r.status_code == 200 and r.json()["response"] == before["answer"]
    assert client.get("/api/info").json() == before["info"]
    metrics = client.get("/metrics").text
    for backend in ("llamacpp", "pytorch"):
        assert f'hychat_slots_busy{{backend="{backend}"}} 0.0' in metrics
        assert f'hychat_queue_depth{{backend="{backend}"}} 0.0' in metrics
    assert client.get("/health").json() == {"status": "ok"}
    assert server.process.poll() is None
