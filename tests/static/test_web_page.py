"""The chat page at `/` in headless Chromium (Debian's package, driven by Playwright) against the real
server and the embedded SmolLM2 model; the model picker and compare mode against a server whose model
library holds a second model."""

from __future__ import annotations

import os
import re
import shutil
import struct
import time

import httpx
import pytest

from tests.static.browser import (
    ANSWER_TIMEOUT_MS,
    CHAT_URL,
    VIEWPORT,
    answer,
    ask,
    chat_requests,
    chunk,
    expect,
    literal,
    opened,
    send_with_grammar,
    settings,
    wait_answered,
)

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
    assert second["stream"] is True and second["temperature"] == 0 and second["max_tokens"] == 12
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


def test_reasoning_streams_into_a_block_above_the_answer_that_closes_and_is_not_sent_back(page):
    bodies = send_with_grammar(page, GREETING_GRAMMAR)
    settings(page, temperature="0", max_tokens="96")
    page.evaluate(WATCH_REASONING)
    ask(page, "你好！")
    wait_answered(page, 0)

    first = answer(page, 0)
    block = first.locator("details.reasoning")
    expect(block).to_have_count(1)
    children = first.evaluate("(a) => [...a.children].map((c) => c.className)")
    assert children == ["reasoning", "content", "meta", "actions"]
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
    # A scripted stream: the real model cannot be made to answer this.
    pieces = [UNSAFE_MARKDOWN[i : i + 7] for i in range(0, len(UNSAFE_MARKDOWN), 7)]
    body = ": ping\r\n\r\n" + "".join(chunk({"content": p}) for p in pieces) + chunk({}, "stop")
    body += chunk(None, usage={"prompt_tokens": 1, "completion_tokens": 9}, timings={"predicted_per_second": 9.0})
    body += "data: [DONE]\r\n\r\n"
    page.route(CHAT_URL, lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    ask(page, "hi")
    wait_answered(page, 0)
    check_rendered_safely(page, ".msg.assistant .content")
    assert page.evaluate("window.hychat.conversation()")[1]["content"] == UNSAFE_MARKDOWN


def test_an_error_event_is_shown(page):
    body = chunk({"content": "partial"}) + 'data: {"error": {"message": "the model ran out of context"}}\n\n'
    page.route(CHAT_URL, lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    ask(page, "hi")
    box = answer(page, 0).locator(".error")
    expect(box).to_be_visible()
    expect(box).to_have_attribute("role", "alert")
    expect(box.locator(".error-message")).to_have_text("Error: the model ran out of context")
    expect(box.locator(".error-hint")).to_contain_text("Retry")
    expect(answer(page, 0)).to_have_class(re.compile(r"\bfailed\b"))
    expect(answer(page, 0).locator(".content")).to_have_text("partial")  # what had come stays shown
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
        # The error stands out and says what to do; its button opens the settings at the key.
        box = answer(page, 0).locator(".error")
        expect(box.locator(".error-hint")).to_contain_text("API key under Settings")
        expect(box.locator(".error-message")).to_contain_text("Error:")
        assert box.evaluate("(e) => getComputedStyle(e).borderLeftWidth") == "4px"
        box.locator(".open-settings").click()
        expect(page.locator("#api-key")).to_be_focused()

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


# --- the model picker and compare mode, on a server whose model library holds a second model -----------------

EMBEDDED = "SmolLM2-135M-Instruct.Q4_1.gguf"
SECOND = "smol-b.gguf"
BROKEN = "broken.gguf"
STATES = {"loaded": "loaded", "unloaded": "not loaded", "failed": "failed"}


@pytest.fixture(scope="module")
def library_server(start_server, model_path, tmp_path_factory):
    """The embedded model as the default, and a model folder with a second model and a file that cannot load.
    The second is the embedded GGUF under another name: a hard link (a copy where the filesystem cannot link),
    which the library lists and loads as a model of its own (a symlink would resolve to the default model)."""
    folder = tmp_path_factory.mktemp("models")
    try:
        os.link(model_path, folder / SECOND)
    except OSError:
        shutil.copyfile(model_path, folder / SECOND)
    (folder / BROKEN).write_bytes(b"not a GGUF file")
    return start_server({"HYCHAT_MODEL_DIRS": str(folder)})


@pytest.fixture
def library_page(browser, library_server):
    with opened(browser, library_server.url) as page:
        yield page


def picker_options(page, select: str) -> list[dict]:
    return page.eval_on_selector_all(
        f"{select} option",
        "(all) => all.map((o) => ({value: o.value, text: o.textContent, disabled: o.disabled, title: o.title}))",
    )


def test_the_model_picker_lists_every_model_with_its_state(library_page, library_server):
    page = library_page
    expect(page.locator("#model option")).to_have_count(3)
    listed = httpx.get(f"{library_server.url}/v1/models", timeout=30).json()["data"]
    assert listed[0]["id"] == EMBEDDED and {m["id"] for m in listed} == {EMBEDDED, SECOND, BROKEN}
    assert picker_options(page, "#model") == [
        {
            "value": m["id"],
            "text": f"{m['id']} · {STATES[m['status']['value']]}",
            "disabled": m["status"]["value"] == "failed",
            "title": m["status"]["problem"] or "",
        }
        for m in listed
    ]
    assert "GGUF" in picker_options(page, "#model")[1]["title"]  # the problem, as the failed one's tooltip
    expect(page.locator("#model")).to_have_value(EMBEDDED)  # the server's default
    expect(page.locator("#model-b")).to_be_hidden()  # until compare mode is on


def test_the_chosen_model_is_sent_named_by_its_answer_and_remembered(library_page):
    page = library_page
    requests = chat_requests(page)
    settings(page, temperature="0", max_tokens="8")
    page.select_option("#model", SECOND)
    ask(page, "你好")
    wait_answered(page, 0)
    page.select_option("#model", EMBEDDED)
    ask(page, "你好")
    wait_answered(page, 1)

    assert [r.post_data_json["model"] for r in requests] == [SECOND, EMBEDDED]
    for index, model in enumerate([SECOND, EMBEDDED]):
        meta = answer(page, index).locator(".meta")
        assert meta.get_attribute("data-model") == model and float(meta.get_attribute("data-tokens-per-s")) > 0
        assert model in meta.inner_text() and "llamacpp" in meta.inner_text() and "tok/s" in meta.inner_text()
        assert answer(page, index).locator(".content").inner_text().strip()
    # The first request loaded the second model; the picker says so once the answer is in.
    expect(page.locator(f'#model option[value="{SECOND}"]')).to_have_text(f"{SECOND} · loaded")
    # The second turn went to the other model with the whole conversation, the first model's answer in it.
    assert requests[1].post_data_json["messages"][1] == page.evaluate("window.hychat.conversation()")[1]

    page.select_option("#model", SECOND)
    page.reload()  # the choice is remembered by this browser
    expect(page.locator("#model option")).to_have_count(3)
    expect(page.locator("#model")).to_have_value(SECOND)


# What each model is made to write (a grammar per model, on the real engine): a column showing the other
# stream's text, or the other column's history, fails the test.
ANSWERS = {
    EMBEDDED: ["甲：长城很长，有两万多公里。", "甲：不客气！"],
    SECOND: ["乙：长城在中国北方，很有名。", "乙：再见，祝你好运！"],
}

# Records both columns' text lengths and states each time the page changes them.
WATCH_COLUMNS = """() => {
    window.__columns = [];
    new MutationObserver(() => {
        const columns = [...document.querySelectorAll(".pair:last-of-type .msg.column")];
        if (columns.length !== 2) return;
        window.__columns.push(columns.map((c) => ({
            length: c.querySelector(".content").textContent.length,
            streaming: c.classList.contains("streaming"),
        })));
    }).observe(document.getElementById("messages"), {
        childList: true, subtree: true, characterData: true, attributes: true,
    });
}"""


def turn_on_compare(page, model_a: str, model_b: str) -> None:
    expect(page.locator("#model option")).to_have_count(3)
    page.check("#compare")
    expect(page.locator("#model-b")).to_be_visible()
    page.select_option("#model", model_a)
    page.select_option("#model-b", model_b)


def test_compare_mode_streams_two_models_side_by_side_each_with_its_own_conversation(library_page, library_server):
    page = library_page
    # Both models loaded first, so that neither stream waits for a load while the other runs.
    for model in (EMBEDDED, SECOND):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        assert httpx.post(f"{library_server.url}/v1/chat/completions", json=body, timeout=120).status_code == 200
    page.reload()
    settings(page, temperature="0", max_tokens="64")
    turn_on_compare(page, EMBEDDED, SECOND)
    for turn, question in enumerate(["长城有多长？", "谢谢"]):
        bodies = send_with_grammar(page, {model: literal(texts[turn]) for model, texts in ANSWERS.items()})
        page.evaluate(WATCH_COLUMNS)
        ask(page, question)
        wait_answered(page, 2 * turn)
        wait_answered(page, 2 * turn + 1)
        page.unroute(CHAT_URL)

        pair = page.locator(".pair").nth(turn)
        for column, model in enumerate([EMBEDDED, SECOND]):
            own = pair.locator(".msg.column").nth(column)
            expect(own.locator(".column-head")).to_have_text(model)
            expect(own.locator(".content")).to_have_text(ANSWERS[model][turn])
            meta = own.locator(".meta")
            assert meta.get_attribute("data-model") == model and float(meta.get_attribute("data-tokens-per-s")) > 0
            assert "tok/s" in meta.inner_text()
        # Both streams ran at once: at some moment each column had text while both were still streaming.
        seen = page.evaluate("window.__columns")
        assert any(all(c["streaming"] and c["length"] > 0 for c in s) for s in seen), seen
        assert sorted(b["model"] for b in bodies) == [EMBEDDED, SECOND]

    # Each column's model got the conversation with its own answers (`bodies`: the second turn's requests).
    questions = [{"role": "user", "content": "长城有多长？"}, {"role": "user", "content": "谢谢"}]
    for column, model in enumerate([EMBEDDED, SECOND]):
        history = [questions[0], {"role": "assistant", "content": ANSWERS[model][0]}]
        second_body = next(b for b in bodies if b["model"] == model)
        assert second_body["messages"] == [*history, questions[1]]
        assert page.evaluate(f"window.hychat.conversation({column})") == [
            *history,
            questions[1],
            {"role": "assistant", "content": ANSWERS[model][1]},
        ]

    # Side by side on a wide screen, one above the other on a narrow one.
    first, second = (page.locator(".pair").nth(1).locator(".msg.column").nth(i) for i in (0, 1))
    a, b = first.bounding_box(), second.bounding_box()
    assert a["y"] == b["y"] and a["x"] + a["width"] <= b["x"]
    page.set_viewport_size({"width": 400, "height": 800})
    a, b = first.bounding_box(), second.bounding_box()
    assert a["y"] + a["height"] <= b["y"] and a["x"] == b["x"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 400  # nothing sticks out sideways

    page.uncheck("#compare")  # back to one model: its conversation goes on
    page.reload()
    expect(page.locator("#compare")).not_to_be_checked()
    expect(page.locator("#model-b")).to_be_hidden()


def test_stop_in_compare_mode_stops_both_answers(library_page):
    page = library_page
    failed = []
    page.on("requestfailed", lambda r: failed.append(r.failure) if r.url.endswith("/chat/completions") else None)
    settings(page, temperature="0.8", max_tokens="400")
    turn_on_compare(page, SECOND, EMBEDDED)
    ask(page, "请写一个很长的故事，关于一条龙和一座城堡。")
    page.wait_for_function(
        """() => {
            const columns = document.querySelectorAll(".msg.column .content");
            return columns.length === 2 && [...columns].every((c) => c.textContent.length > 10);
        }""",
        timeout=ANSWER_TIMEOUT_MS,
    )
    page.click("#stop")

    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    columns = page.locator(".msg.column")
    for column in range(2):
        expect(columns.nth(column).locator(".meta")).to_have_text("Stopped")
    stopped_at = [columns.nth(i).locator(".content").inner_text() for i in range(2)]
    time.sleep(1.5)
    assert [columns.nth(i).locator(".content").inner_text() for i in range(2)] == stopped_at  # neither grows
    assert len(failed) == 2 and all("ABORTED" in f.upper() for f in failed), failed  # both connections dropped
    # Each column keeps its own stopped part.
    for column in range(2):
        stopped_turn = page.evaluate(f"window.hychat.conversation({column})")[1]
        assert stopped_turn["role"] == "assistant" and stopped_turn["content"].strip()
