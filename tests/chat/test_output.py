"""ChatOutputParser: one token's text at a time in, reasoning, answer and tool calls out. Pure logic
on texts; the engines' side is in tests/routes/test_reasoning_split.py and tests/routes/test_tools.py."""

from __future__ import annotations

import json

import pytest

from app.chat.output import ChatDelta, ChatOutputParser, joined
from app.errors import ToolCallMissingError
from app.types import ChatOptions, Prompt, PromptProgress, RenderedChat, TokenLogprob, Usage

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
# Token texts as a model streams them; "" is a token whose text the detokenizer holds back.
THINKING = ["<th", "ink>", "\n用户", "问天气", "。\n</", "think>", "\n<answer>\n", "", "北京晴。", "\n</answer>"]
CALLS = ['<tool_calls><tool_call>get_weather\n```json\n{"city": "北京"}\n```</tool_call>\n',
         '<tool_call>get_weather\n```json\n{"city": "上海"}\n```</tool_call></tool_calls>']  # fmt: skip


def prompt(think=None, tool_names=()) -> Prompt:
    return Prompt(ids=[1], text="…", chat=RenderedChat("…", think), tool_format="hunyuan", tool_names=tool_names)


def run(parser: ChatOutputParser, pieces: list[str]) -> tuple[str, str, list]:
    whole = parser.read(pieces)
    return whole.reasoning, whole.content, parser.tool_calls


def test_reasoning_tokens_are_the_tokens_of_the_think_block():
    parser = ChatOutputParser(prompt(), ChatOptions())
    assert run(parser, THINKING)[:2] == ("用户问天气。", "北京晴。")
    assert parser.reasoning_tokens == 6  # "<th" ... "think>": the tags' tokens count as reasoning


def test_a_prompt_that_opened_think_starts_in_reasoning():
    parser = ChatOutputParser(prompt(think="open"), ChatOptions())
    assert run(parser, ["想一想", "</think>", "好"])[:2] == ("想一想", "好") and parser.reasoning_tokens == 2


def test_reasoning_format_none_passes_the_raw_text():
    parser = ChatOutputParser(prompt(), ChatOptions(reasoning_format="none"))
    assert run(parser, THINKING)[:2] == ("", "".join(THINKING)) and parser.reasoning_tokens == 0


def test_calls_inside_the_answer_come_out_and_parallel_false_keeps_the_first():
    pieces = ["<answer>\n", *CALLS, "\n</answer>"]
    both = run(ChatOutputParser(prompt(tool_names=("get_weather",)), ChatOptions(tools=(TOOL,))), pieces)
    assert both[1] == "" and [json.loads(c.arguments)["city"] for c in both[2]] == ["北京", "上海"]
    one = ChatOutputParser(prompt(tool_names=("get_weather",)), ChatOptions(tools=(TOOL,), parallel_tool_calls=False))
    assert [json.loads(c.arguments)["city"] for c in run(one, pieces)[2]] == ["北京"]


def test_a_required_call_that_never_comes_is_an_error():
    options = ChatOptions(tools=(TOOL,), tool_choice="required")
    parser = ChatOutputParser(prompt(tool_names=("get_weather",)), options)
    with pytest.raises(ToolCallMissingError) as raised:
        run(parser, ["北京", "晴。"])
    assert raised.value.param == "tool_choice" and raised.value.status_code == 400


def test_plain_deltas_join_and_those_with_a_logprob_a_report_or_the_end_stay_apart():
    logprob = TokenLogprob("城", b"\xe5\x9f\x8e", -0.1, 7)
    progress = PromptProgress(total=4, cache=0, processed=4, time_ms=1.0)
    end = ChatDelta(finish_reason="stop", usage=Usage(3, 5, 10.0, 100.0, 50.0))
    deltas = [ChatDelta(progress=progress), ChatDelta("想", tokens=(1,)), ChatDelta(content="长", tokens=(2,)),
              ChatDelta(content="", tokens=(3,)), ChatDelta(content="城", logprob=logprob, tokens=(4,)),
              ChatDelta(content="。", tokens=(5,)), end]  # fmt: skip
    assert joined(deltas) == [deltas[0], ChatDelta("想", "长", tokens=(1, 2, 3)), deltas[4], deltas[5], end]
