"""What a task is: it owns its data (seeded train and eval splits that never overlap), the question
it asks, how an answer is scored, and the reward RL gets for it. `hfstack sft` trains on its rows,
`hfstack eval` and `hfstack rl`'s pass@1 score with `score`, RL's correctness reward is `reward`.

    task = TASKS["arithmetic"]                     # hfstack/tasks/registry.py
    rows = task.generate(100, seed=0)["eval"]
    task.score(rows[0], "The answer is 42.")

Tested in tests/unit/test_tasks.py (every registered task's references score right, corruptions wrong).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter

from hfstack.tasks.conversation import prompt_of
from hfstack.tools.loop import assistant_replies


class Task(ABC):
    """One task. Rows are `{"messages": [...], "task": name, "answer": ...}` plus what its scoring
    reads (`facts`, `word`, ...), in the order `generate` wrote them."""

    name: str
    # text the assistant's turn starts with when the model must answer without tools (`hfstack eval`'s
    # "no tools" column); None: the task is not measured without tools
    no_tool_prefill: str | None = None
    # the regex a well-phrased final answer matches (RL's format reward); None: RL does not train on the task
    answer_form: str | None = None

    @abstractmethod
    def generate(self, n: int, seed: int, **settings) -> dict[str, list[dict]]:
        """{"train": about n rows, "eval": held-out rows}, the same for the same seed. `settings` are
        what a caller knows (`card`, `max_operand`, ...): each task reads the ones it uses and ignores
        the rest, so one call fits every task."""

    def prompt(self, row: dict) -> list[dict]:
        """The conversation up to the question: what the model is asked to continue."""
        return prompt_of(row)

    @abstractmethod
    def score(self, row: dict, answer: str, no_tools: bool = False) -> bool:
        """Whether `answer` (the assistant's final text) is right for the row. `no_tools`: the answer
        was given with tools off and the turn pre-filled with `no_tool_prefill`."""

    def reward(self, row: dict, answer: str) -> float:
        """RL's correctness reward: 1 when the answer scores right, else 0."""
        return float(self.score(row, answer))

    def accuracy(self, model, tokenizer, rows: list[dict], max_new_tokens: int, tools: dict, max_tool_calls: int = 3,
                 no_tools: bool = False, progress: str | None = None) -> tuple[float, list]:
        """Greedy answers to the rows and the share scored right, with the replies. With the tool loop
        running, or with `no_tools` none allowed and the turn pre-filled with `no_tool_prefill`."""
        replies = assistant_replies(model, tokenizer, [self.prompt(r) for r in rows], max_new_tokens,
                                    max_tool_calls=0 if no_tools else max_tool_calls, tools=tools,
                                    prefill=(self.no_tool_prefill or "") if no_tools else "", progress=progress)
        correct = [self.score(r, reply.answer, no_tools) for r, reply in zip(rows, replies)]
        return round(sum(correct) / len(rows), 4), replies


def stated_number(answer: str) -> str | None:
    """The number an answer ends on: its result. Only the last one counts, because an answer that
    lists many numbers ("p (1), o (2), ...") would otherwise contain the right one by chance; RL
    on the tiny preset learned exactly that when any number in the answer was accepted."""
    numbers = re.findall(r"(?<![\w-])-?\d+(?!\w)", answer.replace(",", ""))
    return numbers[-1] if numbers else None


def one_answer_baseline(rows: list[dict]) -> float:
    """The accuracy of a model that gives every item the most common expected answer: the floor
    an accuracy has to beat to show the model read the question."""
    counts = Counter(r["answer"] for r in rows)
    return round(counts.most_common(1)[0][1] / len(rows), 4) if rows else 0.0
