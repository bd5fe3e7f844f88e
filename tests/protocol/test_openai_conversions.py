"""The OpenAI wire types' conversions to and from internal types, and the error bodies, as plain functions."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from app.chat.output import Answer, ChatDelta
from app.errors import (
    AuthenticationError,
    InvalidParameterError,
    ModelNotFoundError,
    PromptTooLongError,
    QueueFullError,
    error_body,
)
from app.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    logit_biases,
    to_chat_generation_request,
    to_completion_generation_request,
)
from app.protocol.openai_answers import (
    ChatChunks,
    CompletionChunks,
    chat_completion_response,
    completion_response,
    response_meta,
    timings,
    total_usage,
)
from app.protocol.strict import UNKNOWN_FIELDS_IGNORED
from app.services.checks import checked
from app.types import GenerationRequest, SamplingParams, TokenLogprob, TopLogprob, Usage

USER = [{"role": "user", "content": "你好"}]
USAGE = Usage(prompt_tokens=7, completion_tokens=2, ttft_ms=1.0, decode_tokens_per_s=5.0, total_ms=3.0, cached_tokens=4)


def chat_request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "default", "messages": USER, **fields})


def logprob(token: str, value: float) -> TokenLogprob:
    alternatives = (TopLogprob(token, token.encode(), value), TopLogprob("x", b"x", value - 1))
    return TokenLogprob(token, token.encode(), value, top=alternatives)


# What the chat path gives the dialects for a plain two-token answer cut short by max_tokens.
DELTAS = [
    ChatDelta(content="你", logprob=logprob("你", -0.5)),
    ChatDelta(content="好", logprob=logprob("好", -0.25)),
    ChatDelta(finish_reason="length", usage=USAGE),
]
ANSWER = Answer.of(DELTAS)


def test_unset_sampling_fields_take_the_service_defaults():
    request = to_chat_generation_request(chat_request(), max_tokens_limit=4096)
    defaults = SamplingParams()
    assert request.messages == USER and request.prompt is None
    assert request.params == SamplingParams(max_new_tokens=4096, temperature=defaults.temperature)


def test_chat_fields_map_to_sampling_params():
    body = chat_request(
        max_tokens=9,
        max_completion_tokens=5,  # the newer name wins
        temperature=0,
        top_p=0.5,
        stop="\n",
        seed=3,
        presence_penalty=1.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=2,
        top_k=7,
        response_format={"type": "json_object"},
    )
    params = to_chat_generation_request(body, 4096).params
    assert (params.max_new_tokens, params.temperature, params.top_p, params.top_k) == (5, 0, 0.5, 7)
    assert (params.stop, params.seed, params.presence_penalty, params.frequency_penalty) == (("\n",), 3, 1.5, -0.5)
    assert params.logprobs == 2 and "root" in params.grammar
    assert to_chat_generation_request(chat_request(logprobs=True), 4096).params.logprobs == 0
    assert to_chat_generation_request(chat_request(logprobs=False), 4096).params.logprobs is None


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_chat_options_take_the_request_first_then_the_server_defaults():
    chat = to_chat_generation_request(chat_request(), 4096, think=False, reasoning_format="none", truncate=True).chat
    assert (chat.think, chat.enable_thinking, chat.reasoning_format, chat.truncate) == (False, False, "none", True)
    body = chat_request(think=True, reasoning_format="deepseek", tools=[WEATHER], parallel_tool_calls=False)
    chat = to_chat_generation_request(body, 4096, think=False, reasoning_format="none").chat
    assert (chat.enable_thinking, chat.reasoning_format, chat.parallel_tool_calls) == (True, "auto", False)
    assert chat.tools == (WEATHER,) and chat.tool_choice == "auto" and chat.calls_tools
    # chat_template_kwargs.enable_thinking is the same switch as think, and wins over it
    body = chat_request(think=True, chat_template_kwargs={"enable_thinking": False})
    assert to_chat_generation_request(body, 4096).chat.enable_thinking is False
    named = chat_request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert to_chat_generation_request(named, 4096).chat.tool_choice == "get_weather"
    assert not to_chat_generation_request(chat_request(tools=[WEATHER], tool_choice="none"), 4096).chat.calls_tools


def test_tool_messages_keep_their_call_fields():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}
    body = chat_request(
        messages=[
            {"role": "user", "content": "天气？"},
            {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "想一想"},
            {"role": "tool", "tool_call_id": "call_1", "content": "晴"},
        ],
        tools=[WEATHER],
    )
    messages = to_chat_generation_request(body, 4096).messages
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "想一想"}
    assert messages[2] == {"role": "tool", "content": "晴", "tool_call_id": "call_1"}


def test_text_parts_are_joined_and_developer_is_system():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = chat_request(messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": parts}])
    assert to_chat_generation_request(body, 4096).messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
    ]


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tokens": 4097}, "max_tokens"),
        ({"max_completion_tokens": 4097}, "max_completion_tokens"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content",
        ),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "blob"}}}}, None),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
        ({"grammar": "root ::= [a]", "response_format": {"type": "json_object"}}, "grammar"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
    ],
)
def test_requests_the_service_cannot_honour_are_refused_with_the_param(fields, param):
    """By the conversion, or by the check every backend makes before it starts a request."""
    with pytest.raises(InvalidParameterError) as raised:
        checked(to_chat_generation_request(chat_request(**fields), 4096))
    assert raised.value.param == (param or "response_format")


def test_completion_prompt_and_default_max_tokens():
    body = CompletionRequest.model_validate({"model": "m", "prompt": ["only one"], "logprobs": 3})
    request = to_completion_generation_request(body, 4096)
    assert request.prompt == "only one" and request.params.max_new_tokens == 16 and request.params.logprobs == 3
    assert to_completion_generation_request(body, 8).params.max_new_tokens == 8
    with pytest.raises(ValidationError, match="less than or equal to 8"):  # at most MAX_CHOICES choices
        CompletionRequest(model="m", prompt="a", n=9)
    with pytest.raises(ValidationError, match="at most 1 item"):  # one prompt per request, by the wire type
        CompletionRequest(model="m", prompt=["a", "b"])


def test_a_chat_completion_with_logprobs_and_usage():
    meta = response_meta("chatcmpl", "m")
    body = chat_completion_response([ANSWER], meta, with_logprobs=True).model_dump()
    assert body["id"] == meta.id and body["object"] == "chat.completion" and body["model"] == "m"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "你好"} and choice["finish_reason"] == "length"
    first = choice["logprobs"]["content"][0]
    assert first["token"] == "你" and first["logprob"] == -0.5 and first["bytes"] == list("你".encode())
    assert [t["token"] for t in first["top_logprobs"]] == ["你", "x"]
    assert body["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert chat_completion_response([ANSWER], meta, with_logprobs=False).choices[0].logprobs is None
    two = chat_completion_response([ANSWER, ANSWER], meta, with_logprobs=False).model_dump()
    assert [c["index"] for c in two["choices"]] == [0, 1]
    assert (two["usage"]["prompt_tokens"], two["usage"]["completion_tokens"]) == (7, 4)  # the prompt once


def test_chat_chunks_role_first_then_text_finish_and_usage():
    stream = ChatChunks(response_meta("chatcmpl", "m"))
    last = stream.usage(total_usage([USAGE], 0), timings(USAGE))
    sent = stream.first() + [c for d in DELTAS for c in stream.chunks(d)] + [last]
    chunks = [json.loads(c.model_dump_json()) for c in sent]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}  # as llama-server: not ""
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "你"}, {"content": "好"}]
    assert chunks[3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 9
    assert chunks[4]["timings"]["predicted_n"] == USAGE.completion_tokens  # llama-server's, with the usage
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks[:4])


def test_completion_logprobs_offsets_agree_streamed_or_not():
    meta = response_meta("cmpl", "m")
    whole = completion_response([ANSWER], meta, with_logprobs=True).choices[0]
    assert whole.text == "你好" and whole.logprobs.text_offset == [0, 1]
    assert whole.logprobs.top_logprobs == [{"你": -0.5, "x": -1.5}, {"好": -0.25, "x": -1.25}]
    stream = CompletionChunks(meta, index=1)
    chunks = [c for d in DELTAS for c in stream.chunks(d)]
    assert [c.choices[0].logprobs.text_offset for c in chunks[:2]] == [[0], [1]]
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage is None
    assert {c.choices[0].index for c in chunks} == {1}


@pytest.mark.parametrize(
    "error, status, error_type, code, param",
    [
        (InvalidParameterError("bad", "top_p"), 400, "invalid_request_error", "invalid_parameter", "top_p"),
        (PromptTooLongError(3000, 2048), 400, "exceed_context_size_error", "context_length_exceeded", "messages"),
        (AuthenticationError("no"), 401, "authentication_error", "invalid_api_key", None),
        (ModelNotFoundError("no"), 404, "not_found_error", "model_not_found", "model"),
        (QueueFullError("busy", retry_after_s=2), 429, "rate_limit_error", "queue_full", None),
        (RuntimeError("secret detail"), 500, "server_error", "internal_error", None),
    ],
)
def test_every_error_has_openais_shape(error, status, error_type, code, param):
    body = error_body(error)["error"]
    extra = {"n_prompt_tokens": 3000, "n_ctx": 2048} if code == "context_length_exceeded" else {}  # llama-server's
    assert body == {"message": body["message"], "type": error_type, "param": param, "code": code, **extra}
    assert "secret" not in body["message"] and getattr(error, "status_code", 500) == status


def to_request(**body):
    return to_chat_generation_request(ChatCompletionRequest.model_validate({"messages": USER, **body}), 4096)


def test_text_parts_join_by_line_and_a_continued_answers_by_blank_line_as_llama_server():
    parts = [{"type": "text", "text": "长"}, {"type": "text", "text": "城"}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": parts}]
    continued = to_request(messages=messages).messages  # the last assistant message is a prefill
    assert [m["content"] for m in continued] == ["长\n城", "长\n\n城"]
    answered = to_request(messages=messages, add_generation_prompt=True).messages
    assert [m["content"] for m in answered] == ["长\n城", "长\n城"]
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    with pytest.raises(InvalidParameterError, match="image input is not supported"):
        to_request(messages=[{"role": "user", "content": image}])


def test_llama_server_and_vllm_fields_convert():
    assert to_request(n_predict=7, max_tokens=3).params.max_new_tokens == 7  # n_predict wins, as in llama-server
    assert to_request(n_predict=-1).params.max_new_tokens == 4096
    with pytest.raises(InvalidParameterError, match="n_predict"):
        to_request(n_predict=0)
    assert to_request(repeat_penalty=1.2).params.repetition_penalty == 1.2
    assert to_request(repeat_penalty=1.2, repetition_penalty=1.1).params.repetition_penalty == 1.1
    assert to_request(ignore_eos=True).params.ignore_eos is True
    assert to_request(reasoning_effort="none").chat.think is False
    assert to_request(reasoning_effort="high").chat.think is True
    assert to_request(reasoning_effort="none", think=True).chat.think is True  # hychat's own switch wins
    chat = to_request(continue_final_message=True, add_generation_prompt=False).chat
    assert (chat.continue_final_message, chat.add_generation_prompt) == (True, False)
    assert to_request(json_schema={"type": "object"}).params.grammar is not None
    with pytest.raises(InvalidParameterError, match="json_schema"):
        to_request(json_schema={}, response_format={"type": "json_object"})
    for response_format in (
        {"type": "json_object", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},  # no name
        {"type": "json_schema", "json_schema": {"name": "x"}},  # no schema: any object
    ):
        assert to_request(response_format=response_format).params.grammar is not None
    assert ChatCompletionRequest.model_validate({"messages": USER}).model is None  # the default model


def test_logit_bias_in_openais_and_llama_servers_shapes():
    assert logit_biases({"15": 5, "-": -1.5, "7": False}) == ((15, 5.0), ("-", -1.5), (7, -math.inf))
    assert logit_biases([[15, 5], ["长城", False]]) == ((15, 5.0), ("长城", -math.inf))
    assert logit_biases([["³", 1], ["٣", 2]]) == (("³", 1.0), ("٣", 2.0))  # digits to str.isdigit, not token ids
    assert to_request(logit_bias={"3": 100}).params.logit_bias == ((3, 100.0),)
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": USER, "logit_bias": {"3": 101}})
    with pytest.raises(InvalidParameterError, match="logit_bias"):
        checked(GenerationRequest(SamplingParams(logit_bias=((-1, 1.0),)), prompt="x"))


def test_known_extensions_are_dropped_and_unknown_fields_refused_unless_ignored():
    body = {"messages": USER, "id_slot": 1, "samplers": ["top_k"], "mirostat": 2}
    assert ChatCompletionRequest.model_validate(body).model_dump(exclude_unset=True) == {"messages": USER}
    with pytest.raises(ValidationError, match="nonsense"):
        ChatCompletionRequest.model_validate({"messages": USER, "nonsense": 1})
    token = UNKNOWN_FIELDS_IGNORED.set(True)
    try:
        parsed = ChatCompletionRequest.model_validate({"messages": USER, "nonsense": 1, "max_tokens": 3})
        assert parsed.max_tokens == 3 and "nonsense" not in parsed.model_dump()
        nested = {"role": "user", "content": "x", "extra": 1}  # nested objects too, as llama-server ignores them
        assert ChatCompletionRequest.model_validate({"messages": [nested]}).messages[0].content == "x"
    finally:
        UNKNOWN_FIELDS_IGNORED.reset(token)
