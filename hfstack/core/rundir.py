"""Run directories: who made an output folder, with what, whether its stage finished, and where a
resumed run continues. Used by every stage's command (hfstack data, tokenizer, pretrain, sft, rl, rank,
reward, rlhf, report) and by hfstack speedrun, which also claims the folders of its own steps.

    out = claim_output("tokenizer", cfg)       # at a stage's start, before it writes anything
    ... the stage's work ...
    finish_output(out, "tokenizer", docs=12)   # at its end: what it wrote, then the done marker

Next to a stage's outputs its folder holds hfstack's bookkeeping:
- `.hfstack-run.json`: the run's fingerprint (hfstack.core.fingerprint: the stage, the settings that change
  its results, what its inputs hold), written before the work starts; `written`, the names matching the
  stage's outputs when it finished; and `foreign`, every other name (they are not hfstack's, and stay);
- `config.yaml`: the resolved config, written once the claim succeeded;
- `.hfstack-done`: the completion marker, written last; an unreadable one counts as not done (the
  speedrun adds its step's name and seconds to it once the step returned).

claim_output refuses $HOME, a root, a non-empty folder hfstack did not make, and another stage's folder
(even with --overwrite); continues a run with the same fingerprint (a trainer resumes, datatrove skips
its completed tasks); refuses a different one with one line naming the fields that differ; and with
overwrite removes only what hfstack wrote there (`written`; the stage's outputs for a run cut short
before recording it), never through a symbolic link, and starts fresh. A training stage refuses a
`checkpoint-*` name that is not a checkpoint in OUT/checkpoints (the Trainer's rotation would delete it).
Training stages call start_output instead: it first checks that the launched processes form one
world (hfstack.core.launch.check_world_size), then claims on every rank and writes on the main one.
Tests: python -m pytest -q tests/unit/test_rundir.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hfstack.core import fingerprint as fingerprints
from hfstack.core.config import ConfigError, save_config
from hfstack.core.launch import check_world_size, print0, process_state

MARKER = ".hfstack-done"
FINGERPRINT = ".hfstack-run.json"
BOOKKEEPING = (FINGERPRINT, FINGERPRINT + ".tmp", MARKER, MARKER + ".tmp", "config.yaml")
TRAINER_STAGES = ("pretrain", "sft", "rl", "reward", "rlhf")  # OUT/checkpoints is a Trainer's output_dir


# ----------------------------------------------------------------------------- markers


def read_json(path: str | Path) -> dict | None:
    """A JSON object from `path`, or None when it is missing, torn by a kill, or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict) -> None:
    """All or nothing: a kill mid-write leaves the previous file, not half of the new one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def is_done(output_dir: str | Path) -> bool:
    return read_json(Path(output_dir) / MARKER) is not None


def mark_done(output_dir: str | Path, stage: str, **info) -> None:
    """Write the marker; facts a stage already recorded there (e.g. its document count) are kept."""
    path = Path(output_dir) / MARKER
    previous = read_json(path) or {}
    write_json(path, previous | {"stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")} | info)


def clear_done(output_dir: str | Path) -> None:
    (Path(output_dir) / MARKER).unlink(missing_ok=True)


def step_seconds(run_root: str | Path) -> dict[str, object]:
    """Each finished step of the run under `run_root` and its seconds, as the speedrun recorded them in
    its done markers ("-" where none did), oldest first."""
    seconds: dict[str, object] = {}
    for marker in sorted(Path(run_root).glob(f"*/{MARKER}"), key=lambda p: p.stat().st_mtime):
        info = read_json(marker)
        if info is None:  # torn or edited: that stage is not done
            continue
        # the speedrun adds its step's name and seconds to the marker in the step's output folder (two steps
        # run the eval stage: the step tells them apart); a stage run alone names only its stage. A run of the
        # previous layout also has the speedrun's own markers in RUN/<step name> (named by "stage", with the
        # seconds) beside the stage's marker, which has none: the one with the seconds wins.
        stage = info.get("step") or info.get("stage", marker.parent.name)
        if seconds.get(stage, "-") == "-":
            seconds[stage] = info.get("seconds", "-")
    return seconds


def checkpoint_step(path: Path, prefix: str = "checkpoint-") -> int | None:
    """The step in a checkpoint folder's name; None for a name that is not PREFIX<digits> (a user's
    `checkpoint-5-backup` is not a checkpoint, and must not stop every resume)."""
    match = re.fullmatch(re.escape(prefix) + r"(\d+)", path.name)
    return int(match.group(1)) if match else None


def newest_checkpoint(folder: Path) -> str | None:
    """The newest complete Trainer checkpoint under `folder`, if any (what resume continues). The
    Trainer writes trainer_state.json after the weights, optimizer and RNG state, so a checkpoint
    without a readable one was cut short by a kill: it is skipped, and the one before it is used."""
    steps = {p: checkpoint_step(p) for p in Path(folder).glob("checkpoint-*") if p.is_dir()}
    for checkpoint in sorted((p for p, step in steps.items() if step is not None), key=steps.get, reverse=True):
        if read_json(checkpoint / "trainer_state.json") is None:
            print0(f"[resume] skipping the incomplete checkpoint {checkpoint}")
            continue
        return str(checkpoint)
    return None


# ----------------------------------------------------------------------------- claiming a folder


@dataclass
class Claim:
    """What claiming a stage's folder means, decided before anything is written."""

    stage: str
    folder: Path
    record: dict  # the fingerprint to store (with `written` kept when the same run continues)
    remove: list[Path] = field(default_factory=list)  # hfstack's files of an earlier run (--overwrite)
    foreign: list[str] = field(default_factory=list)  # names hfstack did not write: left where they are


