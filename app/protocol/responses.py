"""Requests of OpenAI's Responses API (`POST /v1/responses`) and their conversion to a
`GenerationRequest` (the answers and stream events: `responses_answers.py`).

`input` is a string or a list of items: messages (any role; text parts), earlier `function_call`s and
their `function_call_output`s; earlier `reasoning` items are accepted and dropped (not shown to the
model). `instructions` is the system prompt of this turn only (OpenAI's rule: it is not carried over by
`previous_response_id`). Only what the service honours is accepted: an unknown field is a 400, and so
are values asking for what it does not do (built-in tools, `include`, `background`, images), each named
in the error. Accepted and not honoured, because OpenAI's clients send them: `metadata`, `user`,
`prompt_cache_key`, `safety_identifier` (echoed or ignored; the engine reuses a cached prefix by itself),
`text.verbosity`, `reasoning.summary` (no summaries are written: the reasoning is in the item's content),
`stream_options`. Unset sampling fields take the service's defaults, as on `/v1/chat/completions`.
Fields that are not OpenAI's are marked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.chat.grammar import json_grammar, json_schema_grammar
from app.errors import InvalidParameterError
from app.protocol.openai import (
    FunctionName,
    JsonObjectFormat,
    TextFormat,
    max_new_tokens_within,
)
from app.protocol.simple import MAX_GRAMMAR_CHARS, MAX_TEXT_CHARS, NO_DEFAULTS, over_defaults
from app.protocol.speculative import SpeculativeFields, speculation
from app.protocol.strict import Strict
from app.types import ChatOptions, GenerationRequest, SamplingParams

MAX_INPUT_ITEMS = 1024  # messages, calls and results in one request
MAX_PARTS = 256  # content parts of one message
ItemStatus = Literal["in_progress", "completed", "incomplete"]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Id = Annotated[str, Field(max_length=256)]

# -- requests -----------------------------------------------------------------------------------


def _refused_in_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema["not"] = {}  # the schema lists what is served


class Unsupported(BaseModel):
    """Any other kind of item, part or tool (images, files, built-in tools) passes validation so that
    the conversion refuses it by name."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_refused_in_schema)

    type: str = Field(max_length=64)


def _by_type(tags: dict[str, str], untyped: str | None = None) -> Any:
    """A discriminator on `type` (`untyped`: the tag of an object without one); unknown types: "Other"."""

    def tag(value: Any) -> str | None:
        kind = value.get("type", untyped) if isinstance(value, dict) else getattr(value, "type", None)
        if kind is None and isinstance(value, dict):
            return None
        return tags.get(kind, "Other") if isinstance(kind, str) else "Other"

    return Discriminator(tag, custom_error_type="invalid_type", custom_error_message="must be an object with a `type`")


class TextPart(Strict):
    """A message's text: `input_text`, or `output_text` as an earlier answer comes back."""

    type: Literal["input_text", "output_text"]
    text: Text
    annotations: list[dict[str, Any]] | None = Field(None, max_length=0)  # output_text, sent back: none made
    logprobs: list[dict[str, Any]] | None = Field(None, max_length=0)  # output_text, sent back: none made


# Capitalised tags: protocol/errors.py leaves union members out of a field's path.
Part = Annotated[
    Annotated[TextPart, Tag("Text")] | Annotated[Unsupported, Tag("Other")],
    _by_type({"input_text": "Text", "output_text": "Text"}),
]
Content = Text | Annotated[list[Part], Field(max_length=MAX_PARTS)]


class MessageItem(Strict):
    type: Literal["message"] = "message"  # optional, as OpenAI's "easy" input messages leave it out
    role: Literal["user", "system", "developer", "assistant"]  # developer: OpenAI's new name for system
    content: Content
    id: Id | None = None  # an earlier answer's message, sent back
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None  # accepted, unused


class FunctionCallItem(Strict):
    """An earlier call of the assistant's."""

    type: Literal["function_call"]
    call_id: Id
    name: FunctionName
    arguments: Text  # JSON text
    id: Id | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(Strict):
    """A call's result."""

    type: Literal["function_call_output"]
    call_id: Id
    output: Content
    id: Id | None = None
    status: ItemStatus | None = None


class ReasoningItem(BaseModel):
    """An earlier answer's reasoning, sent back as OpenAI's clients do: accepted, not shown to the model."""

    model_config = ConfigDict(extra="allow")

    type: Literal["reasoning"]
    id: Id | None = None
    summary: list[dict[str, Any]] | None = Field(None, max_length=MAX_PARTS)
    content: list[dict[str, Any]] | None = Field(None, max_length=MAX_PARTS)


InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")]
    | Annotated[Unsupported, Tag("Other")],
    _by_type(
        {
            "message": "Message",
            "function_call": "FunctionCall",
            "function_call_output": "FunctionCallOutput",
            "reasoning": "Reasoning",
        },
        untyped="message",
    ),
]


class FunctionTool(Strict):
    type: Literal["function"]
    name: FunctionName
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: bool | None = None  # a grammar enforces the schema where tool_choice forces a call


Tool = Annotated[
    Annotated[FunctionTool, Tag("Function")] | Annotated[Unsupported, Tag("Other")], _by_type({"function": "Function"})
]


class FunctionToolChoice(Strict):
    type: Literal["function"]
    name: FunctionName


ToolChoice = Literal["auto", "none", "required"] | FunctionToolChoice


class JsonSchemaFormat(Strict):
    type: Literal["json_schema"]
    name: str = Field(max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    strict: bool | None = None  # the grammar enforces the schema either way


Format = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class TextConfig(Strict):
    format: Format | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted, not honoured


class ReasoningConfig(Strict):
    # none and minimal: no thinking; the others: thinking on (the model decides how long)
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None  # accepted: no summaries are written
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # OpenAI's old name for summary


class StreamOptions(Strict):
    include_obfuscation: bool | None = None  # accepted: no obfuscation field is sent


Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


class ResponseRequest(Strict, SpeculativeFields):  # speculative.*: llama-server's
    """Ranges are OpenAI's where it documents them."""

    model: str | None = Field(None, max_length=256)  # none: the default model
    input: Text | Annotated[list[InputItem], Field(min_length=1, max_length=MAX_INPUT_ITEMS)]
    instructions: Text | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    reasoning: ReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None  # auto: drop the oldest turns; default: the server's
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool = True  # keep it for previous_response_id and GET /v1/responses/{id}
    previous_response_id: Id | None = None
    metadata: Metadata | None = None  # echoed
    user: str | None = Field(None, max_length=256)  # echoed
    prompt_cache_key: str | None = Field(None, max_length=256)  # accepted: prefixes are reused by themselves
    safety_identifier: str | None = Field(None, max_length=256)  # accepted, unused
    # Asked for what this server does not do: the schema allows only the values served.
    include: list[Annotated[str, Field(max_length=64)]] | None = Field(None, json_schema_extra={"maxItems": 0})
    background: bool | None = Field(None, json_schema_extra={"not": {"const": True}})
    top_logprobs: int | None = Field(None, ge=0, le=20, json_schema_extra={"maximum": 0})
    # Not OpenAI's (llama-server's, as on /v1/chat/completions): a GBNF grammar the answer must match;
    # streamed, the timings so far on each delta's last event, and events while the prompt is read.
    grammar: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS)
    timings_per_token: bool = False
    return_progress: bool = False


# -- requests to internal types -----------------------------------------------------------------


class Turn(NamedTuple):
    """A request converted: what to generate, and the conversation so far without this turn's
    instructions (what is stored for a later `previous_response_id`)."""

    request: GenerationRequest
    conversation: list[dict[str, Any]]


def to_generation_request(
    body: ResponseRequest,
    history: Sequence[dict[str, Any]],
    max_tokens_limit: int,
    *,
    think: bool | None = None,
    reasoning_format: str = "auto",
    truncate: bool = False,
    defaults: Mapping[str, Any] = NO_DEFAULTS,
) -> Turn:
    """`history`: the stored conversation `previous_response_id` names (else empty). `think`,
    `reasoning_format`, `truncate`: the server's defaults for what the request leaves unset."""
    _refuse_unserved(body)
    conversation = to_chat_messages(body.input, history)
    if not any(message["role"] != "system" for message in conversation):
        raise InvalidParameterError("input holds no message for the model to answer", "input")
    messages = [{"role": "system", "content": body.instructions}, *conversation] if body.instructions else conversation
    chat = to_chat_options(body, think, reasoning_format, truncate)
    params = _sampling_params(body, max_tokens_limit, defaults)
    return Turn(GenerationRequest(params, messages=messages, chat=chat), conversation)


