"""The OpenAI-compatible API through a real server on the embedded model, with the official `openai`
package as the client."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHINESE = [{"role": "user", "content": "请用中文介绍一下长城。"}]
STORY = [{"role": "user", "content": "Write a long story about a cat who lives in a library."}]
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(start_server):
    return start_server()


@pytest.fixture(scope="module")
def client(server):
    # No retries: a 429 or 503 must reach the test as it is.
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def chat(client, messages=CHINESE, **params):
    return client.chat.completions.create(model=MODEL, messages=messages, **params)


def stream_chat(client, messages=CHINESE, **params) -> list:
    return list(client.chat.completions.create(model=MODEL, messages=messages, stream=True, **params))


# -- models and plain answers ------------------------------------------------------------------


def test_models_lists_the_served_model_and_each_name_reaches_it(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL] and models[0].object == "model" and models[0].owned_by == "hychat"
    for name in (MODEL, "llamacpp", "default"):
        answer = client.chat.completions.create(model=name, messages=CHINESE, max_tokens=2, temperature=0)
        assert answer.model == MODEL and answer.usage.completion_tokens == 2


def test_chat_completion_answers_a_chinese_prompt(client):
    answer = chat(client, max_tokens=32, temperature=0)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    choice = answer.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.logprobs is None
    assert choice.message.content.strip() and "\ufffd" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 32
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 <= usage.prompt_tokens_details.cached_tokens <= usage.prompt_tokens


def test_chinese_text_round_trips_through_a_completion(client):
    prompt = "Copy the text.\nText: 长城很长。\nCopy: 长城很长。\nText: 我喜欢喝茶。\nCopy:"
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop="\n")
    assert answer.choices[0].text.strip() == "我喜欢喝茶。"
    pieces = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop="\n", stream=True)
    assert "".join(chunk.choices[0].text for chunk in pieces if chunk.choices) == answer.choices[0].text


def test_content_parts_are_joined_and_other_parts_refused(client):
    parts = [{"type": "text", "text": "请用中文介绍"}, {"type": "text", "text": "一下长城。"}]
    answer = chat(client, messages=[{"role": "user", "content": parts}], max_tokens=4, temperature=0)
    assert answer.choices[0].message.content
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, messages=[{"role": "user", "content": [parts[0], image]}], max_tokens=4)
    assert raised.value.param == "messages[0].content" and "image_url" in raised.value.message


# -- streaming ---------------------------------------------------------------------------------


def test_streamed_chat_equals_the_non_streamed_answer(client):
    chunks = stream_chat(client, max_tokens=40, temperature=0)
    whole = chat(client, max_tokens=40, temperature=0)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.object == "chat.completion.chunk" for c in chunks)
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(pieces) == whole.choices[0].message.content
    assert all("\ufffd" not in p for p in pieces)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1]) and all(c.usage is None for c in chunks)


def test_include_usage_adds_a_last_chunk_with_the_usage(client):
    chunks = stream_chat(client, max_tokens=6, temperature=0, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == [] and all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"
    assert last.usage.completion_tokens == 6 and last.usage.prompt_tokens > 10
    assert last.usage.total_tokens == last.usage.prompt_tokens + 6
    completion = list(
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert completion[-1].choices == [] and completion[-1].usage.completion_tokens == 6


# -- sampling parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("bound", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_ends_with_finish_reason_length(client, bound):
    answer = chat(client, messages=STORY, temperature=0, **{bound: 5})
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 5


def test_stop_sequence_is_not_included_and_finishes_with_stop(client):
    params = {"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 30, "temperature": 0}
    full = client.completions.create(**params).choices[0].text
    assert " 7" in full
    cut = client.completions.create(**params, stop=[" 7", "never"]).choices[0]
    assert cut.text == full[: full.index(" 7")] and cut.finish_reason == "stop"
    streamed = client.completions.create(**params, stop=" 7", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.text


def test_seed_reproduces_a_sampled_answer(client):
    params = {"messages": STORY, "max_tokens": 24, "temperature": 1.0, "top_p": 1.0}
    first = chat(client, seed=1234, **params).choices[0].message.content
    assert chat(client, seed=1234, **params).choices[0].message.content == first
    others = {chat(client, seed=seed, **params).choices[0].message.content for seed in (1, 2, 3)}
    assert others != {first}  # the seed matters


def test_presence_and_frequency_penalties_change_a_greedy_answer(client):
    params = {"model": MODEL, "prompt": "apple apple apple apple apple", "max_tokens": 24, "temperature": 0}
    plain = client.completions.create(**params).choices[0].text
    assert client.completions.create(**params).choices[0].text == plain  # greedy is deterministic
    for penalty in ("presence_penalty", "frequency_penalty"):
        assert client.completions.create(**params, **{penalty: 2.0}).choices[0].text != plain, penalty


# -- logprobs ----------------------------------------------------------------------------------


def test_chat_logprobs_with_top_alternatives(client):
    answer = chat(client, messages=STORY, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens == 8
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and bytes(token.bytes).decode() == token.token
        assert len(token.top_logprobs) == 3 and all(t.logprob <= 0 for t in token.top_logprobs)
        assert token.logprob >= min(t.logprob for t in token.top_logprobs)  # greedy took the likeliest
    streamed = stream_chat(client, messages=STORY, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in tokens] == [t.token for t in content]


def test_completion_logprobs(client):
    answer = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == answer.usage.completion_tokens == 6
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) == 2 and max(top.values()) <= 0 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(6)]


# -- response_format ---------------------------------------------------------------------------


def test_json_object_output_parses(client):
    messages = [{"role": "user", "content": 'Reply with a JSON object with the keys "name" and "color" for a cat.'}]
    answer = chat(client, messages=messages, max_tokens=100, temperature=0, response_format={"type": "json_object"})
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content), dict)


def test_json_schema_output_validates(client):
    messages = [{"role": "user", "content": "Give me a person as JSON: name, age and languages spoken."}]
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
    answer = chat(client, messages=messages, max_tokens=200, seed=1, response_format=response_format)  # sampled
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON_SCHEMA)


def test_a_schema_that_cannot_become_a_grammar_is_a_400(client):
    for schema in ({"type": "tensor"}, {"$ref": "https://example.com/schema.json"}):
        with pytest.raises(openai.BadRequestError) as raised:
            chat(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert raised.value.param == "response_format" and "grammar" in raised.value.message


# -- errors ------------------------------------------------------------------------------------


def assert_openai_error(error: openai.APIStatusError, status: int, error_type: str, code: str | None = None):
    assert error.status_code == status
    body = error.response.json()["error"]
    assert set(body) - {"n_prompt_tokens", "n_ctx"} == {"message", "type", "param", "code"} and body["message"]
    assert body["type"] == error_type and (code is None or body["code"] == code)


@pytest.mark.parametrize(
    "params, param",
    [
        ({"temperature": 5}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"n": 9}, "n"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"stop": ["a"] * 20}, "stop"),
        ({"response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_bad_parameters_are_400_in_openais_shape(client, params, param):
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, **{"max_tokens": 4, **params})
    assert_openai_error(raised.value, 400, "invalid_request_error")
    assert raised.value.param == param


def test_max_tokens_above_the_limit_says_what_the_limit_is(client, server):
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, max_tokens=5000)
    assert raised.value.param == "max_tokens" and "at most 4096" in raised.value.message
    r = httpx.post(f"{server.url}/api/chat", json={"messages": CHINESE, "max_new_tokens": 5000}, timeout=300)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_new_tokens"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=CHINESE)
    assert_openai_error(raised.value, 404, "not_found_error", "model_not_found")
    assert raised.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="hi", stream=True)


def test_a_backend_without_a_model_is_503(client):
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="pytorch", messages=CHINESE)
    assert_openai_error(raised.value, 503, "server_error", "backend_unavailable")


def test_prompt_longer_than_the_context_is_400_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, messages=[{"role": "user", "content": "你好" * 3000}], max_tokens=4)
    assert_openai_error(raised.value, 400, "exceed_context_size_error", "context_length_exceeded")
    assert raised.value.code == "context_length_exceeded"
    body = raised.value.response.json()["error"]  # llama-server's fields: how much to cut
    assert body["n_ctx"] == 2048 and body["n_prompt_tokens"] > 2048


def test_api_key_is_enforced(start_server):
    server = start_server({"HYCHAT_API_KEY": "s3cret"})
    for key in ("wrong", "s3cret"):
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300) as keyed:
            if key == "wrong":
                with pytest.raises(openai.AuthenticationError) as raised:
                    keyed.models.list()
                assert_openai_error(raised.value, 401, "authentication_error", "invalid_api_key")
                with pytest.raises(openai.AuthenticationError):
                    keyed.chat.completions.create(model=MODEL, messages=CHINESE, max_tokens=2)
            else:
                assert keyed.chat.completions.create(model=MODEL, messages=CHINESE, max_tokens=2).choices
