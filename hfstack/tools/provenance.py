"""Provenance back to the crawl: which documents of the data stage's parquet a piece of text comes from.

    hfstack trace --run runs/tiny "text a model wrote"          # the command: hfstack.stages.trace
    index = Provenance.open("runs/tiny/data", index_dir="runs/tiny/trace")
    index.trace("text a model wrote")   # best first: url, id, bm25, matched_chars, span and its offsets

BM25 (bm25s) over whole documents picks the candidates; the longest common substring of the text and each
candidate (difflib) says how much of the text the document holds verbatim, and where. A match of at least
`min_chars` characters (or of the whole text) is verbatim and ranks by its length; shorter spans are
coincidences (" of the "), so those documents rank by BM25 alone. The documents' text is read back from
the parquet when needed, so the index holds only BM25's arrays and each document's file, row, id and url.

An index kept on disk (`index_dir`) records a fingerprint of the parquet files (names, sizes, modification
times) in MANIFEST and is rebuilt when they change. A folder without that manifest is never written into
(hfstack trace did not make it), and a rebuild removes only the names the manifest says it wrote.
The regurgitation probe attributes the base's recitations with it, `hfstack serve` answers "where did
this come from?" (POST /v1/trace), and the report card lists the top sources (`sources_section`).
Tests: python -m pytest -q tests/stages/test_trace.py
"""

from __future__ import annotations

import bisect
import difflib
import functools
import hashlib
import itertools
import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from hfstack.core.config import ConfigError
from hfstack.core.layout import MODELS, OPTIONAL_MODELS, RunLayout

MANIFEST = ".hfstack-trace-index.json"  # what made the folder, from which files, and the names it wrote
WRITTEN = ("bm25", "documents.json")  # the index's own names in its folder
DATA_WORK = ("work", "logs", "excluded")  # the data stage's working folders: not its output documents


@dataclass
class Match:
    """One source of a text: the document, how well BM25 ranked it, and the longest span both share."""

    url: str
    id: str
    bm25: float  # the document's BM25 score for the text
    matched_chars: int  # length of the longest span the text and the document share
    span: str  # that span, as the document has it
    start: int  # its offsets in the document: document[start:end] == span
    end: int
    text_start: int  # where it starts in the traced text
    before: str  # up to `context` characters of the document either side of the span
    after: str
    verbatim: bool  # matched_chars >= min_chars (or the whole text): the document holds that much word for word

    def shown(self) -> str:
        """The span in its context, on one line: …before[span]after…"""
        return " ".join(f"…{self.before}[{self.span}]{self.after}…".split())

    def as_dict(self) -> dict:
        return asdict(self)


def parquet_files(data, stage: str = "trace") -> list[Path]:
    """The parquet files of data-stage dirs or parquet files (a dir: every *.parquet under it, but not in the
    data stage's work/, logs/ or excluded/), sorted; ConfigError naming the path when there are none."""
    files = []
    for entry in [data] if isinstance(data, (str, Path)) else data:
        path = Path(entry).expanduser()
        if path.is_file() and path.suffix == ".parquet":
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*.parquet")
                           if p.is_file() and p.relative_to(path).parts[0] not in DATA_WORK)
            if not found:
                raise ConfigError(f"{stage}: no parquet files in '{path}' (the data stage writes them: RUN/data)")
            files += found
        elif path.exists():
            raise ConfigError(f"{stage}: '{path}' is not a parquet file or a data-stage folder")
        else:
            raise ConfigError(f"{stage}: no data at '{path}'")
    return files


def fingerprint(files: list[Path], text_column: str) -> str:
    """What the index was built from: each file's resolved path, size and modification time, and the column."""
    listing = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps([text_column, listing]).encode()).hexdigest()


def longest_common_span(document: str, text: str) -> tuple[int, int, int]:
    """(start in document, start in text, length) of the longest substring both hold. autojunk stays off:
    with it, difflib ignores characters frequent in a long text (spaces, 'e'), which would cut every span."""
    found = difflib.SequenceMatcher(None, document, text, autojunk=False).find_longest_match()
    return found.a, found.b, found.size


