"""Preferences stage: rank the policy's rollouts best to worst, and turn rankings into pairs.

    hfstack rank --config recipes/tiny/rank.yaml                       # a person ranks, in the browser
    hfstack rank --config recipes/tiny/rank.yaml --judge hfstack.tasks.judges:reference_judge   # scripted

This is step 1 of RLHF in the notes: for each prompt the policy writes K rollouts (default 5) and a
person orders them, best to worst. Ordering is easier than writing the ideal answer, and it is all
the reward model needs. The person works on a keyboard-friendly page (`hfstack.ui.rank_page`,
127.0.0.1 by default); offline runs and CI use a scripted judge, a Python function by import path:
`judge(prompt: str, completions: list[str]) -> list[float]` (higher is better).

Files in `output_dir`:
- `rollouts.jsonl`: the prompts and their K completions, written once, then reused on a rerun with the
  same settings (another model or prompts into the same folder is refused: hfstack.core.rundir);
- `rankings.jsonl`: one line per ranking, appended and fsync'ed the moment it is made, so a ranking
  that was saved survives a killed process (a half-written last line is skipped with a warning);
- `data/train.parquet`, `data/test.parquet`: every ordered pair (K=5 → 10 pairs) in TRL's
  conversational preference format (prompt / chosen / rejected), split by prompt so the test pairs
  come from prompts the reward model never saw. Rebuilt after every ranking; `push_to_hub` uploads.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.model import load_model
from hfstack.core.pretrained import resolve_model
from hfstack.core.renames import renamed
from hfstack.core.rundir import claim_output, finish_output, read_json, write_json
from hfstack.core.splits import stable_split
from hfstack.core.textfiles import read_jsonl
from hfstack.tasks.judges import load_judge
from hfstack.tasks.open_prompts import open_prompts
from hfstack.tools.loop import assistant_replies, default_tools
from hfstack.tools.search import index_of_model
from hfstack.ui.rank_page import serve


@renamed(model="model_name_or_path")
@dataclass
class RankConfig:
    """Policy, prompts, how to rank, and where the page listens."""

    model_name_or_path: str = model_folder("runs/tiny/rl")  # the policy whose rollouts are ranked: folder or Hub id
    model_revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    output_dir: str = "runs/tiny/prefs"  # rollouts.jsonl, rankings.jsonl and the pairs in data/
    overwrite: bool = False  # start afresh in an output_dir a different run made (removes only hfstack's files)
    prompts_file: str | None = None  # jsonl/parquet with a `prompt` column; default: built-in open prompts
    num_prompts: int = bounded(60, ge=1)  # prompts rolled out and ranked
    k: int = bounded(5, ge=2, why="a ranking orders several rollouts")  # rollouts per prompt
    max_new_tokens: int = bounded(48, ge=1)  # tokens per rollout
    temperature: float = bounded(1.0, gt=0, why="sampled, so the k rollouts differ")  # sampling temperature
    seed: int = 0  # picks the built-in prompts and seeds the sampling
    progress: bool = True  # a progress bar over the rollouts
    judge: str | None = None  # "module:function" ranks without a person; None serves the page
    # share of prompts whose pairs are held out
    test_fraction: float = bounded(0.2, ge=0, lt=1, why="0 holds no prompts out")  # share of prompts held out
    host: str = "127.0.0.1"  # the address the ranking page listens on
    port: int = bounded(7861, ge=0, le=65535, why="0 picks a free port")  # the ranking page's port
    push_to_hub: str | None = None  # USER/NAME: upload the training pairs when done (a private dataset)

    def __post_init__(self):
        check_fields(self, "rank")


# ------------------------------------------------------------------------------------- judges


# ------------------------------------------------------------------------------------- storage


class RankingStore:
    """rollouts.jsonl (written once) and rankings.jsonl (appended, fsync'ed per ranking)."""

    def __init__(self, directory: str | Path, test_fraction: float = 0.2):
        self.dir = Path(directory)
        self.rollouts_path = self.dir / "rollouts.jsonl"
        self.rankings_path = self.dir / "rankings.jsonl"
        self.test_fraction = test_fraction
        self.lock = threading.Lock()

    def rollouts(self) -> list[dict]:
        return ([row for _, row in read_jsonl(str(self.rollouts_path), "rollouts")]
                if self.rollouts_path.is_file() else [])

    def write_rollouts(self, rows: list[dict]) -> None:
        temporary = self.rollouts_path.with_suffix(".tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(temporary, self.rollouts_path)  # all or nothing

    def rankings(self, with_scores: bool = False) -> dict:
        """prompt id → order (best first), or → (order, judge scores or None); the newest ranking wins."""
        ranked: dict = {}
        if not self.rankings_path.is_file():
            return ranked
        lines = self.rankings_path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                print(f"[rank] skipping the unreadable line {number} of {self.rankings_path} (a write cut short)")
                continue
            ranked[row["prompt_id"]] = (row["order"], row.get("scores")) if with_scores else row["order"]
        return ranked

    def save_ranking(self, prompt_id: int, order: list[int], ranker: str, scores: list[float] | None = None,
                     export: bool = True) -> None:
        """Append one ranking (fsync'ed) and, unless `export` is off (a batch saves many), rebuild the pairs."""
        rollouts = {r["prompt_id"]: r for r in self.rollouts()}
        if prompt_id not in rollouts:
            raise ValueError(f"unknown prompt_id {prompt_id}")
        k = len(rollouts[prompt_id]["completions"])
        if sorted(order) != list(range(k)):
            raise ValueError(f"order must be a permutation of 0..{k - 1}, got {order}")
        line = json.dumps({"prompt_id": prompt_id, "order": order, "ranker": ranker}
                          | ({"scores": scores} if scores is not None else {})) + "\n"
        with self.lock:
            if self.rankings_path.is_file() and self.rankings_path.stat().st_size:
                with open(self.rankings_path, "rb") as handle:
                    handle.seek(-1, os.SEEK_END)
                    torn = handle.read(1) != b"\n"  # a crash cut the last write short: start a fresh line
                line = "\n" + line if torn else line
            with open(self.rankings_path, "a") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            if export:
                self.export_pairs()

    def next_unranked(self) -> dict | None:
        return self.progress()["item"]

    def progress(self) -> dict:
        """The first prompt not ranked yet (None when all are), with how many are ranked of how many."""
        rollouts, ranked = self.rollouts(), self.rankings()
        return {"item": next((r for r in rollouts if r["prompt_id"] not in ranked), None), "ranked": len(ranked),
                "total": len(rollouts)}

    def export_pairs(self) -> dict[str, int]:
        """Write data/{train,test}.parquet from every saved ranking; returns the pair counts."""
        rows = {r["prompt_id"]: r for r in self.rollouts()}
        splits: dict[str, list[dict]] = {"train": [], "test": []}
        for prompt_id, (order, scores) in self.rankings(with_scores=True).items():
            row = rows[prompt_id]
            split = "test" if stable_split(row["prompt"], self.test_fraction) else "train"
            splits[split] += ranking_to_pairs(row["prompt"], row["completions"], order, scores)

        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        written = read_json(self.dir / PAIRS_RECORD) or {}  # data/<split>.parquet -> its size and mtime when written
        for split, pairs in splits.items():
            final, name = self.dir / "data" / f"{split}.parquet", f"data/{split}.parquet"
            if final.exists() and written.get(name) != file_stamp(final):  # not ours (or changed since): keep it
                raise ConfigError(f"rank: {final} was not written by hfstack rank; move it away (the pairs go there)")
            if not pairs:  # an empty parquet file breaks `load_dataset`; no pairs, no file
                final.unlink(missing_ok=True)
                written.pop(name, None)
                continue
            temporary = self.dir / "data" / f"{split}.parquet.tmp"
            pq.write_table(pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA), temporary)
            os.replace(temporary, final)
            written[name] = file_stamp(final)
        write_json(self.dir / PAIRS_RECORD, written)
        return {split: len(pairs) for split, pairs in splits.items()}


PAIRS_RECORD = ".hfstack-pairs.json"  # which pair files the store wrote: the only ones it replaces or deletes


def file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
PAIR_SCHEMA = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES)])  # TRL's columns


