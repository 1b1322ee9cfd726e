"""Helpers of benchmarks/gpu_check.sh (see there): a text corpus, one stage run with its timings and peak
GPU memory, and the table of every run.

    python benchmarks/gpu_check.py corpus OUT.jsonl [--copies 8]
    python benchmarks/gpu_check.py stage RESULT.json LABEL WHAT OUTPUT_DIR -- <hfstack command and flags>
    python benchmarks/gpu_check.py table RESULTS_DIR

`stage` runs the hfstack command in this process (under `accelerate launch` too: rank 0 writes RESULT.json)
and times every Trainer.train call, so that a stage's load, data and evaluation time stay out of its steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def corpus(out: Path, copies: int) -> None:
    """Standard-library prose (no network), `copies` times over: enough tokens for packed 1024-token blocks."""
    from hfstack.core.stdlib_text import stdlib_articles

    articles = [title + "\n\n" + "\n\n".join(paragraphs) for title, paragraphs in stdlib_articles()]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for _ in range(copies):
            for text in articles:
                handle.write(json.dumps({"text": text}) + "\n")
    print(f"[gpu_check] corpus: {copies * len(articles)} documents, {out.stat().st_size / 1e6:.1f} MB → {out}")


def stage(result: Path, label: str, what: str, output_dir: str, command: list[str]) -> int:
    import torch
    import transformers

    from hfstack.cli import main

    timings = []
    train = transformers.Trainer.train

    def timed_train(self, *args, **kwargs):
        start, first = time.perf_counter(), self.state.global_step
        try:
            return train(self, *args, **kwargs)
        finally:
            timings.append((time.perf_counter() - start, self.state.global_step - first))

    transformers.Trainer.train = timed_train
    started = time.perf_counter()
    try:
        rc = main(command)
    except Exception as e:  # noqa: BLE001 - recorded in the table, with the traceback above it
        import traceback

        traceback.print_exc()
        rc, error = 1, f"{type(e).__name__}: {e}"
    else:
        error = None
    if os.environ.get("RANK", "0") == "0":
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        seconds, steps = sum(t for t, _ in timings), sum(s for _, s in timings)
        record = {"label": label, "what": what, "output_dir": output_dir, "rc": rc, "error": error,
                  "wall_seconds": round(time.perf_counter() - started, 1), "train_seconds": round(seconds, 2),
                  "train_steps": steps, "peak_memory_gib": peak}
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_text(json.dumps(record, indent=1))
    return rc


def pretrain_speed(output_dir: Path) -> tuple[float | None, float | None]:
    """Mean tokens/s and MFU from log.jsonl, the first logging interval (warm-up, compilation) left out."""
    try:
        rows = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    except OSError:
        return None, None
    rows = [r for r in rows if "tokens_per_s" in r]
    rows = rows[1:] or rows
    if not rows:
        return None, None
    return (sum(r["tokens_per_s"] for r in rows) / len(rows), sum(r["mfu"] for r in rows) / len(rows))


HEADER = "| stage | what | status | tokens/s | steps/s | MFU | peak memory | wall |"


def table(results: Path) -> int:
    """The table of every stage run (in the order they ran); the number of runs that failed."""
    lines = [HEADER, "|---|---|---|---|---|---|---|---|"]
    failed = 0
    for path in sorted(results.glob("*.json")):
        r = json.loads(path.read_text())
        ok = r.get("rc") == 0
        failed += not ok
        status = "ok" if ok else (r.get("status") or f"FAILED (rc {r.get('rc')})")
        tokens = mfu = None
        if ok and r.get("label", "").startswith("pretrain"):
            tokens, mfu = pretrain_speed(Path(r["output_dir"]))
        steps = r["train_steps"] / r["train_seconds"] if ok and r.get("train_seconds") else None
        peak = r.get("peak_memory_gib")
        lines.append(f"| {r['label']} | {r['what']} | {status} | {f'{tokens:,.0f}' if tokens else '-'} | "
                     f"{f'{steps:.2f}' if steps else '-'} | {f'{mfu:.1%}' if mfu else '-'} | "
                     f"{f'{peak:.1f} GiB' if peak is not None else '-'} | {r.get('wall_seconds', '-')} s |")
    print("\n".join(lines))
    return failed


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[:1]
    if command == ["stage"]:
        if "--" not in argv or argv.index("--") != 5:
            print("usage: gpu_check.py stage RESULT.json LABEL WHAT OUTPUT_DIR -- <hfstack command>", file=sys.stderr)
            return 2
        return stage(Path(argv[1]), argv[2], argv[3], argv[4], argv[6:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("corpus")
    make.add_argument("out", type=Path)
    make.add_argument("--copies", type=int, default=8)
    show = sub.add_parser("table")
    show.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "corpus":
        corpus(args.out, args.copies)
        return 0
    return 1 if table(args.results) else 0


if __name__ == "__main__":
    sys.exit(main())
