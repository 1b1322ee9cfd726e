"""`hfstack rl`: the built-in rewards, GRPO raising the reward on a user task, the Python tool inside
rollouts, and config errors that stop before any work.

    python -m pytest -q tests/stages/test_rl.py
"""

import json
import textwrap

import pytest
import torch

from hfstack.core.config import ConfigError
from hfstack.rlalgo.rewards import correctness_reward, format_reward
from hfstack.stages.rl import RLConfig, run_rl

# ------------------------------------------------------------------------------------------ rewards


def test_builtin_rewards_score_correctness_and_format():
    tasks = ["arithmetic", "arithmetic", "counting", "user", "counting", "arithmetic", "arithmetic"]
    answers = ["7", "7", "2", "x", "2", "-1234", "7"]
    replies = ["The answer is 7.", "the result: 17", "There are 2 'l' in 'hello'.", "anything",
               # the hack RL found when any number in the answer counted: list many, one is right
               "Spelling it out: p (1), o (2), l (3), e, s", "The answer is -1,234.", "7 or 8"]
    logged = {}
    assert correctness_reward(None, task=tasks, answer=answers, reply=replies,
                              log_metric=logged.__setitem__) == [1.0, 0.0, 1.0, None, 0.0, 1.0, 0.0]
    assert logged == {"correct/arithmetic": 0.5, "correct/counting": 0.5}
    scores = format_reward(None, task=tasks[:4], reply=replies[:4], finished=[True, False, True, True],
                           tool_errors=[0, 1, 0, 0])
    assert scores[:3] == [1.0, 0.0, 1.0] and scores[3] is None


# ------------------------------------------------------------------------------------------ GRPO


def test_grpo_raises_the_reward_on_a_toy_user_task(tiny_sft_model, tmp_path, monkeypatch):
    """A user task by import path: the reward is the share of 'e' in the answer. Within a few GRPO
    steps the mean reward rises, and every trained parameter changes."""
    (tmp_path / "toy_reward.py").write_text(textwrap.dedent("""
        def share_of_e(prompts, completions, **kwargs):
            return [r.count("e") / max(1, len(r)) for r in kwargs["reply"]]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"Write about {w}."}) + "\n"
                             for w in ("cats", "tea", "rain", "owls", "trains", "books", "snow", "bread")))
    from transformers import AutoModelForCausalLM

    before = {n: p.clone() for n, p in AutoModelForCausalLM.from_pretrained(tiny_sft_model).named_parameters()}
    out = run_rl(RLConfig(model_name_or_path=str(tiny_sft_model), output_dir=str(tmp_path / "rl"), tasks={},
                          dataset_name=str(tasks),
                          reward_funcs=["toy_reward:share_of_e"], max_steps=12, learning_rate=3e-3,
                          num_generations=8, prompts_per_step=2, max_completion_length=16, eval_limit=4,
                          logging_steps=1, use_tools=False, progress=False))
    rewards = json.loads((out / "eval.json").read_text())["reward_curves"]["share_of_e"]
    assert len(rewards) == 12
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.02, rewards
    after = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)
    report = json.loads((out / "eval.json").read_text())
    assert set(report["pass@1_before"]) == {"arithmetic", "counting"} and report["steps"] == 12


def test_grpo_runs_the_python_tool_inside_rollouts(tiny_sft_model, tmp_path, monkeypatch):
    """Built-in tasks: the rollout function runs the tool loop and masks tool output out of the loss."""
    from hfstack.stages import rl as reinforcement

    seen = {}
    original = reinforcement.tool_rollout

    def spying_rollout(*args):
        rollout = original(*args)

        def wrapped(prompts, trainer):
            result = rollout(prompts, trainer)
            seen.setdefault("masks", []).extend(result["env_mask"])
            seen.setdefault("lengths", []).extend(len(c) == len(m) for c, m in zip(result["completion_ids"],
                                                                                   result["env_mask"]))
            return result
        return wrapped

    monkeypatch.setattr(reinforcement, "tool_rollout", spying_rollout)
    out = run_rl(RLConfig(model_name_or_path=str(tiny_sft_model), output_dir=str(tmp_path / "rl"),
                          tasks={"arithmetic": 8, "counting": 8}, max_steps=2, num_generations=2,
                          prompts_per_step=2, max_completion_length=40, eval_limit=6, logging_steps=1, progress=False))
    assert seen["masks"] and all(set(m) <= {0, 1} for m in seen["masks"]) and all(seen["lengths"])
    report = json.loads((out / "eval.json").read_text())
    assert report["held_out_items"] == {"arithmetic": 6, "counting": 6}
    assert (out / "eval_sets.jsonl").is_file()  # carried forward for `hfstack eval`


def test_rl_config_errors():
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['chess'\].*built-in: arithmetic, counting \("):
        RLConfig(tasks={"chess": 5})  # the registry's tasks with an answer form
    with pytest.raises(ConfigError, match="reward_funcs"):
        RLConfig(dataset_name="x.jsonl")
    with pytest.raises(ConfigError, match="num_generations"):
        RLConfig(num_generations=1)


def test_a_bad_reward_function_path_fails_before_any_work(tiny_sft_model, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(ConfigError, match="cannot import reward function 'nowhere:nothing'"):
        run_rl(RLConfig(model_name_or_path=str(tiny_sft_model), output_dir=str(tmp_path / "rl"), tasks={},
                        dataset_name=str(tasks),
                        reward_funcs=["nowhere:nothing"]))
    no_prompt = tmp_path / "bad.jsonl"
    no_prompt.write_text(json.dumps({"question": "hi"}) + "\n")
    with pytest.raises(ConfigError, match="no 'prompt' column"):
        run_rl(RLConfig(model_name_or_path=str(tiny_sft_model), output_dir=str(tmp_path / "rl"), tasks={},
                        dataset_name=str(no_prompt),
                        reward_funcs=["hfstack.rlalgo.rewards:format_reward"]))


