"""Tool calling on `/v1/chat/completions` through a real server: llama.cpp on the embedded SmolLM2
GGUF (whose template has no tools: the product describes them in the system prompt and reads plain
JSON calls), the PyTorch backend on a tiny random HunYuan beside it. The official `openai` client
drives it, as a user's agent would."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

WEATHER = {
    "type": "function",
    "function": {
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
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "查询一个时区的当前时间",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 12}},
            "required": ["zone"],
        },
    },
}
QUESTION = [{"role": "user", "content": "北京今天天气怎么样？"}]


@pytest.fixture(scope="module")
def server(start_server, torch_beside_env):
    return start_server(torch_beside_env)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120)


def matches_weather_schema(arguments: str) -> dict:
    args = json.loads(arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
    assert isinstance(args["city"], str) and len(args["city"]) <= 12
    return args


def test_the_openai_client_runs_a_whole_tool_loop(client):
    first = client.chat.completions.create(
        model="llamacpp",
        messages=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "get_time")
    # The tool's result goes back with the call; the model then answers in words.
    messages = [
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": json.dumps({"天气": "晴", "温度": 21}, ensure_ascii=False),
        },
    ]
    final = client.chat.completions.create(
        model="llamacpp", messages=messages, tools=[WEATHER, TIME], tool_choice="none", max_tokens=40, temperature=0
    )
    answer = final.choices[0]
    assert answer.message.tool_calls is None and answer.finish_reason in ("stop", "length")
    assert answer.message.content and answer.message.content.strip()


def test_a_named_tool_choice_forces_that_function_with_arguments_matching_its_schema(client):
    for seed in range(3):  # sampled, not greedy: the grammar must hold whatever the draw
        r = client.chat.completions.create(
            model="llamacpp",
            messages=QUESTION,
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather"
        matches_weather_schema(call.function.arguments)


def test_tool_calls_stream_as_openai_streams_them(client):
    stream = client.chat.completions.create(
        model="llamacpp",
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    # The id, type and name first, then the arguments; no text content around the call.
    assert calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"
    assert all(c.index == 0 and c.id is None and c.function.name is None for c in calls[1:])
    matches_weather_schema("".join(c.function.arguments or "" for c in calls))
    assert not "".join(d.content or "" for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.completion_tokens_details.reasoning_tokens == 0


def test_an_unknown_function_in_tool_choice_is_refused(server):
    body = {
        "model": "llamacpp",
        "messages": QUESTION,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "launch_rockets"}},
    }
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tool_choice" and "launch_rockets" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "tools": None, "tool_choice": "required"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


def test_without_tools_nothing_is_parsed_as_a_call(client):
    """JSON the model writes when no tools were offered is an answer, not a call."""
    r = client.chat.completions.create(
        model="llamacpp",
        messages=[{"role": "user", "content": "给我一个JSON"}],
        extra_body={"grammar": 'root ::= "{\\"name\\": \\"get_weather\\", \\"arguments\\": {}}"'},
        max_tokens=40,
    )
    choice = r.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert json.loads(choice.message.content) == {"name": "get_weather", "arguments": {}}


def test_pytorch_answers_required_with_a_clear_400_when_the_model_makes_no_call(server):
    """The PyTorch backend has no grammars: a random tiny model never writes a call, and `required`
    must not pass that off as an answer."""
    body = {"model": "pytorch", "messages": QUESTION, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 8}
    body["grammar"] = None  # (the field exists, but this backend refuses grammars)
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "tool_call_missing" and error["param"] == "tool_choice" and "grammar" in error["message"]
    # With "auto" the same answer is just text.
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "tool_choice": "auto"}, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
