"""ReasoningSplitter on real Hunyuan / Qwen3-style outputs, fed whole, split at every point and per token."""

from __future__ import annotations

import pytest

from app.chat.reasoning import ReasoningSplitter, split_reasoning
from tests.text_pieces import splittings

HUNYUAN_THINK = (
    "<think>\n用户问北京的天气。\n我应该直接回答。\n</think>\n"  # the reasoning, then the answer
    "<answer>\n北京今天晴，气温 25°C。\n\n注意防晒。\n</answer>"
)
HUNYUAN_NO_THINK = "<answer>\n北京今天晴。\n</answer>\n"  # the prompt already holds `<think>\n\n</think>\n`
QWEN_THINK = "<think>\n用户问北京的天气。\n</think>\n\n北京今天晴。"
QWEN_OPENED = "\n用户问北京的天气。\n  先想一想。\n</think>\n\n北京今天晴。"  # the prompt ended with `<think>\n`
CUT_IN_REASONING = "<think>\n用户问北京的天气。\n我先想"
PLAIN = "北京今天晴。"
THINK_IN_CONTENT = "答案：<think>不是标签</think> 北京今天晴。"

# (text, in_reasoning, reasoning, content) as the whole output gives them.
SAMPLES = [
    (HUNYUAN_THINK, False, "用户问北京的天气。\n我应该直接回答。", "北京今天晴，气温 25°C。\n\n注意防晒。"),
    (HUNYUAN_NO_THINK, False, "", "北京今天晴。"),
    (QWEN_THINK, False, "用户问北京的天气。", "北京今天晴。"),
    (QWEN_OPENED, True, "用户问北京的天气。\n  先想一想。", "北京今天晴。"),
    (CUT_IN_REASONING, False, "用户问北京的天气。\n我先想", ""),
    (PLAIN, False, "", PLAIN),
    (THINK_IN_CONTENT, False, "", THINK_IN_CONTENT),
]
TAG_FRAGMENTS = ("<think", "</think", "<answer", "</answer")


def feed_pieces(pieces: list[str], in_reasoning: bool = False) -> tuple[list[str], list[str]]:
    """All (reasoning, content) pieces the splitter returns, finish() included."""
    splitter = ReasoningSplitter(in_reasoning=in_reasoning)
    results = [splitter.feed(piece) for piece in pieces] + [splitter.finish()]
    return [r for r, _ in results], [c for _, c in results]


@pytest.mark.parametrize(("text", "in_reasoning", "reasoning", "content"), SAMPLES)
def test_whole_output_splits_into_reasoning_and_content(text, in_reasoning, reasoning, content):
    assert split_reasoning(text, in_reasoning=in_reasoning) == (reasoning, content)


@pytest.mark.parametrize(("text", "in_reasoning", "reasoning", "content"), SAMPLES)
def test_every_two_and_three_way_split_gives_the_whole_output_result(text, in_reasoning, reasoning, content):
    for pieces in splittings(text):
        got_reasoning, got_content = feed_pieces(pieces, in_reasoning)
        assert ("".join(got_reasoning), "".join(got_content)) == (reasoning, content), pieces


@pytest.mark.parametrize(("text", "in_reasoning", "reasoning", "content"), SAMPLES)
def test_one_character_per_feed_gives_the_whole_output_result(text, in_reasoning, reasoning, content):
    got_reasoning, got_content = feed_pieces(list(text), in_reasoning)
    assert ("".join(got_reasoning), "".join(got_content)) == (reasoning, content)


@pytest.mark.parametrize(("text", "in_reasoning", "reasoning", "content"), SAMPLES)
def test_real_token_pieces_give_the_whole_output_result_and_no_tag_fragments(
    token_pieces, text, in_reasoning, reasoning, content
):
    pieces = token_pieces(text)
    got_reasoning, got_content = feed_pieces(pieces, in_reasoning)
    assert ("".join(got_reasoning), "".join(got_content)) == (reasoning, content)
    if text != THINK_IN_CONTENT:  # there `<think>` is the user-visible content itself
        assert not [c for c in got_content if any(f in c for f in TAG_FRAGMENTS)]


def test_the_tokenizer_really_splits_tags_over_tokens(token_pieces):
    # Otherwise the per-token test above would not exercise held-back tag prefixes.
    pieces = token_pieces(HUNYUAN_THINK)
    assert not any(tag in piece for piece in pieces for tag in ("<think>", "</think>", "<answer>", "</answer>"))


def test_text_is_held_back_only_while_it_could_still_be_a_tag():
    splitter = ReasoningSplitter()
    assert splitter.feed(" <th") == ("", "")
    assert splitter.feed("ink>\n用户") == ("用户", "")
    assert splitter.feed("问北京的天气。\n\n") == ("问北京的天气。", "")  # the newlines may precede `</think>`
    assert splitter.feed("再想。\n</th") == ("\n\n再想。", "")
    assert splitter.feed("ink>\n<ans") == ("", "")
    assert splitter.feed("wer>\n北京") == ("", "北京")
    assert splitter.feed("今天晴。 ") == ("", "今天晴。")
    assert splitter.feed("</answer") == ("", "")
    assert splitter.feed(">\n") == ("", "")
    assert splitter.finish() == ("", "")


def test_a_tag_prefix_that_does_not_complete_is_released_at_once():
    splitter = ReasoningSplitter(in_reasoning=True)
    assert splitter.feed("a </thin") == ("a", "")
    assert splitter.feed("g>") == (" </thing>", "")
    splitter = ReasoningSplitter()
    assert splitter.feed("<b") == ("", "<b")


def test_stream_cut_inside_reasoning_returns_the_rest_as_reasoning():
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>\n用户问北京的天气。\n</th") == ("用户问北京的天气。", "")
    assert splitter.finish() == ("\n</th", "")
    assert splitter.in_reasoning


def test_an_unfinished_answer_tag_at_the_end_is_content_without_the_whitespace_after_think():
    assert split_reasoning("<think>想</think>\n<ans") == ("想", "<ans")


def test_think_tag_in_the_middle_of_content_stays_content():
    splitter = ReasoningSplitter()
    assert splitter.feed("北京") == ("", "北京")
    assert splitter.feed("<think>晴</think>") == ("", "<think>晴</think>")
    assert not splitter.in_reasoning


def test_answer_tags_without_a_think_block_are_dropped():
    assert split_reasoning("  <answer>北京今天晴。</answer>") == ("", "北京今天晴。")


def test_text_after_the_answer_block_stays_content():
    assert split_reasoning("<answer>\n北京今天晴。\n</answer>\n补充：多云。\n") == ("", "北京今天晴。\n补充：多云。")


def test_in_reasoning_follows_the_think_block():
    splitter = ReasoningSplitter()
    assert not splitter.in_reasoning
    splitter.feed("<think>\n")
    assert splitter.in_reasoning
    splitter.feed("用户问北京的天气。\n</th")
    assert splitter.in_reasoning
    splitter.feed("ink>")
    assert not splitter.in_reasoning
    splitter.feed("\n<answer>\n北京今天晴。")
    assert not splitter.in_reasoning


def test_in_reasoning_starts_true_when_the_prompt_opened_the_think_block():
    splitter = ReasoningSplitter(in_reasoning=True)
    assert splitter.in_reasoning
    assert splitter.feed("用户问北京的天气。") == ("用户问北京的天气。", "")
    assert splitter.in_reasoning
    assert splitter.feed("\n</think>\n北京今天晴。") == ("", "北京今天晴。")
    assert not splitter.in_reasoning
