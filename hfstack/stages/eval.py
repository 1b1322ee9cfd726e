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

    hfstack eval --model RUN/sft --harness lm_eval --tasks hellaswag,arc_easy [--apply_chat_template true]
    hfstack eval --model RUN/sft --export_tasks DIR [--harness lm_eval --tasks hfstack --apply_chat_template true]

`--harness lm_eval` runs EleutherAI's lm-evaluation-harness on the model instead (`lm_eval.simple_evaluate`
with the `hf` model, the bos token prepended, float32 on a CPU, bfloat16 on a GPU that has it) and keeps
its results under the `harness` key of the same file, beside the held-out results (each run keeps the
other's key). `--export_tasks DIR` writes the held-out sets as lm_eval tasks, so stock `lm_eval`
reproduces hfstack's prompts (hfstack/tasks/harness.py); tests: tests/stages/test_eval_harness.py.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.model import load_model
from hfstack.core.pretrained import beside_model, resolve_model
from hfstack.core.renames import renamed
from hfstack.core.textfiles import read_jsonl
from hfstack.tasks.base import one_answer_baseline
from hfstack.tasks.conversation import prompt_of
from hfstack.tasks.harness import KNOWLEDGE, export_tasks, print_summary, run_lm_eval
from hfstack.tasks.judges import is_refusal, word_overlap_judge
from hfstack.tasks.multiturn import MultiTurnTask, later_turn_report
from hfstack.tasks.registry import TASKS
from hfstack.tools.loop import assistant_replies, default_tools
from hfstack.tools.search import index_of_model

HELD_OUT_LIMIT = 200  # items per held-out task when `limit` is not given
# fields that only mean something for an lm_eval run
HARNESS_FIELDS = ("tasks", "include_path", "apply_chat_template", "system_instruction", "num_fewshot", "max_length")


@renamed(model="model_name_or_path")
@dataclass
class EvalConfig:
    model_name_or_path: str = model_folder("runs/tiny/sft", must_exist=True)  # the model to evaluate: folder or Hub id
    model_revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    eval_sets: str | None = None  # default: <model>/eval_sets.jsonl
    limit: int | None = bounded(None, ge=1)  # items per task (None: 200 of a held-out set, all of an lm_eval task)
    output: str | None = None  # default: <model>/heldout_eval.json (lm_eval's results go under its `harness` key)
    max_new_tokens: int = bounded(96, ge=1)  # tokens per answer, tool calls and their outputs included
    harness: Literal["lm_eval"] | None = None  # run lm-evaluation-harness on `tasks` instead of the held-out sets
    tasks: list[str] = field(default_factory=list)  # lm_eval tasks or groups, comma-separated: hellaswag,arc_easy
    include_path: str | None = None  # a folder of your own lm_eval task YAMLs (what --export_tasks writes)
    apply_chat_template: bool = False  # put each lm_eval prompt through the model's chat template (an assistant)
    system_instruction: str | None = None  # lm_eval's system message for every prompt (None: the template's own)
    num_fewshot: int | None = bounded(None, ge=0)  # examples in each lm_eval prompt (None: each task's own)
    batch_size: int = bounded(16, ge=1)  # prompts per lm_eval forward pass
    max_length: int | None = bounded(None, ge=1)  # lm_eval's context window in tokens (None: the model config's)
    export_tasks: str | None = None  # write the held-out sets here as lm_eval tasks (--harness: then run them)
    progress: bool = True  # a progress bar over each held-out set's answers (main process only)

    def __post_init__(self):
        check_fields(self, "eval")
        items = [self.tasks] if isinstance(self.tasks, str) else self.tasks  # "a,b" from Python as from the CLI
        self.tasks = [t.strip() for item in items for t in item.split(",") if t.strip()]
        if self.harness and not self.tasks:
            raise ConfigError("eval: --harness lm_eval needs --tasks: lm_eval task or group names, comma-separated "
                              "(hellaswag,arc_easy; `hfstack` for the sets --export_tasks writes)")
        given = [name for name in HARNESS_FIELDS if getattr(self, name) not in (None, False, [])]
        if given and not self.harness:
            flags = ", ".join("--" + name for name in given)
            raise ConfigError(f"eval: {flags} set for an lm_eval run; add --harness lm_eval")
        if self.export_tasks and self.harness and self.include_path:
            raise ConfigError("eval: --export_tasks with --harness runs the exported tasks: leave --include_path out")


def knowledge_entry(model, tokenizer, rows: list[dict], tools: dict, max_new_tokens: int,
                    progress: bool = False) -> dict:
    prompts = [prompt_of(r) for r in rows]
    replies = assistant_replies(model, tokenizer, prompts, max_new_tokens, tools=tools,
                                progress="knowledge" if progress else None)
    known = [(r, a.answer) for r, a in zip(rows, replies) if r["known"]]
    unknown = [(r, a.answer) for r, a in zip(rows, replies) if not r["known"]]
    with_passage = assistant_replies(model, tokenizer, [[{"role": "user", "content": f"{r['passage']}\n\n"
                                                          f"{p[-1]['content']}"}] for r, p in zip(rows, prompts)],
                                     max_new_tokens, tools=tools,
                                     progress="knowledge, with passage" if progress else None)
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


def held_out_sets(cfg: EvalConfig, folder: str) -> dict[str, list[dict]]:
    """Task → the first `limit` held-out rows of the model's eval sets."""
    path = Path(cfg.eval_sets or Path(folder) / "eval_sets.jsonl")
    if not path.is_file():
        raise ConfigError(f"eval: no held-out sets at '{path}'; they are written by `hfstack sft`")
    by_task: dict[str, list[dict]] = defaultdict(list)
    for number, row in read_jsonl(str(path), "eval sets"):
        task = row["task"]
        if task not in TASKS and task != KNOWLEDGE:
            raise ConfigError(f"eval: '{path}' line {number}: unknown task '{task}'; "
                              f"known: {', '.join([*TASKS, KNOWLEDGE])}")
        if len(by_task[task]) < (cfg.limit or HELD_OUT_LIMIT):
            by_task[task].append(row)
    return dict(by_task)


def previous_report(output: Path) -> dict:
    """What the output file holds already (the other kind of run's results), or nothing."""
    try:
        report = json.loads(output.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def harness(cfg: EvalConfig, folder: str, include_path: str | None) -> dict:
    """lm_eval on the model; its summary goes under `harness` in the output file, beside the held-out results."""
    try:
        import lm_eval  # noqa: F401 - an optional dependency: hfstack[eval]
    except ImportError:
        raise ConfigError("eval: --harness lm_eval needs lm-evaluation-harness: pip install 'hfstack[eval]'") from None
    summary, _ = run_lm_eval(folder, cfg.tasks, include_path, cfg.apply_chat_template, cfg.num_fewshot, cfg.limit,
                             cfg.batch_size, cfg.max_length, cfg.system_instruction)
    output = Path(cfg.output or beside_model(cfg.model_name_or_path, "heldout_eval.json"))
    report = previous_report(output) | {"harness": summary}
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_summary(summary)
    print(f"→ {output} (key 'harness')")
    return report


def evaluate(cfg: EvalConfig) -> dict:
    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "eval")
    if cfg.export_tasks:
        exported = export_tasks(folder, held_out_sets(cfg, folder), cfg.export_tasks, cfg.max_new_tokens)
        print("lm_eval tasks: " + ", ".join(f"{t} ({n} items)" for t, n in exported["tasks"].items())
              + "".join(f"; {t} not exported: {why}" for t, why in exported["skipped"].items())
              + f"\n→ {exported['directory']}\nrun them with stock lm_eval:\n  {exported['command']}")
        if not cfg.harness:
            return {"export": exported}
    if cfg.harness:
        return harness(cfg, folder, cfg.export_tasks or cfg.include_path)
    by_task = held_out_sets(cfg, folder)
    model, tokenizer = load_model(folder)
    tools = default_tools(index_of_model(folder))
    results: dict[str, dict] = {}
    for name, rows in by_task.items():
        if name == KNOWLEDGE:
            results[name] = knowledge_entry(model, tokenizer, rows, tools, cfg.max_new_tokens, cfg.progress)
            continue
        task = TASKS[name]
        bar = name if cfg.progress else None
        accuracy, replies = task.accuracy(model, tokenizer, rows, cfg.max_new_tokens, tools, progress=bar)
        entry = {"items": len(rows), "accuracy": accuracy}
        if task.no_tool_prefill:
            entry["tool_use_rate"] = round(sum(bool(r.tool_calls) for r in replies) / len(rows), 4)
            entry["accuracy_without_tools"], _ = task.accuracy(model, tokenizer, rows, cfg.max_new_tokens, tools,
                                                               no_tools=True, progress=bar and f"{name}, no tools")
            entry["one_answer_baseline"] = one_answer_baseline(rows)
        entry["examples"] = [{"question": task.prompt(r)[-1]["content"], "answer": reply.answer,
                              "tool_calls": reply.tool_calls} for r, reply in list(zip(rows, replies))[:3]]
        if name == MultiTurnTask.name:  # scored per last task, against single turns once those are known
            entry["correct"] = [task.score(r, reply.answer) for r, reply in zip(rows, replies)]
        results[name] = entry
    if MultiTurnTask.name in results:  # the later turns against the same tasks asked alone
        entry = results[MultiTurnTask.name]
        entry["later_turns"] = later_turn_report(by_task[MultiTurnTask.name], entry.pop("correct"),
                                                 {n: e["accuracy"] for n, e in results.items() if "accuracy" in e})
    output = Path(cfg.output or beside_model(cfg.model_name_or_path, "heldout_eval.json"))
    kept = {k: v for k, v in previous_report(output).items() if k == "harness"}  # an lm_eval run's results stay
    output.write_text(json.dumps(results | kept, indent=2) + "\n")
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
    for last, figures in results.get(MultiTurnTask.name, {}).get("later_turns", {}).items():
        alone = figures["single_turn_accuracy"]
        print(f"  later turn {last}: {figures['accuracy']:.1%} of {figures['items']}"
              + (f", {figures['ratio']:.0%} of its single-turn {alone:.1%}" if figures["ratio"] is not None else ""))
    print(f"→ {output}")
    return results


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = EvalConfig
run = evaluate
