"""Run fingerprints: what made a stage's output folder, so a rerun can tell "the same run, continue it"
from "a different run, do not mix it in". Used through hfstack.core.rundir by every stage's command (hfstack
data, tokenizer, pretrain, sft, rl, rank, reward, rlhf, report) and by hfstack speedrun; STAGES also
says which names each stage writes (what `written` records and --overwrite may remove).

    fingerprint("sft", cfg) -> {"stage": "sft", "settings": {...}, "inputs": {"model": {...}, ...}}
    differences(stored, fingerprint("sft", cfg), cfg) -> ["learning_rate", "model"]

A fingerprint holds the stage's name, its resolved config minus the fields that do not change its
results (where it writes, how it logs and checkpoints, how it resumes: STAGES lists them per stage),
and, for each field that names an input, the identity of what that input holds now: a file up to
SMALL_FILE by its content hash, a larger file by size and modification time, a folder by a digest of
its files' relative paths, sizes and modification times (leaving out its working state and notes:
checkpoints, caches, logs, report files), a glob the same way over what it matches, a Hub id by
the commit the local cache holds for it (the stage downloads before it fingerprints, so a repo that
moved on is a different run), a dataset_mixture by each of its entries. A value that names nothing
local otherwise (a URL, a Hub name never downloaded) stands for itself. hfstack.core.rundir stores it in
OUT/.hfstack-run.json. Tests: python -m pytest -q tests/unit/test_rundir.py
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import json
import os
from pathlib import Path

from hfstack.core.config import field_default
from hfstack.core.pretrained import looks_like_hub_id
from hfstack.core.renames import current_names

SMALL_FILE = 4 * 2**20  # files up to 4 MB are identified by content; larger ones by size and mtime
# Inside a folder input, what a stage works with or writes about it, not what it hands on: a resumed
# or re-reported stage changes these without changing what the next stage reads.
WORKING_STATE = {"checkpoints", "cache", "logs", "work", "excluded", "first_phase", "curve"}
NOTES = ("config.yaml", "launch.yaml", "README.md", "*.png", "eval.json", "heldout_eval.json", "regurgitation.json",
         "summary.json", "log.jsonl", "watch.jsonl", "stats.json", "attacks.jsonl",
         "curve.jsonl")

# What `save_pretrained` writes for a model and its tokenizer (report adds README.md and its plots).
MODEL_FILES = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
               "pytorch_model*.bin", "tokenizer*.json", "special_tokens_map.json", "added_tokens.json",
               "chat_template.jinja", "vocab.json", "merges.txt", "adapter_*", "training_args.bin", "README.md",
               "*.png")
# Left out of every fingerprint: where the stage writes, whether it starts over, and how it reports.
# (and where it is pushed: hfstack/core/hub.py uploads after the run)
COMMON_IGNORED = ("output_dir", "output", "overwrite", "progress", "report_to", "run_name", "push_to_hub",
                  "hub_model_id", "hub_private_repo")


@dataclasses.dataclass(frozen=True)
class Spec:
    inputs: tuple[str, ...] = ()  # fields that name inputs: fingerprinted by what they hold, not their spelling
    ignored: tuple[str, ...] = ()  # fields that do not change the results (besides COMMON_IGNORED)
    # top-level names the stage writes (globs): --overwrite removes these; "folder/name" marks a folder
    # the stage shares with others' files: only the names it writes in there are removed
    outputs: tuple[str, ...] = ()


STAGES = {
    # datatrove's scheduling (local processes, Slurm, Ray) changes how, not what: completed tasks carry over
    "data": Spec(inputs=("input",), ignored=("workers", "executor", "executor_options"),
                 outputs=("*.parquet", "logs", "work", "excluded", "stats.json")),
    "tokenizer": Spec(inputs=("input",), outputs=MODEL_FILES + ("eval.json",)),
    # resume and checkpoint cadence, logging, MFU's peak figure and the logged samples leave the weights as they are
    "pretrain": Spec(inputs=("data", "tokenizer", "init_from"),
                     ignored=("resume", "save_steps", "save_total_limit", "logging_steps", "num_proc", "peak_flops",
                              "sample_prompts", "sample_tokens"),
                     outputs=MODEL_FILES + ("cache", "checkpoints", "log.jsonl", "summary.json",
                                            "regurgitation.json")),
    "sft": Spec(inputs=("model_name_or_path", "facts_from", "facts_file", "chat_files", "dataset_mixture"),
                ignored=("save_steps", "save_total_limit", "logging_steps"),
                outputs=MODEL_FILES + ("checkpoints", "first_phase", "search_index", "eval_sets.jsonl", "summary.json",
                                       "eval.json")),
    "rl": Spec(inputs=("model_name_or_path", "dataset_name", "dataset_mixture"),
               ignored=("save_steps", "save_total_limit", "logging_steps"),
               outputs=MODEL_FILES + ("checkpoints", "search_index", "eval_sets.jsonl", "eval.json")),
    # where the ranking page listens and where the pairs are pushed change nothing on disk
    "rank": Spec(inputs=("model_name_or_path", "prompts_file"), ignored=("host", "port", "push_to_hub"),
                 outputs=("rollouts.jsonl", "rollouts.tmp", "rankings.jsonl", "data/train.parquet",
                          "data/test.parquet", "data/*.parquet.tmp", ".hfstack-pairs.json", "summary.json")),
    "reward": Spec(inputs=("model_name_or_path", "dataset_name", "test_preferences", "dataset_mixture"),
                   ignored=("save_steps", "save_total_limit", "logging_steps"),
                   outputs=MODEL_FILES + ("checkpoints", "eval.json", "attacks.jsonl")),
    # rlhf's logging_steps stays in: the reward-hacking watch looks (and may stop the run) at each log
    "rlhf": Spec(inputs=("model_name_or_path", "reward_model_path", "prompts_file"),
                 ignored=("save_steps", "save_total_limit"),
                 outputs=MODEL_FILES + ("checkpoints", "watch.jsonl", "search_index", "eval_sets.jsonl", "eval.json",
                                        "curve", "curve.jsonl")),
    # dpo's logging_steps only changes what is printed: its watch looks every watch_steps, which stays in
    "dpo": Spec(inputs=("model_name_or_path", "dataset_name", "test_preferences", "dataset_mixture",
                        "reward_model_path"),
                ignored=("save_steps", "save_total_limit", "logging_steps"),
                outputs=MODEL_FILES + ("checkpoints", "watch.jsonl", "search_index", "eval_sets.jsonl", "eval.json",
                                       "curve", "curve.jsonl")),
    "report": Spec(outputs=("report.md", "report.html", "*.png")),
    # the speedrun's own steps (hfstack.stages.speedrun claims their folders for them)
    "crawl": Spec(outputs=("*.warc.gz",)),
    "generate": Spec(inputs=("model",), outputs=("samples.json",)),
    "regurgitation": Spec(inputs=("model_name_or_path", "data"), outputs=("report.json",)),
    "eval": Spec(inputs=("model_name_or_path", "eval_sets"), outputs=("eval.json",)),
    # every model of the run asked the held-out facts, and the alignment tax (hfstack honesty)
    "honesty": Spec(inputs=("models", "eval_sets"), outputs=("boundary.json", "tax-*.json")),
}


def plain(value):
    """A config value as JSON reads it back (tuples become lists, paths strings), so a stored
    fingerprint compares equal to a fresh one."""
    return json.loads(json.dumps(value, default=str))


def fingerprint(stage: str, cfg) -> dict:
    """The stage, its result-changing settings, and the identity of each input (see the module doc)."""
    stage_spec = STAGES[stage]
    values = plain(dataclasses.asdict(cfg))
    left_out = set(COMMON_IGNORED) | set(stage_spec.ignored) | set(stage_spec.inputs)
    return {"stage": stage, "settings": {k: v for k, v in values.items() if k not in left_out},
            "inputs": {k: identify_field(values[k]) for k in stage_spec.inputs if k in values}}


def differences(stored: dict, current: dict, cfg) -> list[str]:
    """The settings and inputs that differ between a stored fingerprint and the current one. A field
    the stored run did not know (hfstack gained it since) counts only if it is set away from its default."""
    if stored.get("stage") != current["stage"]:
        return ["stage"]
    defaults = field_defaults(cfg)
    differing = []
    for part in ("settings", "inputs"):
        # a run stored under a field's older name (micro_batch_size) compares as its current one
        old, new = current_names(type(cfg), stored.get(part) or {}, "stored run", warn=False), current[part]
        for key in sorted(new):
            if key in old:
                if old[key] != new[key]:
                    differing.append(key)
            elif new[key] != (defaults.get(key) if part == "settings" else None):
                differing.append(key)
    return sorted(differing)


def field_defaults(cfg) -> dict:
    return {f.name: plain(default) for f in dataclasses.fields(cfg)
            if (default := field_default(f)) is not dataclasses.MISSING}


def identify_field(value):
    if value is None:
        return None
    if isinstance(value, list):
        return [identify(str(v)) for v in value]
    if isinstance(value, dict) and isinstance(value.get("datasets"), list):  # a dataset_mixture: each entry's id
        return value | {"datasets": [entry | {"id": identify(str(entry.get("id")))} if isinstance(entry, dict)
                                     else entry for entry in value["datasets"]]}
    return identify(str(value))


def identify(value: str):
    """What the path `value` holds now (see the module doc); a value that names no local file stands
    for itself (a URL, a Hub dataset, a missing path)."""
    path = Path(value)
    if path.is_file():
        return identify_file(path)
    if path.is_dir():
        return {"folder": folder_digest(sorted(walk(path)))}
    if looks_like_hub_id(value):  # a Hub repo: the commit the cache holds for it, when it holds one
        commit = cached_commit(value)
        return {"hub": value, "commit": commit} if commit else value
    if glob.has_magic(value):  # like a folder: thousands of shards are listed, not read
        listing = []
        for match in sorted(Path(p) for p in glob.glob(value, recursive=True)):
            if match.is_file():
                listing.append((match.name, match.stat().st_size, match.stat().st_mtime_ns))
            else:
                listing += [(f"{match.name}/{name}", size, mtime) for name, size, mtime in walk(match)]
        return {"glob": folder_digest(listing)}
    return value


def cached_commit(repo_id: str) -> str | None:
    """The commit of `repo_id`'s main branch last downloaded into the Hugging Face cache (model or
    dataset), read from the cache's refs; None when it was never downloaded."""
    from huggingface_hub import constants

    for kind in ("models", "datasets"):
        ref = Path(constants.HF_HUB_CACHE) / f"{kind}--{repo_id.replace('/', '--')}" / "refs" / "main"
        if ref.is_file():
            return ref.read_text().strip() or None
    return None