def claim_output(stage: str, cfg, overwrite: bool | None = None, folder: str | Path | None = None) -> Path:
    """Claim cfg.output_dir (or `folder`) for `stage` in a single process: see the module doc.
    `overwrite` defaults to cfg.overwrite. Returns the folder, created."""
    claim = plan_claim(stage, cfg, overwrite, folder)
    apply_claim(claim, cfg)
    return claim.folder


def plan_claim(stage: str, cfg, overwrite: bool | None = None, folder: str | Path | None = None) -> Claim:
    """Decide without writing: every process of a launch reaches the same verdict from the same files.
    Path fields arrive with `~` expanded (hfstack.core.config.check_fields, when the config was built)."""
    folder = Path(folder if folder is not None else cfg.output_dir).expanduser()
    check_output_dir(stage, folder)
    overwrite = bool(getattr(cfg, "overwrite", False)) if overwrite is None else overwrite
    current = fingerprints.fingerprint(stage, cfg)
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    if not (folder / FINGERPRINT).exists():
        if names:  # even with --overwrite: nothing there is known to be hfstack's
            raise ConfigError(f"{stage}: {folder} is not empty and has no {FINGERPRINT} (hfstack did not make it, or "
                              f"an older version did; it holds {listing(names)}); choose a new or empty --output_dir")
        return Claim(stage, folder, current)
    stored = read_json(folder / FINGERPRINT)
    if stored is not None and stored.get("stage") not in (None, stage):  # even with --overwrite (report's too)
        hint = f" (--overwrite replaces only {stage}'s own earlier output)" if hasattr(cfg, "overwrite") else ""
        raise ConfigError(f"{stage}: {folder} holds the output of `hfstack {stored['stage']}`; choose another "
                          f"--output_dir{hint}")
    check_rotation(stage, cfg, folder)
    work = work_in(folder, stored or {}, stage)
    if overwrite or not work:  # --overwrite, or an earlier attempt stopped before any work: start fresh
        remove, keep = split_owned(folder, stored or {}, stage)
        check_fresh_start(stage, folder, remove, keep)
        return Claim(stage, folder, current, remove=remove, foreign=keep)
    if stored is None:
        raise ConfigError(f"{stage}: {folder} has an unreadable {FINGERPRINT}, so what made it is unknown; rerun "
                          "with --overwrite to start fresh, or choose another --output_dir")
    differing = fingerprints.differences(stored, current, cfg)
    if differing:
        raise ConfigError(f"{stage}: {folder} was made with different settings ({', '.join(differing)}); rerun "
                          "with --overwrite to start fresh, or choose another --output_dir")
    foreign = [n for n in stored.get("foreign", []) if os.path.lexists(folder / n)]
    if "written" in stored and is_done(folder):  # it finished: what it did not write was added since
        foreign += [n for n in work if not wrote(stage, stored["written"], n)]
    kept = {"written": stored["written"]} if "written" in stored else {}
    return Claim(stage, folder, current | kept, foreign=sorted(foreign))  # the same run: the stage continues it


