"""RL and RLHF stages: GRPO on verifiable and user tasks, rankings → pairs (crash-safe), the reward
model, RLHF with each algorithm, and the reward-hacking watch."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from hfstack.core.config import ConfigError
from hfstack.core.rundir import claim_output
from hfstack.rlalgo.rewards import correctness_reward, format_reward
from hfstack.rlalgo.watch import HackingWatch
from hfstack.stages.rank import RankConfig, RankingStore, rank, ranking_to_pairs
from hfstack.stages.reward import RewardStageConfig, run_reward
from hfstack.stages.rl import RLConfig, run_rl
from hfstack.stages.rlhf import RLHFConfig, run_rlhf
from hfstack.stages.sft import SFTStageConfig, run_sft
from hfstack.tasks.judges import reference_judge

from tiny import tiny_base


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """A tiny SFT model: tokenizer, a few pretraining steps, a few SFT steps (chat template, eval sets)."""
    root = tmp_path_factory.mktemp("rlbase")
    tiny_base(root)
    run_sft(SFTStageConfig(model_name_or_path=str(root / "base"), output_dir=str(root / "sft"),
                           counts={"identity": 20, "arithmetic": 40, "counting": 40}, max_steps=15,
                           per_device_train_batch_size=4,
                           max_length=128, learning_rate=3e-3, warmup_steps=1, progress=False))
    return root / "sft"


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


def test_grpo_raises_the_reward_on_a_toy_user_task(sft_model, tmp_path, monkeypatch):
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

    before = {n: p.clone() for n, p in AutoModelForCausalLM.from_pretrained(sft_model).named_parameters()}
    out = run_rl(RLConfig(model_name_or_path=str(sft_model), output_dir=str(tmp_path / "rl"), tasks={},
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


def test_grpo_runs_the_python_tool_inside_rollouts(sft_model, tmp_path, monkeypatch):
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
    out = run_rl(RLConfig(model_name_or_path=str(sft_model), output_dir=str(tmp_path / "rl"),
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


# ------------------------------------------------------------------------------------------ rankings


def test_a_ranking_of_five_gives_ten_ordered_pairs():
    completions = ["a", "b", "c", "d", "e"]
    pairs = ranking_to_pairs("P?", completions, [2, 0, 4, 1, 3])
    assert len(pairs) == 10
    as_tuples = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    assert ("c", "a") in as_tuples and ("a", "e") in as_tuples and ("b", "d") in as_tuples
    assert ("a", "c") not in as_tuples and all(p["prompt"] == [{"role": "user", "content": "P?"}] for p in pairs)
    assert len(ranking_to_pairs("P?", ["same", "same", "x"], [0, 1, 2])) == 2  # identical texts teach nothing


def write_rollouts(directory, n=6, k=5):
    store = RankingStore(directory)
    directory.mkdir(parents=True, exist_ok=True)
    store.write_rollouts([{"prompt_id": i, "prompt": f"Tell me a joke about topic{i}.",
                           "completions": [f"answer {j} of {i}" for j in range(k)]} for i in range(n)])
    return store


def test_saved_rankings_survive_a_killed_process(tmp_path):
    write_rollouts(tmp_path)
    code = textwrap.dedent(f"""
        import os, signal
        from hfstack.stages.rank import RankingStore
        store = RankingStore({str(tmp_path)!r})
        for i in range(3):
            store.save_ranking(i, [4, 3, 2, 1, 0], ranker="person")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    with open(tmp_path / "rankings.jsonl", "a") as handle:
        handle.write('{"prompt_id": 3, "ord')  # a write cut short by a crash
    store = RankingStore(tmp_path)
    assert store.rankings() == {i: [4, 3, 2, 1, 0] for i in range(3)}
    assert store.next_unranked()["prompt_id"] == 3
    store.save_ranking(3, [0, 1, 2, 3, 4], ranker="person")  # appending after the torn line still works
    assert set(RankingStore(tmp_path).rankings()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="permutation"):
        store.save_ranking(4, [0, 0, 1, 2, 3], ranker="person")


def toy_preferences(directory, prompts=80):
    """A toy preference task: answers on or off topic, repetitive or not, ranked by the scripted judge."""
    import random

    rng = random.Random(0)
    words = "bright quiet small river stone green old warm light sound".split()
    rows = []
    for i in range(prompts):
        topic = ["cats", "tea", "rain", "owls", "trains", "books", "snow", "bread", "kites", "bridges"][i % 10]
        prompt = f"Tell me something about {topic} #{i}."
        answers = []
        for _ in range(5):
            chosen = rng.sample(words, 6)
            if rng.random() < 0.5:
                chosen[rng.randrange(6)] = topic
            if rng.random() < 0.4:
                chosen = [chosen[0]] * 6
            answers.append(" ".join(chosen))
        rows.append({"prompt_id": i, "prompt": prompt, "completions": answers})
    cfg = RankConfig(model_name_or_path="unused", output_dir=str(directory),
                     judge="hfstack.tasks.judges:reference_judge")
    claim_output("rank", cfg)  # the rank stage's folder, with rollouts written by hand instead of by a model
    RankingStore(directory).write_rollouts(rows)
    rank(cfg)
    return directory


