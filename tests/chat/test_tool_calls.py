"""Tool call parsing in the Hunyuan, Hermes and plain-JSON formats, whole, split at every point and per token."""

from __future__ import annotations

import json
import re

import pytest

from app.chat.tool_calls import TOOL_FORMATS, ToolCall, ToolCallStream, parse_tool_calls
from tests.text_pieces import splittings

TOOLS = ("get_weather", "get_time")

HUNYUAN_FENCED = (
    "好的，我来查询。\n<tool_calls><tool_call>get_weather\n```json\n"
    '{"city": "北京", "unit": "摄氏度"}\n```</tool_call>\n'
    '<tool_call>get_time\n```json\n{"timezone": "Asia/Shanghai"}\n```</tool_call></tool_calls>'
)
HUNYUAN_LIST = '<tool_calls>[{"name": "get_weather", "arguments": {"city": "北京"}}]</tool_calls>'
HERMES_TWO = (
    "我来查一下。\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": "{\\"timezone\\": \\"Asia/Shanghai\\"}"}\n</tool_call>\n'
)
HERMES_INVALID = '<tool_call>\n{"name": "get_weather", "arguments": {"city": 北京}}\n</tool_call>'
HERMES_INVALID_THEN_VALID = HERMES_INVALID + '\n<tool_call>\n{"name": "get_time"}\n</tool_call>\n以上。'
HERMES_UNKNOWN = '北京<tool_call>\n{"name": "book_flight", "arguments": {}}\n</tool_call>'
JSON_OBJECT = '\n {"name": "get_weather", "parameters": {"city": "北京"}}\n'
JSON_LIST = '[{"name": "get_weather", "arguments": {"city": "北京"}}, {"name": "get_time", "arguments": {}}]'
JSON_WRAPPED = '{"tool_calls": [{"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}'
JSON_TEXT = "北京今天晴。{不是调用}"

WEATHER = ("get_weather", '{"city": "北京"}')
TIME_SH = ("get_time", '{"timezone": "Asia/Shanghai"}')
TIME = ("get_time", "{}")

# (text, format, content, [(name, arguments)]) as the whole output gives them.
SAMPLES = [
    (
        HUNYUAN_FENCED,
        "hunyuan",
        "好的，我来查询。\n",
        [("get_weather", '{"city": "北京", "unit": "摄氏度"}'), TIME_SH],
    ),
    (HUNYUAN_LIST, "hunyuan", "", [WEATHER]),
    (HERMES_TWO, "hermes", "我来查一下。\n", [WEATHER, TIME_SH]),
    (HERMES_INVALID_THEN_VALID, "hermes", HERMES_INVALID + "\n以上。", [TIME]),  # whitespace after a call is dropped
    (HERMES_UNKNOWN, "hermes", HERMES_UNKNOWN, []),
    (JSON_OBJECT, "json", "", [WEATHER]),
    (JSON_LIST, "json", "", [WEATHER, TIME]),
    (JSON_WRAPPED, "json", "", [TIME]),
    (JSON_TEXT, "json", JSON_TEXT, []),
]
CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")


def pairs(calls: list[ToolCall]) -> list[tuple[str, str]]:
    return [(call.name, call.arguments) for call in calls]


def feed_pieces(pieces: list[str], fmt: str) -> tuple[list[str], list[ToolCall]]:
    """All content pieces the stream returns and all its calls, finish() included."""
    stream = ToolCallStream(fmt, TOOLS)
    results = [stream.feed(piece) for piece in pieces] + [stream.finish()]
    return [content for content, _ in results], [call for _, calls in results for call in calls]


@pytest.mark.parametrize(("text", "fmt", "content", "calls"), SAMPLES)
def test_whole_output_gives_content_and_calls(text, fmt, content, calls):
    got_content, got_calls = parse_tool_calls(text, fmt, TOOLS)
    assert (got_content, pairs(got_calls)) == (content, calls)


@pytest.mark.parametrize(("text", "fmt", "content", "calls"), SAMPLES)
def test_every_two_and_three_way_split_gives_the_whole_output_result(text, fmt, content, calls):
    for pieces in splittings(text):
        got_content, got_calls = feed_pieces(pieces, fmt)
        assert ("".join(got_content), pairs(got_calls)) == (content, calls), pieces


@pytest.mark.parametrize(("text", "fmt", "content", "calls"), SAMPLES)
def test_real_token_pieces_give_the_whole_output_result(token_pieces, text, fmt, content, calls):
    got_content, got_calls = feed_pieces(token_pieces(text), fmt)
    assert ("".join(got_content), pairs(got_calls)) == (content, calls)
    if "<tool_call" not in content:  # no tag the product keeps may leak into content, not even a fragment
        assert not [c for c in got_content if "<tool_call" in c]


