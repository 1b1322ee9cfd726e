"""Training stages as 2 processes give what 1 process gives: `hfstack <stage> --launcher accelerate
--num_processes 2` (2 gloo ranks on CPU) against one process with the same global batch, compared
on the final weights; only the main process writes, and the report says how the run was spread.

    python -m pytest -q tests/e2e/test_multiprocess.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from foreign import build_tiny_base
from tiny import toy_preferences

pytestmark = pytest.mark.slow


def hfstack(*args: str, processes: int = 1, cwd=None) -> None:
    launch = ["--launcher", "accelerate", "--num_processes", str(processes)] if processes > 1 else []
    env = os.environ | ({"PYTHONPATH": f"{cwd}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"} if cwd else {})
    result = subprocess.run([sys.executable, "-m", "hfstack", *args, *launch, "--progress", "false"],
                            capture_output=True, text=True, timeout=900, cwd=cwd, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def largest_difference(one, two) -> float:
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def moved(folder, start) -> float:
    a, b = load_file(folder / "model.safetensors"), load_file(start / "model.safetensors")
    return max(float((a[k] - b[k]).abs().max()) for k in a if k in b and a[k].shape == b[k].shape)


def one_against_two(stage: str, tmp_path, *args: str, report: str = "eval.json") -> float:
    """The stage on 1 process (8 a step) and on 2 (4 each: the same global batch); the largest weight
    difference between the two results, after checking the 2-process report says how it ran."""
    hfstack(stage, *args, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8")
    hfstack(stage, *args, "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4", processes=2)
    two = json.loads((tmp_path / "two" / report).read_text())
    assert (two["world_size"], two["distributed_type"]) == (2, "MULTI_CPU")
    assert json.loads((tmp_path / "one" / report).read_text())["world_size"] == 1
    difference = largest_difference(tmp_path / "one", tmp_path / "two")
    print(f"\n[2 processes] {stage}: largest weight difference {difference:.2e}")
    return difference


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_base(tmp_path_factory.mktemp("mp") / "base")


def test_sft_on_two_processes_matches_one(base, tmp_path):
    difference = one_against_two("sft", tmp_path, "--model_name_or_path", str(base), "--counts", "{arithmetic: 200}",
                                 "--max_steps", "6", "--learning_rate", "0.003", "--logging_steps", "1",
                                 report="summary.json")
    assert difference < 1e-4 < moved(tmp_path / "one", base)  # the same training, not no training


@pytest.mark.xfail(strict=True, reason="open (issue 28): 2 processes end 3.3e-3 away from 1 (sft and dpo: 1e-7); "
                   "the first step sees the same pairs and loss (0.6921) but a different gradient norm (0.193 vs "
                   "0.301), so RewardTrainer's gradient under DDP is not the 1-process one")
def test_reward_on_two_processes_matches_one(tiny_sft_model, tmp_path):
    prefs = toy_preferences(tmp_path / "prefs")
    assert one_against_two("reward", tmp_path, "--model_name_or_path", str(tiny_sft_model), "--dataset_name",
                           str(prefs), "--max_steps", "4", "--learning_rate", "0.003") < 1e-4


def test_dpo_on_two_processes_matches_one(tiny_sft_model, tmp_path):
    prefs = toy_preferences(tmp_path / "prefs")
    assert one_against_two("dpo", tmp_path, "--model_name_or_path", str(tiny_sft_model), "--dataset_name",
                           str(prefs), "--max_steps", "4", "--learning_rate", "0.003", "--watch_steps", "100") < 1e-4


def test_only_the_main_process_writes(base, tmp_path):
    hfstack("sft", "--model_name_or_path", str(base), "--counts", "{arithmetic: 40}", "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "two"), processes=2)
    assert (tmp_path / "two" / "summary.json").is_file()
    lines = (tmp_path / "two" / "eval_sets.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))  # one writer: no rank wrote the held-out sets a second time


@pytest.mark.parametrize("stage", ["rl", "rlhf-grpo", "rlhf-rloo"])
def test_rollout_stages_train_as_two_processes(stage, tiny_sft_model, tiny_reward_model, tmp_path):
    """Rollouts are sampled on each rank, so these are not compared with one process: the run trains,
    on 2 ranks, and says so."""
    # groups of 4 sampled at temperature 1: some group's answers score differently, so GRPO has a signal
    sampling = ["--max_steps", "3", "--num_generations", "4", "--prompts_per_step", "2", "--learning_rate", "0.01",
                "--temperature", "1.0"]
    if stage == "rl":  # a user task whose reward varies within a group: the share of 'e' in the answer
        (tmp_path / "toy_reward.py").write_text(
            "def share_of_e(prompts, completions, **kwargs):\n"
            "    return [r.count('e') / max(1, len(r)) for r in kwargs['reply']]\n")
        (tmp_path / "tasks.jsonl").write_text("".join(json.dumps({"prompt": f"Write about {w}."}) + "\n"
                                                      for w in ("cats", "tea", "rain", "owls")))
        hfstack("rl", "--model_name_or_path", str(tiny_sft_model), "--output_dir", str(tmp_path / "out"),
                "--tasks", "{}", "--dataset_name", str(tmp_path / "tasks.jsonl"), "--reward_funcs",
                "toy_reward:share_of_e", "--use_tools", "false", "--max_completion_length", "16", "--eval_limit",
                "4", *sampling, processes=2, cwd=tmp_path)
    else:
        hfstack("rlhf", "--model_name_or_path", str(tiny_sft_model), "--reward_model_path", str(tiny_reward_model),
                "--output_dir", str(tmp_path / "out"), "--algo", stage.split("-")[1], "--max_completion_length", "12",
                *sampling, processes=2)
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert (report["world_size"], report["distributed_type"]) == (2, "MULTI_CPU")
    assert moved(tmp_path / "out", tiny_sft_model) > 0  # the policy trained
