"""Reward functions for `hfstack rl` on verifiable tasks, in TRL's reward_funcs signature: correctness
(the task's own `reward`) and answer form (its `answer_form`); a user's own function loads by dotted path.
Tested in tests/stages/test_rl.py."""

from __future__ import annotations

import re

from hfstack.core.config import import_object
from hfstack.tasks.registry import TASKS

# the built-in tasks RL trains on: those whose answer has a checkable form
BUILTIN_TASKS = tuple(name for name, task in TASKS.items() if task.answer_form)


def correctness_reward(completions, task=None, answer=None, reply=None, log_metric=None, **_) -> list[float | None]:
    """The task's reward for the final answer (1 when right); None for tasks it does not know (user
    tasks). Also logs the share correct per task (`correct/<task>`), so a task that gets no signal shows."""

    rewards = [TASKS[t].reward({"answer": a}, r) if t in BUILTIN_TASKS else None
               for t, a, r in zip(task, answer, reply)]
    for name in sorted(set(task) & set(BUILTIN_TASKS)) if log_metric else []:
        hits = [x for t, x in zip(task, rewards) if t == name]
        log_metric(f"correct/{name}", sum(hits) / len(hits))
    return rewards


def format_reward(completions, task=None, reply=None, finished=None, tool_errors=None, **_) -> list[float | None]:
    """The share of three checks passed: the turn ended with its end token, every tool call ran
    without an error, and the answer is stated in the protocol's phrasing for its task."""
    rewards = []
    for t, r, done, errors in zip(task, reply, finished, tool_errors):
        if t not in BUILTIN_TASKS:
            rewards.append(None)
            continue
        phrased = re.match(TASKS[t].answer_form, r.strip()) is not None
        rewards.append((float(done) + float(errors == 0) + float(phrased)) / 3)
    return rewards


def load_reward_func(path: str):
    return import_object(path, "rl", "reward function")
