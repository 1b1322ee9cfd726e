"""What `hfstack speedrun` shows while it runs: one line per step as it starts and ends, with its
time, its key figure (validation bits per byte, held-out accuracy, ...) and how long the run has
left; a summary table at the end that points to the report card; library warnings and per-pass
progress bars kept quiet unless `--verbose true` (each training stage keeps its one progress bar).

    hfstack speedrun --preset tiny [--verbose true]

The time left comes from the previous run of the same preset: this run's own done markers (a rerun,
or a --force run before it clears them), else the newest sibling run folder with the same preset.
Tests: python -m pytest -q tests/unit/test_console.py
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from hfstack.core.rundir import read_json, step_seconds


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True):
    """While it lasts: library deprecation notices, the datasets/transformers per-pass bars and info logs,
    the Trainer's printed log dicts (a stage run without its bar prints one per log), and datatrove's per-task
    log, off here and in the processes a launch starts (through the environment); all as before after. The
    stages' own lines, the data funnel and each training bar stay."""
    if not enabled:
        yield
        return
    import datasets
    import transformers
    from transformers.trainer_callback import PrinterCallback

    quiet = "ignore::FutureWarning,ignore::DeprecationWarning"
    environment = {"TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                   "PYTHONWARNINGS": ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), quiet)))}
    from loguru import logger  # datatrove's logger: its per-task pipeline and stats dumps

    saved = {name: os.environ.get(name) for name in environment}
    bars = datasets.utils.logging.is_progress_bar_enabled()
    printed = PrinterCallback.on_log
    verbosity = (datasets.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity())
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        for library in ("transformers", "trl", "torch", "accelerate", "datasets", "peft"):  # their notices only
            warnings.filterwarnings("ignore", category=UserWarning, module=rf"{library}(\.|$)")
        os.environ.update(environment)
        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        logger.disable("datatrove")
        PrinterCallback.on_log = lambda self, args, state, control, logs=None, **kwargs: None
        try:
            yield
        finally:
            logger.enable("datatrove")
            PrinterCallback.on_log = printed
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
            if bars:
                datasets.enable_progress_bars()
            datasets.utils.logging.set_verbosity(verbosity[0])
            transformers.utils.logging.set_verbosity(verbosity[1])


def duration(seconds: float) -> str:
    """1m40s, 12s, 1h02m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _pct(value) -> str | None:
    return f"{value:.1%}" if isinstance(value, (int, float)) else None


def _data(folder: Path) -> str | None:
    stats = read_json(folder / "stats.json") or {}
    if "documents_kept" in stats:
        return f"kept {stats['documents_kept']:,} of {stats.get('documents_read', '?'):,} documents"
    return None


def _tokenizer(folder: Path) -> str | None:
    value = (read_json(folder / "eval.json") or {}).get("bytes_per_token")
    return f"{value:.2f} bytes/token" if value else None


def _pretrain(folder: Path) -> str | None:
    value = (read_json(folder / "summary.json") or {}).get("eval_bpb")
    return f"val {value:.2f} bpb" if value else None


def _regurgitation(folder: Path) -> str | None:
    report = read_json(folder / "report.json") or {}
    train, induction = report.get("train") or {}, report.get("induction") or {}
    if "docs" not in train:
        return None
    repeated = f", repeats {induction['repeat_accuracy']:.0%} of random tokens" if induction else ""
    return f"recites {train['exact_continuations']} of {train['docs']} training documents{repeated}"


def _sft(folder: Path) -> str | None:
    last = (read_json(folder / "summary.json") or {}).get("last_loss") or []
    return f"last loss {last[-1]:.3f}" if last else None


def _eval(folder: Path) -> str | None:
    report = read_json(folder / "eval.json") or {}
    shown = [f"{task} {_pct(report[task].get('accuracy'))}" for task in ("arithmetic", "counting", "identity")
             if isinstance(report.get(task), dict) and _pct(report[task].get("accuracy"))]
    return ", ".join(shown) or None


def _rl(folder: Path) -> str | None:
    report = read_json(folder / "eval.json") or {}
    before, after = report.get("pass@1_before") or {}, report.get("pass@1_after") or {}
    shown = [f"{task} {_pct(before.get(task))} → {_pct(value)}" for task, value in after.items()]
    return "pass@1 " + ", ".join(shown) if shown else None


def _rank(folder: Path) -> str | None:
    pairs = (read_json(folder / "summary.json") or {}).get("pairs") or {}
    return f"{pairs.get('train', 0)} + {pairs.get('test', 0)} held-out pairs" if pairs else None


def _reward(folder: Path) -> str | None:
    report = read_json(folder / "eval.json") or {}
    value, found = report.get("held_out_accuracy_after"), report.get("attacks_found")
    attacks = f", {len(found)} RM attack(s) found" if isinstance(found, list) else ""
    return f"held-out accuracy {_pct(value)}{attacks}" if _pct(value) else None


def _rlhf(folder: Path) -> str | None:
    report = read_json(folder / "eval.json") or {}
    first, last = report.get("first") or {}, report.get("last") or {}
    if "rm_score" not in last:
        return None
    alarms = f", {len(report['alarms'])} alarm(s)" if report.get("alarms") else ""
    return f"RM score {first.get('rm_score', 0):.2f} → {last['rm_score']:.2f}{alarms}"


def _honesty(folder: Path) -> str | None:
    models = (read_json(folder / "boundary.json") or {}).get("models") or {}
    shown = []
    for name, measured in models.items():
        groups = (measured.get("search_off") or {}).get("groups") or {}
        items = sum(g["items"] for g in groups.values())
        if items:
            shown.append(f"{name} {sum(g['hallucinated'] for g in groups.values()) / items:.0%}")
    return "hallucinated " + ", ".join(shown) if shown else None


def _dpo(folder: Path) -> str | None:
    after = ((read_json(folder / "eval.json") or {}).get("held_out") or {}).get("after") or {}
    value = after.get("logps/margins")
    return f"held-out log-prob margin {value:.2f}" if isinstance(value, (int, float)) else None


def _report(folder: Path) -> str | None:
    return str(folder / "report.html") if (folder / "report.html").is_file() else None


KEY_FIGURES: dict[str, Callable[[Path], str | None]] = {
    "data": _data, "tokenizer": _tokenizer, "pretrain": _pretrain, "regurgitation": _regurgitation, "sft": _sft,
    "eval": _eval, "rl": _rl, "rank": _rank, "reward": _reward, "rlhf": _rlhf, "dpo": _dpo,
    "final-eval": _eval, "honesty": _honesty, "report": _report}


def key_figure(step: str, folder: Path) -> str | None:
    """The one figure that says how the step went, read from what it wrote; None when there is none."""
    try:
        return KEY_FIGURES[step](folder) if step in KEY_FIGURES else None
    except (TypeError, ValueError, KeyError, AttributeError):  # an older or hand-edited report: no figure
        return None


def previous_times(run_root: Path, preset: str) -> dict[str, float]:
    """Each step's seconds in the last run of `preset`: this run folder's own markers first (a rerun), then
    the newest sibling run of the same preset for the steps it lacks."""
    import yaml

    def timed(root: Path) -> dict[str, float]:
        return {step: float(took) for step, took in step_seconds(root).items() if isinstance(took, (int, float))}

    times = timed(run_root)
    siblings = []
    for candidate in run_root.parent.glob("*/speedrun.yaml") if run_root.parent.is_dir() else []:
        if candidate.parent.resolve() == run_root.resolve():
            continue
        try:
            same = (yaml.safe_load(candidate.read_text()) or {}).get("preset") == preset
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if same:
            siblings.append(candidate.parent)
    for sibling in sorted(siblings, key=lambda p: p.stat().st_mtime, reverse=True)[:1]:
        times = timed(sibling) | times
    return times


class Watch:
    """The lines a speedrun prints: `[4/14] pretrain: starting`, then `done in 1m40s · val 1.94 bpb ·
    about 22m left`; at the end, the table of every step."""

    def __init__(self, steps: list[str], previous: dict[str, float]):
        self.steps, self.previous, self.rows = steps, previous, []

    def _prefix(self, step: str) -> str:
        return f"[{self.steps.index(step) + 1}/{len(self.steps)}] {step}"

    def _left(self, step: str, including: bool) -> str:
        later = self.steps[self.steps.index(step) + (0 if including else 1):]
        if not later:
            return ""
        known = [self.previous[s] for s in later if s in self.previous]
        if len(known) < len(later):  # a step never timed: no honest estimate
            return ""
        return f"about {duration(sum(known))} left" if sum(known) >= 1 else ""

    def skipped(self, step: str, folder: Path) -> None:
        self.rows.append((step, "skipped", key_figure(step, folder) or ""))
        print(f"{self._prefix(step)}: already done, skipping ({folder})", flush=True)

    def started(self, step: str) -> None:
        notes = [f"last time {duration(self.previous[step])}"] if step in self.previous else []
        notes += [left] if (left := self._left(step, including=True)) else []
        print(f"{self._prefix(step)}: starting" + (f" ({'; '.join(notes)})" if notes else ""), flush=True)

    def finished(self, step: str, folder: Path, seconds: float) -> None:
        figure = key_figure(step, folder)
        self.rows.append((step, duration(seconds), figure or ""))
        parts = [f"done in {duration(seconds)}", figure, self._left(step, including=False)]
        print(f"{self._prefix(step)}: " + " · ".join(p for p in parts if p), flush=True)

    def summary(self, run_root: Path, report: Path | None) -> None:
        width = max([len(step) for step, _, _ in self.rows] + [5])
        print(f"\n{'step':<{width}}  {'time':>8}  key figure")
        for step, took, figure in self.rows:
            print(f"{step:<{width}}  {took:>8}  {figure}")
        print(f"\n[speedrun] finished: {run_root}" + (f"; the report card: {report}" if report else ""), flush=True)
