"""Input resolution for the data stage: paths, globs, directories and URLs become one ordered file
list per kind of input (WARC, jsonl, parquet); readers.py turns those lists into datatrove readers.

A missing path or a glob that matches nothing is a one-line `ConfigError` that names it.
Used by `hfstack data --input PATH|GLOB|URL`; tested by `python -m pytest -q tests/unit/test_warc.py`.
"""

from __future__ import annotations

import glob
import os

from hfstack.core.config import ConfigError

WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".jsonl.zst", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def input_kind(path: str) -> str:
    lower = path.lower()
    for kind, suffixes in (("warc", WARC_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if lower.endswith(suffixes):
            return kind
    raise ConfigError(f"input '{path}': unknown file type; expected one of "
                      f"{', '.join(WARC_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)}")


def is_remote(pattern: str) -> bool:
    return "://" in pattern and not pattern.startswith("file://")


def _expand_local(pattern: str) -> list[str]:
    pattern = pattern.removeprefix("file://")
    if glob.has_magic(pattern):
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches:
            raise ConfigError(f"input glob '{pattern}' matches no files")
        return [os.path.abspath(p) for p in matches]
    if os.path.isdir(pattern):
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(pattern) for name in names)
        files = [f for f in files if f.lower().endswith(WARC_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)]
        if not files:
            raise ConfigError(f"input directory '{pattern}' holds no WARC, jsonl or parquet files")
        return [os.path.abspath(f) for f in files]
    if not os.path.isfile(pattern):
        raise ConfigError(f"input '{pattern}' does not exist")
    return [os.path.abspath(pattern)]


def _expand_remote(pattern: str) -> list[str]:
    """s3://, https:// and other fsspec URLs. Globs are expanded where the filesystem can list."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(pattern)
    except ImportError as e:
        raise ConfigError(f"input '{pattern}': {e} (for s3:// install hfstack[s3])") from None
    if not glob.has_magic(path):
        return [pattern]  # existence is checked when the file is opened; a failure is counted, not fatal
    protocol = pattern.split("://", 1)[0]
    matches = sorted(fs.glob(path))
    if not matches:
        raise ConfigError(f"input glob '{pattern}' matches no files")
    return [f"{protocol}://{m}" for m in matches]


def resolve_inputs(patterns: list[str]) -> dict[str, list[str]]:
    """Expand every pattern and group the files by kind, keeping the user's order. Duplicates are read once."""
    grouped: dict[str, list[str]] = {"warc": [], "jsonl": [], "parquet": []}
    seen: set[str] = set()
    for pattern in patterns:
        for path in (_expand_remote if is_remote(pattern) else _expand_local)(pattern):
            if path not in seen:
                seen.add(path)
                grouped[input_kind(path)].append(path)
    return grouped


def check_parquet_inputs(patterns: list[str]) -> None:
    """Every local parquet input that exists opens as parquet (its footer is read, not its rows);
    otherwise a one-line ConfigError naming the file, instead of a reader crash mid-run. Missing
    inputs are left to `resolve_inputs` when the stage runs: a recipe may name files not written yet."""
    files = []
    for pattern in patterns:
        if not is_remote(pattern):
            try:
                files += [f for f in _expand_local(pattern) if f.lower().endswith(PARQUET_SUFFIXES)]
            except ConfigError:
                continue
    if not files:
        return
    import pyarrow
    import pyarrow.parquet as pq

    for path in files:
        try:
            pq.ParquetFile(path).close()
        except (pyarrow.ArrowException, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"input '{path}': not a readable parquet file ({reason})") from None
