"""What users of llama-server and vLLM send to `/v1`, through a real server on the embedded model (and
the tiny random HunYuan on PyTorch beside it): no `model`, `n` choices, `logit_bias`, an assistant
prefill, llama-server's `n_predict`, `json_schema` and `response_format` variants, the extensions
that change nothing here, and the two settings that make hychat as lenient as llama-server."""

from __future__ import annotations

import json
from collections import defaultdict

import httpx
import jsonschema
import pytest

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHINESE = [{"role": "user", "content": "请用中文介绍一下长城。"}]
GREEDY = {"max_tokens": 12, "temperature": 0}
SCHEMA = {
    "type": "object",
    "properties": {"城市": {"type": "string", "maxLength": 8}, "人口": {"type": "integer"}},
    "required": ["城市", "人口"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(start_server, torch_beside_env):
    return start_server(torch_beside_env)


@pytest.fixture(scope="module")
def v1(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def chat(v1, **body) -> dict:
    r = v1.post("/v1/chat/completions", json={"messages": CHINESE, **GREEDY, **body})
    assert r.status_code == 200, r.text
    return r.json()


def text(answer: dict, i: int = 0) -> str:
    return answer["choices"][i]["message"]["content"]


def error(r: httpx.Response, param: str) -> str:
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    return r.json()["error"]["message"]


def test_a_request_without_model_is_answered_by_the_default_model(v1):
    named = chat(v1, model=MODEL)
    unnamed = chat(v1)
    timings = named["timings"]  # llama-server's: what the usage says, with the speeds
    assert timings["predicted_n"] == named["usage"]["completion_tokens"] and timings["prompt_ms"] > 0
    assert timings["prompt_n"] + timings["cache_n"] == named["usage"]["prompt_tokens"]
    assert unnamed["model"] == MODEL and text(unnamed) == text(named)
    completion = v1.post("/v1/completions", json={"prompt": "长城", **GREEDY}).json()
    assert completion["model"] == MODEL and completion["usage"]["completion_tokens"] == 12
    anthropic = v1.post("/v1/messages", json={"messages": CHINESE, "max_tokens": 12, "temperature": 0}).json()
    assert anthropic["model"] == MODEL and anthropic["content"][0]["text"] == text(named)
    response = v1.post("/v1/responses", json={"input": CHINESE, "max_output_tokens": 12, "temperature": 0}).json()
    assert response["model"] == MODEL and response["output"][-1]["content"][0]["text"] == text(named)
    assert len(v1.post("/v1/embeddings", json={"input": "长城"}).json()["data"][0]["embedding"]) > 0
    # By default a name nothing serves is still a 404 (the lenient setting: below).
    assert v1.post("/v1/chat/completions", json={"model": "gpt-3.5-turbo", "messages": CHINESE}).status_code == 404


def test_n_choices_are_sampled_independently_and_streamed_by_index(v1):
    sampled = {"temperature": 1.0, "seed": 42, "max_tokens": 10}
    answer = chat(v1, n=3, **sampled)
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    singles = [chat(v1, **{**sampled, "seed": 42 + i}) for i in range(3)]  # choice i samples with seed + i
    assert [text(answer, i) for i in range(3)] == [text(single) for single in singles]
    assert len({text(answer, i) for i in range(3)}) > 1
    assert answer["usage"]["prompt_tokens"] == singles[0]["usage"]["prompt_tokens"]
    assert answer["usage"]["completion_tokens"] == sum(single["usage"]["completion_tokens"] for single in singles)
    body = {"messages": CHINESE, "n": 3, "stream": True, "stream_options": {"include_usage": True}, **sampled}
    streamed: dict[int, str] = defaultdict(str)
    finished, usage = set(), None
    with v1.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                streamed[choice["index"]] += choice["delta"].get("content") or ""
                if choice["finish_reason"]:
                    finished.add(choice["index"])
            usage = chunk.get("usage") or usage
    assert [streamed[i] for i in range(3)] == [text(answer, i) for i in range(3)] and finished == {0, 1, 2}
    assert usage == answer["usage"]
    completions = v1.post("/v1/completions", json={"prompt": "长城", "n": 2, **sampled}).json()
    assert [c["index"] for c in completions["choices"]] == [0, 1]


def tokens(v1, content: str, model: str = "llamacpp") -> list[int]:
    return v1.post("/tokenize", json={"model": model, "content": content, "add_special": False}).json()["tokens"]


def test_logit_bias_bans_and_forces_tokens_on_both_backends(v1):
    for model in ("llamacpp", "pytorch"):
        first = tokens(v1, text(chat(v1, model=model)), model)[0]
        for ban in ({str(first): -100}, [[first, False]]):  # OpenAI's, and llama-server's false
            assert tokens(v1, text(chat(v1, model=model, logit_bias=ban)), model)[0] != first
    word = next(w for w in ("好", "的", "是", "长") if len(tokens(v1, w)) == 1)
    assert text(chat(v1, logit_bias=[[word, 100]], max_tokens=3)) == word * 3  # a text's tokens (llama-server's)
    assert text(chat(v1, logit_bias={str(tokens(v1, word)[0]): 100}, max_tokens=3)) == word * 3
    outside = {"messages": CHINESE, "logit_bias": {"999999": 5}}
    assert "outside the vocabulary" in error(v1.post("/v1/chat/completions", json=outside), "logit_bias")


def test_an_assistant_prefill_is_continued(v1):
    prefill = [*CHINESE, {"role": "assistant", "content": "长城是"}]
    rendered = v1.post("/apply-template", json={"messages": prefill}).json()["prompt"]
    assert rendered.endswith("<|im_start|>assistant\n长城是")
    continued = chat(v1, messages=prefill)
    raw = v1.post("/v1/completions", json={"prompt": rendered, **GREEDY}).json()
    assert text(continued) == raw["choices"][0]["text"]
    explicit = chat(v1, messages=prefill, continue_final_message=True, add_generation_prompt=False)
    assert text(explicit) == text(continued)
    # add_generation_prompt: true starts a new turn after the assistant's (the old behaviour).
    new_turn = v1.post("/apply-template", json={"messages": prefill, "add_generation_prompt": True}).json()["prompt"]
    assert new_turn.endswith("长城是<|im_end|>\n<|im_start|>assistant\n")
    both = {"messages": prefill, "add_generation_prompt": True, "continue_final_message": True}
    assert "not both" in error(v1.post("/v1/chat/completions", json=both), "continue_final_message")
    last_user = v1.post("/v1/chat/completions", json={"messages": CHINESE, "continue_final_message": True})
    assert last_user.status_code == 400 and "last message from the assistant" in last_user.json()["error"]["message"]


def test_llama_servers_generation_fields(v1):
    assert chat(v1, n_predict=5)["usage"]["completion_tokens"] == 5  # in place of max_tokens, as llama-server
    too_many = v1.post("/v1/chat/completions", json={"messages": CHINESE, "n_predict": 10**6})
    assert "at most 4096" in error(too_many, "n_predict")
    assert text(chat(v1, repeat_penalty=1.3)) == text(chat(v1, repetition_penalty=1.3))
    for body in (
        {"json_schema": SCHEMA},
        {"response_format": {"type": "json_object", "schema": SCHEMA}},
        {"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},  # no name
    ):
        jsonschema.validate(json.loads(text(chat(v1, **{**body, "max_tokens": 60}))), SCHEMA)
    assert isinstance(json.loads(text(chat(v1, json_schema={}, max_tokens=60))), dict)  # empty: any object


def test_extensions_that_change_nothing_here_are_accepted(v1):
    plain = text(chat(v1))
    extensions = {
        "cache_prompt": False, "id_slot": 0, "timings_per_token": True, "return_progress": True,
        "samplers": ["top_k", "temperature"], "mirostat": 0, "typical_p": 1.0, "n_probs": 0,
        "stop_token_ids": [], "skip_special_tokens": True, "min_tokens": 0,
    }  # fmt: skip
    assert text(chat(v1, **extensions)) == plain
    assert "nonsense_field" in v1.post("/v1/chat/completions", json={"messages": CHINESE, "nonsense_field": 1}).text


def test_the_lenient_settings_answer_any_name_and_ignore_unknown_fields(start_server):
    server = start_server({"HYCHAT_UNKNOWN_MODEL": "default", "HYCHAT_UNKNOWN_FIELDS": "ignore"})
    with httpx.Client(base_url=server.url, timeout=300) as v1:
        plain = text(chat(v1))
        answer = chat(v1, model="gpt-3.5-turbo", nonsense_field=1, another={"x": 1})
        assert text(answer) == plain and answer["model"] == MODEL
        anthropic = {"model": "claude-x", "messages": CHINESE, "max_tokens": 4, "x": 1}
        assert v1.post("/v1/messages", json=anthropic).json()["model"] == MODEL
