"""The run directory's layout: which folder each stage of a speedrun writes (RUN/base, RUN/prefs, ...)
and which model is the run's final one. The only place that knows the folder names."""

from __future__ import annotations

from pathlib import Path

FINAL_MODELS = ("rlhf", "rl", "sft", "base")  # the newest stage's model is the run's final model


def final_model(run: Path) -> str | None:
    """The stage folder name of the run's final model (the newest stage that saved one), or None."""
    return next((name for name in FINAL_MODELS if (run / name / "config.json").is_file()), None)
