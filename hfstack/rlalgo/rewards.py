"""Reward functions for `hfstack rl` on verifiable tasks, in TRL's reward_funcs signature: correctness
(the task's own check) and answer form; a user's own function loads by dotted path."""

from __future__ import annotations

import re

from hfstack.core.config import import_object
from hfstack.tasks.scoring import score

BUILTIN_TASKS = ("arithmetic", "counting")


ANSWER_FORMS = {"arithmetic": r"^The answer is -?\d+\.$",
                "counting": r"^(There (is|are) \d+ '.' in '[a-z]+'\.|Spelling it out: .*So '[a-z]+' has \d+ '.'\.)$"}


def correctness_reward(completions, task=None, answer=None, reply=None, log_metric=None, **_) -> list[float | None]:
    """1 when the final answer holds the expected number; None for tasks it does not know (user tasks).
    Also logs the share correct per task (`correct/<task>`), so a task that gets no signal shows."""

    rewards = [float(score(t, {"answer": a}, r)) if t in BUILTIN_TASKS else None
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
        phrased = re.match(ANSWER_FORMS[t], r.strip()) is not None
        rewards.append((float(done) + float(errors == 0) + float(phrased)) / 3)
    return rewards


def load_reward_func(path: str):
    return import_object(path, "rl", "reward function")