def entries(folder: Path, stage: str) -> list[str]:
    """What `folder` holds besides bookkeeping: its names, a real folder the stage shares with others' files
    (rank's data/) by what is in it ("data/train.parquet"). A symbolic link is never looked into."""
    found = []
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        path = folder / name
        if name in BOOKKEEPING:
            continue
        if fingerprints.shared_outputs(stage, name) and path.is_dir() and not path.is_symlink():
            found += [f"{name}/{inner}" for inner in sorted(os.listdir(path))]
        else:
            found.append(name)
    return found


def work_in(folder: Path, stored: dict, stage: str) -> list[str]:
    """The names of a run's work in `folder`: what it holds besides bookkeeping and names left as foreign."""
    foreign = set(stored.get("foreign", []))
    return [name for name in entries(folder, stage) if name not in foreign]


def wrote(stage: str, written: list[str] | None, name: str) -> bool:
    """Whether the recorded run wrote `name`: it is in `written` (an older record holding "data" itself: the
    stage's names in there), or, for a run cut short before recording it (None), the stage writes it."""
    if written is None:
        return fingerprints.is_output(stage, name)
    top = name.split("/")[0]
    return name in written or (top != name and top in written and fingerprints.is_output(stage, name))


def split_owned(folder: Path, stored: dict, stage: str) -> tuple[list[Path], list[str]]:
    """What hfstack wrote in `folder` (bookkeeping, what `wrote` says) and the rest, which stays: names
    recorded as foreign and symbolic links (never followed) first."""
    owner = stored.get("stage") or stage
    written, foreign = stored.get("written"), set(stored.get("foreign", []))
    remove = [folder / name for name in BOOKKEEPING if os.path.lexists(folder / name)]
    keep = []
    for name in entries(folder, owner):
        if name in foreign or (folder / name).is_symlink() or not wrote(owner, written, name):
            keep.append(name)
        else:
            remove.append(folder / name)
    return remove, keep


def check_fresh_start(stage: str, folder: Path, remove: list[Path], keep: list[str]) -> None:
    """Refused before anything is removed: an output that is a symbolic link (not followed, so the old run
    would stay where the new one writes), or a non-checkpoint `checkpoint-*`/`step-*` in the checkpoints/ it
    removes."""
    for name in keep:
        path = folder / name
        if path.is_symlink() and (fingerprints.is_output(stage, name) or fingerprints.shared_outputs(stage, name)):
            raise ConfigError(f"{stage}: {path} is a symbolic link (to {os.readlink(path)}); hfstack never deletes "
                              "through one, so the new run would mix with what is there: remove the link (or "
                              "empty what it points to) and rerun, or choose another --output_dir")
    for path in remove:
        if path.name == "checkpoints" and odd_checkpoints(path):
            raise ConfigError(f"{stage}: {path} holds {listing(odd_checkpoints(path))}, which is not a checkpoint "
                              "hfstack wrote, and starting fresh removes that folder: move it elsewhere and rerun")


