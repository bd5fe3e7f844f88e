"""Remakes the chat page's screenshots in docs/ (chat-light.png, chat-dark.png, chat-narrow.png,
chat-narrow-list.png): `.venv/bin/python -m tests.static.screenshots`.

A real server on the embedded model, a few conversations imported into the list, and one asked live: the
model is made to write an answer with code and formulas (a GBNF grammar added to the page's request), so
the pictures show what the page does with them, the speed line included."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.conftest import REPO, Server
from tests.static.browser import ask, chromium, opened, settings, wait_answered
from tests.static.test_web_conversations import PHONE, answers_in_turn, tiny_conversation

DOCS = REPO / "docs"
QUESTION = "用 Python 写一个斐波那契函数，并给出通项公式。"
ANSWER = (
    "这是一个迭代版本：\n\n```python\ndef fib(n: int) -> int:\n"
    '    """The n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n'
    "        a, b = b, a + b\n    return a\n```\n\n"
    "它只需 $O(n)$ 步。通项公式（Binet）：\n\n$$F_n = \\frac{\\varphi^n - \\psi^n}{\\sqrt{5}}$$"
)
OLDER = ["长城有多长？", "Explain the KV cache in one paragraph", "把这个 CSV 按月份汇总", "Rust 和 Go 怎么选？"]


def earlier_conversations(folder: Path) -> Path:
    conversations = []
    for i, title in enumerate(OLDER):
        conv = tiny_conversation(i + 1)
        conv["title"] = title
        conv["nodes"]["q"]["content"] = title
        conversations.append(conv)
    path = folder / "earlier.json"
    path.write_text(json.dumps({"format": "hychat.conversations", "version": 1, "conversations": conversations}))
    return path


def prepare(page, earlier: Path) -> None:
    page.set_input_files("#import-file", earlier)
    page.evaluate("document.getElementById('storage-note').hidden = true")
    answers_in_turn(page, [ANSWER, ANSWER])
    settings(page, temperature="0", max_tokens="200")
    page.click("#settings-toggle")  # closed again
    ask(page, QUESTION)
    wait_answered(page, 0)
    page.locator(".msg.assistant").get_by_role("button", name="Regenerate").click()  # shows < 2/2 >
    wait_answered(page, 0)
    page.locator("#input").blur()
    page.mouse.move(200, 700)  # over empty space: no button shown as hovered


def main() -> None:
    server = Server({})
    folder = tempfile.TemporaryDirectory()
    try:
        earlier = earlier_conversations(Path(folder.name))
        with chromium() as browser:
            for name, options in {
                "chat-light.png": {"color_scheme": "light"},
                "chat-dark.png": {"color_scheme": "dark"},
                "chat-narrow.png": {"color_scheme": "light", "viewport": PHONE},
            }.items():
                with opened(browser, server.url, locale="en-US", **options) as page:
                    prepare(page, earlier)
                    page.screenshot(path=DOCS / name)
                    if name == "chat-narrow.png":
                        page.click("#sidebar-toggle")
                        page.screenshot(path=DOCS / "chat-narrow-list.png")
    finally:
        folder.cleanup()
        server.stop()


if __name__ == "__main__":
    main()