class Provenance:
    """A BM25 index over a data stage's documents, and `trace(text)` to find where a text comes from."""

    def __init__(self, retriever, files: list[Path], rows: list[list[int]], ids: list[str], urls: list[str],
                 text_column: str, built_from: str):
        self.retriever, self.files, self.rows, self.ids, self.urls = retriever, files, rows, ids, urls
        self.text_column, self.built_from = text_column, built_from
        self.source = files  # what `stale` looks at again: the folders or files it was opened on
        self.read_group = functools.lru_cache(maxsize=16)(self._read_group)  # a few shards' row groups at hand
        self.ends: dict[int, list[int]] = {}

    # ----------------------------------------------------------------------------- building and keeping

    @classmethod
    def build(cls, data, text_column: str = "text") -> Provenance:
        """Index every non-empty document of the parquet files in `data` (dirs or files)."""
        import bm25s
        import pyarrow.parquet as pq

        files = parquet_files(data)
        built_from = fingerprint(files, text_column)
        texts, rows, ids, urls = [], [], [], []
        for number, path in enumerate(files):
            try:
                parquet = pq.ParquetFile(path)
                names = parquet.schema_arrow.names
                if text_column not in names:
                    raise ConfigError(f"trace: '{path}' has no column '{text_column}' (columns: {', '.join(names)})")
                columns = [text_column] + [c for c in ("id", "url") if c in names]
                row = 0
                for batch in parquet.iter_batches(columns=columns, batch_size=4096):
                    values = {name: batch.column(i).to_pylist() for i, name in enumerate(columns)}
                    for i, text in enumerate(values[text_column]):
                        if text:
                            texts.append(text)
                            rows.append([number, row + i])
                            # a document without an id is named by where it is
                            ids.append(str(values["id"][i]) if values.get("id") and values["id"][i] is not None
                                       else f"{path.name}:{row + i}")
                            urls.append(str(values["url"][i] or "") if "url" in values else "")
                    row += batch.num_rows
            except ConfigError:
                raise
            except (OSError, ValueError) as e:  # pyarrow's errors for a file that is not parquet derive from these
                raise ConfigError(f"trace: cannot read '{path}' ({type(e).__name__}: {e})") from None
        if not texts:
            raise ConfigError(f"trace: the parquet files in {data} hold no text in column '{text_column}'")
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        index = cls(retriever, files, rows, ids, urls, text_column, built_from)
        index.source = data
        return index

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder / "bm25"))
        (folder / "documents.json").write_text(json.dumps({
            "files": [str(f.resolve()) for f in self.files], "rows": self.rows, "ids": self.ids, "urls": self.urls}))

    @classmethod
    def load(cls, folder: Path, manifest: dict) -> Provenance:
        import bm25s

        documents = json.loads((folder / "documents.json").read_text())
        return cls(bm25s.BM25.load(str(folder / "bm25")), [Path(f) for f in documents["files"]], documents["rows"],
                   documents["ids"], documents["urls"], manifest["text_column"], manifest["fingerprint"])

    @classmethod
    def open(cls, data, text_column: str = "text", index_dir: str | Path | None = None,
             log=print) -> Provenance:
        """The index of `data`: built in memory without `index_dir`; with one, the one kept there when it was
        built from the same files, else built afresh and kept there (see the module doc)."""
        if index_dir is None:
            return cls.build(data, text_column)
        folder = Path(index_dir).expanduser()
        files = parquet_files(data)
        check_index_dir(folder, files)
        manifest = read_manifest(folder)
        current = fingerprint(files, text_column)
        if manifest.get("complete") and manifest.get("fingerprint") == current:
            try:
                index = cls.load(folder, manifest)
                index.source = data
                log(f"[trace] {len(index.ids)} documents, index reused from {folder}")
                return index
            except (OSError, ValueError, KeyError) as e:  # torn or edited: rebuilt below, like a stale one
                log(f"[trace] the index in {folder} cannot be read ({type(e).__name__}); rebuilding it")
        elif manifest:
            log(f"[trace] the data changed since the index in {folder} was built; rebuilding it")
        for name in manifest.get("written", []):  # only what an earlier build wrote (no link: check_index_dir)
            path = folder / name
            if name in WRITTEN and path.is_dir():
                shutil.rmtree(path)
            elif name in WRITTEN and path.exists():
                path.unlink()
        index = cls.build(files, text_column)
        index.source = data
        folder.mkdir(parents=True, exist_ok=True)
        record = {"made_by": "hfstack trace", "fingerprint": current, "text_column": text_column,
                  "documents": len(index.ids), "written": list(WRITTEN)}
        write_manifest(folder, record | {"complete": False})  # first: a build cut short is still ours to redo
        index.save(folder)
        write_manifest(folder, record | {"complete": True})
        log(f"[trace] indexed {len(index.ids)} documents from {len(files)} parquet file(s) into {folder}")
        return index

    def stale(self) -> bool:
        """Whether the parquet files changed since the index was built: one was added, removed or rewritten
        (its rows would point elsewhere)."""
        try:
            return fingerprint(parquet_files(self.source), self.text_column) != self.built_from
        except (OSError, ConfigError):  # a file or the folder is gone
            return True

    # ----------------------------------------------------------------------------- tracing

    def _read_group(self, number: int, group: int) -> tuple[int, list]:
        """(first row, texts) of one row group: a candidate costs one row group's read, not its whole file."""
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(self.files[number])
        first = self.group_ends(number)[group - 1] if group else 0
        return first, parquet.read_row_group(group, columns=[self.text_column]).column(0).to_pylist()

    def group_ends(self, number: int) -> list[int]:
        """The row after each row group of file `number` (its running row count)."""
        import pyarrow.parquet as pq

        if number not in self.ends:
            metadata = pq.ParquetFile(self.files[number]).metadata
            self.ends[number] = list(itertools.accumulate(metadata.row_group(g).num_rows
                                                          for g in range(metadata.num_row_groups)))
        return self.ends[number]

    def text(self, doc: int) -> str:
        number, row = self.rows[doc]
        first, texts = self.read_group(number, bisect.bisect_right(self.group_ends(number), row))
        return texts[row - first]

    def trace(self, text: str, top_k: int = 5, candidates: int = 50, min_chars: int = 20,
              context: int = 40) -> list[Match]:
        """The documents `text` most likely comes from, best first (see the module doc)."""
        import bm25s

        if self.stale():
            raise ConfigError("trace: the parquet files changed since the index was built; open it again")
        tokens = bm25s.tokenize([text], stopwords="en", show_progress=False)
        if not text.strip() or not tokens.vocab:  # only stopwords or punctuation: BM25 has nothing to go on
            return []
        found, scores = self.retriever.retrieve(tokens, k=min(candidates, len(self.ids)), show_progress=False)
        matches = []
        for doc, score in zip(found[0].tolist(), scores[0].tolist()):
            if score <= 0:
                continue
            document = self.text(doc)
            start, text_start, size = longest_common_span(document, text)
            matches.append(Match(self.urls[doc], self.ids[doc], round(score, 4), size, document[start:start + size],
                                 start, start + size, text_start, document[max(0, start - context):start],
                                 document[start + size:start + size + context],
                                 size >= min(min_chars, len(text.strip()))))
        matches.sort(key=lambda m: (m.matched_chars if m.verbatim else 0, m.bm25), reverse=True)
        return matches[:top_k]


