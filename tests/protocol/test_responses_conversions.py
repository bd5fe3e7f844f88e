"""OpenAI's Responses API as pure conversions, without a server: input items to the chat path's
messages, request fields to options, deltas to stream events and the response object (the server:
tests/routes/test_responses.py)."""

from __future__ import annotations

import pytest

from app.chat.output import Answer, ChatDelta
from app.chat.tool_calls import ToolCall
from app.errors import InvalidParameterError, MaxTokensTooLargeError, ModelNotFoundError
from app.protocol import responses
from app.protocol.responses_answers import ResponseEvents, output_messages, response_body, response_head
from app.types import Usage

USAGE = Usage(prompt_tokens=10, completion_tokens=6, ttft_ms=1, decode_tokens_per_s=1, total_ms=2, cached_tokens=4)
CALL = ToolCall("call_1", "get_weather", '{"city": "北京"}')
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def request(**fields) -> responses.ResponseRequest:
    return responses.ResponseRequest.model_validate({"model": "m", "input": "hi", **fields})


def turn(history=(), **fields) -> responses.Turn:
    return responses.to_generation_request(request(**fields), list(history), 64)


def test_input_items_become_the_chat_paths_messages():
    items = [
        {"role": "developer", "content": "Be brief."},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "晴"},
        {"type": "function_call_output", "call_id": "call_9", "output": [{"type": "input_text", "text": "?"}]},
    ]
    got = turn(input=items, instructions="Rules.")
    assert got.request.messages == [{"role": "system", "content": "Rules."}, *got.conversation]
    assert got.conversation == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "晴", "name": "get_weather"},
        {"role": "tool", "tool_call_id": "call_9", "content": "?"},
    ]


def test_a_continued_conversation_follows_its_history_unchanged():
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}]  # fmt: skip
    kept = [dict(m) for m in history]
    got = turn(history, input=[{"type": "function_call_output", "call_id": "call_1", "output": "晴"}])
    assert got.conversation == [
        *history,
        {"role": "tool", "tool_call_id": "call_1", "content": "晴", "name": "get_weather"},
    ]
    assert history == kept and got.request.messages == got.conversation  # no instructions: no system prompt


@pytest.mark.parametrize(
    "fields, param, named",
    [
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]", "'item_reference'"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content", "'input_image'"),
        ({"input": [{"role": "system", "content": "only rules"}]}, "input", "no message"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]", "'web_search'"),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        ({"include": ["message.output_text.logprobs"]}, "include", "logprobs"),
        ({"background": True}, "background", "background"),
        ({"top_logprobs": 2}, "top_logprobs", "top_logprobs"),
        ({"grammar": 'root ::= "x"', "text": {"format": {"type": "json_object"}}}, "grammar", "text.format"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "tensor"}}}},
            "text.format.schema",
            "grammar",
        ),
    ],
)
def test_what_is_not_served_is_refused_by_name(fields, param, named):
    with pytest.raises(InvalidParameterError) as caught:
        turn(**fields)
    assert caught.value.param == param and named in str(caught.value)


def test_options_sampling_and_the_token_limit():
    got = turn(
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        reasoning={"effort": "minimal"},
        truncation="auto",
        temperature=0,
        max_output_tokens=8,
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
    )
    chat, params = got.request.chat, got.request.params
    assert chat.tools == ({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},)
    assert (chat.tool_choice, chat.parallel_tool_calls, chat.think, chat.truncate) == (
        "get_weather",
        False,
        False,
        True,
    )
    assert (params.temperature, params.max_new_tokens) == (0, 8) and params.grammar
    assert turn(reasoning={"effort": "low"}).request.chat.think is True
    assert turn().request.chat.think is None and turn().request.params.max_new_tokens == 64
    with pytest.raises(MaxTokensTooLargeError) as caught:
        turn(max_output_tokens=65)
    assert caught.value.param == "max_output_tokens"


def events_and_response(deltas):
    got = turn(tools=[WEATHER])
    events = ResponseEvents(response_head(request(tools=[WEATHER]), got.request, "m"))
    out = events.first()
    for delta in deltas:
        out += events.events(delta)
    return out, events.response


def test_deltas_become_items_and_events_in_order():
    last = {"finish_reason": "tool_calls", "usage": USAGE, "reasoning_tokens": 2}
    events, response = events_and_response(
        [
            ChatDelta(reasoning="想"),
            ChatDelta(reasoning="一想"),
            ChatDelta(content="Checking."),
            ChatDelta(tool_calls=(CALL,), **last),
        ]  # fmt: skip
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1].response is response and response.status == "completed" and response.completed_at
    assert [(item.type, item.status) for item in response.output] == [
        ("reasoning", "completed"),
        ("message", "completed"),
        ("function_call", "completed"),
    ]
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (10, 6, 16)
    assert usage.input_tokens_details.cached_tokens == 4 and usage.output_tokens_details.reasoning_tokens == 2
    # Not streamed: the same items from the whole answer.
    answer = Answer("Checking.", "想一想", (CALL,), "tool_calls", USAGE, 2, ())
    whole = response_body(answer, response.model_copy(update={"output": [], "status": "in_progress"}))
    strip = {"id"}
    assert [i.model_dump(exclude=strip) for i in whole.output] == [i.model_dump(exclude=strip) for i in response.output]
    # As the next turn sees it: the reasoning dropped, the call in the message.
    assert output_messages(response) == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]}
    ]  # fmt: skip


def test_an_answer_cut_short_is_incomplete_and_an_empty_one_still_has_its_message():
    events, response = events_and_response(
        [ChatDelta(reasoning="想"), ChatDelta(finish_reason="length", usage=USAGE, reasoning_tokens=6)]
    )
    assert events[-1].type == "response.incomplete" and response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens" and response.completed_at is None
    assert [(i.type, i.status) for i in response.output] == [("reasoning", "completed"), ("message", "incomplete")]
    events, response = events_and_response([ChatDelta(finish_reason="stop", usage=USAGE)])
    assert [(i.type, i.content[0].text) for i in response.output] == [("message", "")]
    assert "response.output_text.delta" not in [e.type for e in events]


def test_an_error_is_an_error_event_in_sequence():
    got = turn()
    events = ResponseEvents(response_head(request(), got.request, "m"))
    events.first()
    error = events.error(ModelNotFoundError("no such model"))
    assert error.model_dump() == {
        "type": "error",
        "sequence_number": 2,
        "code": "model_not_found",
        "message": "no such model",
        "param": "model",
    }
