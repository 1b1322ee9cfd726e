"""Reading the project's text inputs: plain or gzipped text, and JSON lines with errors that name
the file and the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from hfstack.core.config import ConfigError


def open_text(path: str):
    import gzip

    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def read_jsonl(path: str, label: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for every non-blank line. A line that does not parse is a
    ConfigError reading "<label> '<path>' line N: not a JSON object"."""

    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{label} '{path}' line {number}: not a JSON object") from None
            yield number, value


def load_records(source: str, split: str, label: str, limit: int = -1) -> list[dict]:
    """Rows of a jsonl(.gz) or parquet file, or of a Hub dataset (checked for reachability first),
    as dicts. Errors name the source."""
    import os

    if source.endswith((".jsonl", ".jsonl.gz", ".json")):
        if not os.path.isfile(source):
            raise ConfigError(f"{label} '{source}' does not exist")
        rows = []
        for number, row in read_jsonl(source, label):
            if not isinstance(row, dict):
                raise ConfigError(f"{label} '{source}' line {number}: expected a JSON object")
            rows.append(row)
        return rows[:limit] if limit >= 0 else rows
    if source.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(source).to_pylist()
        except (OSError, ValueError) as e:
            raise ConfigError(f"{label} '{source}': not a readable parquet file ({e})") from None
        return rows[:limit] if limit >= 0 else rows
    if os.path.exists(source):
        raise ConfigError(f"{label} '{source}': expected a .jsonl, .jsonl.gz or .parquet file")

    check_hub_dataset(source)
    from datasets import load_dataset

    rows = []
    for row in load_dataset(source, split=split, streaming=True):
        if 0 <= limit <= len(rows):
            break
        rows.append(dict(row))
    return rows


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set to something that means yes."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def check_hub_dataset(dataset: str) -> None:
    if hub_offline():
        raise ConfigError(f"hub_dataset '{dataset}': HF_HUB_OFFLINE is set, so the Hub cannot be read")
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(dataset, timeout=10)
    except Exception as e:
        raise ConfigError(f"hub_dataset '{dataset}': cannot reach it on the Hub ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
