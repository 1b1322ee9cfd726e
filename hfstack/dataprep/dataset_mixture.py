"""Weighted dataset mixtures (the alignment-handbook `dataset_mixture` shape): Hub datasets and local
files, drawn by weight and mapped to the rows a stage trains on.

    dataset_mixture:
      datasets:
        - {id: HuggingFaceH4/ultrachat_200k, split: train_sft, columns: [messages], weight: 0.7}
        - {id: data/my_chats.jsonl, weight: 0.3}    # a .parquet/.jsonl(.gz)/.json file or a folder
      seed: 0
      test_split_size: 0.05

    result = load_mixture(cfg.dataset_mixture, "chat", total=5000)   # .train, .test, .report

Weights are relative sampling probabilities: each row comes from dataset i with probability
w_i / sum(w) (`datasets.interleave_datasets`, seeded). With `total`, that many rows are drawn and a
dataset that runs out starts again in a fresh order (the report's `repeats`); without it, drawing
stops when the first dataset runs out. Every dataset is read in a seeded random order, so a partial
draw is a random sample; with `streaming`, through a shuffle buffer, reading only what is drawn.
Then `test_split_size` of the drawn rows are held out (a row drawn twice lands in one split only).

`kind` is what the rows become (hfstack.dataprep.rows): "chat" ({"messages"}, any layout of
`mixture.LAYOUTS`), "prompts" ({"prompt": messages, **other columns}, for RL) or "preferences"
(TRL's prompt/chosen/rejected, the shape the reward stage's `load_pairs` gives). A row whose text
spells a protocol token is dropped and counted; a row in no known layout is a one-line ConfigError
naming the dataset, the row and its keys.

Tests: python -m pytest -q tests/unit/test_dataset_mixture.py
"""

from __future__ import annotations

import copy
import itertools
import math
import pickle
import random
from dataclasses import dataclass, field, fields
from pathlib import Path

from hfstack.core.config import ConfigError, bounded, check_fields, from_dict
from hfstack.core.pretrained import looks_like_hub_id
from hfstack.core.textfiles import check_hub_dataset, hub_offline
from hfstack.dataprep.rows import KINDS, convert_row, to_conversational

FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".jsonl.gz": "json", ".json": "json", ".json.gz": "json"}


@dataclass
class MixtureEntry:
    """One dataset of a mixture: where it is, which part of it, and its weight."""

    id: str  # a Hub dataset id, a local .parquet/.jsonl/.jsonl.gz/.json file, or a folder
    config: str | None = None  # the Hub dataset's config (load_dataset's `name`)
    split: str = "train"  # the split read (a rank-stage folder: data/<split>.parquet)
    columns: list | dict | None = None  # list: the columns kept; {source: target}: renamed, then kept
    weight: float = bounded(1.0, gt=0, why="a relative sampling probability")  # relative sampling probability
    revision: str | None = None  # the Hub dataset's revision (branch, tag or commit)

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id.strip():
            raise ConfigError(f"dataset_mixture: a dataset's 'id' is empty or not a name ({self.id!r}); expected a "
                              "Hub dataset id or a local file or folder")
        where = f"dataset_mixture: dataset '{self.id}'"
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)):
            raise ConfigError(f"{where}: 'weight' must be a number > 0, got {self.weight!r}")
        check_fields(self, where)
        names = list(self.columns.items()) if isinstance(self.columns, dict) else self.columns
        if names is not None and (not isinstance(self.columns, (list, dict)) or not names or not all(
                isinstance(n, str) and n for pair in names for n in (pair if isinstance(pair, tuple) else [pair]))):
            raise ConfigError(f"{where}: 'columns' must be a non-empty list of column names or a mapping "
                              f"{{source: target}}, got {self.columns!r:.80}")


@dataclass
class DatasetMixture:
    """Datasets drawn by weight into one set of rows, plus a held-out test split."""

    datasets: list  # MixtureEntry, or mappings of its fields
    seed: int = 0  # the draw, each dataset's order and the test split
    test_split_size: float = bounded(0.0, ge=0, lt=1, why="0 holds nothing out")  # fraction of drawn rows held out
    streaming: bool = False  # stream each dataset through a shuffle buffer, reading only what is drawn
    shuffle_buffer: int = bounded(10_000, ge=1)  # rows in each streamed dataset's shuffle buffer

    def __post_init__(self):
        if not isinstance(self.datasets, list) or not self.datasets:
            raise ConfigError(f"dataset_mixture: 'datasets' must be a non-empty list of entries with keys "
                              f"{', '.join(f.name for f in fields(MixtureEntry))}; got {self.datasets!r:.80}")
        self.datasets = [_entry(i, value) for i, value in enumerate(self.datasets)]
        check_fields(self, "dataset_mixture")


