"""Chat templates rendered exactly as transformers renders them, without importing transformers.

The llama.cpp backend runs without the `torch` extra, so it cannot call `apply_chat_template`; yet a
fine-tune answers worse for a prompt one token off the one it was trained on. So this module builds
the same jinja2 environment as transformers 5 (`utils/chat_template_utils.py`: immutable sandbox,
trim_blocks/lstrip_blocks, loop controls, its `tojson` that keeps non-ASCII text, `raise_exception`,
`strftime_now`, dict and namespace that refuse underscore names) and passes the same variables:
`messages` without keys whose value is None, `tools`, `add_generation_prompt`, the tokenizer's
special tokens, then the request's own `chat_template_kwargs`. llama-cpp-python's formatter differs in
each of these points. `tests/chat/test_template.py` holds both to the same output.

Two additions from llama-server, for the templates written for it: today's date as `date_string` and
`datetime` (Llama 3.x and firefunction-v2 show it), and an undefined variable added to a text counts
as empty where jinja2 would raise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.errors import ChatTemplateError

# Used for a model without a chat template, as llama.cpp does.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render(
    template: str,
    messages: list[dict[str, Any]],
    *,
    special_tokens: Mapping[str, str],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    **kwargs: Any,
) -> str:
    """The prompt text for `messages`. `special_tokens`: bos_token, eos_token... as the tokenizer names
    them; `kwargs` (a request's chat_template_kwargs) override them, as in transformers."""
    compiled = compile_template(template)
    plain = [{key: value for key, value in m.items() if value is not None} for m in messages]
    variables = {**_today(), **special_tokens, **kwargs}
    with template_errors():
        return compiled.render(messages=plain, tools=tools, add_generation_prompt=add_generation_prompt, **variables)


@lru_cache(maxsize=8)
def compile_template(template: str) -> jinja2.Template:
    """Raises ChatTemplateError when the template does not compile."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols], undefined=_EmptyWhenAdded
    )
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=_strftime_now, dict=_TemplateDict(), namespace=_Namespace)
    with template_errors():
        return env.from_string(template)


def uses_variable(template: str, name: str) -> bool:
    """Whether the template reads `name` at all (a template without `tools` never shows them)."""
    from jinja2 import meta

    env = ImmutableSandboxedEnvironment(extensions=[jinja2.ext.loopcontrols])
    try:
        return name in meta.find_undeclared_variables(env.parse(template))
    except jinja2.TemplateError:
        return False


@contextmanager
def template_errors() -> Iterator[None]:
    """Turns what a chat template raises (in jinja2's sandbox) into ChatTemplateError."""
    try:
        yield
    except jinja2.exceptions.SecurityError as error:
        raise ChatTemplateError(f"the chat template tried an unsafe operation: {error}") from None
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(f"the chat template is not Jinja (line {error.lineno}): {error.message}") from None
    except (ValueError, TypeError, KeyError, IndexError, jinja2.TemplateError) as error:  # raise_exception() too
        raise ChatTemplateError(f"the chat template rejected the conversation: {error}") from None


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _today() -> dict[str, str]:
    """llama-server's extra template variables (common_chat_extra_context)."""
    now = datetime.now()
    return {"date_string": now.strftime("%d %b %Y"), "datetime": now.strftime("%b %d %Y")}


class _EmptyWhenAdded(jinja2.Undefined):
    """An undefined variable added to a text is empty, as in llama.cpp's Jinja (firefunction-v2's
    template adds `functions`, which no server passes); any other use still fails as in jinja2."""

    def __add__(self, other: Any) -> Any:
        return other if isinstance(other, str) else super().__add__(other)

    def __radd__(self, other: Any) -> Any:
        return other if isinstance(other, str) else super().__radd__(other)


class _TemplateDict:
    """`dict(...)` for templates without the class itself (no attribute access to its internals)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja2's namespace, refusing underscore-prefixed names (a way towards CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja2's own signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore names ({name!r})")
