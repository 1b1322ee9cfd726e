"""The data stage's readers: every kind of input becomes datatrove documents.

WARC files go through `WarcResponseReader`, which never stops on bad input: it yields one document per
WARC `response` record, whatever it holds, with the HTTP facts in metadata (`http_status`,
`content_type`, `fetch_problem`), so that the HTTP filter (filters.py) can count every drop by reason
instead of losing records silently. Damaged input (a truncated or corrupt `.warc.gz`, a record with
broken HTTP headers, non-UTF-8 or huge pages, empty files) is counted, never fatal. jsonl, parquet and
Hub datasets get datatrove's own readers, built here over the file list sources.py resolved.

Used by `hfstack data --input PATH|GLOB|URL` (and `--hub_dataset NAME`); tested by
`python -m pytest -q tests/unit/test_warc.py`.
"""

from __future__ import annotations

import os
import re

import fsspec
from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseReader
from datatrove.utils.logging import logger

from hfstack.dataprep.sources import is_remote

HTML_TYPES = ("text/html", "application/xhtml+xml")
_STATUS = re.compile(r"^\d{3}$")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([\w.:-]+)", re.I)


def decode_html(body: bytes, content_type: str) -> str | None:
    """Decode with the declared charset, then UTF-8, then a detected charset; None when nothing fits."""
    declared = _CHARSET.search(content_type or "")
    candidates = [declared.group(1)] if declared else []
    candidates.append("utf-8")
    for charset in candidates:
        try:
            return body.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
    import cchardet

    detected = cchardet.detect(body).get("encoding")
    if detected:
        try:
            return body.decode(detected)
        except (UnicodeDecodeError, LookupError):
            pass
    return None


def _read_capped(stream, cap: int) -> bytes | None:
    """Read a stream to its end, or return None as soon as it exceeds `cap` bytes."""
    chunks, size = [], 0
    while chunk := stream.read(1 << 16):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _unusable(doc_id: str, meta: dict, problem: str) -> Document:
    """A record the HTTP filter will drop, carrying the reason so the drop is counted."""
    return Document(text="", id=doc_id, metadata=meta | {"fetch_problem": problem})


class WarcResponseReader(BaseReader):
    """Reads WARC files (local, s3://, https:// through fsspec; plain or per-record gzip) into documents.

    `files` is the full, ordered list of input files. With at least as many files as tasks, task
    `rank` reads files[rank::world_size]; with fewer (one big WARC, say), every task reads every file
    and keeps the response records whose index is `rank` modulo `world_size`, so all tasks have work.
    """

    name = "🕷 WARC responses"
    _requires_dependencies = ["warcio", ("cchardet", "faust-cchardet")]

    def __init__(self, files: list[str], max_page_bytes: int = 5_000_000, limit: int = -1, progress: bool = False):
        super().__init__(limit=limit)
        self.files = list(files)
        self.max_page_bytes = max_page_bytes
        self.progress = progress

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        from tqdm import tqdm

        split_records = len(self.files) < world_size
        files = self.files if split_records else self.files[rank::world_size]
        count = 0
        with tqdm(desc=f"task {rank} records", unit="rec", disable=not self.progress, mininterval=2) as bar:
            for path in files:
                if rank == 0 or not split_records:  # count each file once, not once per task
                    self.stat_update("input_files")
                records = 0
                for doc in self.read_file(path, (rank, world_size) if split_records else (0, 1)):
                    if 0 <= self.limit <= count:
                        return
                    count += 1
                    records += 1
                    bar.update()
                    self.update_doc_stats(doc)
                    yield doc
                if records == 0 and not split_records:
                    self.stat_update("files_without_responses")

    def read_file(self, path: str, shard: tuple[int, int] = (0, 1)):
        from warcio.archiveiterator import ArchiveIterator

        rank, world_size = shard
        responses = 0
        try:
            with fsspec.open(path, "rb") as f:  # warcio inflates gzip member by member
                for index, record in enumerate(ArchiveIterator(f)):
                    if record.rec_type != "response":
                        continue
                    responses += 1
                    if (responses - 1) % world_size != rank:
                        continue
                    with self.track_time():
                        doc = self._record_to_document(record, path, index)
                    yield doc
        except Exception as e:  # a damaged file ends here; the records read before it are kept
            self.stat_update("corrupt_files")
            logger.warning(f"{path}: stopped reading a damaged WARC file ({type(e).__name__}: {e})")

    def _record_to_document(self, record, path: str, index: int) -> Document:
        headers = record.rec_headers
        http = record.http_headers
        meta = {
            "url": headers.get_header("WARC-Target-URI") or "",
            "date": headers.get_header("WARC-Date") or "",
            "file_path": path,
            "http_status": None,
            "content_type": "",
            "fetch_problem": None,
        }
        doc_id = headers.get_header("WARC-Record-ID") or f"{path}/{index}"
        status = http.get_statuscode() if http is not None else None
        if http is None or not (http.protocol or "").upper().startswith("HTTP/") or not _STATUS.match(status or ""):
            return _unusable(doc_id, meta, "broken_http_headers")
        meta["http_status"] = int(status)
        content_type = http.get_header("Content-Type") or headers.get_header("WARC-Identified-Payload-Type") or ""
        meta["content_type"] = content_type
        if content_type.split(";")[0].strip().lower() not in HTML_TYPES:
            return Document(text="", id=doc_id, metadata=meta)  # binary payloads are never decoded
        body = _read_capped(record.content_stream(), self.max_page_bytes)
        if body is None:
            return _unusable(doc_id, meta, "too_large")
        if getattr(record.raw_stream, "limit", 0) > 0:  # the file ended before the declared length
            return _unusable(doc_id, meta, "truncated")
        text = decode_html(body, content_type)
        if text is None:
            return _unusable(doc_id, meta, "undecodable")
        return Document(text=text, id=doc_id, metadata=meta)


def text_reader(kind: str, files: list[str], text_column: str, limit: int, progress: bool, work_dir: str):
    """datatrove's JsonlReader/ParquetReader over an explicit file list (absolute paths or URLs).

    The list goes into a paths file inside the run's work dir, where cluster tasks can read it too.
    """
    from datatrove.pipeline.readers import JsonlReader, ParquetReader

    if any(is_remote(f) for f in files):
        fs, _ = fsspec.core.url_to_fs(files[0])
        folder, paths = (fs.unstrip_protocol(""), fs), [fs._strip_protocol(f) for f in files]
    else:
        folder, paths = "/", [f.lstrip("/") for f in files]
    paths_file = os.path.join(work_dir, f"inputs-{kind}.txt")
    os.makedirs(work_dir, exist_ok=True)
    with open(paths_file, "w") as handle:
        handle.write("\n".join(paths) + "\n")
    reader_cls = JsonlReader if kind == "jsonl" else ParquetReader
    return reader_cls(folder, paths_file=paths_file, text_key=text_column, limit=limit, doc_progress=progress)


def hub_reader(dataset: str, split: str, subset: str | None, text_column: str, limit: int, progress: bool):
    """A Hub dataset, streamed. Fails fast with a clear message when the Hub is unreachable."""
    from datatrove.pipeline.readers import HuggingFaceDatasetReader

    options = {"split": split} | ({"name": subset} if subset else {})
    return HuggingFaceDatasetReader(dataset, dataset_options=options, streaming=True, text_key=text_column,
                                    limit=limit, doc_progress=progress)
