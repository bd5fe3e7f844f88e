"""What `ChatFormat` gives a template beyond the conversation, as llama-server gives it to the templates
written for it (llama.cpp's models/templates): the thinking switch, earlier reasoning, today's date."""

from __future__ import annotations

import datetime

import pytest

from app.chat.format import ChatFormat
from app.errors import ChatTemplateError
from app.protocol.ollama import OllamaMessage
from app.protocol.ollama import to_chat_messages as ollama_messages
from app.types import ChatOptions

# The end of QwQ's and DeepSeek-R1's templates as llama.cpp ships them, and Qwen3's earlier reasoning.
THINKING = (
    "{% for m in messages %}{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:\n<think>\n{% if not enable_thinking %}</think>{% endif %}{% endif %}"
)
QUESTION = [{"role": "user", "content": "今天是几号？"}]


def rendered(template: str, messages=QUESTION, **options) -> str:
    return ChatFormat.from_template(template, {}).render(messages, ChatOptions(**options)).text


@pytest.mark.parametrize(("think", "end", "state"), [(None, "<think>\n", "open"), (True, "<think>\n", "open"),
                                                     (False, "</think>", "closed")])  # fmt: skip
def test_thinking_is_on_unless_switched_off(think, end, state):
    """llama-server tells the template enable_thinking=true unless --reasoning off or the request says so."""
    chat = ChatFormat.from_template(THINKING, {}).render(QUESTION, ChatOptions(think=think))
    assert chat.text.endswith(end) and chat.think == state


def test_an_earlier_answers_reasoning_reaches_the_template():
    """As `reasoning_content` on /v1, Ollama's `thinking` (Anthropic's thinking block: its own test)."""
    history = [*QUESTION, {"role": "assistant", "content": "四号。", "reasoning_content": "看看日历"}, *QUESTION]
    assert "<think>看看日历</think>assistant: 四号。" in rendered(THINKING, history)
    ollama = [OllamaMessage(role="assistant", content="四号。", thinking="看看日历")]
    assert ollama_messages(ollama) == [history[1]]


def test_todays_date_and_an_undefined_text_as_llama_server_gives_them():
    today = datetime.date.today()
    template = "{{ date_string }}|{{ datetime }}|{{ 'functions:' + functions + '.' }}"
    assert rendered(template) == f"{today:%d %b %Y}|{today:%b %d %Y}|functions:."
    assert rendered(template, template_kwargs={"date_string": "26 Jul 2024"}).startswith("26 Jul 2024|")
    with pytest.raises(ChatTemplateError, match="'functions' is undefined"):
        rendered("{{ functions.name }}")  # any other use of an undefined name fails as in transformers