def test_reward_model_learns_a_scripted_preference(sft_model, tmp_path):
    prefs = toy_preferences(tmp_path / "prefs")
    summary = json.loads((prefs / "summary.json").read_text())
    assert summary["ranked"] == 80 and summary["pairs"]["train"] > 200 and summary["pairs"]["test"] > 40
    out = run_reward(RewardStageConfig(model_name_or_path=str(sft_model), dataset_name=str(prefs),
                                       output_dir=str(tmp_path / "rm"),
                                       max_steps=120, learning_rate=3e-3, logging_steps=20, progress=False))
    report = json.loads((out / "eval.json").read_text())
    assert report["held_out_accuracy_after"] > 0.8, report
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)  # a plain transformers classifier
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None


def test_scripted_judge_prefers_on_topic_varied_answers():
    scores = reference_judge("Tell me a joke about pelicans.",
                             ["pelicans carry fish in big beaks", "the the the the the the", "fish carry big beaks"])
    assert scores[0] > scores[2] > scores[1]


# ------------------------------------------------------------------------------------------ RLHF


@pytest.fixture(scope="module")
def reward_dir(sft_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    prefs = toy_preferences(root / "prefs", prompts=20)
    return run_reward(RewardStageConfig(model_name_or_path=str(sft_model), dataset_name=str(prefs),
                                        output_dir=str(root / "rm"),
                                        max_steps=10, progress=False))


@pytest.mark.parametrize("algo", ["rloo", "grpo", "ppo"])
def test_rlhf_runs_each_algorithm_and_logs_the_watch(sft_model, reward_dir, tmp_path, algo):
    out = run_rlhf(RLHFConfig(model_name_or_path=str(sft_model), reward_model_path=str(reward_dir),
                              output_dir=str(tmp_path / algo),
                              algo=algo, max_steps=4, num_generations=2, prompts_per_step=2, max_completion_length=12,
                              num_prompts=10, logging_steps=2, progress=False))
    rows = [json.loads(line) for line in (out / "watch.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert {"rm_score", "judge", "distinct2", "length"} <= set(rows[0])
    assert "kl" in rows[0]  # beta > 0: every algorithm measures the KL to the reference
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.slow
def test_ppo_runs_as_two_processes_under_accelerate_launch(sft_model, reward_dir, tmp_path):
    """Through the launch shortcut: `hfstack rlhf --launcher accelerate --num_processes 2` (on CPU it
    picks recipes/accelerate/cpu.yaml, two gloo ranks)."""
    out = tmp_path / "ppo2"
    command = [sys.executable, "-m", "hfstack", "rlhf", "--launcher", "accelerate", "--num_processes", "2",
               "--algo", "ppo", "--model_name_or_path",
               str(sft_model), "--reward_model_path", str(reward_dir), "--output_dir", str(out), "--max_steps", "2",
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


def test_missing_inputs_are_clear_errors(sft_model, tmp_path):
    with pytest.raises(ConfigError, match="run `hfstack rank` first"):
        run_reward(RewardStageConfig(model_name_or_path=str(sft_model), dataset_name=str(tmp_path),
                                     output_dir=str(tmp_path / "o")))
    with pytest.raises(ConfigError, match="no policy"):
        run_rlhf(RLHFConfig(model_name_or_path=str(tmp_path / "nope"), output_dir=str(tmp_path / "o")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "good": "a"}) + "\n")
    with pytest.raises(ConfigError, match="chosen"):
        from hfstack.stages.reward import load_pairs

        load_pairs(str(bad), "train")


def test_a_bad_reward_function_path_fails_before_any_work(sft_model, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(ConfigError, match="cannot import reward function 'nowhere:nothing'"):
        run_rl(RLConfig(model_name_or_path=str(sft_model), output_dir=str(tmp_path / "rl"), tasks={},
                        dataset_name=str(tasks),
                        reward_funcs=["nowhere:nothing"]))
    no_prompt = tmp_path / "bad.jsonl"
    no_prompt.write_text(json.dumps({"question": "hi"}) + "\n")
    with pytest.raises(ConfigError, match="no 'prompt' column"):
        run_rl(RLConfig(model_name_or_path=str(sft_model), output_dir=str(tmp_path / "rl"), tasks={},
                        dataset_name=str(no_prompt),
                        reward_funcs=["hfstack.rlalgo.rewards:format_reward"]))


def test_a_judge_must_score_every_completion(tmp_path, monkeypatch):
    (tmp_path / "short_judge.py").write_text("def judge(prompt, completions):\n    return [1.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = RankConfig(model_name_or_path="unused", output_dir=str(tmp_path / "prefs"), judge="short_judge:judge")
    claim_output("rank", cfg)
    write_rollouts(tmp_path / "prefs", n=2)
    with pytest.raises(ConfigError, match="returned 1 scores for 5 completions"):
        rank(cfg)


def test_ppo_resumes_from_its_checkpoint(sft_model, reward_dir, tmp_path, capsys, monkeypatch):
    """A PPO run stopped after step 2 (its checkpoint saved) continues at step 3 when rerun; the
    watch keeps the logs from before the stop and their baseline."""
    options = dict(model_name_or_path=str(sft_model), reward_model_path=str(reward_dir),
                   output_dir=str(tmp_path / "ppo"), algo="ppo",
                   num_generations=2, prompts_per_step=2, max_completion_length=8, num_prompts=6, logging_steps=1,
                   save_steps=2, progress=False, max_steps=4)

    class Killed(Exception):
        pass

    observe = HackingWatch.observe

    def dies_in_step_3(watch, step, metrics):  # after step 2's checkpoint
        if step >= 3:
            raise Killed(step)
        return observe(watch, step, metrics)

    monkeypatch.setattr(HackingWatch, "observe", dies_in_step_3)
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
