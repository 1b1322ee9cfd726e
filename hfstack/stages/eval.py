"""Evaluate the assistant on the held-out conversations its SFT run set aside.

    hfstack eval --model RUN/sft [--limit 100]

Reads `MODEL/eval_sets.jsonl` (written by `hfstack sft`: items and question phrasings training never
saw) and measures, with greedy decoding:
- identity: the answer states the identity card's facts for that question's topic (the name, the
  creator, the purpose, the knowledge cutoff, or every "cannot"), in any wording;
- arithmetic and counting with tools: the tool loop runs, and the number the final answer ends on is
  the right one; alongside, the one-answer baseline (always giving the most common expected answer);
- spelling: the last letter-by-letter spelling in the answer ("q-u-e-u-e") is the word;
- arithmetic and counting without tools: the turn is pre-filled ("The answer is" / "Spelling it out:")
  so the model must produce the number itself, as in the notes' mental-arithmetic failure;
- knowledge: the refusal rate on facts the base model did not know, against the accuracy on facts it
  knew; and "vague recollection vs working memory": accuracy with the source passage pasted into
  the question against without it;
- search: accuracy when the assistant can search the run's index.
Each row is scored by the task its `task` field names (hfstack/tasks/registry.py).
Prints a table and writes `MODEL/heldout_eval.json` (or `--output`); the name is its own, since the
rl, rlhf and reward stages keep their reports in `eval.json`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.model import load_model
from hfstack.core.pretrained import beside_model, resolve_model
from hfstack.core.renames import renamed
from hfstack.core.textfiles import read_jsonl
from hfstack.tasks.base import one_answer_baseline
from hfstack.tasks.conversation import prompt_of
from hfstack.tasks.judges import is_refusal, word_overlap_judge
from hfstack.tasks.registry import TASKS
from hfstack.tools.loop import assistant_replies, default_tools
from hfstack.tools.search import index_of_model

# held-out facts the base model did or did not know: scored by refusals and recall, not as one task
KNOWLEDGE = "knowledge"


@renamed(model="model_name_or_path")
@dataclass
class EvalConfig:
    model_name_or_path: str = model_folder("runs/tiny/sft", must_exist=True)  # the model to evaluate: folder or Hub id
    model_revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    eval_sets: str | None = None  # default: <model>/eval_sets.jsonl
    limit: int = bounded(200, ge=1)  # items per task
    output: str | None = None  # default: <model>/heldout_eval.json
    max_new_tokens: int = bounded(96, ge=1)  # tokens per answer, tool calls and their outputs included

    def __post_init__(self):
        check_fields(self, "eval")


def knowledge_entry(model, tokenizer, rows: list[dict], tools: dict, max_new_tokens: int) -> dict:
    prompts = [prompt_of(r) for r in rows]
    replies = assistant_replies(model, tokenizer, prompts, max_new_tokens, tools=tools)
    known = [(r, a.answer) for r, a in zip(rows, replies) if r["known"]]
    unknown = [(r, a.answer) for r, a in zip(rows, replies) if not r["known"]]
    with_passage = assistant_replies(model, tokenizer, [[{"role": "user", "content": f"{r['passage']}\n\n"
                                                          f"{p[-1]['content']}"}] for r, p in zip(rows, prompts)],
                                     max_new_tokens, tools=tools)
    rate = lambda hits, total: round(hits / total, 4) if total else None  # noqa: E731
    return {"items": len(rows), "known_items": len(known), "unknown_items": len(unknown),
            "refusal_rate_on_unknown": rate(sum(is_refusal(a) for _, a in unknown), len(unknown)),
            "accuracy_on_known": rate(sum(word_overlap_judge(a, r["answer"]) for r, a in known), len(known)),
            "accuracy_without_passage": rate(sum(word_overlap_judge(a.answer, r["answer"])
                                                 for r, a in zip(rows, replies)), len(rows)),
            "accuracy_with_passage": rate(sum(word_overlap_judge(a.answer, r["answer"])
                                              for r, a in zip(rows, with_passage)), len(rows)),
            "examples": [{"question": p[-1]["content"], "answer": a.answer, "known": r["known"]}
                         for r, p, a in list(zip(rows, prompts, replies))[:3]]}


def evaluate(cfg: EvalConfig) -> dict:
    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "eval")
    path = Path(cfg.eval_sets or Path(folder) / "eval_sets.jsonl")
    if not path.is_file():
        raise ConfigError(f"eval: no held-out sets at '{path}'; they are written by `hfstack sft`")
    by_task: dict[str, list[dict]] = defaultdict(list)
    for number, row in read_jsonl(str(path), "eval sets"):
        task = row["task"]
        if task not in TASKS and task != KNOWLEDGE:
            raise ConfigError(f"eval: '{path}' line {number}: unknown task '{task}'; "
                              f"known: {', '.join([*TASKS, KNOWLEDGE])}")
        if len(by_task[task]) < cfg.limit:
            by_task[task].append(row)
    model, tokenizer = load_model(folder)
    tools = default_tools(index_of_model(folder))
    results: dict[str, dict] = {}
    for name, rows in by_task.items():
        if name == KNOWLEDGE:
            results[name] = knowledge_entry(model, tokenizer, rows, tools, cfg.max_new_tokens)
            continue
        task = TASKS[name]
        accuracy, replies = task.accuracy(model, tokenizer, rows, cfg.max_new_tokens, tools)
        entry = {"items": len(rows), "accuracy": accuracy}
        if task.no_tool_prefill:
            entry["tool_use_rate"] = round(sum(bool(r.tool_calls) for r in replies) / len(rows), 4)
            entry["accuracy_without_tools"], _ = task.accuracy(model, tokenizer, rows, cfg.max_new_tokens, tools,
                                                               no_tools=True)
            entry["one_answer_baseline"] = one_answer_baseline(rows)
        entry["examples"] = [{"question": task.prompt(r)[-1]["content"], "answer": reply.answer,
                              "tool_calls": reply.tool_calls} for r, reply in list(zip(rows, replies))[:3]]
        results[name] = entry
    output = Path(cfg.output or beside_model(cfg.model_name_or_path, "heldout_eval.json"))
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'task':<12} {'items':>6} {'accuracy':>9} {'no tools':>9} {'tool use':>9} {'one answer':>10}")
    for task, entry in results.items():
        if task == KNOWLEDGE:
            pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
            print(f"{task:<12} {entry['items']:>6}  refuses {pct(entry['refusal_rate_on_unknown'])} of "
                  f"{entry['unknown_items']} unknown, right on {pct(entry['accuracy_on_known'])} of "
                  f"{entry['known_items']} known; with the passage in context {pct(entry['accuracy_with_passage'])}"
                  f" vs {pct(entry['accuracy_without_passage'])} without")
            continue
        no_tools = f"{entry['accuracy_without_tools']:.1%}" if "accuracy_without_tools" in entry else "-"
        tool_use = f"{entry['tool_use_rate']:.1%}" if "tool_use_rate" in entry else "-"
        baseline = f"{entry['one_answer_baseline']:.1%}" if "one_answer_baseline" in entry else "-"
        print(f"{task:<12} {entry['items']:>6} {entry['accuracy']:>9.1%} {no_tools:>9} {tool_use:>9} {baseline:>10}")
    print(f"→ {output}")
    return results


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = EvalConfig
run = evaluate
