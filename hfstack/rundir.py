"""Run directories: who made an output folder, with what, whether its stage finished, and where a
resumed run continues.

    out = claim_output("tokenizer", cfg)       # at a stage's start, before it writes anything
    ... the stage's work ...
    finish_output(out, "tokenizer", docs=12)   # at its end: what it wrote, then the done marker

Next to a stage's outputs its folder holds hfstack's bookkeeping:
- `.hfstack-run.json`: the run's fingerprint (hfstack.fingerprint: the stage, the settings that change
  its results, what its inputs hold), written before the work starts; `written`, the names the stage
  wrote (recorded when it finishes); and `foreign`, names that are not hfstack's and were left there;
- `config.yaml`: the resolved config, written once the claim succeeded;
- `.hfstack-done`: the completion marker, written last; an unreadable one counts as not done.

claim_output refuses $HOME, a filesystem root, and a non-empty folder hfstack did not make; continues
a run with the same fingerprint (a trainer resumes, datatrove skips its completed tasks); refuses a
different one with one line naming the fields that differ; and with overwrite removes only what
hfstack wrote there (the names in `written`, or the stage's known outputs) and starts fresh.
Training stages call start_output instead: it first checks that the launched processes form one
world (check_world_size), then claims on every rank and writes on the main one.
Tests: python -m pytest -q tests/test_rundir.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from hfstack import fingerprint as fingerprints
from hfstack.config import ConfigError, save_config

MARKER = ".hfstack-done"
FINGERPRINT = ".hfstack-run.json"
BOOKKEEPING = (FINGERPRINT, FINGERPRINT + ".tmp", MARKER, MARKER + ".tmp", "config.yaml")


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
            print(f"[resume] skipping the incomplete checkpoint {checkpoint}", flush=True)
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
    """Decide without writing: every process of a launch reaches the same verdict from the same files."""
    expand_home(stage, cfg)
    folder = Path(folder if folder is not None else cfg.output_dir).expanduser()
    check_output_dir(stage, folder)
    overwrite = bool(getattr(cfg, "overwrite", False)) if overwrite is None else overwrite
    current = fingerprints.fingerprint(stage, cfg)
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not (folder / FINGERPRINT).exists():
        if names:  # even with --overwrite: nothing there is known to be hfstack's
            raise ConfigError(f"{stage}: {folder} is not empty and has no {FINGERPRINT} (hfstack did not make it, or "
                              f"an older version did; it holds {listing(names)}); choose a new or empty --output_dir")
        return Claim(stage, folder, current)
    stored = read_json(folder / FINGERPRINT)
    foreign = [n for n in (stored or {}).get("foreign", []) if n in names]
    work = [n for n in names if n not in BOOKKEEPING and n not in foreign]
    if overwrite or not work:  # --overwrite, or an earlier attempt stopped before any work: start fresh
        remove, keep = split_owned(folder, names, stored or {}, stage)
        return Claim(stage, folder, current, remove=remove, foreign=keep)
    if stored is None:
        raise ConfigError(f"{stage}: {folder} has an unreadable {FINGERPRINT}, so what made it is unknown; rerun "
                          "with --overwrite to start fresh, or choose another --output_dir")
    differing = fingerprints.differences(stored, current, cfg)
    if differing == ["stage"]:
        raise ConfigError(f"{stage}: {folder} holds the output of `hfstack {stored.get('stage')}`; choose another "
                          "--output_dir (or rerun with --overwrite to replace it)")
    if differing:
        raise ConfigError(f"{stage}: {folder} was made with different settings ({', '.join(differing)}); rerun "
                          "with --overwrite to start fresh, or choose another --output_dir")
    kept = {key: stored[key] for key in ("written", "foreign") if key in stored}
    return Claim(stage, folder, current | kept, foreign=foreign)  # the same run: the stage continues it


def split_owned(folder: Path, names: list[str], stored: dict, stage: str) -> tuple[list[Path], list[str]]:
    """What hfstack wrote at the top of `folder` (bookkeeping, the names the last run recorded as written,
    the names its stage writes, for a run cut short before recording them) and the other names, which
    stay. In a folder the stage shares (rank's data/), only the files it writes there are taken."""
    owner = stored.get("stage", stage)
    written, foreign = set(stored.get("written", [])), set(stored.get("foreign", []))
    remove, keep = [], []
    for name in names:
        shared = fingerprints.shared_outputs(owner, name)
        if shared and (folder / name).is_dir():
            remove += [p for p in sorted((folder / name).iterdir()) if any(fnmatch(p.name, s) for s in shared)]
        elif name not in foreign and (name in BOOKKEEPING or name in written or fingerprints.is_output(owner, name)):
            remove.append(folder / name)
        else:
            keep.append(name)
    return remove, keep


def apply_claim(claim: Claim, cfg) -> None:
    """Remove an earlier run's files (--overwrite), store the fingerprint, then the resolved config."""
    claim.folder.mkdir(parents=True, exist_ok=True)
    for path in claim.remove:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    left = sorted({p.parent.name for p in claim.remove if p.parent != claim.folder and any(p.parent.iterdir())})
    for shared in {p.parent for p in claim.remove if p.parent != claim.folder}:
        if not any(shared.iterdir()):
            shared.rmdir()
    if claim.remove and (claim.foreign or left):
        print(f"[{claim.stage}] starting fresh in {claim.folder}; left what hfstack did not write there: "
              f"{listing(claim.foreign + [f'{name}/...' for name in left])}", flush=True)
    clear_done(claim.folder)  # the stage runs (again): it is done when it finishes
    record = claim.record | {"foreign": claim.foreign, "claimed": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(claim.folder / FINGERPRINT, record)
    save_config(cfg, claim.folder)


def finish_output(folder: str | Path, stage: str, main: bool = True, **info) -> None:
    """At a stage's end: record the names it wrote (what a later --overwrite removes), then the marker."""
    if not main:
        return
    folder = Path(folder)
    record = read_json(folder / FINGERPRINT) or {"stage": stage}
    foreign = set(record.get("foreign", []))
    record["written"] = sorted(n for n in os.listdir(folder) if n not in foreign and n not in BOOKKEEPING)
    write_json(folder / FINGERPRINT, record)
    mark_done(folder, stage, **info)


def stored_differences(stage: str, cfg, folder: str | Path) -> list[str] | None:
    """The fields in which `cfg` differs from the run recorded in `folder` ([] for the same run), or
    None when no run's work is recorded there. For the speedrun's skip-if-done."""
    expand_home(stage, cfg)
    folder = Path(folder).expanduser()
    stored = read_json(folder / FINGERPRINT)
    if stored is None or not [n for n in os.listdir(folder) if n not in BOOKKEEPING + tuple(stored.get("foreign", []))]:
        return None
    return fingerprints.differences(stored, fingerprints.fingerprint(stage, cfg), cfg)


def expand_home(stage: str, cfg) -> None:
    """`~` in the output folder and the path fields becomes the home directory (the shell does not
    expand it inside a YAML recipe or after `--field=`)."""
    spec = fingerprints.spec(stage)
    for name in ("output_dir", *spec.inputs, *spec.paths):
        value = getattr(cfg, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(cfg, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(cfg, name, [os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v
                                for v in value])


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


# ----------------------------------------------------------------------------- distributed launches


def process_state():
    """Accelerate's view of this process. Created before any trainer, so that on a CPU machine the
    processes `accelerate launch` started become gloo ranks (not independent single runs)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # torchrun, MPI


def launched_processes() -> int | None:
    """How many processes this run was launched as, or None when not launched (or not known).
    torchrun and accelerate's multi-process launchers set WORLD_SIZE (mpirun its own variables);
    accelerate's single-process launcher (`accelerate launch --cpu`, or a config of type NO) sets none,
    but ACCELERATE_USE_CPU: then the count is on the launcher's own command line."""
    for name in WORLD_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return launcher_processes() if "ACCELERATE_USE_CPU" in os.environ else None


def launcher_processes() -> int | None:
    """--num_processes (or its --config_file's num_processes) of the `accelerate launch` that started
    this process, read from /proc (Linux); None when the parent is not accelerate or does not say."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    except OSError:
        return None
    start = next((i for i, a in enumerate(args[:3]) if "accelerate" in Path(a).name), None)
    if start is None:
        return None
    options = launcher_options(args[start + 1:])
    value = options.get("--num_processes")
    if value is None and options.get("--config_file"):
        import yaml

        try:
            value = (yaml.safe_load(Path(options["--config_file"]).read_text()) or {}).get("num_processes")
        except (OSError, yaml.YAMLError, AttributeError):
            return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def launcher_options(args: list[str]) -> dict[str, str]:
    """`--name value` / `--name=value` pairs of an accelerate command line, up to the launched
    script (whose own arguments are not the launcher's)."""
    options, i = {}, 0
    while i < len(args) and args[i] not in ("-m", "--module") and not args[i].endswith(".py"):
        name, eq, value = args[i].partition("=")
        if name.startswith("--") and not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value, i = args[i + 1], i + 1
        options[name] = value
        i += 1
    return options


def check_world_size(stage: str, state) -> None:
    """Stop when the launched processes do not form one world: each would then train alone and write
    the same folder (`accelerate launch --cpu --num_processes 2` starts only one process; an FSDP or
    DeepSpeed config on a machine without GPUs can start N that never meet)."""
    launched = launched_processes()
    if launched is None or launched == state.num_processes:
        return
    kind = getattr(state.distributed_type, "value", state.distributed_type)
    raise ConfigError(f"{stage}: launched for {launched} processes, but this process sees {state.num_processes} "
                      f"(distributed type {kind}), so the run would not be spread over them; without GPUs launch with "
                      "--config_file recipes/accelerate/cpu.yaml (`accelerate launch --cpu` starts one process)")


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