def identify_file(path: Path) -> dict:
    stat = path.stat()
    if stat.st_size > SMALL_FILE:
        return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "sha256": digest.hexdigest()}


def walk(root: Path):
    """(relative path, size, mtime_ns) of each file under `root` that is part of what it holds."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in WORKING_STATE]
        for name in files:
            if name.startswith(".") or any(fnmatch.fnmatch(name, pattern) for pattern in NOTES):
                continue
            path = Path(folder) / name
            stat = path.stat()
            yield str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns


def folder_digest(listing: list) -> dict:
    """A fixed-size stand-in for a folder's listing: a data folder may hold thousands of shards."""
    return {"files": len(listing), "sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}


def is_output(stage: str, name: str) -> bool:
    """Whether a name in the folder is one the stage writes: a top-level name, or "folder/name" in a
    folder it shares (what `written` records, and --overwrite may remove)."""
    patterns = STAGES[stage].outputs if stage in STAGES else ()
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns if ("/" in pattern) == ("/" in name))


def shared_outputs(stage: str, name: str) -> tuple[str, ...]:
    """For a top-level folder the stage writes into but does not own whole, the names it writes there."""
    patterns = STAGES[stage].outputs if stage in STAGES else ()
    return tuple(p.split("/", 1)[1] for p in patterns if p.startswith(name + "/"))
