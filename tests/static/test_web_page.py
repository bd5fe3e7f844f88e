"""The chat page at `/` in headless Chromium (Debian's package, driven by Playwright) against the real
server and the embedded SmolLM2 model."""

from __future__ import annotations

import json
import re
import struct
import time
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

# Records the last answer's text length each time the page changes it, and whether it had finished.
WATCH_ANSWER = """() => {
    window.__growth = [];
    new MutationObserver(() => {
        const answers = document.querySelectorAll(".msg.assistant");
        const last = answers[answers.length - 1];
        if (!last) return;
        window.__growth.push({
            length: last.querySelector(".content").textContent.length,
            finished: !last.classList.contains("streaming"),
        });
    }).observe(document.getElementById("messages"), {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def server(start_server):
    return start_server()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    page = context.new_page()
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    yield page
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
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/api/chat") else None)
    return requests


def test_a_chinese_question_streams_an_answer_then_shows_backend_model_and_speed(page):
    settings(page, temperature="0", max_tokens="24")
    page.evaluate(WATCH_ANSWER)
    ask(page, "请用中文介绍一下长城。")
    expect(page.locator("#stop")).to_be_visible()
    wait_answered(page, 0)

    assert page.locator(".msg.user .content").inner_text() == "请用中文介绍一下长城。"
    growth = page.evaluate("window.__growth")
    while_streaming = sorted({g["length"] for g in growth if not g["finished"] and g["length"] > 0})
    assert len(while_streaming) >= 2, growth  # seen growing before the end, not all at once
    final = answer(page, 0).locator(".content").text_content()
    assert len(final) >= while_streaming[-1]

    meta = answer(page, 0).locator(".meta")
    assert meta.get_attribute("data-model") == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert float(meta.get_attribute("data-tokens-per-s")) > 0 and float(meta.get_attribute("data-ttft-ms")) > 0
    text = meta.inner_text()
    assert "llamacpp" in text and "SmolLM2-135M-Instruct.Q4_1.gguf" in text and "tok/s" in text and "TTFT" in text
    expect(page.locator("#stop")).to_be_hidden()


def test_the_second_turn_sends_the_whole_conversation(page):
    requests = chat_requests(page)
    settings(page, temperature="0", max_tokens="12", system="你是一个乐于助人的助手。")
    ask(page, "你好！")
    wait_answered(page, 0)
    ask(page, "长城有多长？")
    wait_answered(page, 1)

    first, second = (r.post_data_json for r in requests)
    conversation = page.evaluate("window.hychat.conversation()")
    earlier_answer = conversation[1]["content"]
    assert earlier_answer.strip() and conversation[1]["role"] == "assistant"
    system = {"role": "system", "content": "你是一个乐于助人的助手。"}
    assert first["messages"] == [system, {"role": "user", "content": "你好！"}]
    assert second["messages"] == [
        system,
        {"role": "user", "content": "你好！"},
        {"role": "assistant", "content": earlier_answer},
        {"role": "user", "content": "长城有多长？"},
    ]
    assert second["stream"] is True and second["temperature"] == 0 and second["max_new_tokens"] == 12
    assert len(conversation) == 4 and page.locator(".msg").count() == 4

    page.click("#new-chat")
    assert page.evaluate("window.hychat.conversation()") == [] and page.locator(".msg").count() == 0


def test_stop_aborts_the_answer_and_the_next_question_is_answered(page):
    requests = chat_requests(page)
    failed = []
    page.on("requestfailed", lambda r: failed.append(r.failure))
    settings(page, temperature="0.8", max_tokens="400")
    ask(page, "请写一个很长的故事，关于一条龙和一座城堡。")
    content = answer(page, 0).locator(".content")
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant .content').textContent.length > 10", timeout=ANSWER_TIMEOUT_MS
    )
    page.click("#stop")

    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    expect(answer(page, 0).locator(".meta")).to_have_text("Stopped")
    stopped_at = content.inner_text()
    time.sleep(1.5)
    assert content.inner_text() == stopped_at  # it stopped growing
    assert failed and "ABORTED" in failed[0].upper()  # the browser dropped the connection

    settings(page, max_tokens="8")
    ask(page, "你好")
    wait_answered(page, 1)
    assert answer(page, 1).locator(".content").inner_text().strip()
    # The stopped part stays in the conversation, so the model sees what it had said.
    stopped_turn = page.evaluate("window.hychat.conversation()")[1]
    assert stopped_turn["role"] == "assistant" and stopped_turn["content"].strip()
    assert requests[1].post_data_json["messages"][1] == stopped_turn


def test_enter_while_an_input_method_composes_does_not_send(page):
    cdp = page.context.new_cdp_session(page)
    page.focus("#input")
    cdp.send("Input.imeSetComposition", {"text": "changcheng", "selectionStart": 10, "selectionEnd": 10})
    page.keyboard.press("Enter")  # a real IME takes this Enter to pick the candidate
    assert page.locator(".msg").count() == 0
    cdp.send("Input.insertText", {"text": "长城"})  # the composition is committed
    page.fill("#input", "长城")
    settings(page, max_tokens="4")
    page.focus("#input")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user .content")).to_have_text("长城")
    wait_answered(page, 0)


def test_screenshot_of_a_conversation(page, tmp_path):
    settings(page, temperature="0", max_tokens="40")
    page.click("#settings-toggle")  # closed again, as a user would leave it
    ask(page, "用 Python 写一个函数，计算斐波那契数列。")
    wait_answered(page, 0)

    path = tmp_path / "chat.png"
    page.screenshot(path=path)
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"])


# GBNF grammars (the `grammar` field, not OpenAI's) that make the small model write reasoning, as a thinking
# model does, so that the real server's reasoning split runs on the real engine's output.
GREETING_GRAMMAR = r'root ::= "<think>\n用户在问候。\n</think>\n你好！"'
HOSTILE_REASONING = '<img src=x onerror="window.pwned = 1"> <b>bold</b>'
HOSTILE_GRAMMAR = r'root ::= "<think>\n' + HOSTILE_REASONING.replace('"', r"\"") + r'\n</think>\n好"'

# Records the last answer's reasoning block (open or not, its summary) each time the page changes it, with the
# length of the answer's text then and whether it had finished.
WATCH_REASONING = """() => {
    window.__reasoning = [];
    new MutationObserver(() => {
        const answers = document.querySelectorAll(".msg.assistant");
        const last = answers[answers.length - 1];
        const block = last?.querySelector("details.reasoning");
        if (!block) return;
        window.__reasoning.push({
            open: block.open,
            summary: block.querySelector("summary").textContent,
            answer: last.querySelector(".content").textContent.length,
            finished: !last.classList.contains("streaming"),
        });
    }).observe(document.getElementById("messages"), {
        childList: true, subtree: true, characterData: true, attributes: true,
    });
}"""


def send_with_grammar(page, grammar: str | None) -> list[dict]:
    """Passes the page's requests to the real server, with `grammar` added to the body when given; returns the
    bodies as the page sent them."""
    bodies: list[dict] = []

    def handle(route) -> None:
        body = route.request.post_data_json
        bodies.append(body)
        route.continue_(post_data=json.dumps({**body, "grammar": grammar}) if grammar else None)

    page.route("**/api/chat", handle)
    return bodies


def test_reasoning_streams_into_a_block_above_the_answer_that_closes_and_is_not_sent_back(page):
    bodies = send_with_grammar(page, GREETING_GRAMMAR)
    settings(page, temperature="0", max_tokens="96")
    page.evaluate(WATCH_REASONING)
    ask(page, "你好！")
    wait_answered(page, 0)

    first = answer(page, 0)
    block = first.locator("details.reasoning")
    expect(block).to_have_count(1)
    assert first.evaluate("(a) => [...a.children].map((c) => c.className)") == ["reasoning", "content", "meta"]
    expect(block.locator(".reasoning-text")).to_have_text("用户在问候。")
    expect(first.locator(".content")).to_have_text("你好！")
    assert "<think>" not in first.text_content() and "</think>" not in first.text_content()
    # Open with "Reasoning…" while the reasoning streamed; closed from the moment the answer's text came.
    seen = page.evaluate("window.__reasoning")
    assert any(s["open"] and s["summary"] == "Reasoning…" and s["answer"] == 0 for s in seen), seen
    assert not any(s["open"] for s in seen if s["answer"] > 0), seen
    tokens = int(block.get_attribute("data-tokens"))
    assert tokens > 0
    expect(block.locator("summary")).to_have_text(f"Reasoning ({tokens} tokens)")

    expect(block).not_to_have_attribute("open", re.compile(".*"))
    expect(block.locator(".reasoning-text")).to_be_hidden()
    block.locator("summary").click()
    expect(block).to_have_attribute("open", "")
    expect(block.locator(".reasoning-text")).to_be_visible()
    block.locator("summary").click()
    expect(block.locator(".reasoning-text")).to_be_hidden()

    ask(page, "谢谢")
    wait_answered(page, 1)
    assert bodies[1]["messages"] == [
        {"role": "user", "content": "你好！"},
        {"role": "assistant", "content": "你好！"},  # the answer only, not its reasoning
        {"role": "user", "content": "谢谢"},
    ]
    assert page.evaluate("window.hychat.conversation()")[1] == {"role": "assistant", "content": "你好！"}


def test_reasoning_is_shown_as_text_never_as_html(page):
    send_with_grammar(page, HOSTILE_GRAMMAR)
    settings(page, temperature="0", max_tokens="96")
    ask(page, "你好")
    wait_answered(page, 0)
    block = answer(page, 0).locator("details.reasoning")
    expect(block.locator(".reasoning-text")).to_have_text(HOSTILE_REASONING)
    assert block.locator("img, b, [onerror]").count() == 0
    assert page.evaluate("window.pwned ?? null") is None
    expect(answer(page, 0).locator(".content")).to_have_text("好")


def test_the_thinking_switch_sends_think_and_is_remembered(page):
    bodies = send_with_grammar(page, None)
    settings(page, temperature="0", max_tokens="4")
    expect(page.locator("#think")).to_have_value("")  # the model's default
    ask(page, "你好")
    wait_answered(page, 0)
    page.select_option("#think", "on")
    ask(page, "你好")
    wait_answered(page, 1)
    page.select_option("#think", "off")
    ask(page, "你好")
    wait_answered(page, 2)

    assert "think" not in bodies[0]
    assert bodies[1]["think"] is True and bodies[2]["think"] is False
    for index in (0, 2):  # SmolLM2 writes no reasoning of its own
        assert answer(page, index).locator(".content").inner_text().strip()
        expect(answer(page, index).locator(".reasoning")).to_have_count(0)

    page.reload()  # the choice is remembered by this browser
    settings(page)
    expect(page.locator("#think")).to_have_value("off")
    page.select_option("#think", "")
    page.reload()
    expect(page.locator("#think")).to_have_value("")


UNSAFE_MARKDOWN = """\
<img src=x onerror="window.pwned = 1">
<script>window.pwned = 2</script>
[x](javascript:alert(1)) [y](JAVASCRIPT:alert(2)) <javascript:alert(3)>

