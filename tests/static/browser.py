"""What the chat page's tests share: headless Chromium (Debian's package, driven by Playwright; never
`playwright install`), a page in a fresh context, and the few steps a user takes on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the `test` extra installs playwright")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
# The machine may be shared and the model slow under load: waits are generous, answers short.
ANSWER_TIMEOUT_MS = 120_000

if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is missing: `make test` installs Debian's chromium package", allow_module_level=True)

expect = sync_api.expect
expect.set_options(timeout=ANSWER_TIMEOUT_MS)  # every wait bounds a hang, none assumes an idle machine

CHAT_URL = "**/v1/chat/completions"


@contextmanager
def chromium() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def opened(browser, url: str, **context_options) -> Iterator:
    """The page at `url` in a fresh browser context (its own localStorage; `context_options` as
    `new_context` takes them); no script error on it."""
    context = browser.new_context(**{"viewport": VIEWPORT, "locale": "zh-CN", **context_options})
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(ANSWER_TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        yield page
    finally:
        context.close()
    assert not errors, errors


def settings(page, **values: str) -> None:
    if page.locator("#settings").is_hidden():
        page.click("#settings-toggle")
    for field, value in values.items():
        page.fill(f"#{field.replace('_', '-')}", value)


def ask(page, question: str) -> None:
    page.locator("#input").press_sequentially(question)  # as typed: insertText for Chinese characters
    page.keyboard.press("Enter")


def answer(page, index: int):
    return page.locator(".msg.assistant").nth(index)


def wait_answered(page, index: int) -> None:
    meta = answer(page, index).locator(".meta")
    expect(meta).to_have_attribute("data-backend", "llamacpp", timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#send")).to_be_visible()


def chat_requests(page) -> list:
    requests = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/v1/chat/completions") else None)
    return requests


def send_with_grammar(page, grammar: str | dict[str, str] | None) -> list[dict]:
    """Passes the page's requests to the real server, with `grammar` added to the body when given (a dict: the
    grammar of the model the body names); returns the bodies as the page sent them."""
    bodies: list[dict] = []

    def handle(route) -> None:
        body = route.request.post_data_json
        bodies.append(body)
        chosen = grammar.get(body["model"]) if isinstance(grammar, dict) else grammar
        route.continue_(post_data=json.dumps({**body, "grammar": chosen}) if chosen else None)

    page.route(CHAT_URL, handle)
    return bodies


def literal(text: str) -> str:
    """A GBNF grammar (the `grammar` field, not OpenAI's) that makes the model write exactly `text`."""
    return f'root ::= "{text}"'


def chunk(delta: dict | None, finish_reason: str | None = None, **extra) -> str:
    """One frame of a scripted /v1/chat/completions stream, as sse-starlette writes it (CRLF line endings);
    `delta` None: the usage chunk's empty `choices`."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return f"data: {json.dumps({'object': 'chat.completion.chunk', 'model': 'm', 'choices': choices, **extra})}\r\n\r\n"
