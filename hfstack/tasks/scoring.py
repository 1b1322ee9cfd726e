"""Scoring the assistant's answers on the held-out task sets: what `hfstack eval` reports and
`hfstack rl` measures pass@1 with."""

from __future__ import annotations

import re
from collections import Counter

from hfstack.tasks.judges import word_overlap_judge
from hfstack.tools.loop import assistant_replies

NO_TOOL_PREFILL = {"arithmetic": "The answer is", "counting": "Spelling it out:"}


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def stated_number(answer: str) -> str | None:
    """The number an answer ends on: its result. Only the last one counts, because an answer that
    lists many numbers ("p (1), o (2), ...") would otherwise contain the right one by chance; RL
    on the tiny preset learned exactly that when any number in the answer was accepted."""
    numbers = re.findall(r"(?<![\w-])-?\d+(?!\w)", answer.replace(",", ""))
    return numbers[-1] if numbers else None


def score(task: str, row: dict, answer: str, no_tools: bool = False) -> bool:
    if task == "identity":  # states every fact of the card that the question asks about, in any wording
        if "facts" not in row:  # held-out sets written before facts were stored: the exact answer
            return _normalise(answer) == _normalise(row["messages"][-1]["content"])
        return all(_normalise(fact) in _normalise(answer) for fact in row["facts"])
    if task == "counting" and no_tools:  # the spelled-out path ends with "has N 'x'"
        match = re.search(r"has (\d+) '.'\.?$", answer.strip())
        return bool(match) and match.group(1) == row["answer"]
    return stated_number(answer) == row["answer"]


def one_answer_baseline(rows: list[dict]) -> float:
    """The accuracy of a model that gives every item the most common expected answer: the floor
    an accuracy has to beat to show the model read the question."""
    counts = Counter(r["answer"] for r in rows)
    return round(counts.most_common(1)[0][1] / len(rows), 4) if rows else 0.0


def is_refusal(answer: str) -> bool:
    return bool(re.search(r"don't know|do not know|not sure|won't make", answer.lower()))


def prompt_of(row: dict) -> list[dict]:
    """The conversation up to the last user turn (the question being asked)."""
    messages = row["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return [{k: v for k, v in m.items() if v is not None} for m in messages[:last_user + 1]]


def task_accuracy(model, tokenizer, task: str, rows: list[dict], max_new_tokens: int, tools: dict,
                  max_tool_calls: int = 3) -> tuple[float, list]:
    """Greedy answers (the tool loop running) to the held-out rows of one task, the share judged
    right, and the replies. Search answers are judged by word overlap with the reference."""

    replies = assistant_replies(model, tokenizer, [prompt_of(r) for r in rows], max_new_tokens,
                                max_tool_calls=max_tool_calls, tools=tools)
    if task == "search":
        correct = [word_overlap_judge(reply.answer, r["answer"]) for r, reply in zip(rows, replies)]
    else:
        correct = [score(task, r, reply.answer) for r, reply in zip(rows, replies)]
    return round(sum(correct) / len(rows), 4), replies
