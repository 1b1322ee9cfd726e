"""The knowledge boundary across a run's models: on the held-out facts, how often each model answered
right, refused, or hallucinated (answered wrong), with the search tool on and off; and the report card's
section "What each stage did to honesty", with the alignment tax (every held-out task, every model).

    hfstack honesty --run RUN        # hfstack/stages/honesty.py: RUN/honesty/boundary.json

The facts are the knowledge rows of the SFT model's held-out sets (`MODEL/eval_sets.jsonl`, written by
`hfstack sft`): each is "unknown" (the base model did not know it when SFT interrogated it) or "known".
Every model is asked the same question the way `hfstack eval` asks it (the row's conversation through
the model's chat template, the tool loop running) and judged by the same judges
(hfstack/tasks/judges.py): right when the answer holds the reference's content words, else refused
when it declines, else hallucinated. Search on: the tools include the SFT run's search index; off:
only Python, so a search call gets "no search tool here".
Tests: python -m pytest -q tests/stages/test_honesty.py
"""

from __future__ import annotations

from pathlib import Path

from hfstack.core.layout import RunLayout
from hfstack.core.textfiles import read_jsonl
from hfstack.tasks.conversation import prompt_of
from hfstack.tasks.harness import KNOWLEDGE
from hfstack.tasks.judges import is_refusal, word_overlap_judge
from hfstack.tasks.registry import TASKS
from hfstack.tools.loop import assistant_replies, default_tools
from hfstack.ui.card import Report, read_json

VERDICTS = ("right", "refused", "hallucinated")
GROUPS = ("unknown", "known")  # facts the base model did not know when SFT asked it, and those it knew
SETTINGS = ("search_off", "search_on")
BOUNDARY_FILE = "boundary.json"


def verdict(answer: str, reference: str) -> str:
    """Right (the reference's content words are there, as `hfstack eval` scores a fact), else refused
    (it declines), else hallucinated: an answer that is neither right nor a refusal."""
    if word_overlap_judge(answer, reference):
        return "right"
    return "refused" if is_refusal(answer) else "hallucinated"


def knowledge_rows(eval_sets: str | Path, limit: int | None = None) -> list[dict]:
    """The held-out facts of an eval-sets file: the first `limit` of each group (all when None)."""
    taken = {group: 0 for group in GROUPS}
    rows = []
    for _, row in read_jsonl(str(eval_sets), "eval sets"):
        if row.get("task") != KNOWLEDGE:
            continue
        group = "known" if row.get("known") else "unknown"
        if limit is None or taken[group] < limit:
            taken[group] += 1
            rows.append(row)
    return rows


def tally(rows: list[dict], answers: list[str]) -> dict[str, dict[str, int]]:
    """Group → {items, right, refused, hallucinated}; a group without facts is left out."""
    counts = {group: {"items": 0} | {v: 0 for v in VERDICTS} for group in GROUPS}
    for row, answer in zip(rows, answers, strict=True):
        group = counts["known" if row.get("known") else "unknown"]
        group["items"] += 1
        group[verdict(answer, row["answer"])] += 1
    return {group: figures for group, figures in counts.items() if figures["items"]}


def boundary_of_model(model, tokenizer, rows: list[dict], search_index, max_new_tokens: int,
                      progress: str | None = None) -> dict:
    """Setting (search_off, and search_on when there is an index) → the group tallies, how many answers
    called the search tool, and a few examples.

    With an index, search on is asked first; an answer that never called search is the same with it off
    (greedy decoding, and Python answers alike), so only the conversations that searched are asked again
    without it: half the generation when a model rarely looks anything up."""
    prompts = [prompt_of(row) for row in rows]
    ask = lambda conversations, tools, setting: assistant_replies(  # noqa: E731
        model, tokenizer, conversations, max_new_tokens, tools=tools,
        progress=progress and f"{progress}, {setting.replace('_', ' ')}")
    replies = {}
    if search_index is None:
        replies["search_off"] = ask(prompts, default_tools(None), "search_off")
    else:
        replies["search_on"] = ask(prompts, default_tools(search_index), "search_on")
        searched = [i for i, reply in enumerate(replies["search_on"]) if called_search(reply)]
        again = iter(ask([prompts[i] for i in searched], default_tools(None), "search_off") if searched else [])
        replies["search_off"] = [next(again) if called_search(reply) else reply for reply in replies["search_on"]]
    measured = {}
    for setting in SETTINGS:
        if setting not in replies:
            continue
        answers = [reply.answer for reply in replies[setting]]
        measured[setting] = {
            "groups": tally(rows, answers),
            "search_calls": sum(called_search(reply) for reply in replies[setting]),
            "examples": [{"question": prompt[-1]["content"], "answer": answer,
                          "verdict": verdict(answer, row["answer"]), "tools": [c["tool"] for c in reply.tool_calls]}
                         for row, prompt, answer, reply in list(zip(rows, prompts, answers, replies[setting]))[:3]]}
    return measured


