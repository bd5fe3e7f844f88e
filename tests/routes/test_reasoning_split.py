"""Reasoning kept apart from the answer, end to end on a real server (llama.cpp, embedded SmolLM2).
SmolLM2 does not reason by itself, so a grammar (the non-OpenAI `grammar` field, as llama-server
has it) makes it write exactly Hunyuan-7B's output shape, token by token as the engine samples it."""

from __future__ import annotations

import json

import httpx
import pytest

REASONING = "用户问北京的天气。\n先想一想。"
ANSWER = "北京今天晴，21度。"
# Hunyuan-7B's shape: <think>\n…\n</think>\n<answer>\n…\n</answer>
HUNYUAN_OUTPUT = f"<think>\n{REASONING}\n</think>\n<answer>\n{ANSWER}\n</answer>"
GRAMMAR = "root ::= " + json.dumps(HUNYUAN_OUTPUT, ensure_ascii=False)
TAG_PIECES = ("<think", "think>", "</", "<answer", "answer>")
# Greedy: the grammar fixes the text, but sampling could still pick other tokenizations of it.
CHAT = {"messages": [{"role": "user", "content": "北京天气怎么样？"}], "grammar": GRAMMAR, "temperature": 0}
# One token a chunk: with speculative decoding, the tokens of a step arrive together (asked again, the
# whole answer can be drafted from the engine's memory of the first asking).
TOKEN_BY_TOKEN = {"speculative.type": "none"}


@pytest.fixture(scope="module")
def url(start_server):
    return start_server().url


def sse_data(response: httpx.Response) -> list[dict]:
    return [
        json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_chat_completions_return_reasoning_content_apart(url):
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "llamacpp", **CHAT, "max_tokens": 200}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == REASONING and message["content"] == ANSWER
    usage = body["usage"]
    assert 0 < usage["completion_tokens_details"]["reasoning_tokens"] < usage["completion_tokens"]


def test_streamed_reasoning_comes_first_and_no_tag_fragment_leaks(url):
    body = {"model": "llamacpp", **CHAT, **TOKEN_BY_TOKEN, "max_tokens": 200, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        chunks = sse_data(r)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    kinds = [k for d in deltas for k in ("reasoning_content", "content") if d.get(k)]
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # all reasoning, then all answer
    assert len(kinds) > 4  # streamed piece by piece, not in one block at the end
    pieces = [d[k] for d in deltas for k in ("reasoning_content", "content") if d.get(k)]
    assert not [p for p in pieces if any(t in p for t in TAG_PIECES)]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == REASONING
    assert "".join(d.get("content") or "" for d in deltas) == ANSWER  # the first: null
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_reasoning_format_none_passes_the_raw_text(url):
    body = {"model": "llamacpp", **CHAT, "max_tokens": 200, "reasoning_format": "none"}
    message = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]
    assert message["content"] == HUNYUAN_OUTPUT and "reasoning_content" not in message


def test_api_chat_has_a_reasoning_field_and_reasoning_events(url):
    body = {**CHAT, "max_new_tokens": 200}
    answer = httpx.post(f"{url}/api/chat", json=body, timeout=120).json()
    assert (answer["reasoning"], answer["response"]) == (REASONING, ANSWER)
    assert 0 < answer["usage"]["reasoning_tokens"] < answer["usage"]["completion_tokens"]
    with httpx.stream("POST", f"{url}/api/chat", json={**body, "stream": True}, timeout=120) as r:
        events = sse_data(r)
    pieces = [e for e in events if "reasoning" in e or "text" in e]
    assert "".join(e.get("reasoning", "") for e in pieces) == REASONING
    assert "".join(e.get("text", "") for e in pieces) == ANSWER
    first_text = next(i for i, e in enumerate(pieces) if "text" in e)
    assert all("reasoning" in e for e in pieces[:first_text]) and all("text" in e for e in pieces[first_text:])
    done = events[-1]
    assert done["finish_reason"] == "stop" and done["usage"]["reasoning_tokens"] == answer["usage"]["reasoning_tokens"]


def test_a_raw_prompt_is_never_split(url):
    body = {"prompt": "x", "grammar": GRAMMAR, "max_new_tokens": 200}
    answer = httpx.post(f"{url}/api/chat", json=body, timeout=120).json()
    assert answer["response"] == HUNYUAN_OUTPUT and answer["reasoning"] is None