```python
print("<b>hi</b>")
```
"""


def check_rendered_safely(page, selector: str) -> None:
    found = page.evaluate(
        """(selector) => {
            const root = document.querySelector(selector);
            return {
                unsafe: root.querySelectorAll("img, script, iframe, [onerror]").length,
                hrefs: [...root.querySelectorAll("a")].map((a) => a.getAttribute("href")),
                code: root.querySelector("pre > code.language-python")?.textContent,
                text: root.textContent,
                pwned: window.pwned ?? null,
            };
        }""",
        selector,
    )
    assert found["unsafe"] == 0 and found["pwned"] is None
    assert not any(href.strip().lower().startswith("javascript:") for href in found["hrefs"]), found["hrefs"]
    assert found["code"] == 'print("<b>hi</b>")\n'
    assert "<img src=x" in found["text"] and "<script>" in found["text"]  # shown as text, escaped


def test_render_markdown_escapes_html_and_refuses_javascript_links(page):
    page.evaluate(
        """(text) => {
            const box = document.createElement("div");
            box.id = "render-test";
            box.innerHTML = window.hychat.renderMarkdown(text);
            document.body.append(box);
        }""",
        UNSAFE_MARKDOWN,
    )
    check_rendered_safely(page, "#render-test")


def test_a_hostile_streamed_answer_is_rendered_safely(page):
    # A scripted stream: the real model cannot be made to answer this. Frames as sse-starlette writes
    # them (CRLF line endings, a ping comment).
    pieces = [UNSAFE_MARKDOWN[i : i + 7] for i in range(0, len(UNSAFE_MARKDOWN), 7)]
    body = ": ping\r\n\r\n" + "".join(f"data: {json.dumps({'text': p})}\r\n\r\n" for p in pieces)
    body += 'event: done\r\ndata: {"finish_reason":"stop","backend":"llamacpp","model":"m","usage":'
    body += '{"prompt_tokens":1,"completion_tokens":9,"ttft_ms":1.0,"tokens_per_s":9.0,"total_ms":2.0}}\r\n\r\n'
    page.route("**/api/chat", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    ask(page, "hi")
    wait_answered(page, 0)
    check_rendered_safely(page, ".msg.assistant .content")
    assert page.evaluate("window.hychat.conversation()")[1]["content"] == UNSAFE_MARKDOWN


def test_an_error_event_is_shown(page):
    body = 'data: {"text": "partial"}\n\nevent: error\ndata: {"error": {"message": "the model ran out of context"}}\n\n'
    page.route("**/api/chat", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    ask(page, "hi")
    expect(answer(page, 0).locator(".meta")).to_have_text("Error: the model ran out of context")
    expect(answer(page, 0)).to_have_class(re.compile(r"\bfailed\b"))
    expect(page.locator("#send")).to_be_visible()


def test_the_page_is_open_but_the_api_needs_the_key(browser, start_server):
    server = start_server({"HYCHAT_API_KEY": "s3cret"})
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        requests = chat_requests(page)
        assert page.goto(server.url).status == 200
        settings(page, max_tokens="4")
        ask(page, "你好")
        expect(answer(page, 0).locator(".meta")).to_contain_text("API key", timeout=ANSWER_TIMEOUT_MS)

        settings(page, api_key="s3cret")
        ask(page, "你好")
        wait_answered(page, 1)
        assert "authorization" not in requests[0].headers
        assert requests[1].headers["authorization"] == "Bearer s3cret"

        page.reload()  # the key is remembered by this browser
        settings(page)
        expect(page.locator("#api-key")).to_have_value("s3cret")
        expect(page.locator("#max-tokens")).to_have_value("4")
    finally:
        context.close()
