"""The chat page at `/` in a real browser: Debian's Chromium driven by
Playwright, headless and kept off the network, against `ember serve` on the
default model, a second one that needs an API key, and a third that routes
to the first as an upstream, all on loopback. Started by
scripts/web-tests.sh, which sets EMBER_BASE_URL, EMBER_KEY_URL,
EMBER_FRONT_URL, EMBER_API_KEY and EMBER_MODEL. Controls are found by their accessible
names, as a screen reader finds them."""

import json
import os
import re
import time
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

BASE_URL = os.environ["EMBER_BASE_URL"]
KEY_URL = os.environ["EMBER_KEY_URL"]
FRONT_URL = os.environ["EMBER_FRONT_URL"]
API_KEY = os.environ["EMBER_API_KEY"]
MODEL = os.environ["EMBER_MODEL"]
SCREENSHOTS = os.environ.get("EMBER_SCREENSHOT_DIR")
CHROMIUM = os.environ.get("EMBER_CHROMIUM", "/usr/bin/chromium")
# Nothing but loopback resolves, and Chromium's own background traffic is off.
OFFLINE_FLAGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-default-apps", "--metrics-recording-only", "--disable-domain-reliability",
]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=OFFLINE_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(f"{BASE_URL}/")
    expect(page.get_by_role("combobox", name="Model")).to_have_value(MODEL)
    yield page
    assert errors == [], errors
    context.close()


def settings(page, temperature="0", max_tokens="24"):
    page.get_by_role("slider", name="Temperature").fill(temperature)
    page.get_by_role("spinbutton", name="Max tokens").fill(max_tokens)


def ask(page, text):
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def answers(page):
    return page.get_by_role("article", name="assistant")


def wait_done(page, timeout=120_000):
    expect(page.get_by_role("button", name="Stop")).to_be_disabled(timeout=timeout)


def metric(name):
    req = urllib.request.Request(f"{BASE_URL}/metrics")
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_the_page_is_served_with_a_strict_policy():
    with urllib.request.urlopen(f"{BASE_URL}/", timeout=10) as r:
        policy = r.headers["Content-Security-Policy"]
        body = r.read().decode()
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http://" not in body and "https://" not in body, "nothing may load from another host"