def to_chat_options(body: ResponseRequest, think: bool | None, reasoning_format: str, truncate: bool) -> ChatOptions:
    tools = tuple(_tool(i, tool) for i, tool in enumerate(body.tools or ()))
    choice = body.tool_choice.name if isinstance(body.tool_choice, FunctionToolChoice) else body.tool_choice
    if choice is not None and choice != "none" and not tools:
        raise InvalidParameterError("tool_choice needs tools", "tool_choice")
    effort = body.reasoning.effort if body.reasoning else None
    return ChatOptions(
        tools=tools,
        tool_choice=choice or "auto",
        parallel_tool_calls=body.parallel_tool_calls is not False,
        think=think if effort is None else effort not in ("none", "minimal"),
        reasoning_format="none" if reasoning_format == "none" else "auto",
        truncate=truncate if body.truncation is None else body.truncation == "auto",
    )


def to_chat_messages(items: str | Sequence[Any], history: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """`history` (chat messages) and then `items` in OpenAI's chat message shape, which the chat path
    takes. A string is one user message. Calls right after an assistant's message (or after each
    other) join its `tool_calls`; each result is a "tool" message with its `tool_call_id` (and the
    function's name, known from the call, in `items` or `history`)."""
    converted = list(history)
    if isinstance(items, str):
        return [*converted, {"role": "user", "content": items}]
    calls = [call for message in converted for call in message.get("tool_calls") or ()]
    names = {call["id"]: call["function"]["name"] for call in calls}  # call_id -> function name
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            converted.append({"role": role, "content": _text(f"{where}.content", item.content)})
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            if converted and converted[-1]["role"] == "assistant":  # (a new dict: history's are not changed)
                converted[-1] = {**converted[-1], "tool_calls": [*(converted[-1].get("tool_calls") or ()), call]}
            else:
                converted.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            result = {"role": "tool", "tool_call_id": item.call_id, "content": _text(f"{where}.output", item.output)}
            converted.append(result | ({"name": names[item.call_id]} if item.call_id in names else {}))
        elif isinstance(item, Unsupported):
            raise InvalidParameterError(
                f"{where} is an item of type {item.type!r}, which this server does not take: input takes messages, "
                "function_call, function_call_output and reasoning items",
                where,
            )
    return converted  # reasoning items are dropped


def format_grammar(text: TextConfig | None) -> str | None:
    kind = text.format if text else None
    if kind is None or isinstance(kind, TextFormat):
        return None
    if isinstance(kind, JsonObjectFormat):
        return json_grammar()
    return json_schema_grammar(kind.schema_, "text.format.schema")


def _refuse_unserved(body: ResponseRequest) -> None:
    if body.include:
        raise InvalidParameterError(
            f"include asks for {', '.join(map(repr, body.include))}, which this server does not produce "
            "(no log-probabilities, encrypted reasoning or tool results)",
            "include",
        )
    if body.background:
        raise InvalidParameterError(
            "background: true is not supported: a response is made within its request", "background"
        )
    if body.top_logprobs:
        raise InvalidParameterError("top_logprobs is not supported on /v1/responses", "top_logprobs")


def _sampling_params(body: ResponseRequest, max_tokens_limit: int, defaults: Mapping[str, Any]) -> SamplingParams:
    grammar = format_grammar(body.text)
    if body.grammar is not None:
        if grammar is not None:
            raise InvalidParameterError("give either grammar or text.format", "grammar")
        grammar = body.grammar
    given = {"temperature": body.temperature, "top_p": body.top_p, "speculative": speculation(body, defaults)}
    return SamplingParams(
        max_new_tokens=max_new_tokens_within(
            body.max_output_tokens, "max_output_tokens", max_tokens_limit, defaults.get("max_new_tokens")
        ),
        grammar=grammar,
        return_progress=body.return_progress and body.stream,
        **over_defaults(given, defaults),
    )


def _tool(i: int, tool: Any) -> dict[str, Any]:
    """OpenAI's chat shape, which the chat path takes."""
    if isinstance(tool, Unsupported):
        raise InvalidParameterError(
            f"tools[{i}] is a {tool.type!r} tool: built-in tools are not supported, only function tools",
            f"tools[{i}]",
        )
    function = tool.model_dump(exclude_none=True, exclude={"type"})
    return {"type": "function", "function": function}


def _text(where: str, content: str | list[Any]) -> str:
    """A list of text parts becomes their texts, one per line, as on /v1/chat/completions."""
    if isinstance(content, str):
        return content
    for j, part in enumerate(content):
        if isinstance(part, Unsupported):
            raise InvalidParameterError(
                f"{where}[{j}] is a {part.type!r} part; only text parts (input_text, output_text) are supported "
                "(image input is not supported: the served models read text)",
                where,
            )
    return "\n".join(part.text for part in content)