def test_the_tokenizer_really_splits_tags_over_tokens(token_pieces):
    # Otherwise the per-token test above would not exercise held-back tag prefixes.
    assert not any("<tool_call" in piece for piece in token_pieces(HERMES_TWO))


def test_content_streams_at_once_and_only_a_possible_tag_start_is_held():
    stream = ToolCallStream("hermes", TOOLS)
    assert stream.feed("我来查一下。<tool") == ("我来查一下。", [])
    assert stream.feed('_call>\n{"name": "get_weather", ') == ("", [])
    content, calls = stream.feed('"arguments": {"city": "北京"}}\n</tool_call>\n')
    assert (content, pairs(calls)) == ("", [WEATHER])
    assert stream.feed("<to") == ("", [])
    assert stream.feed("day>") == ("<today>", [])
    assert stream.finish() == ("", [])


def test_hunyuan_fenced_calls_with_chinese_arguments():
    content, calls = parse_tool_calls(HUNYUAN_FENCED, "hunyuan", TOOLS)
    assert content == "好的，我来查询。\n"
    assert [call.name for call in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "北京", "unit": "摄氏度"}
    assert "北京" in calls[0].arguments  # ensure_ascii=False: not \\u escapes


def test_hermes_bare_tool_call_tag_is_plain_content_in_hunyuan_format():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    assert parse_tool_calls(text, "hunyuan", TOOLS) == (text, [])


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ('<tool_calls><tool_call>get_weather\n```json\n{"city": 北京}\n```</tool_call></tool_calls>', "hunyuan"),
        ('<tool_calls>[{"name": "get_weather", "arguments": {"city": "北京"}]</tool_calls>', "hunyuan"),
        ("<tool_calls><tool_call>get_weather\n```json\n{}\n```</tool_call>多余</tool_calls>", "hunyuan"),
        (
            "<tool_calls><tool_call>get_weather\n```json\n{}\n```</tool_call>多余"
            "<tool_call>get_time\n```json\n{}\n```</tool_call></tool_calls>",
            "hunyuan",
        ),
        ('<tool_call>\n{"name": "get_weather", "arguments": [1, 2]}\n</tool_call>', "hermes"),
        ('<tool_call>\n{"name": "get_weather", "arguments": "北京"}\n</tool_call>', "hermes"),
        ('{"name": "get_weather", "arguments": {"city": "北京"}', "json"),
        ('[{"name": "get_weather"}, {"name": "book_flight"}]', "json"),
        ('{"city": "北京"}', "json"),
    ],
)
def test_invalid_calls_stay_content_untouched(text, fmt):
    assert parse_tool_calls(text, fmt, TOOLS) == (text, [])


def test_unknown_tool_name_stays_content():
    assert parse_tool_calls(HERMES_UNKNOWN, "hermes", TOOLS) == (HERMES_UNKNOWN, [])
    text = '<tool_calls>[{"name": "book_flight", "arguments": {}}]</tool_calls>'
    assert parse_tool_calls(text, "hunyuan", TOOLS) == (text, [])


def test_missing_arguments_become_an_empty_object():
    _, calls = parse_tool_calls('<tool_call>{"name": "get_time"}</tool_call>', "hermes", TOOLS)
    assert pairs(calls) == [TIME]


def test_json_format_streams_plain_text_at_once_and_never_buffers_it():
    stream = ToolCallStream("json", TOOLS)
    assert stream.feed("  ") == ("", [])  # not yet known whether a JSON value follows
    assert stream.feed("北京") == ("  北京", [])
    assert stream.feed('{"name": "get_time"}') == ('{"name": "get_time"}', [])
    assert stream.finish() == ("", [])


def test_json_format_buffers_a_json_value_to_the_end():
    stream = ToolCallStream("json", TOOLS)
    assert stream.feed('{"name": "get_time",') == ("", [])
    assert stream.feed(' "arguments": {}}') == ("", [])
    content, calls = stream.finish()
    assert (content, pairs(calls)) == ("", [TIME])


def test_a_block_cut_off_before_its_closing_tag_is_still_parsed_at_the_end():
    _, calls = parse_tool_calls('<tool_call>\n{"name": "get_time", "arguments": {}}\n', "hermes", TOOLS)
    assert pairs(calls) == [TIME]
    text = '<tool_call>\n{"name": "get_time", "argu'
    assert parse_tool_calls(text, "hermes", TOOLS) == (text, [])


def test_call_ids_are_unique_and_prefixed():
    calls = [call for _ in range(20) for call in parse_tool_calls(HERMES_TWO, "hermes", TOOLS)[1]]
    assert all(CALL_ID.match(call.id) for call in calls)
    assert len({call.id for call in calls}) == len(calls)


def test_unknown_format_is_refused():
    assert TOOL_FORMATS == ("hunyuan", "hermes", "json")
    with pytest.raises(ValueError):
        ToolCallStream("mistral", TOOLS)
