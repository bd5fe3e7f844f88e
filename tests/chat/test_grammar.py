"""The grammars for `response_format`, checked by llama.cpp itself: sampling the embedded model under
each one (llama-cpp-python's own sampler, not the service's engine) gives JSON that parses and
matches the schema."""

from __future__ import annotations

import json

import jsonschema
import pytest
from llama_cpp import Llama
from llama_cpp.llama_grammar import LlamaGrammar

from app.chat.grammar import json_grammar, json_schema_grammar
from app.errors import InvalidParameterError

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "population": {"type": "integer"},
        "rivers": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 2},
    },
    "required": ["city", "population", "rivers"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm(model_path):
    return Llama(model_path=model_path, n_ctx=512, verbose=False)


def sample(llm, grammar: str, prompt: str) -> str:
    out = llm.create_completion(prompt, max_tokens=120, temperature=0, grammar=LlamaGrammar.from_string(grammar))
    assert out["choices"][0]["finish_reason"] == "stop", out
    return out["choices"][0]["text"]


def test_json_object_grammar_gives_an_object(llm):
    assert isinstance(json.loads(sample(llm, json_grammar(), "A cat, as JSON:")), dict)


def test_schema_grammar_gives_matching_json(llm):
    text = sample(llm, json_schema_grammar(SCHEMA), "Paris, as JSON:")
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize(
    "schema",
    [{"type": "tensor"}, {"$ref": "https://example.com/s.json"}, {"$ref": "#/$defs/missing"}, {"properties": 5}],
)
def test_a_schema_the_converter_cannot_handle_is_a_400(schema):
    with pytest.raises(InvalidParameterError, match="grammar") as raised:
        json_schema_grammar(schema, "response_format")
    assert raised.value.param == "response_format" and raised.value.status_code == 400


def test_schema_strings_refuse_raw_control_characters(llm):
    """JSON forbids raw control characters inside strings; llama-cpp-python's converter admitted them."""
    import llama_cpp

    from app.engine.sampler import RequestSampler
    from app.types import SamplingParams

    grammar = json_schema_grammar({"type": "object", "properties": {"poem": {"type": "string"}}})
    sampler = RequestSampler(llm._model.vocab, llm.n_vocab(), SamplingParams(grammar=grammar, temperature=0))
    try:
        for token in llm.tokenize(b'{"poem": "Roses', add_bos=False):
            llama_cpp.llama_sampler_accept(sampler.grammar, token)
        newline, tab, letters = (llm.tokenize(text.encode(), add_bos=False) for text in ("\n", "\t", " are"))
        assert not sampler._allowed(newline[0]) and not sampler._allowed(tab[0])
        assert sampler._allowed(letters[0])
    finally:
        sampler.free()
