"""Does a GGUF give a chat the same prompt as the checkpoint it was converted from? A fine-tune answers
worse for a prompt one token off the one it was trained on, and the two sides share no code: the
GGUF's prompt comes from the llama.cpp backend's own path (the product's renderer on the template in
the GGUF, then the GGUF's tokenizer), the checkpoint's from transformers' `apply_chat_template`.

A fixed set of conversations (`CONVERSATIONS`, also what the tests render on both backends) goes
through both; the report gives, per conversation, "the same" or the first token where they part.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.chat.format import ChatFormat
from app.errors import ChatTemplateError
from app.modelfiles.gguf import read_gguf
from app.pipeline.files import PipelineError
from app.types import ChatOptions

CONTEXT_TOKENS = 3  # shown on each side of the first difference
_N_CTX = 1024  # the check renders and tokenizes only (no prompt has to fit): a small KV cache will do


@dataclass(frozen=True)
class Conversation:
    name: str
    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...] = ()
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)  # chat_template_kwargs

    def options(self) -> ChatOptions:
        return ChatOptions(tools=self.tools, template_kwargs=dict(self.template_kwargs))

    def request(self) -> Any:
        """The chat request a client would send (a GenerationRequest)."""
        from app.types import GenerationRequest

        return GenerationRequest(messages=[dict(m) for m in self.messages], chat=self.options())


_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "查询城市的天气 (weather of a city)",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}


def _call(call_id: str, city: str) -> dict[str, Any]:
    # OpenAI's shape: the arguments as JSON text. transformers renders that text as it is; the product
    # parses and re-serializes it (chat_format.py), which gives the same text for json.dumps' spacing.
    arguments = json.dumps({"city": city, "unit": "celsius"}, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


# An earlier answer in Hunyuan-7B's output form: the template keeps only its <answer> part.
_REASONED_ANSWER = (
    "<think>\nThe user asks about Beijing.\n</think>\n<answer>\nBeijing is the capital of China.\n</answer>"
)

CONVERSATIONS: tuple[Conversation, ...] = (
    Conversation(
        "system_and_user",
        (
            {"role": "system", "content": "You are Hunyuan, a helpful assistant. 回答要简洁。"},
            {"role": "user", "content": "What is the Great Wall? 请简单介绍。"},
        ),
    ),
    Conversation("no_system", ({"role": "user", "content": "Hello! What is 12 + 30?"},)),
    Conversation(
        "multi_turn",
        (
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Which country is Beijing the capital of?"},
            {"role": "assistant", "content": _REASONED_ANSWER},
            {"role": "user", "content": "And Shanghai?"},
            {"role": "assistant", "content": "Shanghai is a city in China, not a capital."},
            {"role": "user", "content": "Thanks. def f(x): return x * 2"},
        ),
    ),
    Conversation(
        "chinese",
        (
            {"role": "system", "content": "你是一个乐于助人的助手，请用中文回答。"},
            {"role": "user", "content": "你好，今天天气怎么样？"},
            {"role": "assistant", "content": "今天天气很好，我们去公园散步吧。"},
            {"role": "user", "content": "长城是中国古代的军事防御工程吗？"},
        ),
    ),
    Conversation(
        "tool_call",
        (
            {"role": "system", "content": "你是天气助手。"},
            {"role": "user", "content": "北京和上海今天天气怎么样？"},
            {"role": "assistant", "content": "", "tool_calls": [_call("call_1", "北京"), _call("call_2", "上海")]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 20, "condition": "晴"}'},
            {"role": "tool", "tool_call_id": "call_2", "content": '{"temperature": 25, "condition": "多云"}'},
        ),
        tools=(_WEATHER,),
    ),
    Conversation(
        "thinking_off",
        ({"role": "user", "content": "1 + 1 等于几？"},),
        template_kwargs={"enable_thinking": False},
    ),
)


@dataclass(frozen=True)
class ConversationResult:
    name: str
    gguf_tokens: int = 0
    hf_tokens: int = 0
    first_difference: int | None = None  # token position where the prompts part; None: the same
    gguf_context: tuple[tuple[int, str], ...] = ()  # (id, text) from CONTEXT_TOKENS before it
    hf_context: tuple[tuple[int, str], ...] = ()
    context_start: int = 0  # position of the first token of each context
    skipped: str | None = None  # why this conversation was not compared

    @property
    def same(self) -> bool:
        return self.skipped is not None or self.first_difference is None


@dataclass(frozen=True)
class TemplateReport:
    results: tuple[ConversationResult, ...] = ()
    skipped: str | None = None  # why nothing was compared (a side without a chat template)

    @property
    def ok(self) -> bool:
        return all(r.same for r in self.results)

    @property
    def problem(self) -> str | None:
        """One line on the first conversation whose prompts differ."""
        r = next((r for r in self.results if not r.same), None)
        if r is None:
            return None
        at = r.first_difference - r.context_start
        theirs = _token(*r.hf_context[at]) if at < len(r.hf_context) else "the end"
        ours = _token(*r.gguf_context[at]) if at < len(r.gguf_context) else "the end"
        return (
            f"the GGUF's chat prompt differs from the checkpoint's for {r.name!r} at token {r.first_difference}: "
            f"GGUF {ours}, checkpoint {theirs}"
        )


def check_template(gguf_path: str | Path, hf_dir: str | Path) -> TemplateReport:
    """Renders every conversation of CONVERSATIONS from the GGUF (through the llama.cpp backend) and
    from the checkpoint (through transformers) and compares the token ids."""
    from app.pipeline.hf_to_gguf import load_hf_tokenizer

    template = read_gguf(gguf_path).metadata.get("tokenizer.chat_template")
    if not isinstance(template, str):
        return TemplateReport(skipped="the GGUF has no chat template")
    tokenizer = load_hf_tokenizer(Path(hf_dir))
    if not tokenizer.chat_template:
        return TemplateReport(skipped="the checkpoint has no chat template")
    fmt = ChatFormat.from_template(template, {})  # what the template implies: its edits, whether it shows tools
    backend = _llama_backend(Path(gguf_path))
    try:
        return TemplateReport(tuple(_compare(backend, tokenizer, fmt, c) for c in CONVERSATIONS))
    finally:
        backend.unload()


def _llama_backend(gguf_path: Path) -> Any:
    """A llama.cpp backend of its own (not the server's) with the GGUF loaded: its prompts are the
    ones the product serves."""
    from app.services.llamacpp_service import LlamaCppBackend

    backend = LlamaCppBackend()
    backend.load_model(str(gguf_path), n_ctx=_N_CTX, max_waiting=0)
    return backend


def _compare(backend: Any, tokenizer: Any, fmt: ChatFormat, conversation: Conversation) -> ConversationResult:
    name = conversation.name
    if conversation.tools and not fmt.shows_tools:
        # The product describes the tools in a system prompt of its own: no checkpoint prompt to match.
        return ConversationResult(name, skipped="the template does not show tools")
    gguf_ids, gguf_error = _gguf_prompt_ids(backend, conversation)
    hf_ids, hf_error = _hf_prompt_ids_or_error(tokenizer, conversation, fmt)
    if gguf_error and hf_error:
        return ConversationResult(name, skipped=f"the template rejects it on both sides ({hf_error})")
    if gguf_error or hf_error:
        side = "the GGUF" if gguf_error else "the checkpoint"
        raise PipelineError(f"chat template check, {name}: {side} cannot render it: {gguf_error or hf_error}")
    first = first_difference(gguf_ids, hf_ids)
    if first is None:
        return ConversationResult(name, len(gguf_ids), len(hf_ids))
    start = max(0, first - CONTEXT_TOKENS)
    end = first + CONTEXT_TOKENS + 1
    return ConversationResult(
        name,
        len(gguf_ids),
        len(hf_ids),
        first,
        tuple((i, backend.detokenize([i])) for i in gguf_ids[start:end]),
        tuple((i, tokenizer.decode([i])) for i in hf_ids[start:end]),
        start,
    )


def hf_prompt_ids(tokenizer: Any, conversation: Conversation, fmt: ChatFormat) -> list[int]:
    """transformers' own prompt for what the product gives the template (its one deliberate edit of a
    text included: /no_think for Hunyuan-7B with thinking off)."""
    messages, tools, kwargs = fmt.template_inputs(conversation.messages, conversation.options())
    return tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False, **kwargs
    )


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where `a` and `b` differ (the shorter one's end if one is a prefix)."""
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return first


