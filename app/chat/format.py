"""What a model's chat template implies beyond the text it renders: the thinking switch, how tools
are shown and how the model writes its calls, and where its output begins (inside a reasoning block
or not). Both backends build one `ChatFormat` from the model's own template and render through it.

Hunyuan-7B-Instruct's template (`<|extra_4|>` after the system prompt, `<|extra_0|>` after each user
turn) appends `<think>\\n\\n</think>\\n` for `enable_thinking=False`; its model card and fine-tuning
data also start the user turn with `/no_think` in that mode, so both are done, as the model was
trained. Its calls are `<tool_calls><tool_call>NAME\\n```json\\nARGS\\n```</tool_call>...</tool_calls>`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.chat.template import render, uses_variable
from app.errors import ChatTemplateError
from app.types import ChatOptions, RenderedChat

NO_THINK = "/no_think"
_THINK_SWITCHES = ("/no_think", "/think")
RESERVED_TEMPLATE_VARIABLES = {"messages", "tools", "add_generation_prompt"}  # given by the request itself
_HUNYUAN_7B_MARKERS = ("<|extra_0|>", "<|extra_4|>")  # llama.cpp's own detection of this template family
_GENERIC_TOOL_PROMPT = (
    "You can call these functions (JSON schemas):\n{tools}\n\n"
    'To call one, answer with only a JSON object: {{"name": "<function name>", "arguments": {{<arguments>}}}}; '
    "to call several, a JSON list of such objects."
)

# Renders (messages, add_generation_prompt) by one of llama.cpp's built-in templates: roles and texts
# only, no variables (app.services.chat_templates makes it; this layer never imports llama.cpp).
BuiltinRenderer = Callable[[list[dict[str, Any]], bool], str]


@dataclass(frozen=True)
class ChatFormat:
    template: str
    special_tokens: Mapping[str, str]  # bos_token, eos_token... as the template sees them
    tool_format: Literal["hunyuan", "hermes", "json"]
    shows_tools: bool  # the template renders `tools` itself
    hunyuan_7b: bool
    builtin: BuiltinRenderer | None = None  # set: `template` names a llama.cpp built-in template that renders instead

    @classmethod
    def from_builtin(cls, name: str, renderer: BuiltinRenderer) -> ChatFormat:
        """A template that only writes roles and texts: tools go in the system prompt, as for a Jinja
        template that ignores them; template variables (chat_template_kwargs) have nothing to set."""
        return cls(name, {}, "json", False, False, renderer)

    @classmethod
    def from_template(cls, template: str, special_tokens: Mapping[str, str]) -> ChatFormat:
        hunyuan = all(marker in template for marker in _HUNYUAN_7B_MARKERS)
        shows_tools = uses_variable(template, "tools")
        fmt = "hunyuan" if "<tool_calls>" in template else "hermes" if "<tool_call>" in template else "json"
        return cls(template, dict(special_tokens), fmt if shows_tools else "json", shows_tools, hunyuan)

    def render(self, messages: Sequence[Mapping[str, Any]], options: ChatOptions) -> RenderedChat:
        continues, asked = options.continues(messages), options.add_generation_prompt
        add_generation_prompt = not continues if asked is None else asked
        shown, tools, kwargs = self.template_inputs(messages, options)
        if self.builtin is not None:
            text = self.builtin(shown, add_generation_prompt)
        else:
            text = render(
                self.template,
                shown,
                special_tokens=self.special_tokens,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                **kwargs,
            )
        if continues:
            text = _cut_after_last_message(text, str(messages[-1].get("content") or ""))
        return RenderedChat(text, _think_at_end(text))

    def template_inputs(
        self, messages: Sequence[Mapping[str, Any]], options: ChatOptions
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, dict[str, Any]]:
        """(messages, tools, variables) as the template gets them: what transformers' apply_chat_template
        would be given for the same prompt."""
        messages = [_template_message(m) for m in messages]
        kwargs = dict(options.template_kwargs)
        # Unset, the template is told thinking is on, as llama-server tells it: templates that test
        # `not enable_thinking` would otherwise close the reasoning block the model was made to open.
        kwargs["enable_thinking"] = options.enable_thinking is not False
        if self.hunyuan_7b and options.enable_thinking is False:
            messages = _prefix_last_user(messages, NO_THINK + " ")
        tools = [dict(t) for t in options.tools] if options.calls_tools else None
        if not self.shows_tools:  # calls become text the template can show; the tools a system note
            messages = [_calls_as_text(m) for m in messages]
            if tools:
                messages, tools = _with_tool_prompt(messages, tools), None
        return messages, tools, kwargs

    def tool_names(self, options: ChatOptions) -> list[str]:
        return [tool_name(t) for t in options.tools] if options.calls_tools else []


def drop_oldest_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """`messages` without the oldest turn (a user message and the answers and tool results after
    it); the system prompt and the last turn always stay. None when nothing can go."""
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    later_user = next((i for i in range(first + 1, len(messages)) if messages[i]["role"] == "user"), None)
    return None if later_user is None else messages[:first] + messages[later_user:]


def tool_name(tool: Mapping[str, Any]) -> str:
    return str(tool.get("function", {}).get("name", ""))


def _template_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's shape to Hugging Face's: a call's arguments as an object, not JSON text; a caller's
    empty content as text."""
    message = dict(message)
    if message.get("tool_calls"):
        message["tool_calls"] = [_call_with_object_arguments(call) for call in message["tool_calls"]]
        if message.get("content") is None:
            message["content"] = ""  # OpenAI sends null; templates (Hunyuan-7B's) concatenate it
    return message


def _call_with_object_arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function", {}))
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):  # if not JSON, the template gets the text as it came
            function["arguments"] = json.loads(arguments)
    return {**call, "function": function}


def _prefix_last_user(messages: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m["role"] == "user":
            content = m.get("content") or ""
            if not content.lstrip().startswith(_THINK_SWITCHES):  # the user's own switch wins
                messages = [*messages[:i], {**m, "content": prefix + content}, *messages[i + 1 :]]
            break
    return messages


def _with_tool_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For a template that ignores `tools`: describe them in the system prompt (as llama-server's
    generic format does)."""
    described = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    note = _GENERIC_TOOL_PROMPT.format(tools=described)
    out = list(messages)
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{note}"}
    else:
        out.insert(0, {"role": "system", "content": note})
    return out


def _calls_as_text(message: dict[str, Any]) -> dict[str, Any]:
    """An earlier call written as the JSON the model is asked to answer with."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    written = [{"name": c["function"]["name"], "arguments": c["function"].get("arguments", {})} for c in calls]
    text = json.dumps(written[0] if len(written) == 1 else written, ensure_ascii=False)
    rest = {k: v for k, v in message.items() if k != "tool_calls"}
    return {**rest, "content": ((message.get("content") or "") + text)}


def _cut_after_last_message(text: str, final: str) -> str:
    """The prompt up to the end of the last message's text: what the template writes after it (its
    end-of-turn token) goes, so the model writes on. transformers' continue_final_message does this."""
    if not final.strip() or final.strip() not in text:
        raise ChatTemplateError("the chat template does not show the last message, so it cannot be continued")
    at = text.rindex(final.strip())
    if text[at : at + len(final.lstrip())] == final.lstrip():  # the template kept the text's spacing
        return text[: at + len(final.lstrip())]
    return text[: at + len(final.strip())]


def _think_at_end(prompt: str) -> Literal["open", "closed"] | None:
    tail = prompt.rstrip()
    return "open" if tail.endswith("<think>") else "closed" if tail.endswith("</think>") else None
