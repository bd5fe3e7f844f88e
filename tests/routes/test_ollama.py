"""Ollama's native API through a real server (`python -m app serve`, llama.cpp on the embedded SmolLM2
GGUF), driven by the official `ollama` client and by langchain-ollama, as a user's code would.

SmolLM2 neither reasons nor calls tools by itself: a grammar (the non-Ollama `grammar` field, added to
the client's requests by an httpx hook) makes it write exactly a reasoning block or a call, token by
token as the engine samples it. `POST /api/chat` is shared with hychat's own body, which keeps
answering as before.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import ollama
import pytest
from httpx_sse import connect_sse
from langchain_ollama import ChatOllama

from app.errors import EngineClosedError
from app.protocol.ollama_answers import ndjson_line
from app.routes.ollama import _ndjson

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHINESE = [{"role": "user", "content": "请用中文介绍一下长城。"}]
GREEDY = {"temperature": 0, "num_predict": 40}
# One token a chunk: with speculative decoding (llama-server's field), the tokens of a step arrive together.
TOKEN_BY_TOKEN = {"speculative.type": "none"}
REASONING = "用户问北京的天气。\n先想一想。"
ANSWER = "北京今天晴，21度。"
THINKING_GRAMMAR = "root ::= " + json.dumps(
    f"<think>\n{REASONING}\n</think>\n<answer>\n{ANSWER}\n</answer>", ensure_ascii=False
)
CALL = {"name": "get_weather", "arguments": {"city": "北京", "unit": "celsius"}}
CALL_GRAMMAR = "root ::= " + json.dumps(json.dumps(CALL, ensure_ascii=False), ensure_ascii=False)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "查询一个城市今天的天气",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
# Go's time.Time as JSON: RFC 3339, nanoseconds without trailing zeros.
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture(scope="module")
def server(start_server):
    return start_server()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def before(client):
    """The greedy answer before any bad request."""
    return client.chat(model=MODEL, messages=CHINESE, options=GREEDY).message.content


def with_fields(server, **fields) -> ollama.Client:
    """The ollama client, its requests given fields it has no parameter for (`grammar`: not Ollama's)."""

    def add_fields(request: httpx.Request) -> None:
        content = json.dumps({**json.loads(request.content), **fields}).encode()
        request.headers["content-length"] = str(len(content))
        request.stream = httpx.ByteStream(content)
        request._content = content

    return ollama.Client(host=server.url, timeout=120, event_hooks={"request": [add_fields]})


def v1_answer(http: httpx.Client, messages: list[dict], max_tokens: int) -> str:
    body = {"model": "default", "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    return http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]


def assert_done(chunk) -> None:
    assert chunk.done and chunk.done_reason in ("stop", "length") and CREATED_AT.match(chunk.created_at)
    assert all(isinstance(chunk[d], int) and chunk[d] >= 0 for d in DURATIONS)
    assert chunk.total_duration > 0 and chunk.prompt_eval_count > 10 and chunk.eval_count > 0


# -- chat and generate --------------------------------------------------------------------------


def test_chat_streamed_equals_whole_equals_v1_greedy(client, http, before):
    whole = client.chat(model=MODEL, messages=CHINESE, options=GREEDY)
    assert whole.model == MODEL and whole.message.role == "assistant" and whole.message.thinking is None
    assert_done(whole)
    assert 0 < whole.eval_count <= GREEDY["num_predict"]
    chunks = list(client.chat(model=MODEL, messages=CHINESE, options=GREEDY, stream=True))
    # Streamed, not in one piece; how many chunks is not fixed: asked again, the answer is drafted from the
    # engine's n-gram memory, and tokens that arrive together go out as one chunk.
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True] and len(chunks) > 2
    assert_done(chunks[-1])
    assert chunks[-1].message.content == "" and chunks[-1].eval_count == whole.eval_count
    pieces = [c.message.content for c in chunks]
    assert all("\ufffd" not in piece for piece in pieces)  # Chinese is never cut inside a character
    assert "".join(pieces) == whole.message.content == before == v1_answer(http, CHINESE, GREEDY["num_predict"])


def test_stream_is_ndjson_by_default_with_ollamas_names(http):
    """No `stream` field: Ollama's default, newline-delimited JSON; names with ':latest' and 'default' work."""
    for name in (f"{MODEL}:latest", "default", "llamacpp"):
        body = {"model": name, "messages": CHINESE, "options": {"temperature": 0, "num_predict": 4}}
        with http.stream("POST", "/api/chat", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert lines[-1]["done"] is True and lines[-1]["model"] == MODEL
        assert set(lines[0]) == {"model", "created_at", "message", "done"}


def test_generate_streamed_equals_whole_and_renders_the_prompt_as_a_user_turn(client, http):
    prompt = "长城有多长？"
    whole = client.generate(model=MODEL, prompt=prompt, options=GREEDY)
    assert_done(whole)
    chunks = list(client.generate(model=MODEL, prompt=prompt, options=GREEDY, stream=True))
    assert_done(chunks[-1])
    assert "".join(c.response for c in chunks) == whole.response
    assert whole.response == v1_answer(http, [{"role": "user", "content": prompt}], GREEDY["num_predict"])
    system = client.generate(model=MODEL, prompt=prompt, system="只用英文回答。", options=GREEDY)
    messages = [{"role": "system", "content": "只用英文回答。"}, {"role": "user", "content": prompt}]
    assert system.response == v1_answer(http, messages, GREEDY["num_predict"])


def test_raw_generate_continues_the_prompt_as_it_is(client, http):
    whole = client.generate(model=MODEL, prompt="1, 2, 3, 4,", raw=True, options={"temperature": 0, "num_predict": 12})
    v1 = http.post(
        "/v1/completions", json={"model": "default", "prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": 12}
    )
    assert whole.response == v1.json()["choices"][0]["text"] and whole.response.startswith(" 5")


def test_an_empty_request_loads_the_model(client):
    assert client.chat(model=MODEL, messages=[]).done_reason == "load"
    loaded = client.generate(model=MODEL)
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


def test_stop_strings_and_logprobs(client):
    r = client.generate(model=MODEL, prompt="1, 2, 3, 4,", raw=True, options={"temperature": 0, "stop": [" 7"]})
    assert r.response.strip().endswith("6,") and " 7" not in r.response and r.done_reason == "stop"
    r = client.chat(model=MODEL, messages=CHINESE, options={"num_predict": 4}, logprobs=True, top_logprobs=2)
    assert len(r.logprobs) == r.eval_count and all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in r.logprobs)


# -- models --------------------------------------------------------------------------------------


def test_tags_show_ps_and_version(client, http):
    (listed,) = client.list().models
    assert listed.model == MODEL and listed.size > 50_000_000 and len(listed.digest) == 64 and listed.modified_at
    assert listed.details.format == "gguf" and listed.details.family == "llama"
    assert listed.details.quantization_level == "Q4_1" and listed.details.parameter_size.endswith("M")
    shown = client.show(MODEL)
    assert shown.capabilities == ["completion", "tools"] and "<|im_start|>" in shown.template
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["llama.context_length"] == 8192
    assert shown.modelinfo["tokenizer.ggml.tokens"] == [] and "general.name" not in shown.modelinfo  # as Ollama
    assert "num_ctx                        2048" in shown.parameters and shown.modelfile.count("PARAMETER") >= 5
    (running,) = client.ps().models
    assert running.model == MODEL and running.size_vram == 0 and running.context_length == 2048
    assert running.expires_at.year > 2100  # kept loaded "forever"
    assert http.get("/api/version").json()["version"].count(".") == 2
    assert http.head("/").status_code == 200 and http.get("/").headers["content-type"].startswith("text/html")


# -- tools, structured output, thinking ---------------------------------------------------------


def test_a_tool_call_with_object_arguments_then_an_answer_after_its_result(server):
    messages = [{"role": "user", "content": "北京今天天气怎么样？"}]
    first = with_fields(server, grammar=CALL_GRAMMAR).chat(model=MODEL, messages=messages, tools=[WEATHER])
    (call,) = first.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == CALL["arguments"]
    assert first.message.content == "" and first.done_reason == "stop"
    streamed = list(
        with_fields(server, grammar=CALL_GRAMMAR).chat(model=MODEL, messages=messages, tools=[WEATHER], stream=True)
    )
    assert [c.function.arguments for chunk in streamed for c in chunk.message.tool_calls or ()] == [CALL["arguments"]]
    result = {
        "role": "tool",
        "tool_name": "get_weather",
        "content": json.dumps({"天气": "晴", "温度": 21}, ensure_ascii=False),
    }
    # The tiny model would call again; a grammar makes it answer in words, which must stay content.
    answering = with_fields(server, grammar="root ::= " + json.dumps(ANSWER, ensure_ascii=False))
    final = answering.chat(model=MODEL, messages=[*messages, first.message, result], tools=[WEATHER])
    assert final.message.content == ANSWER and not final.message.tool_calls


def test_format_json_schema_output_parses_and_matches(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    messages = [{"role": "user", "content": "北京今天晴。用JSON回答。"}]
    for stream in (False, True):
        answer = client.chat(model=MODEL, messages=messages, format=schema, options={"num_predict": 100}, stream=stream)
        text = answer.message.content if not stream else "".join(c.message.content for c in answer)
        jsonschema.validate(json.loads(text), schema)
    greedy = {"temperature": 0, "num_predict": 100}
    anything = client.generate(model=MODEL, prompt="给我一个JSON", format="json", options=greedy)
    assert isinstance(json.loads(anything.response), dict)


def test_thinking_on_lands_in_thinking_and_off_does_not(server):
    thinking = with_fields(server, grammar=THINKING_GRAMMAR, **TOKEN_BY_TOKEN)
    whole = thinking.chat(model=MODEL, messages=CHINESE, think=True, options={"num_predict": 200})
    assert (whole.message.thinking, whole.message.content) == (REASONING, ANSWER)
    chunks = list(thinking.chat(model=MODEL, messages=CHINESE, think="high", options={"num_predict": 200}, stream=True))
    kinds = [k for c in chunks for k in ("thinking", "content") if getattr(c.message, k)]
    assert kinds == sorted(kinds, key=lambda k: k == "content") and len(kinds) > 4  # all thinking, then all answer
    assert "".join(c.message.thinking or "" for c in chunks) == REASONING
    assert "".join(c.message.content for c in chunks) == ANSWER
    generated = thinking.generate(model=MODEL, prompt="北京天气怎么样？", think=True, options={"num_predict": 200})
    assert (generated.thinking, generated.response) == (REASONING, ANSWER)
    off = ollama.Client(host=server.url, timeout=120).chat(model=MODEL, messages=CHINESE, think=False, options=GREEDY)
    assert off.message.thinking is None and off.message.content.strip()


# -- clients -------------------------------------------------------------------------------------


def test_langchain_chat_ollama_invokes_and_streams(server, client):
    llm = ChatOllama(base_url=server.url, model=MODEL, temperature=0, num_predict=40)
    expected = client.chat(model=MODEL, messages=CHINESE, options=GREEDY).message.content
    message = llm.invoke([("human", CHINESE[0]["content"])])
    assert message.content == expected and message.usage_metadata["output_tokens"] > 0
    assert "".join(chunk.content for chunk in llm.stream([("human", CHINESE[0]["content"])])) == expected


def test_hychats_own_body_on_the_same_route_answers_as_before(http):
    body = {"messages": CHINESE, "max_new_tokens": 40, "temperature": 0}
    answer = http.post("/api/chat", json=body).json()
    assert answer["backend"] == "llamacpp" and answer["model"] == MODEL and "usage" in answer
    with connect_sse(http, "POST", "/api/chat", json={**body, "stream": True}) as source:
        events = list(source.iter_sse())
    assert events[-1].event == "done"
    assert "".join(json.loads(e.data)["text"] for e in events if e.event == "message") == answer["response"]
    error = http.post("/api/chat", json={**body, "temperature": -1}).json()["error"]  # hychat's error shape
    assert error["param"] == "temperature" and error["type"] == "invalid_request_error"


# -- errors --------------------------------------------------------------------------------------


def ollama_error(r: httpx.Response) -> ollama.ResponseError:
    """What the ollama client makes of an error response (for requests the client cannot send)."""
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str), r.text
    return ollama.ResponseError(r.text, r.status_code)


BAD_REQUESTS = [
    ("unknown model", lambda c: c.chat(model="smollm2", messages=CHINESE), 404, "model 'smollm2' not found"),
    ("unknown model, tagged", lambda c: c.generate(model="nope:7b", prompt="hi"), 404, "model 'nope:7b' not found"),
    ("show an unknown model", lambda c: c.show("nope"), 404, "model 'nope' not found"),
    ("chat images", lambda c: c.chat(model=MODEL, messages=[{**CHINESE[0], "images": [b"\x89PNG"]}]), 400, "images"),
    ("generate images", lambda c: c.generate(model=MODEL, prompt="hi", images=[b"\x89PNG"]), 400, "images"),
    ("num_predict over the limit", lambda c: c.chat(model=MODEL, messages=CHINESE, options={"num_predict": 10**6}),
     400, "HYCHAT_MAX_TOKENS_LIMIT"),
    ("num_ctx over the loaded context", lambda c: c.chat(model=MODEL, messages=CHINESE, options={"num_ctx": 10**6}),
     400, "context of 2048 tokens"),
    ("negative temperature", lambda c: c.chat(model=MODEL, messages=CHINESE, options={"temperature": -1}),
     400, "options.temperature"),
    ("a schema no grammar can follow", lambda c: c.chat(model=MODEL, messages=CHINESE, format={"type": "nonsense"}),
     400, "JSON schema"),
    ("suffix on a model without FIM tokens", lambda c: c.generate(model=MODEL, prompt="def f(", suffix="return 1"),
     400, "fill-in-the-middle is not supported by this model"),
    ("template", lambda c: c.generate(model=MODEL, prompt="hi", template="{{ .Prompt }}"), 400, "template"),
    ("context", lambda c: c.generate(model=MODEL, prompt="hi", context=[1, 2]), 400, "context is not supported"),
    ("raw with system", lambda c: c.generate(model=MODEL, prompt="hi", raw=True, system="x"), 400, "raw mode"),
    ("prompt over the context", lambda c: c.chat(model=MODEL, messages=[{"role": "user", "content": "你好" * 3000}]),
     400, "context window"),
]  # fmt: skip


@pytest.mark.parametrize("call, status, needle", [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS])
def test_bad_requests_get_ollamas_error_and_status(client, before, call, status, needle):
    with pytest.raises(ollama.ResponseError) as raised:
        call(client)
    assert raised.value.status_code == status and needle in raised.value.error, raised.value


def test_bodies_the_client_cannot_send_get_ollamas_error_too(http, before):
    generate = http.post("/api/generate", content=b'{"model": ', headers={"content-type": "application/json"})
    assert ollama_error(generate).status_code == 400 and "not valid JSON" in ollama_error(generate).error
    for body in ({"model": MODEL, "messages": "hi"}, {"model": MODEL, "messages": CHINESE, "max_tokens": 5}):
        error = ollama_error(http.post("/api/chat", json=body))
        assert error.status_code == 400 and ("messages" in error.error or "max_tokens" in error.error)
    error = ollama_error(http.post("/api/chat", json={"model": MODEL, "messages": CHINESE, "think": "very"}))
    assert error.status_code == 400 and "think" in error.error
    # Undecidable: a body that is no JSON cannot say its dialect, and gets hychat's (the page's) shape.
    r = http.post("/api/chat", content=b'{"model": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_unknown_options_are_ignored_as_ollama_does(client, before):
    options = {**GREEDY, "mirostat": 0, "num_gpu": 1, "num_thread": 2, "no_such_option": True}
    assert client.chat(model=MODEL, messages=CHINESE, options=options, keep_alive="5m").message.content == before


def test_the_server_answers_as_before_after_the_bad_requests(client, before):
    assert client.chat(model=MODEL, messages=CHINESE, options=GREEDY).message.content == before
    assert client.ps().models[0].model == MODEL


def test_behind_an_api_key_each_dialect_gets_its_own_401(start_server):
    server = start_server({"HYCHAT_API_KEY": "secret"})
    chat = {"model": MODEL, "messages": CHINESE}
    r = httpx.post(f"{server.url}/api/chat", json=chat)
    assert r.status_code == 401 and set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
    r = httpx.post(f"{server.url}/api/chat", json={"messages": CHINESE})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=server.url).list()
    assert raised.value.status_code == 401
    keyed = ollama.Client(host=server.url, headers={"Authorization": "Bearer secret"}, timeout=120)
    assert keyed.chat(model=MODEL, messages=CHINESE, options={"num_predict": 4}).eval_count > 0


def test_an_error_once_the_stream_has_started_is_its_last_line():
    """A failure a real server cannot be made to have mid-stream, scripted: the lines so far, then
    Ollama's `{"error": ...}` line (no details for an unexpected one), which the client raises."""

    async def lines(error: Exception):
        yield ndjson_line({"model": MODEL, "done": False})
        raise error

    async def read(error: Exception) -> list[dict]:
        response = _ndjson(lines(error))
        assert response.media_type == "application/x-ndjson"
        return [json.loads(line) async for line in response.body_iterator]

    assert asyncio.run(read(EngineClosedError("the model was replaced")))[1:] == [{"error": "the model was replaced"}]
    assert asyncio.run(read(RuntimeError("a secret path")))[1:] == [{"error": "internal error"}]


def test_embed_gives_v1s_normalised_vectors_and_embeddings_the_raw_one(client, http):
    import numpy as np

    texts = ["你好，世界", "The cat sat on the mat."]
    embedded = client.embed(model=MODEL, input=texts)
    v1 = http.post("/v1/embeddings", json={"model": MODEL, "input": texts}).json()
    got = np.array(embedded.embeddings)
    assert got.shape == (2, 576) and np.allclose(got, [d["embedding"] for d in v1["data"]], atol=1e-6)
    assert embedded.model == MODEL and embedded.prompt_eval_count == v1["usage"]["prompt_tokens"]
    assert embedded.total_duration > 0
    single = np.array(client.embed(model=MODEL + ":latest", input=texts[0]).embeddings[0])
    assert np.allclose(single, got[0], atol=1e-6)
    raw = np.array(client.embeddings(model=MODEL, prompt=texts[0]).embedding)  # the older route
    assert not np.isclose(np.linalg.norm(raw), 1) and np.allclose(raw / np.linalg.norm(raw), got[0], atol=1e-5)


def test_embed_cuts_a_long_input_unless_asked_not_to(client):
    long = "长城" * 2000  # far more tokens than the context
    assert len(client.embed(model=MODEL, input=long).embeddings[0]) == 576
    with pytest.raises(ollama.ResponseError) as raised:
        client.embed(model=MODEL, input=long, truncate=False)
    assert raised.value.status_code == 400 and "context" in raised.value.error
    with pytest.raises(ollama.ResponseError) as raised:
        client.embed(model=MODEL, input="你好", dimensions=64)
    assert raised.value.status_code == 400 and "dimensions" in raised.value.error


def test_the_thinking_switch_on_a_reasoning_model_renders_as_on_v1(start_server, torch_beside_env):
    """The tiny HunYuan (PyTorch backend) has Hunyuan-7B's switch: think false adds /no_think and an
    empty think block; Ollama's `think` reaches the template exactly as /v1's does."""
    server = start_server(torch_beside_env)
    client = ollama.Client(host=server.url, timeout=120)
    counts = {}
    for think in (True, False):
        answer = client.chat(model="pytorch", messages=CHINESE, think=think, options={"num_predict": 1})
        v1 = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
            "model": "pytorch", "messages": CHINESE, "max_tokens": 1, "think": think})  # fmt: skip
        counts[think] = answer.prompt_eval_count
        assert answer.prompt_eval_count == v1.json()["usage"]["prompt_tokens"]
    assert counts[False] > counts[True]  # "/no_think " and the closed think block
    prompt = httpx.post(f"{server.url}/apply-template", json={"model": "pytorch", "messages": CHINESE, "think": False})
    assert "/no_think" in prompt.json()["prompt"]