def ranking_to_pairs(prompt: str, completions: list[str], order: list[int],
                     scores: list[float] | None = None) -> list[dict]:
    """Every (better, worse) pair of a ranking: K completions give K·(K−1)/2 pairs. A pair of two
    identical texts, or one a scripted judge scored as a tie, teaches nothing and is left out."""
    pairs = []
    for better, worse in combinations(order, 2):
        if completions[better] == completions[worse] or (scores is not None and scores[better] == scores[worse]):
            continue
        pairs.append({"prompt": [{"role": "user", "content": prompt}],
                      "chosen": [{"role": "assistant", "content": completions[better]}],
                      "rejected": [{"role": "assistant", "content": completions[worse]}]})
    return pairs


# ------------------------------------------------------------------------------------- the stage


def make_rollouts(cfg: RankConfig, store: RankingStore) -> list[dict]:
    """K sampled answers per prompt from the policy, once: a rerun reuses the saved file."""
    existing = store.rollouts()
    if existing:
        return existing
    from transformers import set_seed

    # only now: ranking saved rollouts further needs no model (nor the Hub)
    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "rank", "policy")
    set_seed(cfg.seed)
    model, tokenizer = load_model(folder)
    prompts = open_prompts(cfg.prompts_file, cfg.num_prompts, cfg.seed)
    conversations = [[{"role": "user", "content": p}] for p in prompts for _ in range(cfg.k)]
    # the policy's own tools, the search index its SFT run built included: rollouts as `hfstack chat` answers
    replies = assistant_replies(model, tokenizer, conversations, cfg.max_new_tokens, temperature=cfg.temperature,
                                tools=default_tools(index_of_model(folder)),
                                progress="rollouts" if cfg.progress else None)
    rows = [{"prompt_id": i, "prompt": p, "completions": [r.answer for r in replies[i * cfg.k:(i + 1) * cfg.k]]}
            for i, p in enumerate(prompts)]
    store.write_rollouts(rows)
    return rows