def odd_checkpoints(folder: Path, prefixes: tuple[str, ...] = ("checkpoint-", "step-")) -> list[str]:
    """Names in a checkpoints folder that look like a checkpoint's and are not one (`checkpoint-5-backup`)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if any(p.name.startswith(prefix) and checkpoint_step(p, prefix) is None for prefix in prefixes))


def check_rotation(stage: str, cfg, folder: Path) -> None:
    """The Trainer's rotation (save_total_limit, keep_checkpoints) reads `checkpoint-5-backup` as step 5 and
    deletes it with the oldest: a training stage refuses such a name (PPO's rotation parses its names)."""
    if stage not in TRAINER_STAGES or getattr(cfg, "algo", None) == "ppo":
        return
    odd = odd_checkpoints(folder / "checkpoints", ("checkpoint-",))
    if odd:
        raise ConfigError(f"{stage}: {folder / 'checkpoints'} holds {listing(odd)}, which is not a checkpoint "
                          "hfstack wrote, and the Trainer's checkpoint rotation would delete it (it reads the number "
                          "in the name as a step): move it elsewhere and rerun")


def apply_claim(claim: Claim, cfg) -> None:
    """Remove an earlier run's files (--overwrite; never through a symbolic link), store the fingerprint,
    then the resolved config."""
    claim.folder.mkdir(parents=True, exist_ok=True)
    for path in claim.remove:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for shared in {p.parent for p in claim.remove if p.parent != claim.folder}:  # rank's data/, emptied
        if shared.is_dir() and not shared.is_symlink() and not any(shared.iterdir()):
            shared.rmdir()
    if claim.remove and claim.foreign:
        print(f"[{claim.stage}] starting fresh in {claim.folder}; left what hfstack did not write there: "
              f"{listing(claim.foreign)}", flush=True)
    clear_done(claim.folder)  # the stage runs (again): it is done when it finishes
    record = claim.record | {"foreign": claim.foreign, "claimed": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(claim.folder / FINGERPRINT, record)
    save_config(cfg, claim.folder)


def finish_output(folder: str | Path, stage: str, main: bool = True, **info) -> None:
    """At a stage's end: record the names it wrote (what a later --overwrite removes): those the stage
    writes (fingerprint.STAGES[stage].outputs), symbolic links aside; anything else is foreign. Then the marker."""
    if main:
        record_written(Path(folder), stage, info)


def record_written(folder: Path, stage: str, info: dict) -> None:
    record = read_json(folder / FINGERPRINT) or {"stage": stage}
    names = entries(folder, stage)
    foreign = {n for n in record.get("foreign", []) if n in names}
    record["written"] = sorted(n for n in names if n not in foreign and fingerprints.is_output(stage, n)
                               and not (folder / n).is_symlink())
    record["foreign"] = sorted(n for n in names if n not in record["written"])
    write_json(folder / FINGERPRINT, record)
    mark_done(folder, stage, **info)


def stored_run(stage: str, cfg, folder: str | Path) -> str | list[str]:
    """For the speedrun's skip-if-done: "none" when no run's work is recorded in `folder`, "same" when
    `cfg` is that run, else the fields in which it differs."""
    folder = Path(folder).expanduser()
    stored = read_json(folder / FINGERPRINT)
    if stored is None or not work_in(folder, stored, stage):
        return "none"
    return fingerprints.differences(stored, fingerprints.fingerprint(stage, cfg), cfg) or "same"


def check_output_dir(stage: str, folder: Path) -> None:
    """A stage writes into a folder of its own: never $HOME itself, nor a folder above it, nor a root."""
    resolved, home = folder.resolve(), Path.home().resolve()
    if resolved == home or resolved in home.parents or resolved == Path(resolved.anchor):
        where = "your home directory" if resolved == home else "a folder above your home directory or a root"
        raise ConfigError(f"{stage}: will not write into {folder} ({where}); choose a folder of its own, "
                          f"e.g. --output_dir runs/{stage}")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{stage}: output_dir {folder} is a file, not a folder")


def listing(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def start_output(stage: str, cfg) -> tuple[Path, bool]:
    """A training stage's start: check the launch, claim cfg.output_dir (every rank decides, the main
    process writes, the others wait for it), and say whether this is the main process."""
    state = process_state()
    check_world_size(stage, state)
    claim = plan_claim(stage, cfg)
    state.wait_for_everyone()  # every rank has read the folder before the main process changes it
    if state.is_main_process:
        apply_claim(claim, cfg)
    state.wait_for_everyone()
    return claim.folder, state.is_main_process


def carry_run_files(source: Path, out: Path) -> None:
    """Keep the held-out sets and the search index with the new policy, so `hfstack eval` and
    `hfstack chat` work on it exactly as on the SFT model."""
    if (source / "eval_sets.jsonl").is_file():
        shutil.copy(source / "eval_sets.jsonl", out / "eval_sets.jsonl")
    if (source / "search_index").is_dir():
        shutil.copytree(source / "search_index", out / "search_index", dirs_exist_ok=True)