def _entry(index: int, value) -> MixtureEntry:
    where = f"dataset_mixture: datasets[{index}]"
    if isinstance(value, MixtureEntry):
        return value
    valid = ", ".join(f.name for f in fields(MixtureEntry))
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {valid}; got {value!r:.80}")
    if "id" not in value:
        raise ConfigError(f"{where}: no 'id' (a Hub dataset id or a local file or folder); keys: {sorted(value)}")
    try:
        return from_dict(MixtureEntry, value, where)
    except ConfigError as e:  # a type error from config.py names only the field
        raise ConfigError(str(e) if str(e).startswith("dataset_mixture") else f"{where}: {e}") from None


@dataclass
class MixtureResult:
    train: list[dict]
    test: list[dict]
    report: dict = field(default_factory=dict)  # rows, available, dropped_protocol_token, repeats per dataset


# ------------------------------------------------------------------------------------------ loading


def open_dataset(entry: MixtureEntry, streaming: bool, where: str = "dataset_mixture"):
    """The entry's split as a `datasets.Dataset` (an `IterableDataset` when streaming)."""
    from datasets import load_dataset

    name, path = f"{where}: dataset '{entry.id}'", Path(entry.id).expanduser()
    try:
        if path.is_file():
            fmt = next((f for suffix, f in FILE_FORMATS.items() if path.name.endswith(suffix)), None)
            if fmt is None:
                raise ConfigError(f"{name}: expected a {', '.join(FILE_FORMATS)} file or a folder")
            return load_dataset(fmt, data_files={entry.split: str(path)}, split=entry.split, streaming=streaming)
        if path.is_dir():
            return _open_folder(path, entry.split, streaming, name)
        if not looks_like_hub_id(entry.id):
            raise ConfigError(f"{name}: no such file or folder")
        if not hub_offline():  # offline, the datasets cache may still hold it: load_dataset says if not
            try:
                check_hub_dataset(entry.id)
            except ConfigError as e:
                raise ConfigError(f"{name}: not a local file or folder, and {str(e).split(': ', 1)[-1]}") from None
        try:
            return load_dataset(entry.id, name=entry.config, split=entry.split, revision=entry.revision,
                                streaming=streaming)
        except Exception:
            if hub_offline():
                raise ConfigError(f"{name}: not a local file or folder, and HF_HUB_OFFLINE is set and the datasets "
                                  "cache does not hold it") from None
            raise
    except ConfigError:
        raise
    except Exception as e:  # the datasets library's many errors, said in one line
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise ConfigError(f"{name}: cannot load split '{entry.split}' ({type(e).__name__}: {detail})") from None


def _open_folder(path: Path, split: str, streaming: bool, name: str):
    from datasets import DatasetDict, load_dataset, load_from_disk

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():  # Dataset.save_to_disk
        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise ConfigError(f"{name}: no split '{split}'; it has {', '.join(ds)}")
            ds = ds[split]
        return ds.to_iterable_dataset() if streaming else ds
    ranked = path / "data" / f"{split}.parquet"  # a rank-stage folder
    if ranked.is_file():
        return load_dataset("parquet", data_files={split: str(ranked)}, split=split, streaming=streaming)
    return load_dataset(str(path), split=split, streaming=streaming)  # shards: the library finds format and splits


# ------------------------------------------------------------------------------------------ drawing


