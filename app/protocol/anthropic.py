"""Requests of Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`) and
their conversion to a `GenerationRequest` (the answers, stream events and errors:
`anthropic_answers.py`).

Only what the service honours is accepted: an unknown field is a 400. Accepted on purpose and ignored,
because Anthropic's clients send them: `cache_control` (on the request, system and message blocks and
tools: the engine reuses a cached prompt prefix by itself), `metadata`, a tool's `type: "custom"` and
`strict`, and earlier answers' `redacted_thinking` blocks. An earlier answer's `thinking` becomes its
`reasoning_content`, which templates that show reasoning (Qwen3's) render, as llama-server does. Other
kinds of block (images, documents) are refused by name. Unset sampling fields take the service's
defaults, as on `/v1`. Fields that are not Anthropic's are marked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.errors import InvalidParameterError
from app.protocol.openai import max_new_tokens_within
from app.protocol.simple import MAX_GRAMMAR_CHARS, MAX_MESSAGES, MAX_TEXT_CHARS, MAX_TOP_K, NO_DEFAULTS, over_defaults
from app.protocol.speculative import SpeculativeFields, speculation
from app.protocol.strict import Strict
from app.types import MAX_STOP_SEQUENCES, ChatOptions, GenerationRequest, SamplingParams

MAX_BLOCKS = 256  # content blocks per message

# -- requests -----------------------------------------------------------------------------------


class CacheControl(Strict):
    """Accepted, ignored: the engine reuses the KV cache of a prompt's known prefix by itself."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class TextBlockParam(Strict):
    type: Literal["text"]
    text: Text
    cache_control: CacheControl | None = None


class ToolUseBlockParam(Strict):
    """An earlier call of the assistant's."""

    type: Literal["tool_use"]
    id: str = Field(max_length=256)
    name: ToolName
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ThinkingBlockParam(Strict):
    """An earlier answer's reasoning, sent back as the SDK does (its `reasoning_content`). The signature
    is optional: a conversation begun on another server has none."""

    type: Literal["thinking"]
    thinking: Text
    signature: str | None = Field(None, max_length=MAX_TEXT_CHARS)


class RedactedThinkingBlockParam(Strict):
    type: Literal["redacted_thinking"]  # accepted and dropped: the reasoning is encrypted
    data: str = Field(max_length=MAX_TEXT_CHARS)


def _refused_in_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema["not"] = {}  # the schema lists the blocks that are served


class UnsupportedBlockParam(BaseModel):
    """Any other block (image, document, a block of the other role) passes validation so that the
    conversion refuses it by name."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_refused_in_schema)

    type: str = Field(max_length=64)


def _block_tag(tags: dict[str, str]) -> Any:
    def tag(value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return tags.get(kind, "Other") if isinstance(kind, str) else "Other"

    return Discriminator(tag)


# Capitalised tags: protocol/errors.py leaves union members out of a field's path.
ResultBlock = Annotated[
    Annotated[TextBlockParam, Tag("Text")] | Annotated[UnsupportedBlockParam, Tag("Other")],
    _block_tag({"text": "Text"}),
]


class ToolResultBlockParam(Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(max_length=256)
    content: Text | Annotated[list[ResultBlock], Field(max_length=MAX_BLOCKS)] = ""
    is_error: bool = False  # the model reads "Error: " before the result
    cache_control: CacheControl | None = None


UserBlock = Annotated[
    Annotated[TextBlockParam, Tag("Text")]
    | Annotated[ToolResultBlockParam, Tag("ToolResult")]
    | Annotated[UnsupportedBlockParam, Tag("Other")],
    _block_tag({"text": "Text", "tool_result": "ToolResult"}),
]
AssistantBlock = Annotated[
    Annotated[TextBlockParam, Tag("Text")]
    | Annotated[ToolUseBlockParam, Tag("ToolUse")]
    | Annotated[ThinkingBlockParam, Tag("Thinking")]
    | Annotated[RedactedThinkingBlockParam, Tag("RedactedThinking")]
    | Annotated[UnsupportedBlockParam, Tag("Other")],
    _block_tag(
        {"text": "Text", "tool_use": "ToolUse", "thinking": "Thinking", "redacted_thinking": "RedactedThinking"}
    ),
]


class UserMessageParam(Strict):
    role: Literal["user"]
    content: Text | Annotated[list[UserBlock], Field(max_length=MAX_BLOCKS)]


class AssistantMessageParam(Strict):
    role: Literal["assistant"]
    content: Text | Annotated[list[AssistantBlock], Field(max_length=MAX_BLOCKS)]


def _role_tag(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return {"user": "User", "assistant": "Assistant"}.get(role) if isinstance(role, str) else None


MessageParam = Annotated[
    Annotated[UserMessageParam, Tag("User")] | Annotated[AssistantMessageParam, Tag("Assistant")],
    Discriminator(
        _role_tag,
        custom_error_type="invalid_role",
        custom_error_message="role must be user or assistant (the system prompt goes in `system`)",
    ),
]


class InputSchema(BaseModel):
    """A tool's JSON schema: an object; its other keywords pass on to the prompt and the tool grammar."""

    model_config = ConfigDict(extra="allow")

    type: Literal["object"]
    properties: dict[str, Any] | None = None
    required: list[str] | None = None


