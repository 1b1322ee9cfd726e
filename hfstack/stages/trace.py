"""Which crawl documents a piece of text comes from: BM25 over the data stage's parquet, then the longest
span the text shares with each candidate; prints each source's URL, id and that span in its context.

    hfstack trace --run runs/tiny "The return value is a dictionary."
    hfstack trace --data runs/tiny/data --top_k 3 --json "text"

With --run the index is kept in RUN/trace and reused until the parquet files change; with --data alone it
is built in memory (or kept in --index_dir). The library: hfstack.tools.provenance.
Tests: python -m pytest -q tests/stages/test_trace.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hfstack.core.config import ConfigError, bounded, check_fields
from hfstack.core.layout import RunLayout
from hfstack.tools.provenance import Match, Provenance, parquet_files

MAX_TEXT_CHARS = 20_000  # the span search is quadratic in the worst case: a page of text, not a book


@dataclass
class TraceConfig:
    text: str | None = None  # the text to trace (the command's positional argument)
    run: str | None = None  # a run directory: its data stage's parquet (RUN/data), the index kept in RUN/trace
    data: str | None = None  # a data-stage folder or parquet file to search instead of RUN/data
    index_dir: str | None = None  # where the index is kept (default: RUN/trace with --run, else built in memory)
    text_column: str = "text"  # the text column of the parquet files
    top_k: int = bounded(5, ge=1, le=100)  # sources to show
    candidates: int = bounded(50, ge=1)  # BM25's best documents checked for a shared span
    min_chars: int = bounded(20, ge=1)  # a shared span this long counts as verbatim and ranks first
    context_chars: int = bounded(40, ge=0)  # characters of the document shown either side of the span
    json: bool = False  # print the matches as JSON instead of lines

    def __post_init__(self):
        check_fields(self, "trace")
        if self.text is None or not self.text.strip():
            raise ConfigError('trace: the text to trace is empty; give it as the argument: hfstack trace --run RUN '
                              '"some text"')
        if len(self.text) > MAX_TEXT_CHARS:
            raise ConfigError(f"trace: the text is {len(self.text):,} characters; trace at most {MAX_TEXT_CHARS:,} "
                              "at a time")
        if self.run is None and self.data is None:
            raise ConfigError("trace: give --run RUN (its data stage's parquet, RUN/data) or --data DIR")
        if self.run is not None and not Path(self.run).is_dir():
            raise ConfigError(f"trace: no run directory at '{self.run}'")
        parquet_files(self.data_path())  # no parquet there: one line naming the folder

    def data_path(self) -> Path:
        return Path(self.data) if self.data is not None else RunLayout(Path(self.run)).data

    def index_path(self) -> Path | None:
        if self.index_dir is not None:
            return Path(self.index_dir)
        return RunLayout(Path(self.run)).trace if self.run is not None else None


def format_match(rank: int, match: Match) -> str:
    kind = "verbatim" if match.verbatim else "longest shared span"
    return (f"{rank}. {match.url or '(no url)'}  {match.id}\n   {match.matched_chars} characters, {kind} "
            f"(BM25 {match.bm25:.2f}), at {match.start}-{match.end}: {match.shown()}")


def trace(cfg: TraceConfig) -> list[Match]:
    """Print the sources of cfg.text, best first; returns them."""
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if cfg.json else print  # stdout: JSON only
    index = Provenance.open(cfg.data_path(), cfg.text_column, cfg.index_path(), log=log)
    matches = index.trace(cfg.text, cfg.top_k, cfg.candidates, cfg.min_chars, cfg.context_chars)
    if cfg.json:
        print(json.dumps([m.as_dict() for m in matches], indent=2))
    elif not matches:
        print("[trace] no document shares a searchable word with the text")
    else:
        print("\n".join(format_match(rank, m) for rank, m in enumerate(matches, 1)))
    return matches


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = TraceConfig
run = trace
