"""The chat template a backend renders with when the settings replace the model's own: llama-server's
`--chat-template`, `--chat-template-file` and `--no-jinja`.

A value that names one of llama.cpp's built-in templates (`llama_chat_builtin_templates`: chatml,
llama3, gemma, phi3...) is rendered by llama.cpp's own `llama_chat_apply_template`, as llama-server
renders it without Jinja: roles and texts only, so tools are described in the system prompt (as for a
Jinja template that ignores them) and template variables have nothing to set. Any other value is a
Jinja template, rendered as a model's own is (`chat/template.py`). With `jinja=False` every chat goes
through llama.cpp's built-in templates: the one named, or the one llama.cpp recognises in the
template's text (its `llm_chat_detect_template`).

llama.cpp is imported lazily: the PyTorch backend may use a built-in template too, where
llama-cpp-python is installed.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from functools import cache, partial
from pathlib import Path
from typing import Any

from app.chat.format import ChatFormat
from app.chat.template import render
from app.errors import ChatTemplateError, InvalidParameterError

_TRIAL = [{"role": "user", "content": "test"}]  # llama-server's check of a template given to it


@cache
def builtin_template_names() -> tuple[str, ...]:
    """The names llama.cpp's `llama_chat_apply_template` knows (empty without llama-cpp-python)."""
    try:
        import llama_cpp
    except (ImportError, OSError):
        return ()
    n = llama_cpp.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * n)()
    llama_cpp.llama_chat_builtin_templates(names, n)
    return tuple(name.decode() for name in names)


def apply_builtin_template(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """`messages` rendered by llama.cpp's built-in template that `template` names (or that llama.cpp
    recognises in a template's text): each message's role and text, nothing else."""
    import llama_cpp

    texts = [(str(m.get("role", "")).encode(), str(m.get("content") or "").encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(texts))()
    for i, (role, content) in enumerate(texts):  # `texts` keeps the bytes alive for the call
        chat[i].role, chat[i].content = role, content
    size, name = 2 * sum(len(role) + len(content) for role, content in texts) + 256, template.encode()
    while True:
        buffer = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_chat_apply_template(name, chat, len(texts), add_generation_prompt, buffer, size)
        if n < 0:
            raise ChatTemplateError(f"llama.cpp has no built-in chat template {_shown(template)}")
        if n <= size:
            return buffer.raw[:n].decode("utf-8", errors="replace")
        size = n  # llama.cpp said how long the text is


def chat_format(template: str, special_tokens: Mapping[str, str], jinja: bool = True) -> ChatFormat:
    """The ChatFormat for `template`: a built-in template's name, or a Jinja template's text; with
    `jinja=False`, the built-in template that llama.cpp finds in any of them. ChatTemplateError when
    it is none of these or does not render a one-message chat."""
    if not jinja or template in builtin_template_names():
        if not builtin_template_names():
            raise ChatTemplateError("llama.cpp's built-in chat templates need llama-cpp-python installed")
        try:
            apply_builtin_template(template, _TRIAL, True)
        except ChatTemplateError:
            if jinja:
                raise
            raise ChatTemplateError(
                f"llama.cpp has no built-in chat template like {_shown(template)} (without Jinja, chats are "
                "rendered by its built-in templates): name one (chatml, llama3...) or render with Jinja"
            ) from None
        return ChatFormat.from_builtin(template, partial(apply_builtin_template, template))
    if "{%" not in template and "{{" not in template:
        raise ChatTemplateError(
            f"{_shown(template)} is neither one of llama.cpp's built-in chat templates "
            f"({', '.join(builtin_template_names())}) nor a Jinja template (it holds no {{% or {{{{)"
        )
    render(template, list(_TRIAL), special_tokens=special_tokens)  # compiles it: a syntax error raises here
    return ChatFormat.from_template(template, special_tokens)


def configured_template(chat_template: str | None, chat_template_file: str | None, jinja: bool = True) -> str | None:
    """The template the settings give in place of the model's own (a file's text, or the value), or
    None. A file that cannot be read as UTF-8 text, or a value that is no template (for `jinja`), is a
    ChatTemplateError that names it."""
    if chat_template_file is not None:
        origin, template = chat_template_file, read_template_file(chat_template_file)
    elif chat_template is not None:
        origin, template = "chat_template (--chat-template)", chat_template
    else:
        return None
    try:
        chat_format(template, {}, jinja)  # checked before any model loads
    except ChatTemplateError as error:
        raise ChatTemplateError(f"{origin}: {error}") from None
    return template


def read_template_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChatTemplateError(f"{path}: chat template file not found") from None
    except UnicodeDecodeError as error:
        raise ChatTemplateError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ChatTemplateError(f"{path}: cannot read the chat template file: {error.strerror or error}") from None


def check_served_as(chat_template: Any, alias: Any) -> None:
    """A backend's `load_model(chat_template=..., alias=...)`: None or a non-empty text each."""
    if chat_template is not None and not (isinstance(chat_template, str) and chat_template.strip()):
        raise InvalidParameterError(f"chat_template must be a non-empty text or None, got {chat_template!r}")
    if alias is not None and not (isinstance(alias, str) and alias.strip()):
        raise InvalidParameterError(f"alias must be a non-empty name or None, got {alias!r}")


def _shown(template: str) -> str:
    return repr(template if len(template) <= 60 else template[:57] + "...")