class ToolParam(Strict):
    name: ToolName
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    input_schema: InputSchema
    type: Literal["custom"] | None = None
    strict: bool | None = None  # a grammar enforces the schema where tool_choice forces a call
    cache_control: CacheControl | None = None


class ToolChoiceAuto(Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(Strict):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(Strict):
    type: Literal["tool"]
    name: ToolName
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(Strict):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class ThinkingEnabled(Strict):
    type: Literal["enabled"]
    # Below max_tokens, as Anthropic's; its floor of 1024 is not kept (llama-server does not either: a
    # small model's reasoning can be short). The reasoning is not cut at the budget: reasoning and
    # answer together stop at max_tokens.
    budget_tokens: int = Field(ge=1)


class ThinkingDisabled(Strict):
    type: Literal["disabled"]


class ThinkingAdaptive(Strict):
    type: Literal["adaptive"]  # the server's default, else the model's own


Thinking = Annotated[ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive, Field(discriminator="type")]


class MessageMetadata(Strict):
    user_id: str | None = Field(None, max_length=256)  # accepted, unused


class CountTokensRequest(Strict):
    """What `/v1/messages/count_tokens` takes: the conversation, without generation parameters."""

    model: str | None = Field(None, max_length=256)  # none: the default model
    messages: list[MessageParam] = Field(max_length=MAX_MESSAGES)  # none: the generation prompt alone, as llama-server
    system: Text | Annotated[list[TextBlockParam], Field(max_length=MAX_BLOCKS)] | None = None
    tools: list[ToolParam] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    cache_control: CacheControl | None = None


class MessagesRequest(CountTokensRequest, SpeculativeFields):  # speculative.*: llama-server's
    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    temperature: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)
    metadata: MessageMetadata | None = None
    # Not Anthropic's (llama-server's): a GBNF grammar the answer must match.
    grammar: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS)


class CountTokensResponse(BaseModel):
    input_tokens: int


# -- requests to internal types -----------------------------------------------------------------


def to_generation_request(
    body: MessagesRequest,
    max_tokens_limit: int,
    *,
    think: bool | None = None,
    reasoning_format: str = "auto",
    truncate: bool = False,
    defaults: Mapping[str, Any] = NO_DEFAULTS,
) -> GenerationRequest:
    """`think`, `reasoning_format`, `truncate` and the sampling `defaults`: the server's defaults for
    what the request leaves unset (max_tokens is required here)."""
    max_new_tokens = max_new_tokens_within(body.max_tokens, "max_tokens", max_tokens_limit)
    if isinstance(body.thinking, ThinkingEnabled) and body.thinking.budget_tokens >= body.max_tokens:
        raise InvalidParameterError("thinking.budget_tokens must be less than max_tokens", "thinking.budget_tokens")
    given = {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k}
    given["speculative"] = speculation(body, defaults)
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        stop=tuple(body.stop_sequences or ()),
        grammar=body.grammar,
        **over_defaults(given, defaults),
    )
    return GenerationRequest(
        params, messages=to_chat_messages(body), chat=to_chat_options(body, think, reasoning_format, truncate)
    )


def to_prompt_request(
    body: CountTokensRequest,
    *,
    think: bool | None = None,
    reasoning_format: str = "auto",
    truncate: bool = False,
    defaults: Mapping[str, Any] = NO_DEFAULTS,  # nothing is sampled: taken for the same keywords as the others
) -> GenerationRequest:
    """The conversation alone, for counting its prompt's tokens."""
    return GenerationRequest(
        messages=to_chat_messages(body), chat=to_chat_options(body, think, reasoning_format, truncate)
    )


