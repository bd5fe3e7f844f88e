"""GBNF grammars that force a tool call (`tool_choice` "required" or a named function) in the model's
own call format, its arguments matching the function's JSON schema.

Each function's parameters go through llama-cpp-python's port of llama.cpp's schema converter, in one
converter so that their rules share one namespace; the frame around them (tags, the optional
reasoning before the call) is written here, because no converter knows the models' call formats.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from app.chat.grammar import _CONVERTER_ERRORS, _JSON_CHAR, _LOOSE_CHAR, _grammar_module
from app.errors import InvalidParameterError

MAX_PARALLEL_CALLS = 8  # bounds a model that would repeat its call until max_tokens
# Reasoning before the call: any text without "</t" (so "</think>" ends it).
_THINK_BODY = 'think-body ::= ([^<] | "<" [^/] | "</" [^t])*'


def tool_call_grammar(
    tools: Sequence[Mapping[str, Any]], tool_format: str, parallel: bool, think: str | None = None
) -> str:
    """A call (several when `parallel`) to one of `tools` (OpenAI definitions), in `tool_format`:
    "hunyuan", "hermes" or "json". `think`: the prompt left a <think> block "open", or "closed" it
    (thinking off); None: the model may reason first where its format has reasoning."""
    module = _grammar_module()
    converter = module.SchemaConverter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False,
                                       raw_pattern=False)  # fmt: skip
    try:
        call = _hunyuan_call(converter, tools) if tool_format == "hunyuan" else _json_call(converter, tools)
        rules = converter.format_grammar()
    except _CONVERTER_ERRORS as error:
        raise InvalidParameterError(f"cannot turn a tool's parameters into a grammar: {error}", "tools") from None
    frame = [_root(tool_format, parallel, think), f"call ::= {call}", "ws0 ::= [ \\t\\n]{0,4}", _THINK_BODY]
    return (rules + "\n" + "\n".join(frame) + "\n").replace(_LOOSE_CHAR, _JSON_CHAR)


def _root(tool_format: str, parallel: bool, think: str | None) -> str:
    """The calls in their frame: Hunyuan's inside <tool_calls> (and its <answer>), Hermes' each in
    <tool_call>, plain JSON as one object or a list; reasoning may come first where models write it."""
    more = f"{{0,{MAX_PARALLEL_CALLS - 1}}}"
    if tool_format == "hunyuan":
        calls = f'call ("\\n" call){more}' if parallel else "call"
        body = f'("<answer>" ws0)? "<tool_calls>" {calls} "</tool_calls>" (ws0 "</answer>")?'
    elif tool_format == "hermes":
        one = '"<tool_call>\\n" call "\\n</tool_call>"'
        body = f"{one} (ws0 {one}){more}" if parallel else one
    else:
        body = f'("[" call ("," ws0 call){more} "]" | call)' if parallel else "call"
    if think == "open":
        return f'root ::= think-body "</think>" ws0 {body}'
    if tool_format == "json" or think == "closed":
        return f"root ::= {body}"
    return f'root ::= ("<think>" think-body "</think>" ws0)? {body}'


def _hunyuan_call(converter: Any, tools: Sequence[Mapping[str, Any]]) -> str:
    """Hunyuan-7B's own form, as its template writes calls: a name line, then the arguments in a
    fenced JSON block."""
    alternatives = []
    for i, function in enumerate(_functions(tools)):
        args = _visit(converter, function.get("parameters"), f"args{i}")
        alternatives.append(f'{_literal(function["name"])} "\\n```json\\n" {args} "\\n```"')
    return f'"<tool_call>" ({" | ".join(alternatives)}) "</tool_call>"'


def _json_call(converter: Any, tools: Sequence[Mapping[str, Any]]) -> str:
    """{"name": ..., "arguments": {...}}: the form inside Hermes/Qwen tags and of the plain fallback."""
    alternatives = []
    for i, function in enumerate(_functions(tools)):
        args = _visit(converter, function.get("parameters"), f"args{i}")
        name = _literal(json.dumps(function["name"], ensure_ascii=False))
        alternatives.append(f'"{{" ws0 "\\"name\\":" ws0 {name} "," ws0 "\\"arguments\\":" ws0 {args} ws0 "}}"')
    return "(" + " | ".join(alternatives) + ")"


def _functions(tools: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [tool["function"] for tool in tools]


def _visit(converter: Any, parameters: Any, name: str) -> str:
    schema = parameters if isinstance(parameters, dict) and parameters else {"type": "object"}
    schema = converter.resolve_refs(json.loads(json.dumps(schema)), name)  # a copy: the converter edits it
    return converter.visit(schema, name)


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