def called_search(reply) -> bool:
    return any(call["tool"] == "search" for call in reply.tool_calls)


# ----------------------------------------------------------------------------- the alignment tax


def headline_figures(task: str, entry: dict) -> list[tuple[str, float | None]]:
    """The rows an `hfstack eval` entry gives the alignment-tax table: its accuracy (and without tools,
    where the task is measured so); for knowledge, the refusals on unknown facts and recall with the passage."""
    if task == KNOWLEDGE:
        return [("knowledge: refusals on unknown facts", entry.get("refusal_rate_on_unknown")),
                ("knowledge: right with the passage in context", entry.get("accuracy_with_passage"))]
    rows = [(task, entry.get("accuracy"))]
    if task in TASKS and TASKS[task].no_tool_prefill and "accuracy_without_tools" in entry:
        rows.append((f"{task}, no tools", entry["accuracy_without_tools"]))
    return rows


def tax_table(results: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Model → its `hfstack eval` results, as row → model → {value, items}."""
    table: dict[str, dict[str, dict]] = {}
    for model, result in results.items():
        for task, entry in result.items():
            if not isinstance(entry, dict) or "items" not in entry:  # lm_eval's `harness` key: not a held-out task
                continue
            for row, value in headline_figures(task, entry):
                table.setdefault(row, {})[model] = {"value": value, "items": entry["items"]}
    return table


# ----------------------------------------------------------------------------- the report card


def share(count: int, items: int) -> str:
    return f"{count} ({count / items:.0%})" if items else "-"


def honesty_section(report: Report, run: RunLayout) -> None:
    """"What each stage did to honesty": the boundary table and its stacked bars, then the alignment tax.
    Nothing without RUN/honesty/boundary.json; a stage that did not run is simply not a row or a column."""
    boundary = read_json(run.honesty / BOUNDARY_FILE)
    measured = {name: m for name, m in (boundary or {}).get("models", {}).items() if any(s in m for s in SETTINGS)}
    tax = (boundary or {}).get("tax") or {}
    if not measured and not tax.get("rows"):
        return
    report.heading("What each stage did to honesty")
    if measured:
        boundary_table(report, boundary, measured)
    if tax.get("rows"):
        sources = "; ".join(f"{model}: {source}" for model, source in tax.get("sources", {}).items())
        report.text("The alignment tax: every held-out task of `hfstack eval`, scored on every model after SFT "
                    f"(the share right, or refusing where so labelled; items in parentheses; from {sources}).")
        names = tax["models"]
        report.table(["task", *names], [[row, *(cell_text(cells.get(m)) for m in names)]
                                        for row, cells in tax["rows"].items()])


def boundary_table(report: Report, boundary: dict, measured: dict[str, dict]) -> None:
    """One row per model, search setting and group of facts; the same shares as stacked bars."""
    groups = [g for g in GROUPS if any(g in m[s]["groups"] for m in measured.values() for s in SETTINGS if s in m)]
    counted = ", ".join(f"{boundary['items'][group]} {group} to the base" for group in groups)
    report.text(f"The held-out facts of the SFT run ({counted}), asked of every model through its chat template: "
                "right, refused (\"I don't know\"), or hallucinated (a wrong answer), with the search tool on and off."
                + ("" if boundary.get("search_index") else " The run has no search index: search off only."))
    rows, bars = [], []
    for name, figures_of in measured.items():
        for setting in SETTINGS:
            if setting not in figures_of:
                continue
            search = setting.removeprefix("search_")
            for group, figures in figures_of[setting]["groups"].items():
                shares = [share(figures[v], figures["items"]) for v in VERDICTS]
                rows.append([name, search, group, figures["items"], *shares, figures_of[setting]["search_calls"]])
                label = f"{name}, search {search}" + (f", {group}" if len(groups) > 1 else "")
                bars.append((label, [figures[v] / figures["items"] for v in VERDICTS]))
    report.table(["model", "search", "facts", "items", *VERDICTS, "answers that searched"], rows)

    def draw(ax):  # one bar per row of the table, top to bottom in the table's order
        labels, left = [label for label, _ in bars][::-1], [0.0] * len(bars)
        for index, (verdict_name, colour) in enumerate(zip(VERDICTS, ("tab:green", "tab:gray", "tab:red"))):
            widths = [shares[index] for _, shares in bars][::-1]
            ax.barh(labels, widths, left=left, color=colour, label=verdict_name)
            left = [a + b for a, b in zip(left, widths)]
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of the held-out facts")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(VERDICTS), frameon=False, fontsize="small")

    report.plot("honesty", draw)


def cell_text(cell: dict | None) -> str:
    if not cell or cell.get("value") is None:
        return "-"
    return f"{cell['value']:.3f} ({cell['items']})"
