"""Tiny artifacts the stage tests build on: standard-library prose, a tokenizer trained on it, a 1-layer
base model pretrained for a few steps, a few SFT steps on it, toy preferences and a reward model on
them (seconds each on a CPU). tests/conftest.py builds the shared ones once per session."""

from __future__ import annotations

import json
import random
from pathlib import Path


def tiny_tokenizer(root: Path, docs: int = 40, vocab_size: int = 400) -> Path:
    """ROOT/docs.jsonl (the first `docs` stdlib articles) and a BPE tokenizer in ROOT/tok."""
    from hfstack.core.stdlib_text import stdlib_articles
    from hfstack.stages.tokenizer import TokenizerConfig, run_tokenizer

    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(p)}) + "\n" for _, p in stdlib_articles()[:docs]))
    run_tokenizer(TokenizerConfig(input=[str(data)], output_dir=str(root / "tok"), vocab_size=vocab_size,
                                  compare_cl100k=False, progress=False))
    return root / "tok"


def tiny_base(root: Path, docs: int = 40, vocab_size: int = 400, steps: int = 5) -> Path:
    """The tokenizer above, then a depth-1 base model pretrained `steps` steps on the same prose: ROOT/base.
    Its 256 positions hold the conversations the stage tests train and ask (the tool loop stops at the window)."""
    from hfstack.stages.pretrain import PretrainConfig, run_pretrain

    tokenizer = tiny_tokenizer(root, docs, vocab_size)
    run_pretrain(PretrainConfig(data=[str(root / "docs.jsonl")], tokenizer=str(tokenizer),
                                output_dir=str(root / "base"), depth=1, seq_len=256, per_device_train_batch_size=1,
                                batch_tokens=256, max_steps=steps, eval_steps=100, save_steps=100, sample_prompts=[],
                                progress=False))
    return root / "base"


def toy_preferences(directory, prompts=80):
    """A toy preference task: answers on or off topic, repetitive or not, ranked by the scripted judge."""
    from hfstack.core.rundir import claim_output
    from hfstack.stages.rank import RankConfig, RankingStore, rank

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



def tiny_sft(root: Path, base: Path) -> Path:
    """A few SFT steps on `base` (chat template, eval sets): ROOT/sft."""
    from hfstack.stages.sft import SFTStageConfig, run_sft

    return run_sft(SFTStageConfig(model_name_or_path=str(base), output_dir=str(root / "sft"),
                                  counts={"identity": 20, "arithmetic": 40, "counting": 40}, max_steps=15,
                                  per_device_train_batch_size=4, max_length=128, learning_rate=3e-3, warmup_steps=1,
                                  progress=False))


def tiny_reward(root: Path, policy: Path) -> Path:
    """A reward model trained 10 steps on 20 toy prompts' rankings: ROOT/rm."""
    from hfstack.stages.reward import RewardStageConfig, run_reward

    prefs = toy_preferences(root / "prefs", prompts=20)
    return run_reward(RewardStageConfig(model_name_or_path=str(policy), dataset_name=str(prefs),
                                        output_dir=str(root / "rm"), max_steps=10, progress=False))


QUESTION = "What is 6 times 7?"  # the one question tiny_tool_model answers with a Python tool call


def tiny_tool_model(root: Path) -> Path:
    """A tiny base finetuned 80 steps on one conversation: QUESTION, a Python tool call, the answer: ROOT/sft."""
    from hfstack.stages.sft import SFTStageConfig, run_sft
    from hfstack.tasks.conversation import message, python_turns

    tiny_base(root, docs=20, vocab_size=300, steps=2)
    conversation = [message("user", QUESTION), *python_turns("Let me compute it.", "print(6 * 7)", "42",
                                                             "The answer is 42.")]
    chats = root / "chats.jsonl"
    chats.write_text(json.dumps({"messages": conversation}) + "\n")
    return run_sft(SFTStageConfig(model_name_or_path=str(root / "base"), output_dir=str(root / "sft"), counts={},
                                  chat_files=[str(chats)] * 16, max_steps=80, learning_rate=1e-2, warmup_steps=1,
                                  per_device_train_batch_size=4, max_length=128, progress=False))


class Killed(Exception):
    """Raised by `dies_in_step` in place of a crash."""


def dies_in_step(monkeypatch, watch_class, step: int = 3) -> None:
    """The run is killed when its watch observes `step` (after the previous step's checkpoint): a
    resume test then reruns it with `monkeypatch.undo()`."""
    observe = watch_class.observe

    def observe_or_die(watch, at, metrics):
        if at >= step:
            raise Killed(at)
        return observe(watch, at, metrics)

    monkeypatch.setattr(watch_class, "observe", observe_or_die)
