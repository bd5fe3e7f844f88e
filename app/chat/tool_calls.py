"""Tool calls parsed out of a model's content, whole or as it streams.

Formats: "hunyuan" (Hunyuan-7B-Instruct's `<tool_calls>` block, fenced per call or one JSON list),
"hermes" (Qwen2.5/Qwen3/Hermes `<tool_call>{json}</tool_call>` blocks) and "json" (the whole output is
a JSON call, a list of calls or `{"tool_calls": [...]}`, for templates that have no tool format).
A block that does not parse, or names a tool that was not offered, stays content exactly as written.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from app.chat.reasoning import tag_prefix_len

TOOL_FORMATS = ("hunyuan", "hermes", "json")

# The tags that delimit one buffered block, per streaming format.
_BLOCK_TAGS = {"hunyuan": ("<tool_calls>", "</tool_calls>"), "hermes": ("<tool_call>", "</tool_call>")}
_HUNYUAN_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    id: str  # "call_" + 24 hex chars, made when parsed
    name: str
    arguments: str  # JSON text of an object


def _new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


_INVALID = object()  # what `_load_json` gives for text that is not JSON; JSON's null is None


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return _INVALID


def _call_from_object(obj: Any, tool_names: Collection[str]) -> ToolCall | None:
    """One `{"name", "arguments"|"parameters"}` object (or OpenAI's `{"function": {...}}`) as a call."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or name not in tool_names:
        return None
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    if args is None:
        args = {}
    if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI sends them
        args = _load_json(args)
    if not isinstance(args, dict):
        return None
    return ToolCall(id=_new_call_id(), name=name, arguments=json.dumps(args, ensure_ascii=False))


def _calls_from_json(value: Any, tool_names: Collection[str]) -> list[ToolCall] | None:
    """All calls of a parsed JSON value, or None if any of them is invalid (the block stays content)."""
    if isinstance(value, dict) and "tool_calls" in value:
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    calls: list[ToolCall] = []
    for item in items:
        call = _call_from_object(item, tool_names)
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _hunyuan_call(body: str, tool_names: Collection[str]) -> ToolCall | None:
    """`name\\n```json\\n{args}\\n```` (Hunyuan's template), or a JSON call object."""
    body = body.strip()
    if body.startswith("{"):
        return _call_from_object(_load_json(body), tool_names)
    name, _, args_text = body.partition("\n")
    args_text = args_text.strip()
    fenced = _FENCE.match(args_text)
    if fenced:
        args_text = fenced.group(1)
    args = _load_json(args_text) if args_text else {}
    return _call_from_object({"name": name.strip(), "arguments": args}, tool_names)


def _parse_hunyuan(inner: str, tool_names: Collection[str]) -> list[ToolCall] | None:
    inner = inner.strip()
    if inner.startswith(("[", "{")):
        return _calls_from_json(_load_json(inner), tool_names)
    calls: list[ToolCall] = []
    end = 0
    for match in _HUNYUAN_CALL.finditer(inner):
        call = _hunyuan_call(match.group(1), tool_names)
        if call is None or inner[end : match.start()].strip():
            return None  # an invalid call, or stray text between calls: not a clean block
        calls.append(call)
        end = match.end()
    return calls if calls and not inner[end:].strip() else None


def _parse_block(fmt: str, inner: str, tool_names: Collection[str]) -> list[ToolCall] | None:
    """Calls of the text between one block's tags."""
    if fmt == "hunyuan":
        return _parse_hunyuan(inner, tool_names)
    return _calls_from_json(_load_json(inner.strip()), tool_names)


class ToolCallStream:
    """Feed it the content pieces of one generation; it returns content that is final and finished calls.

    In "hunyuan" and "hermes" only a possible start of the opening tag is held back in plain text; a block
    is buffered from its opening tag to its closing tag. In "json" the whole output is buffered when it
    starts with `{` or `[`, since only the end shows whether it is one JSON value.
    """

    def __init__(self, fmt: str, tool_names: Collection[str]) -> None:
        if fmt not in TOOL_FORMATS:
            raise ValueError(f"unknown tool call format {fmt!r}, expected one of {TOOL_FORMATS}")
        self._fmt = fmt
        self._tool_names = frozenset(tool_names)
        self._held = ""  # plain text that may be the start of the opening tag (or, for json, leading space)
        self._block: list[str] | None = None  # pieces of the block being buffered, None outside one
        self._tail = ""  # the block's last characters, to find a closing tag split over pieces
        self._after_calls = False  # whitespace right after parsed calls is dropped, not shown as content
        self._json_decided = False  # json: the first non-space character came, so buffer-or-pass is fixed

    def feed(self, content: str) -> tuple[str, list[ToolCall]]:
        if self._fmt == "json":
            return self._feed_json(content), []
        out: list[str] = []
        calls: list[ToolCall] = []
        rest: str | None = content
        while rest is not None:
            rest = self._feed_block(rest, out, calls) if self._block is not None else self._feed_text(rest, out)
        return "".join(out), calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        if self._fmt == "json":
            return self._finish_json()
        held, self._held = self._held, ""
        if self._block is None:
            return held, []
        # The stream ended inside a block (no closing tag): parse what came, else it is content.
        text, self._block = "".join(self._block), None
        calls = _parse_block(self._fmt, text[len(_BLOCK_TAGS[self._fmt][0]) :], self._tool_names)
        return ("", calls) if calls else (text, [])

    def _feed_text(self, text: str, out: list[str]) -> str | None:
        open_tag = _BLOCK_TAGS[self._fmt][0]
        text = self._held + text
        self._held = ""
        if self._after_calls:
            text = text.lstrip()
            if not text:
                return None
            self._after_calls = False
        at = text.find(open_tag)
        if at >= 0:
            out.append(text[:at])
            self._block, self._tail = [], ""
            return text[at:]
        keep = tag_prefix_len(text, open_tag)
        out.append(text[: len(text) - keep])
        self._held = text[len(text) - keep :]
        return None

    def _feed_block(self, text: str, out: list[str], calls: list[ToolCall]) -> str | None:
        """Buffers `text` into the open block; at its closing tag parses it and returns what follows."""
        assert self._block is not None
        open_tag, close_tag = _BLOCK_TAGS[self._fmt]
        window = self._tail + text
        at = window.find(close_tag)
        if at < 0:
            self._block.append(text)
            self._tail = window[-(len(close_tag) - 1) :]
            return None
        end = at + len(close_tag) - len(self._tail)  # where the block ends within `text`
        block = "".join(self._block) + text[:end]
        self._block, self._tail = None, ""
        parsed = _parse_block(self._fmt, block[len(open_tag) : -len(close_tag)], self._tool_names)
        if parsed is None:
            out.append(block)  # not a call: content as written, and not scanned again for an opening tag
        else:
            calls.extend(parsed)
            self._after_calls = True
        return text[end:]

    def _feed_json(self, content: str) -> str:
        if self._json_decided:
            if self._block is None:
                return content
            self._block.append(content)
            return ""
        text = self._held + content
        stripped = text.lstrip()
        if not stripped:
            self._held = text  # only whitespace so far: not yet known whether it is JSON
            return ""
        self._held, self._json_decided = "", True
        if stripped[0] in "{[":
            self._block = [text]
            return ""
        return text

    def _finish_json(self) -> tuple[str, list[ToolCall]]:
        if self._block is None:
            held, self._held = self._held, ""
            return held, []
        text, self._block = "".join(self._block), None
        calls = _calls_from_json(_load_json(text.strip()), self._tool_names)
        return ("", calls) if calls else (text, [])


def parse_tool_calls(text: str, fmt: str, tool_names: Collection[str]) -> tuple[str, list[ToolCall]]:
    """(content left after removing the calls, the calls) of a whole output."""
    stream = ToolCallStream(fmt, tool_names)
    content, calls = stream.feed(text)
    tail_content, tail_calls = stream.finish()
    return content + tail_content, calls + tail_calls
