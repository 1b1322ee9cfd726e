"""Run directories: completion markers (a stage that finished leaves DIR/.hfstack-done, so a rerun can
skip it) and the newest Trainer checkpoint a resumed run continues from."""

from __future__ import annotations

import json
import time
from pathlib import Path

MARKER = ".hfstack-done"


def is_done(output_dir: str | Path) -> bool:
    return (Path(output_dir) / MARKER).is_file()


def mark_done(output_dir: str | Path, stage: str, **info) -> None:
    """Write the marker; facts a stage already recorded there (e.g. its document count) are kept."""
    path = Path(output_dir) / MARKER
    previous = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(previous | {"stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")} | info))


def clear_done(output_dir: str | Path) -> None:
    (Path(output_dir) / MARKER).unlink(missing_ok=True)


def newest_checkpoint(folder: Path) -> str | None:
    """The newest complete Trainer checkpoint under `folder`, if any (what resume continues). The
    Trainer writes trainer_state.json after the weights, optimizer and RNG state, so a checkpoint
    without a readable one was cut short by a kill: it is skipped, and the one before it is used."""
    found = sorted(Path(folder).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for checkpoint in reversed(found):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            print(f"[resume] skipping the incomplete checkpoint {checkpoint}", flush=True)
            continue
        return str(checkpoint)
    return None


def process_state():
    """Accelerate's view of this process. Created before any trainer, so that on a CPU machine the
    processes `accelerate launch` started become gloo ranks (not independent single runs)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def start_output(cfg) -> tuple[Path, bool]:
    """A training stage's output folder (cfg.output_dir) and whether this is the main process; the main
    process writes the resolved config there, the others (under `accelerate launch`) write nothing."""
    from hfstack.config import save_config

    main = process_state().is_main_process
    if main:
        save_config(cfg, cfg.output_dir)  # creates the folder too
    return Path(cfg.output_dir), main
