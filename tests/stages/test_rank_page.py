"""The ranking page in a real headless browser (Debian's chromium driven by Playwright): rank with
keyboard and mouse, kill the server, restart it, and find every saved ranking still there.

Needs /usr/bin/chromium (`apt-get install chromium`); skipped when it is missing."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import launch_chromium, needs_chromium

pytestmark = [pytest.mark.slow, needs_chromium]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "hfstack", "rank", "--output_dir", str(directory), "--port",
                                str(port), "--model_name_or_path", "unused"], env=os.environ | {"HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.2)
    raise AssertionError("the ranking page did not start")


def saved(directory: Path) -> dict:
    lines = (directory / "rankings.jsonl").read_text().splitlines()
    return {row["prompt_id"]: row["order"] for row in map(json.loads, lines)}


def test_rank_by_keyboard_and_mouse_then_survive_a_restart(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    from hfstack.core.rundir import claim_output
    from hfstack.stages.rank import RankConfig, RankingStore

    claim_output("rank", RankConfig(output_dir=str(tmp_path),
                                    model_name_or_path="unused"))  # rollouts written by hand below
    store = RankingStore(tmp_path)
    store.write_rollouts([{"prompt_id": i, "prompt": f"Tell me a joke about topic{i}.",
                           "completions": [f"joke {j} about topic{i}" for j in range(5)]} for i in range(3)])
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        with playwright_api.sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("text=topic0")
            # prompt 0: keys 3 and 1, a click on the fifth answer, key 2; the last one places itself
            page.keyboard.press("3")
            page.keyboard.press("1")
            page.click(".card[data-index='4']")
            page.keyboard.press("2")
            assert page.inner_text(".card[data-index='3'] .place") == "#5"
            page.keyboard.press("Enter")
            page.wait_for_selector("text=1 of 3 prompts ranked")
            assert saved(tmp_path) == {0: [2, 0, 4, 1, 3]}
            # prompt 1: a pick taken back with Backspace, the Save button clicked with the mouse
            page.wait_for_selector("text=topic1")
            for key in ("1", "2", "Backspace", "5", "3", "4"):
                page.keyboard.press(key)
            page.click("#save")
            page.wait_for_selector("text=2 of 3 prompts ranked")
            assert saved(tmp_path)[1] == [0, 4, 2, 3, 1]
            # kill the server the hard way, start it again: the page resumes at prompt 2
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)
            server = start_server(tmp_path, port)
            page.reload()
            page.wait_for_selector("text=2 of 3 prompts ranked")
            page.wait_for_selector("text=topic2")
            browser.close()
    finally:
        server.kill()
        server.wait(timeout=10)
    assert saved(tmp_path) == {0: [2, 0, 4, 1, 3], 1: [0, 4, 2, 3, 1]}
    pairs = RankingStore(tmp_path).export_pairs()
    assert sum(pairs.values()) == 20  # two rankings of five: ten pairs each