def check_index_dir(folder: Path, files: list[Path]) -> None:
    """The index keeps to a folder of its own: not inside the data it indexes (the data stage's folder, whose
    fingerprint later stages check), and not a folder someone else filled."""
    resolved = folder.resolve()
    for data_folder in {f.resolve().parent for f in files}:
        if resolved == data_folder or data_folder in resolved.parents:
            raise ConfigError(f"trace: index_dir '{folder}' is inside the data folder {data_folder}, which belongs "
                              "to the data stage; choose a folder of its own (default: RUN/trace)")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"trace: index_dir '{folder}' is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST).is_file():
        raise ConfigError(f"trace: index_dir '{folder}' is not empty and has no {MANIFEST} (hfstack trace did not "
                          "make it); choose a new or empty folder")
    for name in WRITTEN:
        if (folder / name).is_symlink():  # not what a build writes: never followed, never removed
            raise ConfigError(f"trace: {folder / name} is a symbolic link, which hfstack trace did not make; remove "
                              "it or choose another index_dir")


def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def write_manifest(folder: Path, record: dict) -> None:
    temporary = folder / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temporary, folder / MANIFEST)  # whole or not at all


# ----------------------------------------------------------------------------- serving "where did this come from?"


def run_of_model(model_folder: str | Path) -> Path | None:
    """The run directory a model folder belongs to (RUN when it is RUN/sft, RUN/rlhf, ...), when that run has
    the data stage's parquet to trace in; None otherwise (a Hub model, a folder of one's own)."""
    folder = Path(model_folder).expanduser().resolve()
    layout = RunLayout(folder.parent)
    if not any(layout.folder(step) == folder for step in MODELS + OPTIONAL_MODELS):
        return None
    return layout.root if layout.data.is_dir() and any(layout.data.glob("*.parquet")) else None


