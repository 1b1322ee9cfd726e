"""The multi-turn task: two or three questions of different tasks in one conversation (arithmetic, then
identity, then counting, in any order), each answered in full, its tool calls and outputs kept in the
history as `hfstack chat` and the chat page send them. Scored on the last turn only, by the task that
turn asks, so "later turns against single turns" is this task's accuracy per last task against that
task's own (`hfstack eval` reports the ratio).

Training conversations are put together from the other tasks' training splits only, held-out ones
from their held-out splits only: no held-out item or phrasing is ever trained on. Taught by
`hfstack sft` (`counts: {multiturn: N}`), measured by `hfstack eval`; tested in
tests/unit/test_tasks.py.
"""

from __future__ import annotations

import random

from hfstack.tasks.arithmetic import ArithmeticTask
from hfstack.tasks.base import Task
from hfstack.tasks.counting import CountingTask
from hfstack.tasks.identity import IdentityTask

PARTS = {task.name: task for task in (ArithmeticTask(), IdentityTask(), CountingTask())}
POOL_SEED = 7919  # the parts' own streams: other items than the single-turn sources of the same seed


def joined(rows: list[dict]) -> list[dict]:
    """The rows' conversations one after the other; a system message only at the very start (a part's
    own system message, when it is not the first part, is left out)."""
    messages = []
    for index, row in enumerate(rows):
        messages += [m for m in row["messages"] if index == 0 or m["role"] != "system"]
    return messages


class MultiTurnTask(Task):
    name = "multiturn"

    def generate(self, n: int, seed: int, eval_fraction: float = 0.2, **settings) -> dict[str, list]:
        """About n conversations of 2 or 3 parts, each of a different task, in a random order."""
        rng = random.Random(seed)
        pools = {name: task.generate(max(n, 20), seed + POOL_SEED + offset, **settings)
                 for offset, (name, task) in enumerate(PARTS.items())}
        out: dict[str, list] = {"train": [], "eval": []}
        for split in ("train", "eval"):
            for _ in range(n if split == "train" else max(1, int(n * eval_fraction))):
                names = rng.sample(list(PARTS), k=rng.choice((2, 3)))
                parts = [rng.choice([r for r in pools[name][split] if r["task"] == name]) for name in names]
                last = parts[-1]
                out[split].append({"messages": joined(parts), "task": self.name, "answer": last.get("answer"),
                                   "last_task": names[-1], "last": last, "turns": len(parts)})
        return out

    def score(self, row: dict, answer: str, no_tools: bool = False) -> bool:
        """Right when the last turn's own task scores the answer right."""
        return PARTS[row["last_task"]].score(row["last"], answer, no_tools)


def later_turn_report(rows: list[dict], correct: list[bool], single_turn: dict[str, float]) -> dict:
    """Per last task: the accuracy on the later turn, the same task's single-turn accuracy and their ratio."""
    report = {}
    for name in PARTS:
        hits = [ok for row, ok in zip(rows, correct) if row["last_task"] == name]
        if not hits:
            continue
        accuracy = round(sum(hits) / len(hits), 4)
        alone = single_turn.get(name)
        report[name] = {"items": len(hits), "accuracy": accuracy, "single_turn_accuracy": alone,
                        "ratio": round(accuracy / alone, 3) if alone else None}
    return report
