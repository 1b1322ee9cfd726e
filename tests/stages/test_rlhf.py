"""`hfstack rlhf`: each algorithm (rloo, grpo, ppo) runs and logs the reward-hacking watch, PPO on two
processes under `accelerate launch`, the watch's alarm, PPO's resume, and config errors.

    python -m pytest -q tests/stages/test_rlhf.py
"""

import json
import os
import subprocess
import sys

import pytest

from hfstack.core.config import ConfigError
from hfstack.rlalgo.watch import HackingWatch
from hfstack.stages.rlhf import RLHFConfig, run_rlhf

from tiny import Killed, dies_in_step


@pytest.mark.parametrize("algo", ["rloo", "grpo", "ppo"])
def test_rlhf_runs_each_algorithm_and_logs_the_watch(tiny_sft_model, tiny_reward_model, tmp_path, algo):
    out = run_rlhf(RLHFConfig(model_name_or_path=str(tiny_sft_model), reward_model_path=str(tiny_reward_model),
                              output_dir=str(tmp_path / algo),
                              algo=algo, max_steps=4, num_generations=2, prompts_per_step=2, max_completion_length=12,
                              num_prompts=10, logging_steps=2, progress=False))
    rows = [json.loads(line) for line in (out / "watch.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert {"rm_score", "judge", "distinct2", "length"} <= set(rows[0])
    assert "kl" in rows[0]  # beta > 0: every algorithm measures the KL to the reference
    # the reward stage red-teamed its model: the watch counts answers that look like the attacks it found
    assert (tiny_reward_model / "attacks.jsonl").is_file() and 0 <= rows[0]["attack_like"] <= 1
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.slow
def test_ppo_runs_as_two_processes_under_accelerate_launch(tiny_sft_model, tiny_reward_model, tmp_path):
    """Through the launch shortcut: `hfstack rlhf --launcher accelerate --num_processes 2` (on CPU it
    picks recipes/accelerate/cpu.yaml, two gloo ranks)."""
    out = tmp_path / "ppo2"
    command = [sys.executable, "-m", "hfstack", "rlhf", "--launcher", "accelerate", "--num_processes", "2",
               "--algo", "ppo", "--model_name_or_path", str(tiny_sft_model),
               "--reward_model_path", str(tiny_reward_model), "--output_dir", str(out), "--max_steps", "2",
               "--num_generations", "2", "--prompts_per_step", "2", "--max_completion_length", "8",
               "--num_prompts", "6", "--logging_steps", "1", "--progress", "false"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["processes"] == 2 and report["steps_logged"] == 2


def watch_of(tmp_path, **options):
    return HackingWatch(RLHFConfig(**options), tmp_path / "watch.jsonl")


def test_watch_alarms_when_the_rm_and_the_judge_disagree(tmp_path):
    watch = watch_of(tmp_path)
    assert not watch.observe(1, {"rm_score": 0.0, "judge": 1.5, "distinct2": 1.0, "length": 20.0})
    watch.observe(2, {"rm_score": 1.0, "judge": 1.6, "distinct2": 0.95, "length": 20.0})  # both up: fine
    assert not watch.alarms
    watch.observe(3, {"rm_score": 1.2, "judge": 1.0, "distinct2": 0.9, "length": 20.0})  # RM up, judge down
    assert len(watch.alarms) == 1 and "reward hacking" in watch.alarms[0]
    watch.observe(4, {"rm_score": 0.1, "judge": 1.5, "distinct2": 0.3, "length": 20.0})  # repetition spike
    assert len(watch.alarms) == 2 and "repetition" in watch.alarms[1]
    rows = [json.loads(line) for line in (tmp_path / "watch.jsonl").read_text().splitlines()]
    assert [bool(r["alarm"]) for r in rows] == [False, False, True, True]
    stopper = watch_of(tmp_path, on_hack="stop")
    stopper.observe(1, {"rm_score": 0.0, "judge": 1.5, "distinct2": 1.0, "length": 20.0})
    assert stopper.observe(2, {"rm_score": 2.0, "judge": 0.5, "distinct2": 1.0, "length": 20.0})


def test_rlhf_config_errors():
    with pytest.raises(ConfigError, match="unknown algo"):
        RLHFConfig(algo="dpo")
    with pytest.raises(ConfigError, match="kl_target"):
        RLHFConfig(algo="rloo", kl_target=6.0)
    with pytest.raises(ConfigError, match="on_hack"):
        RLHFConfig(on_hack="panic")




def test_a_missing_policy_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no policy"):
        run_rlhf(RLHFConfig(model_name_or_path=str(tmp_path / "nope"), output_dir=str(tmp_path / "o")))


def test_ppo_resumes_from_its_checkpoint(tiny_sft_model, tiny_reward_model, tmp_path, capsys, monkeypatch):
    """A PPO run stopped after step 2 (its checkpoint saved) continues at step 3 when rerun; the
    watch keeps the logs from before the stop and their baseline."""
    options = dict(model_name_or_path=str(tiny_sft_model), reward_model_path=str(tiny_reward_model),
                   output_dir=str(tmp_path / "ppo"), algo="ppo",
                   num_generations=2, prompts_per_step=2, max_completion_length=8, num_prompts=6, logging_steps=1,
                   save_steps=2, progress=False, max_steps=4)

    dies_in_step(monkeypatch, HackingWatch, 3)  # after step 2's checkpoint
    with pytest.raises(Killed):
        run_rlhf(RLHFConfig(**options))
    monkeypatch.undo()
    assert (tmp_path / "ppo" / "checkpoints" / "step-2" / "complete").is_file()
    first_rows = (tmp_path / "ppo" / "watch.jsonl").read_text().splitlines()
    capsys.readouterr()
    run_rlhf(RLHFConfig(**options))  # the same run, rerun: resumes
    assert "resuming from" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "watch.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [json.dumps(r) for r in rows[:2]] == first_rows  # the logs from before the stop, unchanged
    assert [p.name for p in (tmp_path / "ppo" / "checkpoints").iterdir()] == ["step-4"]  # only the newest kept


def test_grpo_rollouts_run_the_policys_tools_with_its_search_index(tiny_sft_model, tiny_reward_model, tmp_path,
                                                                   monkeypatch):
    """algo grpo answers through the tool loop, with Python and search over the index beside the policy;
    the judge reads the visible answer (`reply`)."""
    import shutil

    import hfstack.rlalgo.rollouts as rollouts
    from hfstack.tools.search import SearchIndex

    policy = tmp_path / "policy"
    shutil.copytree(tiny_sft_model, policy)
    SearchIndex.build(["Owls hunt at night and fly without a sound."]).save(policy / "search_index")
    seen = []
    original = rollouts.assistant_replies

    def spying(model, tokenizer, conversations, max_new_tokens, tools=None, **options):
        seen.append(tools)
        return original(model, tokenizer, conversations, max_new_tokens, tools=tools, **options)

    monkeypatch.setattr(rollouts, "assistant_replies", spying)
    out = run_rlhf(RLHFConfig(model_name_or_path=str(policy), reward_model_path=str(tiny_reward_model),
                              output_dir=str(tmp_path / "grpo"), algo="grpo", max_steps=2, num_generations=2,
                              prompts_per_step=2, max_completion_length=12, num_prompts=6, logging_steps=1,
                              curve_steps=0, progress=False))
    assert seen and all(set(tools) == {"python", "search"} for tools in seen)
    assert "Owls hunt" in seen[0]["search"]("how do owls hunt")
    rows = [json.loads(line) for line in (out / "watch.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["judge"] for r in rows)
    assert (out / "search_index" / "passages.json").is_file()  # carried on with the policy
    with pytest.raises(ConfigError, match="use_tools runs the tool loop"):
        RLHFConfig(algo="rloo", use_tools=True)