def _labels(entries: list[MixtureEntry]) -> list[str]:
    labels = [e.id + (f":{e.config}" if e.config else "") + (f"[{e.split}]" if e.split != "train" else "")
              for e in entries]
    return [f"{label}#{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def _read_all(entry: MixtureEntry, kind: str, where: str, dropped: dict, label: str) -> list[dict]:
    ds, name = open_dataset(entry, False, where), f"{where}: dataset '{entry.id}'"
    rows = []
    for n, row in enumerate(ds):
        out = convert_row(row, kind, entry.columns, f"{name} row {n}")
        if out is None:
            dropped[label] += 1
        else:
            rows.append(out)
    if not rows:
        reason = f"all {dropped[label]} contain protocol tokens" if dropped[label] else "it is empty"
        raise ConfigError(f"{name}: no usable rows in split '{entry.split}' ({reason})")
    return rows


def _draw_positions(sizes: list[int], probabilities: list[float], seed: int, total: int | None) -> list[tuple]:
    """(dataset, position) per drawn row; a position past a dataset's size is a row of a later pass."""
    from datasets import Dataset, interleave_datasets

    lengths = sizes if total is None else [n * math.ceil(total / n) for n in sizes]  # none runs out before total
    parts = [Dataset.from_dict({"source": [i] * n, "position": list(range(n))}) for i, n in enumerate(lengths)]
    mixed = interleave_datasets(parts, probabilities=probabilities, seed=seed, stopping_strategy="first_exhausted")
    if total is not None:
        mixed = mixed.select(range(total))
    return list(zip(mixed["source"], mixed["position"]))


def _draw_in_memory(mixture: DatasetMixture, kind: str, total, where: str, labels, probabilities, report):
    sources = [_read_all(e, kind, where, report["dropped_protocol_token"], label)
               for e, label in zip(mixture.datasets, labels)]
    report["available"] = dict(zip(labels, map(len, sources)))
    orders: dict[tuple, list[int]] = {}  # (dataset, pass) -> that pass's seeded order
    drawn = []
    for source, position in _draw_positions([len(s) for s in sources], probabilities, mixture.seed, total):
        lap, index = divmod(position, len(sources[source]))
        if (source, lap) not in orders:
            orders[source, lap] = random.Random(f"{mixture.seed}:{source}:{lap}").sample(
                range(len(sources[source])), len(sources[source]))
        row = sources[source][orders[source, lap][index]]
        drawn.append((source, lap, (source, orders[source, lap][index]), copy.deepcopy(row) if lap else row))
    return drawn


def _draw_streaming(mixture: DatasetMixture, kind: str, total: int, where: str, labels, probabilities, report):
    from datasets import Features, IterableDataset, Value, interleave_datasets

    features = Features({"source": Value("int64"), "lap": Value("int64"), "row": Value("binary")})
    dropped = report["dropped_protocol_token"]

    def generate(ds, source: int, entry: MixtureEntry):
        name = f"{where}: dataset '{entry.id}'"
        for lap in itertools.count():  # recycled: each pass reshuffled (set_epoch)
            ds.set_epoch(lap)
            used = 0
            for n, row in enumerate(ds):
                out = convert_row(row, kind, entry.columns, f"{name} row {n} (streamed)")
                if out is None:
                    dropped[labels[source]] += lap == 0
                    continue
                used += 1
                yield {"source": source, "lap": lap, "row": pickle.dumps(out)}  # in-process only
            if not used:
                raise ConfigError(f"{name}: no usable rows in split '{entry.split}' "
                                  f"({'all contain protocol tokens' if dropped[labels[source]] else 'it is empty'})")

    streams = []
    for source, entry in enumerate(mixture.datasets):
        ds = open_dataset(entry, True, where).shuffle(seed=mixture.seed + source, buffer_size=mixture.shuffle_buffer)
        streams.append(IterableDataset.from_generator(lambda ds=ds, s=source, e=entry: generate(ds, s, e),
                                                      features=features))
    mixed = interleave_datasets(streams, probabilities=probabilities, seed=mixture.seed,
                                stopping_strategy="first_exhausted")
    return [(ex["source"], ex["lap"], (ex["source"], ex["row"]), pickle.loads(ex["row"]))
            for ex in itertools.islice(mixed, total)]


def _hold_out(drawn: list[tuple], size: float, seed: int, where: str) -> tuple[list[dict], list[dict]]:
    """(train, test): about `size` of the rows held out, whole: every copy of a row lands in the same split."""
    if not size:
        return [row for *_, row in drawn], []
    target = max(1, round(size * len(drawn)))
    copies: dict = {}
    for position, (_, _, key, _) in enumerate(drawn):
        copies.setdefault(key, []).append(position)
    keys = list(copies)
    random.Random(seed).shuffle(keys)
    held: set[int] = set()
    for key in keys:
        if len(held) >= target:
            break
        held.update(copies[key])
    if len(held) >= len(drawn):
        raise ConfigError(f"{where}: test_split_size {size} of {len(drawn)} rows leaves no training rows")
    return ([row for i, (*_, row) in enumerate(drawn) if i not in held],
            [row for i, (*_, row) in enumerate(drawn) if i in held])


def load_mixture(mixture: DatasetMixture | dict, kind: str, total: int | None = None,
                 where: str = "dataset_mixture") -> MixtureResult:
    """Draw `total` rows (None: until the first dataset runs out) of `kind` from the mixture."""
    if isinstance(mixture, dict):
        mixture = from_dict(DatasetMixture, mixture, where)
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind '{kind}'; expected one of: {', '.join(KINDS)}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise ConfigError(f"{where}: the number of rows to draw must be a whole number >= 1, got {total!r}")
    if mixture.streaming and total is None:
        raise ConfigError(f"{where}: streaming reads only what is drawn, so it needs a number of rows (total); "
                          "set one, or streaming: false to draw until the first dataset runs out")
    labels = _labels(mixture.datasets)
    weights = [e.weight for e in mixture.datasets]
    probabilities = [w / sum(weights) for w in weights]
    report = {"kind": kind, "weights": dict(zip(labels, probabilities)),
              "dropped_protocol_token": dict.fromkeys(labels, 0)}
    draw = _draw_streaming if mixture.streaming else _draw_in_memory
    drawn = draw(mixture, kind, total, where, labels, probabilities, report)
    train, test = _hold_out(drawn, mixture.test_split_size, mixture.seed, where)
    if kind == "preferences" and len({"messages" if isinstance(r["chosen"], list) else "text"
                                      for r in train + test}) > 1:  # one Arrow type per column
        train, test = ([to_conversational(r, where) for r in rows] for rows in (train, test))
    rows, laps = dict.fromkeys(labels, 0), dict.fromkeys(labels, 0)
    for source, lap, *_ in drawn:
        rows[labels[source]] += 1
        laps[labels[source]] = max(laps[labels[source]], lap)
    report |= {"rows": rows, "repeats": {label: lap for label, lap in laps.items() if lap},  # extra passes
               "train": len(train), "test": len(test)}
    return MixtureResult(train, test, report)

