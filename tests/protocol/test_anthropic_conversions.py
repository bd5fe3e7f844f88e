"""Anthropic's Messages API as pure conversions, without a server: request blocks to the chat path's
messages, deltas to stream events, errors to Anthropic's shape (the server: tests/routes/test_anthropic.py)."""

from __future__ import annotations

from app.chat.output import ChatDelta
from app.chat.tool_calls import ToolCall
from app.errors import EngineClosedError, ModelNotFoundError, PromptTooLongError, QueueFullError
from app.protocol import anthropic, anthropic_answers
from app.types import Usage

WEATHER = {
    "name": "get_weather",
    "description": "查询一个城市今天的天气",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_tool_blocks_become_the_chat_paths_messages():
    body = anthropic.MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 8,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "call it", "signature": ""},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "北京"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "晴"}]},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "down", "is_error": True},
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "thinking": {"type": "disabled"},
        }
    )
    request = anthropic.to_generation_request(body, 100)
    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "call it", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "晴", "name": "get_weather"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: down"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    chat = request.chat
    assert (chat.tool_choice, chat.parallel_tool_calls, chat.think) == ("required", False, False)
    assert chat.tools == ({"type": "function", "function": {**_function(WEATHER)}},)


def _function(tool: dict) -> dict:
    return {"name": tool["name"], "parameters": tool["input_schema"], "description": tool["description"]}


def test_a_stream_switches_blocks_when_the_kind_of_text_changes():
    events = anthropic_answers.MessageEvents(anthropic_answers.MessageMeta("msg_1", "m"))
    call = ToolCall("call_abc", "get_weather", '{"city": "北京"}')
    usage = Usage(prompt_tokens=10, completion_tokens=7, ttft_ms=1, decode_tokens_per_s=1, total_ms=1, cached_tokens=4)
    deltas = [
        ChatDelta(reasoning="想"),
        ChatDelta(reasoning="一想", content="好"),
        ChatDelta(content="的"),
        ChatDelta(tool_calls=(call,)),
        ChatDelta(finish_reason="tool_calls", usage=usage),
    ]
    sent = [e.model_dump() for e in events.first() + [e for d in deltas for e in events.events(d)]]
    shape = [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type")) for e in sent]
    assert shape == [
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert sent[10]["content_block"] == {"type": "tool_use", "id": "toolu_abc", "name": "get_weather", "input": {}}
    assert sent[13]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert sent[13]["usage"] == {
        "input_tokens": 6,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
    }


def test_errors_have_anthropics_types_and_hide_unexpected_details():
    cases = [
        (PromptTooLongError(3000, 2048), "invalid_request_error"),
        (ModelNotFoundError("no such model"), "not_found_error"),
        (QueueFullError("busy"), "rate_limit_error"),
        (EngineClosedError("swapping"), "overloaded_error"),
    ]
    for error, kind in cases:
        assert anthropic_answers.error_body(error) == {"type": "error", "error": {"type": kind, "message": str(error)}}
    body = anthropic_answers.error_body(RuntimeError("secret path /home/x"))
    assert body == {"type": "error", "error": {"type": "api_error", "message": "internal error"}}
