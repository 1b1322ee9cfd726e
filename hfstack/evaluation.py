"""Evaluate the assistant on the held-out conversations its SFT run set aside.

    hfstack eval --model RUN/sft [--limit 100]

Reads `MODEL/eval_sets.jsonl` (written by `hfstack sft`: items and question phrasings training never
saw) and measures, with greedy decoding:
- identity: the answer matches the identity card's answer for that question's topic;
- arithmetic and counting with tools: the tool loop runs, and the final answer holds the right number;
- arithmetic and counting without tools: the turn is pre-filled ("The answer is" / "Spelling it out:")
  so the model must produce the number itself, as in the notes' mental-arithmetic failure.
Prints a table and writes `MODEL/eval.json` (or `--output`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hfstack.config import ConfigError

NO_TOOL_PREFILL = {"arithmetic": "The answer is", "counting": "Spelling it out:"}


@dataclass
class EvalConfig:
    model: str = "runs/tiny/sft"
    eval_sets: str | None = None  # default: <model>/eval_sets.jsonl
    limit: int = 200  # items per task
    output: str | None = None
    max_new_tokens: int = 96


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def number_in(answer: str, expected: str) -> bool:
    """The expected integer appears as a number of its own in the answer (not inside a longer one)."""
    return re.search(rf"(?<![\d-]){re.escape(expected)}(?!\d)", answer) is not None


def score(task: str, row: dict, answer: str, no_tools: bool = False) -> bool:
    if task == "identity":
        return _normalise(answer) == _normalise(row["messages"][-1]["content"])
    if task == "counting" and no_tools:  # the spelled-out path ends with "has N 'x'"
        match = re.search(r"has (\d+)", answer)
        return bool(match) and match.group(1) == row["answer"]
    return number_in(answer, row["answer"])


def prompt_of(row: dict) -> list[dict]:
    """The conversation up to the last user turn (the question being asked)."""
    messages = row["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return [{k: v for k, v in m.items() if v is not None} for m in messages[:last_user + 1]]


def evaluate(cfg: EvalConfig) -> dict:
    from hfstack.generation import load_model
    from hfstack.tools.loop import assistant_replies

    path = Path(cfg.eval_sets or Path(cfg.model) / "eval_sets.jsonl")
    if not path.is_file():
        raise ConfigError(f"eval: no held-out sets at '{path}'; they are written by `hfstack sft`")
    by_task: dict[str, list[dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        task = "counting" if row["task"] == "spelling" else row["task"]
        if len(by_task[task]) < cfg.limit:
            by_task[task].append(row)
    model, tokenizer = load_model(cfg.model)
    results: dict[str, dict] = {}
    for task, rows in by_task.items():
        prompts = [prompt_of(r) for r in rows]
        replies = assistant_replies(model, tokenizer, prompts, cfg.max_new_tokens)
        correct = [score(task, r, reply.answer) for r, reply in zip(rows, replies)]
        entry = {"items": len(rows), "accuracy": round(sum(correct) / len(rows), 4)}
        if task in NO_TOOL_PREFILL:
            entry["tool_use_rate"] = round(sum(bool(r.tool_calls) for r in replies) / len(rows), 4)
            bare = assistant_replies(model, tokenizer, prompts, cfg.max_new_tokens, max_tool_calls=0,
                                     prefill=NO_TOOL_PREFILL[task])
            entry["accuracy_without_tools"] = round(
                sum(score(task, r, b.answer, True) for r, b in zip(rows, bare))
                / len(rows), 4)
        entry["examples"] = [{"question": p[-1]["content"], "answer": reply.answer, "tool_calls": reply.tool_calls}
                             for p, reply in list(zip(prompts, replies))[:3]]
        results[task] = entry
    output = Path(cfg.output or Path(cfg.model) / "eval.json")
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'task':<12} {'items':>6} {'accuracy':>9} {'no tools':>9} {'tool use':>9}")
    for task, entry in results.items():
        no_tools = f"{entry['accuracy_without_tools']:.1%}" if "accuracy_without_tools" in entry else "-"
        tool_use = f"{entry['tool_use_rate']:.1%}" if "tool_use_rate" in entry else "-"
        print(f"{task:<12} {entry['items']:>6} {entry['accuracy']:>9.1%} {no_tools:>9} {tool_use:>9}")
    print(f"→ {output}")
    return results