class SharedIndex:
    """An index for a server's threads: opened on first use, one trace at a time, opened again (rebuilt)
    when the parquet files change under it. `unavailable` says why there is none (no data), else None."""

    def __init__(self, data: Path | None, index_dir: Path | None, unavailable: str | None = None, log=print):
        self.data, self.index_dir, self.unavailable, self.log = data, index_dir, unavailable, log
        self.index: Provenance | None = None
        self.lock = threading.Lock()

    def opened(self) -> Provenance:
        if self.unavailable:
            raise ConfigError(self.unavailable)
        if self.index is None or self.index.stale():
            try:
                self.index = Provenance.open(self.data, index_dir=self.index_dir, log=self.log)
            except OSError as e:  # RUN/trace not writable (a shared, read-only run): built in memory instead
                self.log(f"[trace] cannot keep the index in {self.index_dir} ({e.strerror or e}); built in memory")
                self.index = Provenance.build(self.data)
        return self.index

    def trace(self, text: str, top_k: int = 3) -> list[Match]:
        with self.lock:
            return self.opened().trace(text, top_k)

    def documents(self) -> int:
        with self.lock:
            return len(self.opened().ids)


# ----------------------------------------------------------------------------- the report card's section


def sources_section(report, run) -> None:
    """The report card's "Where the base's recitations come from": the regurgitation probe's `sources`
    (RUN/regurgitation/report.json); nothing when the probe did not run or attributed nothing."""
    path = run.regurgitation / "report.json"
    try:
        sources = json.loads(path.read_text()).get("sources") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        sources = None
    if not sources:
        return
    report.heading("Where the base's recitations come from")
    report.text("The base model's greedy continuations of the probe's documents, traced back to the crawl (`hfstack "
                "trace`: BM25, then the longest span a document shares with the continuation), longest first; "
                "'continuations' counts those that recite the same span.")
    report.table(["url", "id", "matched chars", "span", "continuations"],
                 [[s.get("url") or "-", cell(s.get("id", "-")), s.get("matched_chars", "-"), cell(s.get("span", "")),
                   s.get("continuations", 1)] for s in sources[:10]])


def cell(value, most: int = 160) -> str:
    """Text for a Markdown table cell, as code: an id like <urn:uuid:…> would otherwise be read as an HTML tag.
    Whitespace runs become one space, no column separator or backtick is left, at most `most` characters."""
    text = " ".join(str(value).split()).replace("|", "\\|").replace("`", "'")
    return f"`{text if len(text) <= most else text[:most] + '…'}`"
