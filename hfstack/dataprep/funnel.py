"""The data funnel: documents and bytes in and out of every step, with drop reasons.

`Metered` wraps each step of the data stage's pipeline and counts what goes in and out; the funnel is
then built from datatrove's per-task stats files (DIR/logs/<stage>/stats/*.json), so a resumed run
that only re-ran some tasks still reports the whole dataset. Written to DIR/stats.json and printed by
`hfstack data`; tested by `python -m pytest -q tests/unit/test_dataprep_steps.py tests/stages/test_data.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

# datatrove counters that mean "this document was dropped" without a dropped_<reason> key
_EXTRACTOR_LOSSES = ("timeout", "clean_error", "broken_process")
# counters that describe files rather than documents, reported as notes of the reading step
_FILE_NOTES = ("input_files", "corrupt_files", "files_without_responses")


class Metered(PipelineStep):
    """Wraps a step to count documents and UTF-8 bytes going in and out, for the funnel report.

    The wrapper shares the inner step's Stats object, so datatrove's own stats and these counters
    land in one entry of the executor's stats.json.
    """

    def __init__(self, step: PipelineStep):
        super().__init__()
        self.step = step
        self.stats = step.stats
        self.name, self.type = step.name, step.type

    def _count(self, docs, prefix: str):
        for doc in docs:
            self.stats[f"{prefix}_docs"].update(1)
            self.stats[f"{prefix}_bytes"].update(len(doc.text.encode("utf-8", "replace")))
            yield doc

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        incoming = self._count(data, "in") if data is not None else None
        yield from self._count(self.step.run(incoming, rank, world_size), "out")


def _value(stat) -> int:
    return int(stat["total"]) if isinstance(stat, dict) else int(stat)


def _load_task_stats(stage_dir: Path) -> list[list[dict]]:
    files = sorted((stage_dir / "stats").glob("*.json"))
    return [json.loads(f.read_text()) for f in files]


def build_funnel(stage_logs: list[tuple[Path, list[str], int]]) -> list[dict]:
    """`stage_logs`: for each stage, its logging dir, the labels of its metered steps and the index of
    the first metered step in its pipeline (steps before it, like an intermediate reader, are not rows)."""
    rows = []
    for stage_dir, labels, offset in stage_logs:
        tasks = _load_task_stats(stage_dir) if labels else []
        for position, label in enumerate(labels):
            totals: dict[str, int] = {}
            for task in tasks:
                for key, stat in task[offset + position]["stats"].items():
                    totals[key] = totals.get(key, 0) + _value(stat)
            rows.append(_row(label, totals))
    return rows


def _row(label: str, totals: dict[str, int]) -> dict:
    docs_in, docs_out = totals.get("in_docs", 0), totals.get("out_docs", 0)
    reasons = {k.removeprefix("dropped_"): v for k, v in totals.items() if k.startswith("dropped_")}
    reasons |= {k: v for k, v in totals.items() if k in _EXTRACTOR_LOSSES}
    row = {"step": label, "docs_in": docs_in, "docs_out": docs_out,
           "bytes_in": totals.get("in_bytes", 0), "bytes_out": totals.get("out_bytes", 0)}
    if label.startswith("read"):
        row["docs_in"], row["bytes_in"] = None, None
        row["notes"] = {k: totals[k] for k in _FILE_NOTES if k in totals}
    else:
        unexplained = docs_in - docs_out - sum(reasons.values())
        if unexplained > 0:  # e.g. an extractor that returned no text, or a dedup filter's drops
            reasons[_default_reason(label)] = reasons.get(_default_reason(label), 0) + unexplained
    row["dropped"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    return row


def _default_reason(label: str) -> str:
    if "dedup" in label:
        return "near_duplicate" if "minhash" in label else "duplicate"
    if label.startswith("extract"):
        return "no_text"
    return "other"


def format_funnel(rows: list[dict]) -> str:
    def size(n):
        if n is None:
            return "-"
        for unit in ("B", "KB", "MB", "GB", "TB"):
            if n < 1000:
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1000
        return f"{n:.1f} PB"

    header = f"{'step':<26}{'docs in':>9}{'docs out':>10}{'bytes in':>11}{'bytes out':>11}  dropped"
    lines = [header, "-" * len(header)]
    for r in rows:
        dropped = ", ".join(f"{k}={v}" for k, v in r["dropped"].items())
        if r.get("notes"):
            dropped = ", ".join(f"{k}={v}" for k, v in r["notes"].items())
        docs_in = "-" if r["docs_in"] is None else str(r["docs_in"])
        lines.append(f"{r['step']:<26}{docs_in:>9}{r['docs_out']:>10}{size(r['bytes_in']):>11}"
                     f"{size(r['bytes_out']):>11}  {dropped}")
    return "\n".join(lines)


def write_funnel(rows: list[dict], path: Path, extra: dict | None = None) -> None:
    kept = rows[-1]["docs_out"] if rows else 0
    read = sum(r["docs_out"] for r in rows if r["step"].startswith("read"))
    payload = {"documents_read": read, "documents_kept": kept, "steps": rows} | (extra or {})
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