def describe(report: TemplateReport) -> list[str]:
    """One line per conversation, and the tokens around the first difference of one that differs."""
    if report.skipped:
        return [f"chat template check skipped: {report.skipped}"]
    lines = []
    for r in report.results:
        if r.skipped:
            lines.append(f"template {r.name}: skipped, {r.skipped}")
        elif r.first_difference is None:
            lines.append(f"template {r.name}: the same {r.gguf_tokens} token ids")
        else:
            lines.append(
                f"template {r.name}: DIFFERS from token {r.first_difference} "
                f"(GGUF {r.gguf_tokens} tokens, checkpoint {r.hf_tokens})"
            )
            lines.append(f"    GGUF:       {_window(r.gguf_context, r.context_start, r.first_difference)}")
            lines.append(f"    checkpoint: {_window(r.hf_context, r.context_start, r.first_difference)}")
    return lines


def _gguf_prompt_ids(backend: Any, conversation: Conversation) -> tuple[list[int], str | None]:
    try:
        return backend.prompt(conversation.request()).ids, None
    except ChatTemplateError as error:
        return [], str(error)


def _hf_prompt_ids_or_error(
    tokenizer: Any, conversation: Conversation, fmt: ChatFormat
) -> tuple[list[int], str | None]:
    import jinja2

    try:
        return hf_prompt_ids(tokenizer, conversation, fmt), None
    except (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError) as error:  # a template's own error
        return [], f"{type(error).__name__}: {error}"


def _window(context: tuple[tuple[int, str], ...], start: int, first: int) -> str:
    parts = [("▶ " if start + k == first else "") + _token(i, text) for k, (i, text) in enumerate(context)]
    return " ".join(parts) if parts else "(ends)"


def _token(token_id: int, text: str) -> str:
    return f"{token_id} {text!r}"
