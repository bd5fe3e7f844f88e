"""The one chat path (app/services/chat.py): every dialect's answer is read by the same parser, built
in one place. A real uvicorn on 127.0.0.1 runs in this process, on an app handed its own llama.cpp
backend (`create_app(settings, backends=...)`), so that the parsers the path builds can be counted.

SmolLM2 neither reasons nor calls tools by itself: a grammar (the non-OpenAI `grammar` field, as
llama-server has it) makes it write reasoning, then an answer or a call, token by token as sampled.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from app.chat.output import ChatOutputParser
from app.main import create_app
from app.services import chat as chat_path
from app.services.llamacpp_service import LlamaCppBackend
from config.settings import Settings
from tests.conftest import free_port

REASONING = "用户问北京的天气。"
ANSWER = "北京今天晴，21度。"
THINK = f"<think>\n{REASONING}\n</think>\n"
CALL = '{"name": "get_weather", "arguments": {"city": "北京"}}'
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
USER = [{"role": "user", "content": "北京天气怎么样？"}]


def grammar(text: str) -> str:
    return "root ::= " + json.dumps(text, ensure_ascii=False)


@pytest.fixture(scope="module")
def url(model_path) -> Iterator[str]:
    backend = LlamaCppBackend()  # not the user's singleton: the app takes the one it is given
    backend.load_model(model_path=model_path, n_ctx=1024, parallel=2)
    app = create_app(Settings(_env_file=None), backends={"llamacpp": backend})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # bounds a start that hangs
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def parsers(monkeypatch) -> list[ChatOutputParser]:
    """Every parser the chat path builds, in order."""
    built: list[ChatOutputParser] = []

    class Counted(ChatOutputParser):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(chat_path, "ChatOutputParser", Counted)
    return built


def sse(url: str, path: str, body: dict) -> list[tuple[str, dict]]:
    """(event, data) of each Server-Sent Event, `[DONE]` left out."""
    frames, event = [], "message"
    with httpx.stream("POST", url + path, json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and line != "data: [DONE]":
                frames.append((event, json.loads(line[6:])))
                event = "message"
    return frames


def openai_stream(url: str, body: dict) -> tuple[str, str, list[dict], dict]:
    """Content, reasoning, tool calls (joined from their deltas) and the finish chunk's choice."""
    deltas = [d["choices"][0] for _, d in sse(url, "/v1/chat/completions", {**body, "stream": True}) if d["choices"]]
    content = "".join(c["delta"].get("content") or "" for c in deltas)
    reasoning = "".join(c["delta"].get("reasoning_content") or "" for c in deltas)
    calls: dict[int, dict] = {}
    for part in (p for c in deltas for p in c["delta"].get("tool_calls") or ()):
        call = calls.setdefault(part["index"], {"name": "", "arguments": ""})
        call["name"] += part["function"].get("name") or ""
        call["arguments"] += part["function"].get("arguments") or ""
    return content, reasoning, list(calls.values()), deltas[-1]


def test_v1_and_api_chat_streams_read_the_same_answer_through_one_parser(url, parsers):
    body = {"messages": USER, "grammar": grammar(THINK + ANSWER), "temperature": 0}
    content, reasoning, calls, last = openai_stream(url, {"model": "default", **body, "max_tokens": 100})
    frames = sse(url, "/api/chat", {**body, "max_new_tokens": 100, "stream": True})
    api_content = "".join(d.get("text", "") for e, d in frames if e == "message")
    api_reasoning = "".join(d.get("reasoning", "") for e, d in frames if e == "message")
    done = [d for e, d in frames if e == "done"]
    assert (content, reasoning) == (api_content, api_reasoning) == (ANSWER, REASONING)
    assert calls == [] and last["finish_reason"] == done[0]["finish_reason"] == "stop"
    assert len(parsers) == 2 and all(type(p) is type(parsers[0]) for p in parsers)  # one each, built by the path
    assert parsers[0].reasoning_tokens == parsers[1].reasoning_tokens == done[0]["usage"]["reasoning_tokens"] > 0


def test_a_streamed_and_a_whole_answer_carry_the_same_tool_call(url, parsers):
    body = {"model": "default", "messages": USER, "tools": [TOOL], "grammar": grammar(THINK + CALL), "temperature": 0}
    content, reasoning, calls, last = openai_stream(url, {**body, "max_tokens": 100})
    whole = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 100}, timeout=120).json()
    message = whole["choices"][0]["message"]
    assert reasoning == message["reasoning_content"] == REASONING
    assert not content.strip() and message["content"] is None
    assert calls == [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in message["tool_calls"]
    ]
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "北京"}
    assert last["finish_reason"] == whole["choices"][0]["finish_reason"] == "tool_calls"
    assert len(parsers) == 2


def test_a_raw_prompt_gets_no_parser_and_its_text_as_it_came(url, parsers):
    text = THINK + ANSWER
    answer = httpx.post(f"{url}/api/chat", json={"prompt": "x", "grammar": grammar(text)}, timeout=120).json()
    assert answer["response"] == text and answer["reasoning"] is None  # tags and all
    body = {"model": "default", "prompt": "你好", "max_tokens": 8, "temperature": 0}
    streamed = sse(url, "/v1/completions", {**body, "stream": True})
    whole = httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()["choices"][0]
    assert "".join(d["choices"][0]["text"] for _, d in streamed) == whole["text"]
    assert parsers == []
