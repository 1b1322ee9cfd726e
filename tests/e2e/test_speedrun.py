"""The whole tiny speedrun through the real `hfstack` command, shrunk by overrides: killed while SFT
trains, run again (it finishes, skipping what was done), and a third time (it skips everything); each
step's marker sits in its own output folder.

    python -m pytest -q tests/e2e/test_speedrun.py
"""

import json
import os
import subprocess
import sys

import pytest

from hfstack.core.rundir import MARKER

ENV = os.environ | {"HF_HUB_OFFLINE": "1"}


def hfstack(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hfstack", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=600)


QUICK = ("{pretrain: {max_steps: 20}, sft: {max_steps: 10, counts: {identity: 20, arithmetic: 20, counting: 20, "
         "knowledge: 20, search: 20}, interrogation_samples: 1, "
         "first_phase: {counts: {arithmetic: 20}, max_steps: 3, per_device_train_batch_size: 4}}, "
         "eval: {limit: 8, max_new_tokens: 16}, "
         "rl: {max_steps: 2, tasks: {arithmetic: 8, counting: 8}, num_generations: 2, prompts_per_step: 2, "
         "max_completion_length: 24, eval_limit: 4}, rank: {num_prompts: 12, max_new_tokens: 12}, "
         "reward: {max_steps: 4}, rlhf: {max_steps: 2, num_generations: 2, prompts_per_step: 2, "
         "max_completion_length: 12, logging_steps: 1}}")


@pytest.mark.slow
def test_speedrun_tiny_runs_and_skips_finished_stages(tmp_path):
    """Killed (SIGKILL) while the sft stage trains, then run again: it finishes every stage, skipping
    the ones done before the kill; a third run skips everything."""
    import signal
    import time

    run = tmp_path / "run"
    args = [sys.executable, "-m", "hfstack", "speedrun", "--preset", "tiny", "--output_dir", str(run),
            "--crawl_pages", "60", "--overrides",
            QUICK.replace("sft: {max_steps: 10", "sft: {max_steps: 10, save_steps: 4")]
    killed = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    for line in killed.stdout:
        if "] sft: starting" in line:
            break
    deadline = time.time() + 120
    while not list((run / "sft" / "checkpoints").glob("checkpoint-*")) and time.time() < deadline:
        time.sleep(0.2)  # kill it in the middle of training, after its first checkpoint
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert not (run / "sft" / MARKER).is_file()  # killed midway: not done
    assert json.loads((run / "base" / MARKER).read_text())["step"] == "pretrain"  # pretrain's marker: in RUN/base
    first = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "pretrain: already done" in first.stdout and "sft: starting" in first.stdout
    assert "first phase already done" in first.stdout  # killed in the main phase: the first one is kept
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["documents_kept"] > 10
    assert (run / "data" / "config.yaml").is_file() and (run / "data" / MARKER).is_file()
    assert list((run / "data").glob("*.parquet"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")  # the next stage trained on the data stage's text
    assert json.loads((run / "tokenizer" / "eval.json").read_text())["train_docs"] == stats["documents_kept"] - \
        json.loads((run / "tokenizer" / "eval.json").read_text())["heldout_docs"]
    assert tokenizer.chat_template and (run / "tokenizer" / MARKER).is_file()
    view = hfstack("tokenize", "--tokenizer", str(run / "tokenizer"), "Hello <|user_start|> 12345")
    assert view.returncode == 0 and "bytes/token" in view.stdout
    assert json.loads((run / "base" / "summary.json").read_text())["steps"] == 20
    assert (run / "generate" / "samples.json").is_file()
    assert json.loads((run / "regurgitation" / "report.json").read_text())["train"]["docs"] > 0
    assert json.loads((run / "sft" / "summary.json").read_text())["steps"] == 10
    assert json.loads((run / "sft" / "summary.json").read_text())["first_phase_steps"] == 3
    assert {"identity", "arithmetic", "counting"} <= set(json.loads((run / "eval" / "eval.json").read_text()))
    rl = json.loads((run / "rl" / "eval.json").read_text())
    assert rl["steps"] == 2 and set(rl["pass@1_after"]) == {"arithmetic", "counting"}
    assert json.loads((run / "prefs" / "summary.json").read_text())["ranked"] == 12
    assert json.loads((run / "rm" / "eval.json").read_text())["steps"] == 4
    assert len((run / "rlhf" / "watch.jsonl").read_text().splitlines()) == 2
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "rlhf")  # the final model: a plain transformers model
    card = (run / "rlhf" / "README.md").read_text()  # the report card is its model card
    assert card.startswith("---\nlibrary_name: transformers") and "## Data: the funnel" in card
    assert "## RLHF (grpo" in card and (run / "report" / "pretraining.png").is_file()
    assert "## The final model against the SFT model" in card  # final-eval ran on RUN/rlhf
    assert set(json.loads((run / "final-eval" / "eval.json").read_text())) == set(
        json.loads((run / "eval" / "eval.json").read_text()))
    assert "<table>" in (run / "report" / "report.html").read_text()
    for step, folder in (("pretrain", "base"), ("rank", "prefs"), ("reward", "rm"), ("final-eval", "final-eval")):
        assert json.loads((run / folder / MARKER).read_text())["step"] == step  # each marker where its outputs are
        assert f"| {step} | " in card  # with its time on the report card
    assert not any((run / name).exists() for name in ("pretrain", "rank", "reward"))
    second = hfstack("speedrun", "--preset", "tiny", "--output_dir", str(run), "--crawl_pages", "60",
                     "--overrides", QUICK)
    assert second.returncode == 0
    assert "data: already done, skipping" in second.stdout and "crawl: already done, skipping" in second.stdout
    assert "tokenizer: already done, skipping" in second.stdout and "pretrain: already done" in second.stdout
