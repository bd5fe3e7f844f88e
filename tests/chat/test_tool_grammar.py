"""The grammars that force a tool call, checked by llama.cpp itself: the embedded model sampled under
each one (llama-cpp-python's own sampler, temperature 1, several seeds) writes a call in the format
asked, which the product's parser reads back with arguments matching the function's schema."""

from __future__ import annotations

import json
import re

import jsonschema
import llama_cpp
import pytest
from llama_cpp import Llama
from llama_cpp.llama_grammar import LlamaGrammar

from app.chat.tool_calls import parse_tool_calls
from app.chat.tool_grammar import MAX_PARALLEL_CALLS, tool_call_grammar
from app.errors import InvalidParameterError

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "enum": [1, 3, 7]}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
# The prompt closed the think block (thinking off): a sampler at temperature 1 would otherwise be
# free to write reasoning until max_tokens, which a real model ends.
THINKING_OFF = "closed"
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture(scope="module")
def llm(model_path):
    return Llama(model_path=model_path, n_ctx=1024, verbose=False)


def sample(llm, grammar: str, seed: int, prompt: str = "Weather in Beijing? Call a tool: ") -> str:
    llm.set_seed(seed)
    # Up to MAX_PARALLEL_CALLS calls of ~40 tokens: a random draw may repeat its call that often.
    out = llm.create_completion(prompt, max_tokens=900, temperature=1.0, grammar=LlamaGrammar.from_string(grammar))
    assert out["choices"][0]["finish_reason"] == "stop", out
    return out["choices"][0]["text"]


@pytest.mark.parametrize("fmt", ["hunyuan", "hermes", "json"])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_forced_call_parses_and_matches_its_schema(llm, fmt, seed):
    text = sample(llm, tool_call_grammar(TOOLS[:1], fmt, parallel=False, think=THINKING_OFF), seed)
    content, calls = parse_tool_calls(text, fmt, ["get_weather"])
    assert len(calls) == 1 and calls[0].name == "get_weather", text
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMA)
    assert not re.sub(r"</?answer>|\s", "", content), content  # nothing but the call (in Hunyuan's <answer>)


@pytest.mark.parametrize("fmt", ["hunyuan", "hermes", "json"])
def test_parallel_calls_may_name_any_offered_function(llm, fmt):
    for seed in range(3):
        text = sample(llm, tool_call_grammar(TOOLS, fmt, parallel=True, think=THINKING_OFF), seed)
        _, calls = parse_tool_calls(text, fmt, ["get_weather", "get_time"])
        assert 1 <= len(calls) <= MAX_PARALLEL_CALLS and {c.name for c in calls} <= {"get_weather", "get_time"}, text


def accepts(llm, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets the model write exactly `text`, then end."""
    from app.engine.sampler import RequestSampler
    from app.types import SamplingParams

    sampler = RequestSampler(llm._model.vocab, llm.n_vocab(), SamplingParams(grammar=grammar))
    try:
        for token in llm.tokenize(text.encode(), add_bos=False, special=False):
            if not sampler._allowed(token):
                return False
            llama_cpp.llama_sampler_accept(sampler.grammar, token)
        return sampler._allowed(llm.token_eos())
    finally:
        sampler.free()


CALL = '<tool_calls><tool_call>get_weather\n```json\n{"city": "北京", "days": 3}\n```</tool_call></tool_calls>'


@pytest.mark.parametrize(
    "think, text, ok",
    [
        ("open", "用户问天气。\n</think>\n<answer>\n" + CALL + "\n</answer>", True),  # reasoning, then the call
        ("open", CALL, False),  # the open block must close first
        (None, "<think>\n想一想\n</think>\n<answer>\n" + CALL + "\n</answer>", True),
        (None, CALL, True),
        ("closed", "<answer>\n" + CALL + "\n</answer>", True),
        ("closed", "<think>\n想一想\n</think>\n" + CALL, False),  # thinking off: no second think block
        ("closed", CALL + "\n好的", False),  # nothing but the call
    ],
)
def test_the_hunyuan_frame_admits_reasoning_only_where_the_prompt_allows(llm, think, text, ok):
    assert accepts(llm, tool_call_grammar(TOOLS[:1], "hunyuan", parallel=False, think=think), text) == ok


def test_parameters_the_converter_cannot_handle_are_a_400():
    bad = [{"type": "function", "function": {"name": "f", "parameters": {"type": "tensor"}}}]
    with pytest.raises(InvalidParameterError) as raised:
        tool_call_grammar(bad, "json", parallel=False)
    assert raised.value.param == "tools"
