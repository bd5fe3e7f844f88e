"""The chat page's conversations and what a user does with answers, in headless Chromium against the real
server and the embedded SmolLM2 model: conversations kept in the browser (list, switch, rename, search,
delete, export and import, bounds), edited questions and regenerated answers as branches, copy, code
highlighting and formulas, attached files, themes, errors, the keyboard and the narrow layout.

The model is made to write exact answers with GBNF grammars (`grammar`, not OpenAI's field), added to the
page's requests on their way to the real server, so that each answer is known in advance."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.static.browser import (
    CHAT_URL,
    answer,
    ask,
    chat_requests,
    expect,
    opened,
    settings,
    wait_answered,
)

PHONE = {"width": 390, "height": 844}


def gbnf(text: str) -> str:
    """A grammar whose only sentence is `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'root ::= "{escaped}"'


def answers_in_turn(page, texts: list[str]) -> list[dict]:
    """Each request the page sends goes to the real server made to answer the next of `texts`; returns the
    bodies as the page sent them."""
    bodies: list[dict] = []

    def handle(route) -> None:
        body = route.request.post_data_json
        bodies.append(body)
        route.continue_(post_data=json.dumps({**body, "grammar": gbnf(texts[len(bodies) - 1])}))

    page.route(CHAT_URL, handle)
    return bodies


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def titles(page) -> list[str]:
    return page.locator("#conversations .conversation .open").all_inner_texts()


def item(page, title: str):
    return page.locator("#conversations .conversation").filter(has=page.get_by_role("button", name=title))


def item_button(page, title: str, name: str):
    """The button `name` of the conversation `title`, shown as a pointer over its item shows it."""
    item(page, title).hover()
    return item(page, title).get_by_role("button", name=name)


def shown(page) -> list[str]:
    """The messages on screen, as their text."""
    return page.locator("#messages .msg .content").all_inner_texts()


def export_all(page) -> dict:
    with page.expect_download() as download:
        page.click("#export-all")
    return json.loads(download.value.path().read_text())


# --- conversations kept in the browser ------------------------------------------------------------------


def test_conversations_are_kept_listed_newest_first_switched_renamed_searched_and_deleted(page):
    answers_in_turn(page, ["长城很长。", "Paris.", "很好。"])
    settings(page, temperature="0", max_tokens="16")
    ask(page, "长城有多长？")
    wait_answered(page, 0)
    page.keyboard.press("Control+Shift+O")  # a new chat
    expect(page.locator("#messages .msg")).to_have_count(0)
    ask(page, "What is the capital of France?")
    wait_answered(page, 0)
    assert titles(page) == ["What is the capital of France?", "长城有多长？"]  # newest first
    expect(item(page, "What is the capital of France?")).to_have_attribute("aria-current", "true")

    page.reload()  # kept: the list, and the conversation on screen
    expect(page.locator("#conversations .conversation")).to_have_count(2)
    assert titles(page) == ["What is the capital of France?", "长城有多长？"]
    expect(page.locator("#messages .msg")).to_have_count(2)
    assert shown(page) == ["What is the capital of France?", "Paris."]

    item(page, "长城有多长？").get_by_role("button", name="长城有多长？").click()  # switch
    expect(page.locator("#messages .msg.user .content")).to_have_text("长城有多长？")
    assert shown(page) == ["长城有多长？", "长城很长。"]
    assert page.evaluate("window.hychat.conversation()") == [user("长城有多长？"), assistant("长城很长。")]
    ask(page, "谢谢")  # goes on in the conversation switched to, which becomes the newest
    wait_answered(page, 1)
    assert titles(page) == ["长城有多长？", "What is the capital of France?"]

    item_button(page, "长城有多长？", "Rename").click()
    page.fill(".rename-input", "长城之问")
    page.keyboard.press("Enter")
    expect(item(page, "长城之问")).to_have_count(1)
    page.reload()
    assert titles(page) == ["长城之问", "What is the capital of France?"]

    # Search looks at the messages as well as the titles.
    page.fill("#search", "谢谢")
    assert titles(page) == ["长城之问"]
    page.fill("#search", "capital")
    assert titles(page) == ["What is the capital of France?"]
    page.fill("#search", "no such text")
    expect(page.locator("#conversations .conversation")).to_have_count(0)
    page.fill("#search", "")

    page.once("dialog", lambda dialog: dialog.accept())
    item_button(page, "长城之问", "Delete").click()  # the one on screen
    assert titles(page) == ["What is the capital of France?"]
    expect(page.locator("#messages .msg")).to_have_count(0)  # a new chat in its place
    page.reload()
    assert titles(page) == ["What is the capital of France?"]
    page.once("dialog", lambda dialog: dialog.dismiss())  # Cancel keeps it
    item_button(page, "What is the capital of France?", "Delete").click()
    assert titles(page) == ["What is the capital of France?"]


def test_export_and_import_round_trip(page, tmp_path):
    answers_in_turn(page, ["一。", "二。", "三。"])
    settings(page, temperature="0", max_tokens="8")
    ask(page, "第一个")
    wait_answered(page, 0)
    answer(page, 0).get_by_role("button", name="Regenerate").click()  # a branch, which must survive too
    wait_answered(page, 0)
    page.click("#new-chat")
    ask(page, "第二个")
    wait_answered(page, 0)

    exported = export_all(page)
    assert exported["format"] == "hychat.conversations" and exported["version"] == 1
    conversations = exported["conversations"]
    assert [c["title"] for c in conversations] == ["第二个", "第一个"]
    first = conversations[1]
    question = next(n for n in first["nodes"].values() if n.get("role") == "user")
    assert [first["nodes"][a]["answers"][0]["content"] for a in question["children"]] == ["一。", "二。"]

    with page.expect_download() as download:  # one conversation alone
        item_button(page, "第一个", "Export as JSON").click()
    assert json.loads(download.value.path().read_text())["conversations"] == [first]

    for title in ("第二个", "第一个"):
        page.once("dialog", lambda dialog: dialog.accept())
        item_button(page, title, "Delete").click()
    expect(page.locator("#conversations .conversation")).to_have_count(0)
    page.reload()
    expect(page.locator("#conversations .conversation")).to_have_count(0)

    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported))
    page.set_input_files("#import-file", path)
    expect(page.locator("#storage-note")).to_have_text("Imported 2 conversations.")
    assert titles(page) == ["第二个", "第一个"]
    assert export_all(page)["conversations"] == conversations  # the same, to the last field
    item(page, "第一个").get_by_role("button", name="第一个").click()
    assert shown(page) == ["第一个", "二。"]  # the branch that was on screen
    expect(answer(page, 0).locator(".branch-count")).to_have_text("2/2")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"conversations": [{"id": "x", "nodes": {"root": {"id": "root", "children": ["y"]}}}]}))
    page.set_input_files("#import-file", bad)
    expect(page.locator("#storage-note")).to_have_text("Nothing imported: this file holds no hychat conversations.")
    assert len(titles(page)) == 2


def tiny_conversation(index: int) -> dict:
    """A stored conversation of one question and its answer, last touched at `index` (ms)."""
    return {
        "id": f"c{index}",
        "title": f"chat {index}",
        "renamed": False,
        "createdAt": index,
        "updatedAt": index,
        "leaf": "a",
        "nodes": {
            "root": {"id": "root", "children": ["q"], "current": "q"},
            "q": {"id": "q", "parent": "root", "role": "user", "content": f"q{index}", "files": [], "children": ["a"]},
            "a": {
                "id": "a",
                "parent": "q",
                "role": "assistant",
                "answers": [{"content": "a", "reasoning": ""}],
                "children": [],
            },
        },
    }


def test_storage_is_bounded_the_oldest_conversations_go_first(page, tmp_path):
    limit = page.evaluate("import('./static/store.js').then((s) => s.MAX_CONVERSATIONS)")
    assert limit == 200
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"conversations": [tiny_conversation(i) for i in range(1, limit + 6)]}))
    page.set_input_files("#import-file", path)
    expect(page.locator("#storage-note")).to_contain_text(
        "5 older conversations were removed to stay within this browser's storage"
    )
    expect(page.locator("#conversations .conversation")).to_have_count(limit)
    listed = titles(page)
    assert listed[0] == f"chat {limit + 5}" and listed[-1] == "chat 6"  # 1 to 5, the oldest, went
    page.reload()
    expect(page.locator("#conversations .conversation")).to_have_count(limit)
    stored = page.evaluate("Object.keys(localStorage).filter((k) => k.startsWith('hychat.chat.')).length")
    assert stored == limit


# --- edit, regenerate, branches ------------------------------------------------------------------------


def test_edit_and_regenerate_make_branches_and_the_branch_shown_is_what_is_sent(page):
    bodies = answers_in_turn(page, ["答一", "答二", "答三", "答四", "答五", "答六"])
    settings(page, temperature="0", max_tokens="8")
    ask(page, "Q1")
    wait_answered(page, 0)
    ask(page, "Q2")
    wait_answered(page, 1)

    answer(page, 1).get_by_role("button", name="Regenerate").click()
    wait_answered(page, 1)
    assert bodies[2]["messages"] == [user("Q1"), assistant("答一"), user("Q2")]  # the history before it
    assert shown(page) == ["Q1", "答一", "Q2", "答三"]
    expect(answer(page, 1).locator(".branch-count")).to_have_text("2/2")
    answer(page, 1).get_by_role("button", name="Previous version").click()
    assert shown(page) == ["Q1", "答一", "Q2", "答二"]
    expect(answer(page, 1).locator(".branch-count")).to_have_text("1/2")
    expect(answer(page, 1).get_by_role("button", name="Previous version")).to_be_disabled()
    answer(page, 1).get_by_role("button", name="Next version").click()
    assert shown(page) == ["Q1", "答一", "Q2", "答三"]

    first_question = page.locator(".msg.user").nth(0)
    first_question.get_by_role("button", name="Edit and resend").click()
    page.fill(".edit-form textarea", "Q1 again")
    page.keyboard.press("Enter")
    wait_answered(page, 0)
    assert bodies[3]["messages"] == [user("Q1 again")]  # nothing of the other branch
    assert shown(page) == ["Q1 again", "答四"]
    expect(page.locator(".msg.user").nth(0).locator(".branch-count")).to_have_text("2/2")

    ask(page, "Q3")
    wait_answered(page, 1)
    assert bodies[4]["messages"] == [user("Q1 again"), assistant("答四"), user("Q3")]

    # Back to the first question's branch: as it was left, the regenerated answer on screen.
    page.locator(".msg.user").nth(0).get_by_role("button", name="Previous version").click()
    assert shown(page) == ["Q1", "答一", "Q2", "答三"]
    assert page.evaluate("window.hychat.conversation()") == [
        user("Q1"),
        assistant("答一"),
        user("Q2"),
        assistant("答三"),
    ]
    ask(page, "Q4")
    wait_answered(page, 2)
    assert bodies[5]["messages"] == [user("Q1"), assistant("答一"), user("Q2"), assistant("答三"), user("Q4")]

    page.reload()  # the tree and the branch on screen are kept
    assert shown(page) == ["Q1", "答一", "Q2", "答三", "Q4", "答六"]
    expect(page.locator(".msg.user").nth(0).locator(".branch-count")).to_have_text("1/2")
    expect(answer(page, 1).locator(".branch-count")).to_have_text("2/2")
    page.locator(".msg.user").nth(0).get_by_role("button", name="Next version").click()
    assert shown(page) == ["Q1 again", "答四", "Q3", "答五"]

    # Cancel leaves the question as it was.
    page.locator(".msg.user").nth(1).get_by_role("button", name="Edit and resend").click()
    page.keyboard.press("Escape")
    assert shown(page) == ["Q1 again", "答四", "Q3", "答五"] and len(bodies) == 6


# --- copy, code, formulas ------------------------------------------------------------------------------

RICH_ANSWER = 'Code:\n\n```python\ndef f(x):\n    return "<b>" + x\n```\n\nEuler: $e^{i\\pi}+1=0$\n\n$$\\frac{a}{b}$$'
CODE = 'def f(x):\n    return "<b>" + x\n'


@pytest.fixture
def clipboard_page(browser, server):
    with opened(browser, server.url, permissions=["clipboard-read", "clipboard-write"]) as page:
        yield page


def test_copy_an_answer_or_a_code_block_and_code_and_formulas_are_rendered(clipboard_page):
    page = clipboard_page
    answers_in_turn(page, [RICH_ANSWER])
    settings(page, temperature="0", max_tokens="120")
    ask(page, "写一个函数")
    wait_answered(page, 0)
    content = answer(page, 0).locator(".content")

    code = content.locator("pre > code.language-python")
    expect(code).to_have_text(CODE)
    assert code.locator(".hljs-keyword").first.inner_text() == "def"
    assert code.locator(".hljs-string").count() >= 1
    assert code.locator("b").count() == 0  # the code's HTML stays text
    maths = content.locator("math")
    expect(maths).to_have_count(2)
    assert maths.nth(0).locator("annotation").text_content() == "e^{i\\pi}+1=0"
    assert maths.nth(0).get_attribute("display") is None and maths.nth(1).get_attribute("display") == "block"
    assert maths.nth(1).locator("mfrac").count() == 1
    assert "$" not in content.inner_text()

    content.locator("pre .copy-code").click()
    expect(content.locator("pre .copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    answer(page, 0).get_by_role("button", name="Copy this answer").click()
    expect(answer(page, 0).get_by_role("button", name="Copy this answer")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == RICH_ANSWER
    page.locator(".msg.user").get_by_role("button", name="Copy this question").click()
    expect(page.locator(".msg.user").get_by_role("button", name="Copy this question")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "写一个函数"


def test_dollars_that_are_not_formulas_stay_text_and_a_bad_formula_shows_its_source(page):
    html = page.evaluate("window.hychat.renderMarkdown('It costs $5 and $10, or $ x $.')")
    assert "<math" not in html and "$5 and $10, or $ x $." in html
    html = page.evaluate("window.hychat.renderMarkdown('\\\\(a^2\\\\) and \\\\[b\\\\]')")
    assert html.count("<math") == 2 and 'display="block"' in html

    refused = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.evaluate(
        """() => {
            const box = document.createElement("div");
            box.id = "render-test";
            box.innerHTML = window.hychat.renderMarkdown("bad $\\\\frac{a$ and $\\\\color{red}{x}$ ok");
            document.body.append(box);
        }"""
    )
    error = page.locator("#render-test .math-error")
    expect(error).to_have_text("\\frac{a")
    assert "parse error" in error.get_attribute("title")
    expect(page.locator("#render-test math")).to_have_count(1)  # \color is MathML's mathcolor, no style
    assert page.locator("#render-test [style]").count() == 0
    page.evaluate("() => new Promise(requestAnimationFrame)")
    assert not refused, refused  # nothing the page's Content-Security-Policy had to block


# --- attached files --------------------------------------------------------------------------------------


def test_an_attached_text_file_reaches_the_model(page, server, tmp_path):
    requests = chat_requests(page)
    settings(page, temperature="0", max_tokens="4")
    csv = tmp_path / "fruit.csv"
    csv.write_text("name,qty\napple,3\n```\n", encoding="utf-8")  # a fence in the file cannot close the block
    page.set_input_files("#attach-file", csv)
    expect(page.locator("#attachments .chip-name")).to_have_text("fruit.csv")
    ask(page, "一共有多少？")
    wait_answered(page, 0)

    sent = "一共有多少？\n\nFile: fruit.csv\n````csv\nname,qty\napple,3\n```\n````"
    assert requests[0].post_data_json["messages"] == [user(sent)]
    expect(page.locator(".msg.user .content")).to_have_text("一共有多少？")
    expect(page.locator(".msg.user .chip-name")).to_have_text("fruit.csv")
    expect(page.locator("#attachments")).to_be_hidden()  # sent with that question only
    prompt = httpx.post(f"{server.url}/apply-template", json={"messages": [user(sent)]}, timeout=30).json()["prompt"]
    assert "File: fruit.csv" in prompt and "apple,3" in prompt

    ask(page, "谢谢")  # the file stays in the history the model gets
    wait_answered(page, 1)
    assert requests[1].post_data_json["messages"][0] == user(sent)


