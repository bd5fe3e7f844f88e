"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) through a real server, with
the official `anthropic` package as the client: llama.cpp on the embedded SmolLM2 GGUF, the PyTorch
backend on a tiny random HunYuan beside it (its template has Hunyuan-7B's thinking switch). SmolLM2
neither reasons nor calls tools by itself: the non-Anthropic `grammar` field (or the tool grammar that
a forced tool_choice adds) makes it write them. The conversions alone: tests/protocol/test_anthropic_conversions.py."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

API_KEY = "anthropic-test-key"
QUESTION = [{"role": "user", "content": "请用中文介绍一下长城。"}]
GREEDY = {"temperature": 0}  # the SDK no longer has the sampling fields; the API still takes them
REASONING = "用户问北京的天气。\n先想一想。"
ANSWER = "北京今天晴，21度。"
THINKING_GRAMMAR = "root ::= " + json.dumps(f"<think>\n{REASONING}\n</think>\n<answer>\n{ANSWER}\n</answer>")
WEATHER = {
    "name": "get_weather",
    "description": "查询一个城市今天的天气",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}


@pytest.fixture(scope="module")
def server(start_server, torch_beside_env):
    return start_server({**torch_beside_env, "HYCHAT_API_KEY": API_KEY})


@pytest.fixture(scope="module")
def client(server):
    # No retries: a 429 or 5xx must reach the test as it is.
    with anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def v1(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


def create(client, messages=QUESTION, model="llamacpp", max_tokens=24, **params):
    return client.messages.create(model=model, messages=messages, max_tokens=max_tokens, extra_body=GREEDY, **params)


def raw_events(client, messages=QUESTION, model="llamacpp", max_tokens=24, **params) -> list:
    stream = client.messages.create(
        model=model, messages=messages, max_tokens=max_tokens, stream=True, extra_body=GREEDY, **params
    )
    return list(stream)


def text_of(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_the_answer_is_the_same_streamed_or_not_and_on_v1(client, v1):
    message = create(client)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.stop_reason == "max_tokens" and [b.type for b in message.content] == ["text"]
    with client.messages.stream(model="llamacpp", messages=QUESTION, max_tokens=24, extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    # More than one piece; how many is not fixed (asked again, the engine's n-gram memory drafts the answer).
    assert len(pieces) > 1 and "".join(pieces) == text_of(final) == text_of(message)
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == message.usage.output_tokens == 24
    events = raw_events(client)
    assert [e.type for e in events[:2]] == ["message_start", "content_block_start"]
    assert [e.type for e in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == text_of(message)
    body = {"model": "llamacpp", "messages": QUESTION, "max_tokens": 24, **GREEDY}
    completion = v1.post("/v1/chat/completions", json=body).json()
    assert completion["choices"][0]["message"]["content"] == text_of(message)
    assert completion["choices"][0]["finish_reason"] == "length"
    # Anthropic counts the cached part of the prompt apart; together they are the prompt.
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == completion["usage"]["prompt_tokens"]
    counted = client.messages.count_tokens(model="llamacpp", messages=QUESTION).input_tokens
    assert counted == completion["usage"]["prompt_tokens"] == events[0].message.usage.input_tokens


def test_chinese_text_comes_whole_in_every_delta(client):
    # One token a delta (speculative.type: llama-server's field): a step's drafted tokens come together.
    grammar = {"grammar": "root ::= " + json.dumps(ANSWER), "speculative.type": "none", **GREEDY}
    events = list(
        client.messages.create(model="llamacpp", messages=QUESTION, max_tokens=60, stream=True, extra_body=grammar)
    )
    pieces = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert len(pieces) > 5 and "".join(pieces) == ANSWER
    for piece in pieces:  # no U+FFFD, no half character (a lone surrogate would not encode)
        assert "\ufffd" not in piece and piece.encode("utf-8").decode("utf-8") == piece
    message = client.messages.create(model="llamacpp", messages=QUESTION, max_tokens=60, extra_body=grammar)
    assert text_of(message) == ANSWER and message.stop_reason == "end_turn"


def test_a_stop_sequence_that_ends_the_answer_is_named(client):
    grammar = {"grammar": "root ::= " + json.dumps(ANSWER), **GREEDY}
    params = {"model": "llamacpp", "messages": QUESTION, "max_tokens": 60, "extra_body": grammar}
    message = client.messages.create(**params, stop_sequences=["。", "，"])
    assert text_of(message) == "北京今天晴" and message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "，"
    events = list(client.messages.create(**params, stop_sequences=["，"], stream=True))
    (last,) = [e for e in events if e.type == "message_delta"]
    assert last.delta.stop_reason == "stop_sequence" and last.delta.stop_sequence == "，"
    unmatched = client.messages.create(**params, stop_sequences=["下雨"])
    assert text_of(unmatched) == ANSWER and unmatched.stop_reason == "end_turn" and unmatched.stop_sequence is None


def test_a_stop_sequence_is_named_on_the_pytorch_backend_too(client):
    """The tiny random model's greedy words, cut at a character of their own middle."""
    free = create(client, model="pytorch", max_tokens=12)
    text = text_of(free)
    stop = next(c for c in text[3:] if c.strip() and text.index(c) >= 3)
    cut = create(client, model="pytorch", max_tokens=12, stop_sequences=[stop])
    assert text_of(cut) == text[: text.index(stop)]
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop


def test_a_forced_tool_call_and_its_result_make_a_whole_tool_loop(client):
    question = [{"role": "user", "content": "北京今天天气怎么样？"}]
    choice = {"type": "tool", "name": "get_weather"}
    first = create(client, question, max_tokens=200, tools=[WEATHER], tool_choice=choice)
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert set(call.input) == {"city", "unit"} and call.input["unit"] in ("celsius", "fahrenheit")
    with client.messages.stream(
        model="llamacpp", messages=question, max_tokens=200, tools=[WEATHER], tool_choice=choice, extra_body=GREEDY
    ) as stream:
        streamed = stream.get_final_message()
    (streamed_call,) = [b for b in streamed.content if b.type == "tool_use"]
    assert streamed_call.input == call.input and streamed.stop_reason == "tool_use"
    # The SDK's own objects go back, with the tool's result; the model then answers in words.
    result = {"type": "tool_result", "tool_use_id": call.id, "content": json.dumps({"天气": "晴"}, ensure_ascii=False)}
    messages = [*question, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    final = create(client, messages, max_tokens=30, tools=[WEATHER], tool_choice={"type": "none"})
    assert final.stop_reason in ("end_turn", "max_tokens") and text_of(final).strip()
    assert not [b for b in final.content if b.type == "tool_use"]


def test_reasoning_comes_as_thinking_blocks(client):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    extra = {"grammar": THINKING_GRAMMAR, **GREEDY}
    params = {"model": "llamacpp", "messages": QUESTION, "max_tokens": 1200, "thinking": thinking, "extra_body": extra}
    message = client.messages.create(**params)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == REASONING and isinstance(message.content[0].signature, str)
    assert message.content[1].text == ANSWER and message.stop_reason == "end_turn"
    events = list(client.messages.create(**params, stream=True))
    kinds = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert kinds[0] == "thinking_delta" and kinds.count("signature_delta") == 1
    assert kinds.index("signature_delta") == kinds.index("text_delta") - 1  # the thinking block ends, then the text
    assert [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"] == [
        (0, "thinking"),
        (1, "text"),
    ]
    with client.messages.stream(**params) as stream:
        final = stream.get_final_message()
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in message.content]
    # An earlier answer's thinking block goes back as the SDK sends it; it is dropped.
    again = [*QUESTION, {"role": "assistant", "content": message.content}, {"role": "user", "content": "再说一遍"}]
    assert create(client, again, max_tokens=4).usage.output_tokens == 4


def test_lenient_as_llama_server_a_small_thinking_budget_and_no_messages(client, v1):
    """Anthropic's API refuses a budget under 1024 and an empty conversation; llama-server (and its
    tests) take both, and so does hychat. A budget at max_tokens or above is still refused."""
    small = create(client, max_tokens=8, thinking={"type": "enabled", "budget_tokens": 4})
    assert small.type == "message" and small.usage.output_tokens > 0
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        create(client, max_tokens=8, thinking={"type": "enabled", "budget_tokens": 8})
    # No messages: the template renders its generation prompt alone, and the model answers it.
    alone = v1.post("/apply-template", json={"model": "llamacpp", "messages": []}).json()["prompt"]
    assert alone.strip()
    empty = create(client, messages=[], max_tokens=4)
    assert empty.type == "message" and empty.usage.output_tokens > 0
    prompt_tokens = len(v1.post("/tokenize", json={"model": "llamacpp", "content": alone}).json()["tokens"])
    assert empty.usage.input_tokens + empty.usage.cache_read_input_tokens == prompt_tokens
    completion = v1.post("/v1/chat/completions", json={"model": "llamacpp", "messages": [], "max_tokens": 4})
    assert completion.status_code == 200 and completion.json()["usage"]["prompt_tokens"] == prompt_tokens


def test_the_thinking_switch_changes_the_prompt_as_on_v1(client, v1):
    """The tiny HunYuan's template has Hunyuan-7B's switch: thinking disabled adds /no_think."""
    counts = {}
    for enabled in (True, False):
        thinking = {"type": "enabled", "budget_tokens": 1024} if enabled else {"type": "disabled"}
        counts[enabled] = client.messages.count_tokens(model="pytorch", messages=QUESTION, thinking=thinking)
        body = {"model": "pytorch", "messages": QUESTION, "max_tokens": 1, "think": enabled}
        assert (
            counts[enabled].input_tokens == v1.post("/v1/chat/completions", json=body).json()["usage"]["prompt_tokens"]
        )
    assert counts[False].input_tokens > counts[True].input_tokens
    prompt = v1.post("/apply-template", json={"model": "pytorch", "messages": QUESTION, "think": False}).json()
    assert "/no_think" in prompt["prompt"]


def test_count_tokens_counts_the_system_prompt_and_tools_as_v1_does(client, v1):
    system = "你是一个天气助手。"
    counted = client.messages.count_tokens(model="llamacpp", system=system, messages=QUESTION, tools=[WEATHER])
    function = {"name": WEATHER["name"], "parameters": WEATHER["input_schema"], "description": WEATHER["description"]}
    tool = {"type": "function", "function": function}
    body = {"model": "llamacpp", "messages": [{"role": "system", "content": system}, *QUESTION], "tools": [tool]}
    completion = v1.post("/v1/chat/completions", json={**body, "max_tokens": 1}).json()
    assert counted.input_tokens == completion["usage"]["prompt_tokens"]
    plain = client.messages.count_tokens(model="llamacpp", messages=QUESTION).input_tokens
    assert counted.input_tokens > plain


def test_bad_requests_get_anthropics_errors_and_change_nothing(client, server):
    before = text_of(create(client))
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with_image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    too_long = [{"role": "user", "content": "hello " * 3000}]
    bad = [
        (anthropic.BadRequestError, "invalid_request_error", "'image'", {"messages": with_image}),
        (anthropic.NotFoundError, "not_found_error", "nope", {"model": "nope"}),
        (anthropic.BadRequestError, "invalid_request_error", "context window", {"messages": too_long}),
        (anthropic.BadRequestError, "invalid_request_error", "max_tokens", {"max_tokens": 10**6}),
    ]
    for error_class, kind, named, change in bad:
        with pytest.raises(error_class) as caught:
            client.messages.create(**{"model": "llamacpp", "messages": QUESTION, "max_tokens": 8, **change})
        assert caught.value.type == kind and named in caught.value.api_message
        assert caught.value.body == {"type": "error", "error": {"type": kind, "message": caught.value.api_message}}
    with pytest.raises(anthropic.BadRequestError) as caught:  # the SDK will not send it without max_tokens
        client.post("/v1/messages", cast_to=anthropic.types.Message, body={"model": "llamacpp", "messages": QUESTION})
    assert caught.value.type == "invalid_request_error" and "max_tokens" in caught.value.api_message
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nope", messages=QUESTION)
    with anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            stranger.messages.create(model="llamacpp", messages=QUESTION, max_tokens=8)
    assert caught.value.type == "authentication_error"
    assert text_of(create(client)) == before


def test_an_error_after_the_stream_started_is_an_error_event(client):
    """PyTorch has no grammars: the random tiny model writes no call that tool_choice any demands,
    which is known only at the end."""
    params = {"model": "pytorch", "messages": QUESTION, "max_tokens": 4, "tools": [WEATHER]}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(**params, tool_choice={"type": "any"})
    assert caught.value.type == "invalid_request_error" and "tool_choice" in caught.value.api_message
    with pytest.raises(anthropic.APIStatusError) as caught:
        list(client.messages.create(**params, tool_choice={"type": "any"}, stream=True))
    assert caught.value.status_code == 200 and caught.value.type == "invalid_request_error"
    assert client.messages.create(**params).stop_reason in ("end_turn", "max_tokens")


def test_a_last_assistant_message_is_a_prefill_the_answer_continues(client, v1):
    prefill = [*QUESTION, {"role": "assistant", "content": "长城是"}]
    message = create(client, prefill, max_tokens=12)
    body = {"model": "llamacpp", "messages": prefill, "max_tokens": 12, **GREEDY}
    completion = v1.post("/v1/chat/completions", json=body).json()
    assert text_of(message) == completion["choices"][0]["message"]["content"] and text_of(message).strip()
    rendered = v1.post("/apply-template", json={"messages": prefill}).json()["prompt"]
    assert rendered.endswith("长城是")  # the turn is left open: the model writes on