def to_chat_options(body: CountTokensRequest, think: bool | None, reasoning_format: str, truncate: bool) -> ChatOptions:
    tools = tuple(_tool(tool) for tool in body.tools or ())
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceAny | ToolChoiceTool) and not tools:
        raise InvalidParameterError("tool_choice needs tools", "tool_choice")
    if isinstance(body.thinking, ThinkingEnabled | ThinkingDisabled):
        think = isinstance(body.thinking, ThinkingEnabled)
    return ChatOptions(
        tools=tools,
        tool_choice=_tool_choice(choice),
        parallel_tool_calls=not getattr(choice, "disable_parallel_tool_use", False),
        think=think,
        reasoning_format="none" if reasoning_format == "none" else "auto",
        truncate=truncate,
    )


def _tool_choice(choice: ToolChoice | None) -> str:
    if choice is None:
        return "auto"
    if isinstance(choice, ToolChoiceTool):
        return choice.name
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _tool(tool: ToolParam) -> dict[str, Any]:
    """OpenAI's shape, which the chat path takes."""
    function = {"name": tool.name, "parameters": tool.input_schema.model_dump(exclude_unset=True)}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def to_chat_messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    """OpenAI's message shape, which the chat path takes: the system prompt first; an assistant's
    tool_use blocks become its `tool_calls` (arguments as JSON text); each tool_result block a "tool"
    message with its `tool_call_id` (and the function's name, known from the call)."""
    converted: list[dict[str, Any]] = []
    if body.system is not None:
        system = body.system if isinstance(body.system, str) else "\n".join(b.text for b in body.system)
        converted.append({"role": "system", "content": system})
    names: dict[str, str] = {}  # tool_use id -> function name
    for i, message in enumerate(body.messages):
        if isinstance(message.content, str):
            converted.append({"role": message.role, "content": message.content})
        elif isinstance(message, AssistantMessageParam):
            converted.append(_assistant_message(i, message.content, names))
        else:
            converted += _user_messages(i, message.content, names)
    return converted


def _assistant_message(i: int, blocks: list[Any], names: dict[str, str]) -> dict[str, Any]:
    texts, calls, reasoning = [], [], []
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlockParam):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlockParam):
            reasoning.append(block.thinking)
        elif isinstance(block, ToolUseBlockParam):
            names[block.id] = block.name
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        elif isinstance(block, UnsupportedBlockParam):
            raise _refused(f"messages[{i}].content[{j}]", block, "an assistant message takes text and tool_use blocks")
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts or not calls else None}
    if reasoning:
        message["reasoning_content"] = "\n".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return message


def _user_messages(i: int, blocks: list[Any], names: dict[str, str]) -> list[dict[str, Any]]:
    """Text blocks in a row make one user message; each tool result a "tool" message, in order."""
    converted: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlockParam):
            texts.append(block.text)
            continue
        if isinstance(block, UnsupportedBlockParam):
            raise _refused(f"messages[{i}].content[{j}]", block, "a user message takes text and tool_result blocks")
        if texts:
            converted.append({"role": "user", "content": "\n".join(texts)})
            texts = []
        content = _result_text(f"messages[{i}].content[{j}]", block.content)
        tool: dict[str, Any] = {"role": "tool", "tool_call_id": block.tool_use_id}
        tool["content"] = f"Error: {content}" if block.is_error else content
        if block.tool_use_id in names:
            tool["name"] = names[block.tool_use_id]
        converted.append(tool)
    if texts or not converted:
        converted.append({"role": "user", "content": "\n".join(texts)})
    return converted


def _result_text(where: str, content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    for k, block in enumerate(content):
        if isinstance(block, UnsupportedBlockParam):
            raise _refused(f"{where}.content[{k}]", block, "a tool result takes text blocks")
    return "\n".join(block.text for block in content)


def _refused(where: str, block: UnsupportedBlockParam, takes: str) -> InvalidParameterError:
    return InvalidParameterError(
        f"{where} is a block of type {block.type!r}, which this server does not take: {takes} "
        "(image input is not supported, nor documents: the served models read text)",
        where,
    )