def rank(cfg: RankConfig) -> Path:
    out = claim_output("rank", cfg)  # rollouts of another model (or prompts) are never reused: refused
    store = RankingStore(out, cfg.test_fraction)
    rows = make_rollouts(cfg, store)
    print(f"[rank] {len(rows)} prompts × {cfg.k} rollouts in {store.rollouts_path}", flush=True)
    if cfg.judge:
        judge = load_judge(cfg.judge)
        ranked = store.rankings()
        for row in rows:
            if row["prompt_id"] in ranked:
                continue
            scores = list(judge(row["prompt"], row["completions"]))
            if len(scores) != len(row["completions"]):
                raise ConfigError(f"rank: judge '{cfg.judge}' returned {len(scores)} scores for "
                                  f"{len(row['completions'])} completions (expected one score per completion)")
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            store.save_ranking(row["prompt_id"], order, ranker=cfg.judge, scores=[float(x) for x in scores],
                               export=False)  # the pairs are rebuilt once, below
    else:
        serve(store, cfg.host, cfg.port)
    counts = store.export_pairs()
    summary = {"prompts": len(rows), "ranked": len(store.rankings()), "pairs": counts}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[rank] {summary['ranked']} rankings → pairs {counts} in {out / 'data'}", flush=True)
    finish_output(out, "rank", ranked=summary["ranked"])
    if cfg.push_to_hub:
        from datasets import load_dataset

        # the training split only, private: the test split is the reward model's held-out set
        # (`hfstack push --datasets` adds a card; `--include_eval_sets` the test split)
        train = load_dataset("parquet", data_files={"train": str(out / "data" / "train.parquet")})
        train.push_to_hub(cfg.push_to_hub, private=True)
    return out


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = RankConfig
run = rank
