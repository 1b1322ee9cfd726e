"""Preference pairs for the stages that learn from rankings (`hfstack reward`, `hfstack dpo`): read
from a rank-stage folder (RUN/prefs/data/{train,test}.parquet), a parquet/jsonl file or a Hub dataset,
and/or drawn from a weighted `dataset_mixture`, then put in one shape a `datasets.Dataset` takes; and,
for KTO, the same pairs as unpaired rows (each answer once, desirable or not).

    train, test = preference_pairs("dpo", "runs/tiny/prefs", None, None, None)
    rows = unpaired(train, seed=0)           # [{"prompt", "completion", "label"}, ...]

Tests: python -m pytest -q tests/stages/test_dpo.py tests/stages/test_reward.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from hfstack.core.config import ConfigError
from hfstack.core.textfiles import load_records
from hfstack.dataprep.dataset_mixture import load_mixture
from hfstack.dataprep.rows import to_conversational

PAIR_COLUMNS = ("chosen", "rejected")


def load_pairs(source: str, split: str, stage: str = "reward") -> list[dict]:
    """Preference pairs from a rank-stage directory (data/<split>.parquet), a file, or the Hub."""
    path = Path(source)
    if path.is_dir():
        path = path / "data" / f"{split}.parquet"
        if not path.is_file():
            raise ConfigError(f"{stage}: no {split} pairs at '{path}'; run `hfstack rank` first")
    rows = load_records(str(path), split, "preferences")
    if rows:
        missing = [c for c in PAIR_COLUMNS if c not in rows[0]]
        if missing:
            raise ConfigError(f"{stage}: preferences '{source}' lack column(s) {missing}; expected prompt (optional), "
                              f"chosen, rejected (TRL's preference format); found {sorted(rows[0])}")
    return rows


def one_shape(train: list[dict], test: list[dict]) -> tuple[list[dict], list[dict]]:
    """Pairs from several sources in one shape, as a Dataset needs (one type per column, the first
    row's keys): an explicit prompt everywhere (TRL's extract_prompt splits an implicit one), and
    messages everywhere when any pair is conversational."""
    from trl.data_utils import extract_prompt

    def explicit(row: dict) -> dict:
        pair = {c: row[c] for c in ("prompt", "chosen", "rejected") if row.get(c) is not None}
        return pair if "prompt" in pair else extract_prompt(pair)

    train, test = [explicit(r) for r in train], [explicit(r) for r in test]
    kinds = {isinstance(r[c], list) for r in train + test for c in ("prompt", "chosen", "rejected")}
    if len(kinds) > 1:
        train, test = [to_conversational(r) for r in train], [to_conversational(r) for r in test]
    return train, test


def preference_pairs(stage: str, dataset_name: str | None, test_preferences: str | None, dataset_mixture,
                     dataset_rows: int | None) -> tuple[list[dict], list[dict]]:
    """(train, test) pairs in one shape: `dataset_name`'s training pairs, its held-out ones (the rank
    folder's data/test.parquet, or `test_preferences`), plus a mixture's draw and its test split."""
    train, test = [], []
    if dataset_name:
        train = load_pairs(dataset_name, "train", stage)
        held_out = Path(dataset_name) / "data" / "test.parquet"
        test_source = test_preferences or (dataset_name if held_out.is_file() else None)
        test = load_pairs(test_source, "test", stage) if test_source else []
    elif test_preferences:
        test = load_pairs(test_preferences, "test", stage)
    if dataset_mixture:
        drawn = load_mixture(dataset_mixture, "preferences", dataset_rows, f"{stage}: dataset_mixture")
        train, test = train + drawn.train, test + drawn.test
    if not train:
        raise ConfigError(f"{stage}: no training pairs in '{dataset_name or 'dataset_mixture'}'")
    return one_shape(train, test)


def unpaired(pairs: list[dict], seed: int) -> list[dict]:
    """KTO's rows from pairs: each distinct (prompt, answer) once, desirable (label True) when it is the
    chosen side of more of its pairs than the rejected side, undesirable when the other way round, left
    out on a tie (a ranking's middle answer). Plain pairs, each answer in one pair, give chosen → True,
    rejected → False. Shuffled by `seed`: KTO reads its rows in order and estimates its KL term from
    neighbours, so a batch needs both labels and several prompts."""
    wins: dict[str, list] = {}
    for pair in pairs:
        for side, won in (("chosen", 1), ("rejected", -1)):
            key = json.dumps([pair["prompt"], pair[side]], sort_keys=True)
            entry = wins.setdefault(key, [pair["prompt"], pair[side], 0])
            entry[2] += won
    rows = [{"prompt": prompt, "completion": answer, "label": score > 0}
            for prompt, answer, score in wins.values() if score != 0]
    random.Random(seed).shuffle(rows)
    return rows
