"""A prompt longer than a slot's context: OpenAI's `context_length_exceeded` with the token counts,
or, with HYCHAT_CONTEXT_OVERFLOW=truncate, the oldest turns left out (never the system prompt) and
the answer saying so. Real server, llama.cpp on the embedded SmolLM2 model, 2 slots of 256 tokens."""

from __future__ import annotations

import json
import re

import httpx
import pytest

SYSTEM = {"role": "system", "content": "你是一个简洁的助手。"}
N_CTX = 256


def turn(i: int) -> list[dict]:
    return [
        {"role": "user", "content": f"第{i}个问题：长城有多长？" * 3},
        {"role": "assistant", "content": "很长。" * 10},
    ]


def history(n_turns: int) -> list[dict]:
    return [SYSTEM, *[m for i in range(n_turns) for m in turn(i)], {"role": "user", "content": "最后一个问题：你好"}]


@pytest.fixture(scope="module")
def servers(start_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    env = {"HYCHAT_LLAMACPP_N_CTX": str(N_CTX), "HYCHAT_PARALLEL": "2"}
    strict = start_server(env, log_path=logs / "strict.log")
    truncating = start_server({**env, "HYCHAT_CONTEXT_OVERFLOW": "truncate"}, log_path=logs / "truncate.log")
    return strict, truncating, logs


def prompt_tokens(url: str, messages: list[dict]) -> int:
    r = httpx.post(f"{url}/apply-template", json={"messages": messages}, timeout=300)
    text = r.json()["prompt"]
    return len(httpx.post(f"{url}/tokenize", json={"content": text}, timeout=300).json()["tokens"])


def test_a_too_long_chat_gets_context_length_exceeded_with_the_counts(servers):
    strict, _, _ = servers
    messages = history(6)
    n_prompt = prompt_tokens(strict.url, messages)
    assert n_prompt > N_CTX
    for route, body in [
        ("/v1/chat/completions", {"model": "llamacpp", "messages": messages}),
        ("/api/chat", {"messages": messages}),
    ]:
        r = httpx.post(f"{strict.url}{route}", json=body, timeout=300)
        assert r.status_code == 400
        error = r.json()["error"]
        assert (error["code"], error["type"], error["param"]) == (
            "context_length_exceeded",
            "exceed_context_size_error",  # llama-server's type, OpenAI's code
            "messages",
        )
        assert re.search(rf"prompt is {n_prompt} tokens but the context window is {N_CTX} tokens", error["message"])


def test_truncation_drops_the_oldest_turns_keeps_the_system_prompt_and_says_so(servers):
    strict, truncating, _ = servers  # token counts from the strict one: the other's /apply-template truncates too
    messages = history(6)
    body = {"model": "llamacpp", "messages": messages, "max_tokens": 4, "temperature": 0}
    r = httpx.post(f"{truncating.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    dropped = r.json()["truncated_messages"]
    assert dropped > 0 and dropped % 2 == 0  # whole turns: a question and its answer
    kept = [SYSTEM, *messages[1 + dropped :]]
    # What was answered is exactly the system prompt plus the newest turns that fit.
    assert r.json()["usage"]["prompt_tokens"] == prompt_tokens(strict.url, kept) < N_CTX
    assert prompt_tokens(strict.url, [SYSTEM, *messages[1 + dropped - 2 :]]) >= N_CTX  # one turn more: too long
    with httpx.stream("POST", f"{truncating.url}/v1/chat/completions", json={**body, "stream": True}) as stream:
        first = json.loads(next(line for line in stream.iter_lines() if line.startswith("data: "))[6:])
    assert first["truncated_messages"] == dropped  # said once, on the first chunk
    simple = {"messages": messages, "max_new_tokens": 4}
    assert httpx.post(f"{truncating.url}/api/chat", json=simple, timeout=300).json()["truncated_messages"] == dropped
    # A chat that fits is left whole and says nothing.
    short = httpx.post(f"{truncating.url}/v1/chat/completions", json={**body, "messages": history(0)}, timeout=300)
    assert "truncated_messages" not in short.json()


def test_a_last_turn_too_long_on_its_own_is_still_refused(servers):
    _, truncating, _ = servers
    messages = [SYSTEM, *turn(0), {"role": "user", "content": "你好" * 400}]
    r = httpx.post(f"{truncating.url}/v1/chat/completions", json={"model": "llamacpp", "messages": messages})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_info_and_the_start_up_log_state_the_context_of_each_request(servers):
    strict, _, logs = servers
    info = httpx.get(f"{strict.url}/api/info", timeout=300).json()["backends"]["llamacpp"]
    assert (info["n_ctx"], info["parallel"], info["n_ctx_total"]) == (N_CTX, 2, 2 * N_CTX)
    assert f"2 slots of {N_CTX} tokens (the context of each request)" in (logs / "strict.log").read_text()
