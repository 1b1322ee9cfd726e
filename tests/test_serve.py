"""`hfstack serve` in a real headless browser: a question goes in, the answer streams back, and the
Python tool call the assistant makes is run and shown. The model is a tiny one finetuned until it
answers this one question with a tool call, so the test is deterministic.

Needs /usr/bin/chromium (`apt-get install chromium`); skipped when it is missing."""

import json
import threading

import pytest

from browser import launch_chromium, needs_chromium
from sandbox_checks import needs_sandbox
from tiny import tiny_base

pytestmark = [pytest.mark.slow, needs_chromium]
QUESTION = "What is 6 times 7?"


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    from hfstack.stages.sft import SFTStageConfig, run_sft
    from hfstack.tasks.conversation import message, python_turns

    root = tmp_path_factory.mktemp("serve")
    tiny_base(root, docs=20, vocab_size=300, steps=2)
    conversation = [message("user", QUESTION), *python_turns("Let me compute it.", "print(6 * 7)", "42",
                                                             "The answer is 42.")]
    chats = root / "chats.jsonl"
    chats.write_text(json.dumps({"messages": conversation}) + "\n")
    return run_sft(SFTStageConfig(model_name_or_path=str(root / "base"), output_dir=str(root / "sft"), counts={},
                                  chat_files=[str(chats)] * 16, max_steps=80, learning_rate=1e-2, warmup_steps=1,
                                  per_device_train_batch_size=4, max_length=128, progress=False))


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
