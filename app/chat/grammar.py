"""GBNF grammars that make a backend's output JSON, or JSON matching a schema (`response_format`).

Written by llama-cpp-python's own helpers (`llama_cpp.llama_grammar`, imported lazily so that this
module loads without llama.cpp): its JSON grammar, and its port of llama.cpp's schema converter.
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.errors import InvalidParameterError

# What the converter raises on a schema it cannot handle: it asserts on unknown types and remote
# $refs, indexes into the schema without checks and recurses on nesting.
_CONVERTER_ERRORS = (
    AssertionError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    RecursionError,
    re.error,
)
# llama-cpp-python's port of the schema converter lets raw control characters into strings
# (`[^"\\]`), which no JSON parser accepts (a soak run got a raw newline); llama.cpp's own converter
# and llama-cpp-python's JSON_GBNF exclude them.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def json_grammar() -> str:
    """Any JSON object."""
    return _grammar_module().JSON_GBNF


def json_schema_grammar(schema: dict[str, Any], param: str | None = None) -> str:
    """JSON that matches `schema`; a schema the converter cannot handle is an InvalidParameterError."""
    if not isinstance(schema, dict):
        raise InvalidParameterError("the JSON schema must be an object", param)
    module = _grammar_module()
    try:
        grammar = module.json_schema_to_gbnf(json.dumps(schema))
    except _CONVERTER_ERRORS as error:
        raise InvalidParameterError(f"cannot turn this JSON schema into a grammar: {error}", param) from None
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


def _grammar_module() -> Any:
    try:
        from llama_cpp import llama_grammar
    except (ImportError, OSError):
        raise InvalidParameterError("JSON output needs llama-cpp-python, which is not installed") from None
    return llama_grammar