def test_a_streamed_answer_and_a_second_turn_that_uses_the_first(page):
    settings(page, max_tokens="48")
    requests = []
    page.on("request", lambda r: requests.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    ask(page, "What is the capital of France?")
    expect(page.get_by_role("article", name="user")).to_have_text(re.compile("capital of France"))
    answer = answers(page).first
    # Streamed: the answer shows text while the request is still running.
    page.wait_for_function(
        "() => { const a = document.querySelector('article.assistant'); const s = document.getElementById('stop');"
        " return a && a.querySelector('.body').textContent.length > 0 && !s.disabled; }", timeout=120_000)
    wait_done(page)
    assert "Paris" in answer.inner_text()
    if SCREENSHOTS:
        page.screenshot(path=os.path.join(SCREENSHOTS, "chat-page.png"))
    ask(page, "And of Germany?")
    wait_done(page)
    expect(answers(page)).to_have_count(2)
    second = requests[-1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert "Paris" in second[1]["content"] and second[2]["content"] == "And of Germany?"


def test_max_tokens_changes_the_length(page):
    settings(page, max_tokens="4")
    ask(page, "Tell me a long story about a dragon.")
    wait_done(page)
    expect(answers(page).last).to_contain_text("Cut at the max tokens limit.")
    short_text = answers(page).last.locator(".body").inner_text()
    page.get_by_role("button", name="New chat").click()
    expect(page.get_by_role("article")).to_have_count(0)
    settings(page, max_tokens="40")
    ask(page, "Tell me a long story about a dragon.")
    wait_done(page)
    long_text = answers(page).last.locator(".body").inner_text()
    assert 0 < len(short_text) < len(long_text), (short_text, long_text)


def test_stop_ends_the_stream_and_cancels_the_request(page):
    settings(page, temperature="0.7", max_tokens="2000")
    ask(page, "Write a very long essay about the history of Rome.")
    page.wait_for_function("() => { const a = document.querySelector('article.assistant .body');"
                           " return a && a.textContent.length > 20; }", timeout=120_000)
    page.get_by_role("button", name="Stop").click()
    wait_done(page, timeout=10_000)
    expect(answers(page).last).to_contain_text("Stopped.")
    deadline = time.monotonic() + 15
    while metric("ember:num_requests_running") != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric("ember:num_requests_running") == 0


def test_regenerate_and_edit_an_earlier_turn(page):
    settings(page, temperature="1", max_tokens="8")
    ask(page, "Name a color.")
    wait_done(page)
    page.get_by_role("button", name="Regenerate").click()
    wait_done(page)
    expect(answers(page)).to_have_count(1)
    ask(page, "Name another.")
    wait_done(page)
    page.get_by_role("button", name="Edit this message").first.click()
    expect(page.get_by_role("textbox", name="Message")).to_have_value("Name a color.")
    expect(page.get_by_role("article")).to_have_count(0)


def test_export_downloads_the_conversation_as_markdown(page):
    settings(page, max_tokens="16")
    page.get_by_role("textbox", name="System prompt").fill("Be brief.")
    ask(page, "What is the capital of France?")
    wait_done(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Export").click()
    path = download.value.path()
    text = open(path, encoding="utf-8").read()
    assert download.value.suggested_filename.endswith(".md")
    assert f"- model: {MODEL}" in text and "- temperature: 0" in text and "- max_tokens: 16" in text
    assert "## System\n\nBe brief." in text and "## User\n\nWhat is the capital of France?" in text
    assert "## Assistant" in text


def test_the_token_counter_moves_while_typing(page):
    status = page.get_by_role("status", name="Context tokens")
    expect(status).to_have_text(re.compile(r"^0 / \d+$"))
    window = int(status.inner_text().split("/")[1])
    with urllib.request.urlopen(f"{BASE_URL}/v1/models", timeout=10) as r:
        assert window == json.load(r)["data"][0]["max_model_len"]
    page.get_by_role("textbox", name="Message").press_sequentially("Hello there, how are you today?")
    expect(status).to_have_text(re.compile(r"^[1-9]\d* / \d+$"))
    first = int(status.inner_text().split("/")[0])
    page.get_by_role("textbox", name="Message").press_sequentially(" Tell me about the sea and the sky.")
    page.wait_for_function(f"() => parseInt(document.getElementById('context').textContent) > {first}")


INJECTION = '<img src=x onerror=alert(1)> <script>alert(2)</script> **bold**'


def test_markup_in_an_answer_or_a_message_shows_as_text(page):
    # An answer that carries markup: the stream is the server's shape, its text chosen here.
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
              {"choices": [{"index": 0, "delta": {"content": INJECTION}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))
    ask(page, INJECTION)
    wait_done(page)
    assert INJECTION in page.get_by_role("article", name="user").inner_text()
    answer = answers(page).first
    expect(answer).to_contain_text("<img src=x onerror=alert(1)>")
    expect(answer).to_contain_text("<script>alert(2)</script>")
    assert page.locator("#log img, #log script").count() == 0
    expect(answer.locator("strong")).to_have_text("bold")


def test_errors_are_shown(page):
    settings(page, max_tokens="100000000")
    ask(page, "hi")
    expect(page.get_by_role("alert")).to_contain_text(re.compile("too long|window|max_tokens"))


def test_a_key_protected_server_asks_for_the_key(browser):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{KEY_URL}/")
    expect(page.get_by_role("alert")).to_contain_text("API key")
    key = page.get_by_label("API key")
    key.fill(API_KEY)
    key.dispatch_event("change")
    expect(page.get_by_role("combobox", name="Model")).to_have_value(MODEL)
    expect(page.get_by_role("alert")).to_be_hidden()
    page.get_by_role("spinbutton", name="Max tokens").fill("8")
    ask(page, "hi")
    wait_done(page)
    expect(answers(page)).to_have_count(1)
    # The key stays in this browser for the next visit.
    page.reload()
    expect(page.get_by_role("combobox", name="Model")).to_have_value(MODEL)
    context.close()


def test_a_phone_width_and_the_dark_theme(browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    page = context.new_page()
    page.goto(f"{BASE_URL}/")
    expect(page.get_by_role("combobox", name="Model")).to_have_value(MODEL)
    # Settings fold away; everything else fits the width.
    expect(page.get_by_role("textbox", name="System prompt")).to_be_hidden()
    page.get_by_role("button", name="Settings").click()
    expect(page.get_by_role("textbox", name="System prompt")).to_be_visible()
    page.get_by_role("button", name="Settings").click()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    for name in ("Send", "Stop", "Regenerate", "Export", "New chat"):
        expect(page.get_by_role("button", name=name)).to_be_in_viewport()
    background = "getComputedStyle(document.body).backgroundColor"
    dark = page.evaluate(background)
    page.get_by_role("button", name="Switch theme").click()  # auto -> dark: unchanged here
    page.get_by_role("button", name="Switch theme").click()  # -> light
    assert page.evaluate(background) != dark
    if SCREENSHOTS:
        page.get_by_role("button", name="Switch theme").click()  # -> auto: dark again
        page.get_by_role("button", name="Settings").click()
        page.get_by_role("slider", name="Temperature").fill("0")
        page.get_by_role("spinbutton", name="Max tokens").fill("80")
        page.get_by_role("button", name="Settings").click()
        ask(page, "Write a Python function that adds two numbers.")
        wait_done(page)
        page.screenshot(path=os.path.join(SCREENSHOTS, "chat-page-phone-dark.png"))
    context.close()


def test_a_model_behind_an_upstream(browser):
    """Through a routing Ember the model is remote: no /tokenize, so the
    counter shows the last answer's usage."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{FRONT_URL}/")
    expect(page.get_by_role("combobox", name="Model")).to_have_value(MODEL)
    page.get_by_role("slider", name="Temperature").fill("0")
    page.get_by_role("spinbutton", name="Max tokens").fill("16")
    ask(page, "What is the capital of France?")
    wait_done(page)
    assert "Paris" in answers(page).first.inner_text()
    expect(page.get_by_role("status", name="Context tokens")).to_have_text(re.compile(r"^[1-9]\d* / \d+$"))
    context.close()


def fake_stream(page, *deltas):
    """Answers the page's next chat request with these deltas, in the server's SSE shape."""
    chunks = [{"choices": [{"index": 0, "delta": d}]} for d in deltas]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))


def test_tool_calls_and_json_answers_are_shown_readably(page):
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    fake_stream(page, {"tool_calls": [call]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Paris",'}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"unit":"celsius"}'}}]})
    ask(page, "Weather in Paris?")
    wait_done(page)
    answer = answers(page).first
    expect(answer).to_contain_text("Tool call: get_weather")
    expect(answer.locator("pre code")).to_have_text('{\n  "city": "Paris",\n  "unit": "celsius"\n}')
    page.unroute("**/v1/chat/completions")
    fake_stream(page, {"content": '{"sunny":'}, {"content": ' true, "temperature": 21}'})
    ask(page, "As JSON?")
    wait_done(page)
    expect(answers(page).last.locator("pre code")).to_have_text('{\n  "sunny": true,\n  "temperature": 21\n}')


def test_shift_enter_adds_a_line_and_a_dead_server_is_reported(page):
    box = page.get_by_role("textbox", name="Message")
    box.fill("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("first line\nsecond line")
    expect(page.get_by_role("article")).to_have_count(0)
    page.route("**/v1/chat/completions", lambda route: route.abort("connectionrefused"))
    box.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("Cannot reach the server")
    expect(page.get_by_role("article", name="user")).to_have_text(re.compile("first line"))


def test_important_spans_are_marked_under_sparse_attention(browser):
    context = browser.new_context()
    page = context.new_page()
    # The models list of a server running sparse attention.
    card = {"id": MODEL, "object": "model", "owned_by": "ember", "max_model_len": 8192, "sparse_attention": True}
    page.route("**/v1/models", lambda route: route.fulfill(status=200, json={"object": "list", "data": [card]}))
    page.goto(f"{BASE_URL}/")
    expect(page.get_by_role("combobox", name="Model")).to_have_value(MODEL)
    page.get_by_role("textbox", name="Message").fill("Read this. [IMPORTANT]The code is 4711.[/IMPORTANT] Now answer.")
    expect(page.locator("#highlight mark")).to_have_text("[IMPORTANT]The code is 4711.[/IMPORTANT]")
    context.close()
