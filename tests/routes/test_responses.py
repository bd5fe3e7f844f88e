"""OpenAI's Responses API (`/v1/responses`) through a real server, with the official `openai` package as
the client: llama.cpp on the embedded SmolLM2 GGUF, the PyTorch backend on a tiny random HunYuan beside
it (its template has Hunyuan-7B's thinking switch). SmolLM2 neither reasons nor calls tools by itself:
the non-OpenAI `grammar` field (or the tool grammar that a forced tool_choice adds) makes it write them."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

API_KEY = "responses-test-key"
QUESTION = "请用中文介绍一下长城。"
INSTRUCTIONS = "你是一个简洁的助手。"
REASONING = "用户问北京的天气。\n先想一想。"
ANSWER = "北京今天晴，21度。"
THINKING_GRAMMAR = "root ::= " + json.dumps(f"<think>\n{REASONING}\n</think>\n<answer>\n{ANSWER}\n</answer>")
TAG_PIECES = ("<think", "think>", "</", "<answer", "answer>")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "查询一个城市今天的天气",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
    "strict": True,
}
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
def server(start_server, torch_beside_env):
    return start_server({**torch_beside_env, "HYCHAT_API_KEY": API_KEY})


@pytest.fixture(scope="module")
def client(server):
    # No retries: a 429 or 5xx must reach the test as it is.
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as c:
        yield c


def create(client, input=QUESTION, model="llamacpp", max_output_tokens=24, **params):
    return client.responses.create(
        model=model, input=input, max_output_tokens=max_output_tokens, temperature=0, **params
    )


def events_of(client, input=QUESTION, model="llamacpp", max_output_tokens=24, **params) -> list:
    return list(create(client, input, model, max_output_tokens, stream=True, **params))


def deltas(events, kind: str = "response.output_text.delta") -> list[str]:
    return [e.delta for e in events if e.type == kind]


def test_a_response_streamed_or_not_is_the_greedy_chat_completion(client):
    response = create(client, instructions=INSTRUCTIONS)
    assert response.object == "response" and response.id.startswith("resp_") and response.model
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.status == "incomplete" and [part.type for part in message.content] == ["output_text"]
    usage = response.usage
    assert usage.output_tokens == 24 and usage.total_tokens == usage.input_tokens + 24
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert response.instructions == INSTRUCTIONS and response.temperature == 0 and response.store is True

    events = events_of(client, instructions=INSTRUCTIONS)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:4]] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert [e.type for e in events[-4:]] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    pieces = deltas(events)
    # More than one piece; how many is not fixed (asked again, the engine's n-gram memory drafts the answer).
    assert len(pieces) > 1 and "".join(pieces) == response.output_text == events[-1].response.output_text
    item_id = events[2].item.id
    assert all(e.item_id == item_id for e in events if e.type == "response.output_text.delta")
    assert events[-1].response.usage.output_tokens == 24

    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
    completion = client.chat.completions.create(model="llamacpp", messages=messages, max_tokens=24, temperature=0)
    assert completion.choices[0].message.content == response.output_text
    assert completion.usage.prompt_tokens == usage.input_tokens
    # instructions are the system prompt: without them, the model's default one
    assert create(client).usage.input_tokens != usage.input_tokens


def test_chinese_text_comes_whole_in_every_delta(client):
    # One token a delta (speculative.type: llama-server's field): a step's drafted tokens come together.
    body = {"grammar": "root ::= " + json.dumps(ANSWER), "speculative.type": "none"}
    events = events_of(client, max_output_tokens=60, extra_body=body)
    pieces = deltas(events)
    assert len(pieces) > 5 and "".join(pieces) == ANSWER and events[-1].type == "response.completed"
    for piece in pieces:  # no U+FFFD, no half character (a lone surrogate would not encode)
        assert "\ufffd" not in piece and piece.encode("utf-8").decode("utf-8") == piece


def test_each_event_is_named_after_its_type(server):
    body = {"model": "llamacpp", "input": QUESTION, "max_output_tokens": 4, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{server.url}/v1/responses", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in data] and names[-1] == "response.incomplete"  # no [DONE]


def test_a_forced_function_call_then_its_output_is_answered(client):
    question = [{"role": "user", "content": "北京今天天气怎么样？"}]
    first = create(
        client, question, max_output_tokens=200, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False
    )
    assert first.status == "completed" and first.output_text == ""
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    args = json.loads(call.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
    result = {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"天气": "晴"})}
    # The SDK's own output items go back with the result; the model then answers in words.
    final = create(
        client, [*question, *first.output, result], max_output_tokens=30, tools=[WEATHER], tool_choice="none"
    )
    assert [item.type for item in final.output] == ["message"] and final.output_text.strip()
    # The same turn after previous_response_id renders the same conversation.
    followed = create(client, [result], previous_response_id=first.id, max_output_tokens=30, tools=[WEATHER],
                      tool_choice="none")  # fmt: skip
    assert followed.output_text == final.output_text and followed.usage.input_tokens == final.usage.input_tokens


def test_a_streamed_function_call_comes_whole_in_its_events(client):
    choice = {"type": "function", "name": "get_weather"}
    events = events_of(
        client,
        "北京今天天气怎么样？",
        max_output_tokens=200,
        tools=[WEATHER],
        tool_choice=choice,
        parallel_tool_calls=False,
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, delta, done, item_done, completed = events[2:]
    assert added.item.type == "function_call" and added.item.arguments == "" and added.item.status == "in_progress"
    assert delta.delta == done.arguments == item_done.item.arguments and delta.item_id == added.item.id
    assert set(json.loads(done.arguments)) == {"city", "unit"}
    assert completed.response.output[0].call_id == added.item.call_id


def test_text_format_json_schema_output_matches_the_schema(client):
    text = {"format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA, "strict": True}}
    response = create(
        client, "Give me a person as JSON: name, age and languages spoken.", max_output_tokens=200, text=text
    )
    assert response.status == "completed" and response.text.format.type == "json_schema"
    jsonschema.validate(json.loads(response.output_text), PERSON_SCHEMA)
    response = create(
        client, "Give me any JSON object.", max_output_tokens=40, text={"format": {"type": "json_object"}}
    )
    assert response.text.format.type == "json_object" and response.output_text.startswith("{")  # greedy: it nests
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "tensor"}}})
    assert caught.value.param == "text.format.schema" and "grammar" in caught.value.message


def test_reasoning_comes_as_a_reasoning_item(client):
    grammar = {"grammar": THINKING_GRAMMAR}
    response = create(client, "北京天气怎么样？", max_output_tokens=200, extra_body=grammar)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_") and reasoning.summary == []
    assert [(c.type, c.text) for c in reasoning.content] == [("reasoning_text", REASONING)]
    assert message.type == "message" and response.output_text == ANSWER
    usage = response.usage
    assert 0 < usage.output_tokens_details.reasoning_tokens < usage.output_tokens

    events = events_of(client, "北京天气怎么样？", max_output_tokens=200, extra_body=grammar)
    kinds = [e.type for e in events if e.type.endswith(".delta")]
    assert kinds == sorted(kinds, key=lambda kind: kind == "response.output_text.delta")  # reasoning, then answer
    assert "".join(deltas(events, "response.reasoning_text.delta")) == REASONING
    assert "".join(deltas(events)) == ANSWER
    pieces = deltas(events) + deltas(events, "response.reasoning_text.delta")
    assert not [p for p in pieces if any(t in p for t in TAG_PIECES)]
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "message")]
    assert events[-1].response.output[0].content == reasoning.content
    # An earlier answer's reasoning item goes back as the SDK sends it; it is dropped.
    again = [{"role": "user", "content": "北京天气怎么样？"}, *response.output, {"role": "user", "content": "再说一遍"}]
    assert create(client, again, max_output_tokens=4).usage.output_tokens == 4


def test_reasoning_effort_switches_thinking_as_on_chat_completions(client):
    """The tiny HunYuan's template has Hunyuan-7B's switch: thinking off adds /no_think."""
    tokens = {}
    for think, effort in ((True, "high"), (False, "minimal"), (False, "none")):
        response = create(client, QUESTION, model="pytorch", max_output_tokens=1, reasoning={"effort": effort})
        assert response.reasoning.effort == effort
        tokens[effort] = response.usage.input_tokens
        completion = client.chat.completions.create(
            model="pytorch", messages=[{"role": "user", "content": QUESTION}], max_tokens=1, extra_body={"think": think}
        )
        assert tokens[effort] == completion.usage.prompt_tokens
    assert tokens["minimal"] == tokens["none"] > tokens["high"]


def test_a_stored_response_continues_from_its_cached_prefix(client):
    first = create(client, "Say hello.", instructions=INSTRUCTIONS)
    follow = create(client, "Again, please.", previous_response_id=first.id, instructions=INSTRUCTIONS)
    assert follow.previous_response_id == first.id
    assert follow.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert follow.usage.input_tokens_details.cached_tokens > 0
    # The same conversation sent whole is the same prompt.
    whole = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "Again, please."},
    ]
    assert create(client, whole, instructions=INSTRUCTIONS).usage.input_tokens == follow.usage.input_tokens

    assert client.responses.retrieve(first.id).model_dump() == first.model_dump()
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        create(client, "Again.", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_found" and caught.value.param == "previous_response_id"
    unstored = create(client, "Say hello.", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as caught:
        create(client, "Hi.", previous_response_id="resp_unknown")
    assert caught.value.code == "previous_response_not_found"


def test_bad_requests_are_clear_4xx_in_openais_shape_and_change_nothing(client, server):
    before = create(client).output_text
    image = {"type": "input_image", "image_url": "https://example.com/a.png"}
    bad = [
        (openai.BadRequestError, "max_output_tokens", "4096", {"max_output_tokens": 10**6}),
        (openai.BadRequestError, "tools[0]", "'web_search'", {"tools": [{"type": "web_search"}]}),
        (openai.NotFoundError, "model", "nope", {"model": "nope"}),
        (openai.BadRequestError, "include", "encrypted_content", {"include": ["reasoning.encrypted_content"]}),
        (openai.BadRequestError, "input[0].content", "input_image", {"input": [{"role": "user", "content": [image]}]}),
        (openai.BadRequestError, "tool_choice", "tools", {"tool_choice": "required"}),
        (openai.BadRequestError, "conversation", "conversation", {"extra_body": {"conversation": "conv_1"}}),
        (openai.BadRequestError, "background", "background", {"background": True}),
    ]
    for error_class, param, named, change in bad:
        with pytest.raises(error_class) as caught:
            client.responses.create(**{"model": "llamacpp", "input": QUESTION, "max_output_tokens": 8, **change})
        body = caught.value.response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert caught.value.param == param and named in caught.value.message, body
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            stranger.responses.create(model="llamacpp", input=QUESTION)
    assert create(client).output_text == before


def test_an_error_after_the_stream_started_is_an_error_event(client):
    """PyTorch has no grammars: the random tiny model writes no call that tool_choice required demands,
    which is known only at the end."""
    params = {"model": "pytorch", "max_output_tokens": 4, "tools": [WEATHER], "tool_choice": "required"}
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, **params)
    assert caught.value.code == "tool_call_missing"
    events = events_of(client, **params)
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == "error" and events[-1].code == "tool_call_missing" and events[-1].param == "tool_choice"
    assert events[-1].sequence_number == len(events) - 1
