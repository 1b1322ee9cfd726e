"""`hfstack serve` in a real headless browser: a question goes in, the answer streams back, and the
Python tool call the assistant makes is run and shown. The model is a tiny one finetuned until it
answers this one question with a tool call, so the test is deterministic.

Needs /usr/bin/chromium (`apt-get install chromium`); skipped when it is missing."""

import threading

import pytest

from browser import launch_chromium, needs_chromium
from sandbox_checks import needs_sandbox
from tiny import QUESTION

pytestmark = [pytest.mark.slow, needs_chromium]


@needs_sandbox  # the tool's output is checked
def test_chat_streams_and_shows_the_tool_call(tool_model):
    playwright_api = pytest.importorskip("playwright.sync_api")
    from hfstack.stages.serve import ServeConfig, make_server

    server = make_server(ServeConfig(model_name_or_path=str(tool_model), port=0, max_new_tokens=96))
    assert server.server_address[0] == "127.0.0.1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with playwright_api.sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.fill("#question", QUESTION)
            page.keyboard.press("Enter")
            page.wait_for_selector(".assistant.final", timeout=60000)
            tool = page.inner_text(".tool")
            assert "[python] print(6 * 7)" in tool and "→ 42" in tool  # the sandbox really ran it
            answers = page.locator(".assistant").all_inner_texts()
            assert answers[0] == "Let me compute it." and answers[-1] == "The answer is 42."
            assert page.inner_text(".user") == QUESTION
            browser.close()
    finally:
        server.shutdown()