def test_a_binary_or_too_large_file_is_refused_with_a_clear_message(page, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    page.set_input_files("#attach-file", image)
    expect(page.locator("#attach-error")).to_have_text(
        "photo.png is not a text file: attach code, Markdown, CSV or plain text."
    )
    big = tmp_path / "big.txt"
    big.write_text("x" * 150 * 1024)
    page.set_input_files("#attach-file", big)
    expect(page.locator("#attach-error")).to_contain_text("big.txt is 150 KB: files up to 100 KB can be attached.")
    expect(page.locator("#attachments")).to_be_hidden()

    ok = tmp_path / "notes.md"
    ok.write_text("# Notes\n")
    page.set_input_files("#attach-file", ok)
    expect(page.locator("#attach-error")).to_be_hidden()
    expect(page.locator("#attachments .chip-name")).to_have_text("notes.md")
    page.get_by_role("button", name="Remove notes.md").click()
    expect(page.locator("#attachments")).to_be_hidden()


# --- themes, errors, keyboard, narrow screens ------------------------------------------------------------

DARK_BG, LIGHT_BG = "rgb(22, 24, 28)", "rgb(255, 255, 255)"


def background(page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def test_the_theme_follows_the_browser_and_the_switch_overrides_it(browser, server):
    with opened(browser, server.url, color_scheme="dark") as page:
        assert background(page) == DARK_BG
        settings(page)
        page.select_option("#theme", "light")
        assert background(page) == LIGHT_BG
        page.reload()  # kept in this browser
        assert background(page) == LIGHT_BG
        settings(page)
        page.select_option("#theme", "system")
        assert background(page) == DARK_BG
    with opened(browser, server.url, color_scheme="light") as page:
        assert background(page) == LIGHT_BG
        settings(page)
        page.select_option("#theme", "dark")
        assert background(page) == DARK_BG
        assert page.evaluate("getComputedStyle(document.documentElement).colorScheme") == "dark"


ERROR_BODY = {"error": {"message": "the queue is full", "type": "server_error", "param": None, "code": "queue_full"}}


def test_errors_stand_out_say_what_to_do_and_retry(page):
    settings(page, temperature="0", max_tokens="4")
    page.route(CHAT_URL, lambda route: route.fulfill(status=429, json=ERROR_BODY))
    ask(page, "你好")
    box = answer(page, 0).locator(".error")
    expect(box.locator(".error-message")).to_have_text("Error: the queue is full")
    expect(box.locator(".error-hint")).to_have_text("The server is busy: wait a moment, then retry.")
    colours = box.evaluate("(e) => [getComputedStyle(e).borderLeftColor, getComputedStyle(e).backgroundColor]")
    assert colours == ["rgb(207, 34, 46)", "rgb(255, 235, 233)"]  # the danger colours, not grey text
    assert page.evaluate("window.hychat.conversation()") == []  # a failed turn is not sent again

    page.unroute(CHAT_URL)
    page.route(CHAT_URL, lambda route: route.abort("connectionrefused"))
    box.get_by_role("button", name="Ask for this answer again").click()
    expect(answer(page, 0).locator(".error-hint")).to_have_text(
        "Is the server still running? Start it again (make run), then retry."
    )
    expect(answer(page, 0).locator(".branch-count")).to_have_text("2/2")

    page.unroute(CHAT_URL)
    answer(page, 0).get_by_role("button", name="Ask for this answer again").click()  # now it answers
    wait_answered(page, 0)
    expect(answer(page, 0).locator(".error")).to_have_count(0)
    expect(answer(page, 0).locator(".branch-count")).to_have_text("3/3")


def test_the_keyboard_shift_enter_escape_and_new_chat(page):
    settings(page, temperature="0.8", max_tokens="400")
    page.locator("#input").press_sequentially("第一行")
    page.keyboard.press("Shift+Enter")
    page.locator("#input").press_sequentially("第二行")
    expect(page.locator("#input")).to_have_value("第一行\n第二行")
    expect(page.locator(".msg")).to_have_count(0)
    page.fill("#input", "")
    ask(page, "请写一个很长的故事，关于一条龙和一座城堡。")
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant .content')?.textContent.length > 10", timeout=120_000
    )
    page.keyboard.press("Escape")
    expect(answer(page, 0).locator(".meta")).to_have_text("Stopped")
    expect(page.locator("#send")).to_be_visible()
    page.keyboard.press("Control+Shift+O")
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#input")).to_be_focused()
    assert page.evaluate("window.hychat.conversation()") == []
    expect(page.locator("#conversations .conversation")).to_have_count(1)  # the stopped one is kept


def test_the_narrow_layout_has_no_sideways_scroll_and_the_list_slides_over(browser, server):
    with opened(browser, server.url, viewport=PHONE) as page:
        answers_in_turn(page, [RICH_ANSWER.replace("x\n", "x  # " + "a long comment " * 8 + "\n")])
        settings(page, temperature="0", max_tokens="160")
        ask(page, "写一个函数")
        wait_answered(page, 0)
        page.click("#settings-toggle")
        expect(page.locator("#sidebar")).to_be_hidden()  # closed on a phone, the chat takes the width
        # The header keeps two rows: the title with its buttons, then the model picker and Compare.
        title, picker = page.locator(".bar h1").bounding_box(), page.locator("#model").bounding_box()
        assert page.locator("#settings-toggle").bounding_box()["y"] < picker["y"]
        assert page.locator(".bar .toggle").bounding_box()["y"] < picker["y"] + picker["height"]
        assert page.locator(".bar").bounding_box()["height"] < 3 * title["height"] + 40
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert page.evaluate("document.body.scrollWidth") <= PHONE["width"]
        composer = page.locator("#composer").bounding_box()
        assert composer["x"] >= 0 and composer["x"] + composer["width"] <= PHONE["width"]

        page.click("#sidebar-toggle")
        expect(page.locator("#sidebar")).to_be_visible()
        box = page.locator("#sidebar").bounding_box()
        assert box["x"] == 0 and box["width"] <= PHONE["width"]
        page.locator("#backdrop").click(position={"x": PHONE["width"] - 10, "y": 400})
        expect(page.locator("#sidebar")).to_be_hidden()

        page.click("#sidebar-toggle")
        page.get_by_role("button", name="写一个函数").click()  # picking one closes the list
        expect(page.locator("#sidebar")).to_be_hidden()
        expect(page.locator(".msg")).to_have_count(2)
        settings(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
