"""What users of llama-server and vLLM send to `/v1`, through a real server on the embedded model (and
the tiny random HunYuan on PyTorch beside it): no `model`, `n` choices, `logit_bias`, an assistant
prefill, llama-server's `n_predict`, `json_schema` and `response_format` variants, the extensions
that change nothing here, and the two settings that make hychat as lenient as llama-server."""

from __future__ import annotations

import json
from collections import defaultdict
from unittest.mock import ANY

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


def test_llama_servers_paths_without_v1_are_the_same_routes(v1):
    assert v1.get("/models").json()["data"] == [{**m, "created": ANY} for m in v1.get("/v1/models").json()["data"]]
    assert chat(v1)["choices"] == v1.post("/chat/completions", json={"messages": CHINESE, **GREEDY}).json()["choices"]
    answer = v1.post("/responses", json={"input": "长城", "max_output_tokens": 4}).json()
    assert answer["object"] == "response" and answer["usage"]["output_tokens"] == 4
    assert v1.get("/v1/health").json() == v1.get("/health").json()
    prompt_tokens = chat(v1)["usage"]["prompt_tokens"]
    for path in ("/v1/chat/completions/input_tokens", "/chat/completions/input_tokens"):
        counted = v1.post(path, json={"messages": CHINESE}).json()
        assert counted == {"object": "response.input_tokens", "input_tokens": prompt_tokens}
    responses = v1.post("/v1/responses", json={"input": CHINESE, "max_output_tokens": 2}).json()["usage"]
    counted = v1.post("/v1/responses/input_tokens", json={"input": CHINESE}).json()  # OpenAI's own route
    assert counted["input_tokens"] == responses["input_tokens"]
    assert v1.post("/embeddings", json={"input": "长城"}).status_code == 404  # llama-server's is another format


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
    # What the slots held differs from the first run to this one, and so may what was drafted.
    varies = {"prompt_tokens_details": None, "completion_tokens_details": None}
    assert {**usage, **varies} == {**answer["usage"], **varies}
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
    two = v1.post("/v1/chat/completions", json={"messages": [*prefill, {"role": "assistant", "content": "很长"}]})
    assert two.status_code == 400 and "2 or more assistant messages" in two.json()["error"]["message"]


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
    again = chat(v1)  # the same prompt as before: a slot holds it
    fresh = chat(v1, cache_prompt=False)  # llama-server's: read it whole again
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert fresh["usage"]["prompt_tokens_details"]["cached_tokens"] == 0 and text(fresh) == text(again)
    native = {"prompt": "长城很长，长城很长", "n_predict": 2}
    assert [v1.post("/completion", json=native).json()["tokens_cached"] for _ in range(2)][1] > 0
    assert v1.post("/completion", json={**native, "cache_prompt": False}).json()["timings"]["cache_n"] == 0


def sse(v1, path: str, body: dict) -> list[dict]:
    with v1.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]


EXTRAS = {"timings_per_token": True, "return_progress": True}
LONG = "长城很长，" * 60  # over 512 tokens: the prompt is read in several batches


def assert_progress(reports: list[dict]) -> None:
    """llama-server's prompt_progress: the first before any batch, then one per batch, all of it at the end."""
    assert len(reports) >= 2 and reports[0]["processed"] == reports[0]["cache"]
    assert [r["processed"] for r in reports] == sorted({r["processed"] for r in reports})
    assert reports[-1]["processed"] == reports[-1]["total"] > 512


def test_llama_servers_stream_extras_on_every_openai_route(v1):
    """timings_per_token: the timings so far on each token's chunk; return_progress: chunks while the
    prompt is read; verbose: llama-server's own answer beside OpenAI's."""
    long = [{"role": "user", "content": LONG}]
    chunks = sse(
        v1, "/v1/chat/completions", {"messages": long, **GREEDY, **EXTRAS, "stream_options": {"include_usage": True}}
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None} and "timings" not in chunks[0]
    assert_progress([c["prompt_progress"] for c in chunks if "prompt_progress" in c])
    counted = [c["timings"]["predicted_n"] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert counted == sorted(counted) and counted[-1] <= 12
    assert (
        chunks[-1]["choices"] == [] and chunks[-1]["timings"]["predicted_n"] == chunks[-1]["usage"]["completion_tokens"]
    )
    texts = sse(v1, "/v1/completions", {"prompt": LONG, **GREEDY, **EXTRAS})
    assert_progress([c["prompt_progress"] for c in texts if "prompt_progress" in c])
    assert all("timings" in c for c in texts)
    events = sse(v1, "/v1/responses", {"input": LONG, "max_output_tokens": 12, "temperature": 0, **EXTRAS})
    reports = [e for e in events if "prompt_progress" in e]
    assert {e["type"] for e in reports} == {"response.in_progress"}
    assert_progress([e["prompt_progress"] for e in reports])
    assert all("timings" in e for e in events if e["type"] == "response.output_text.delta")
    assert events[-1]["type"] == "response.incomplete" and events[-1]["timings"]["predicted_n"] == 12  # cut at 12
    plain = chat(v1)
    verbose = chat(v1, verbose=True)
    assert "__verbose" not in plain and verbose["__verbose"]["content"] == text(plain)
    assert CHINESE[0]["content"] in verbose["__verbose"]["prompt"]
    assert verbose["__verbose"]["tokens_predicted"] == plain["usage"]["completion_tokens"]


def test_extensions_that_change_nothing_here_are_accepted(v1):
    plain = text(chat(v1))
    extensions = {
        "cache_prompt": True, "id_slot": 0, "timings_per_token": True, "return_progress": True, "verbose": False,
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
