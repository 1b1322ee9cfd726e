"""Pretraining data: tokenize the data stage's text, join documents with the boundary token, and pack
the stream into fixed-length blocks, with held-out documents as the validation split.

Encoding uses the tokenizer's tiktoken export (same ids as `tokenizers`, several times faster) on
`num_proc` threads. Tokens go to flat uint16/uint32 files under `cache_dir`, named by a hash of the
inputs, the tokenizer and the settings, so a rerun or a resumed run reuses them and the corpus is
never held in memory; training reads blocks through a memory map.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from hfstack.core.config import ConfigError
from hfstack.core.splits import stable_split
from hfstack.core.tokens import encode_ordinary, read_texts, tiktoken_encoding, token_bytes

CHUNK_DOCS = 512


def _fingerprint(files: list[str], tokenizer_dir: str, text_column: str, val_fraction: float) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update((Path(tokenizer_dir) / "tokenizer.json").read_bytes())
    digest.update(f"{text_column}:{val_fraction}".encode())
    return digest.hexdigest()[:16]


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.uint32


ENCODER_PROBE = "Hello, World! 1234 naïve café — ünïcode\n\tdef f(x): return x**2  # tabs, spaces\r\n€"


def corpus_encoder(tokenizer, num_proc: int):
    """A batch encoder for plain text: tiktoken for a tokenizer hfstack trained (identical ids, several
    times faster), the tokenizer's own batch encoder for any other (a Hub tokenizer such as gpt2's)."""
    own = lambda texts: encode_ordinary(tokenizer, texts)  # noqa: E731
    try:
        encoding = tiktoken_encoding(tokenizer)
    except (KeyError, IndexError, TypeError, ValueError):  # not hfstack's shape of tokenizer.json
        return own
    # tiktoken ranks merges by token id, which holds when ids were minted in merge order (hfstack's
    # tokenizer stage); a Hub tokenizer of the same shape may number them otherwise
    if encoding.encode_ordinary_batch([ENCODER_PROBE]) != own([ENCODER_PROBE]):
        return own
    return lambda texts: encoding.encode_ordinary_batch(texts, num_threads=num_proc)


def encode_corpus(files: list[str], text_column: str, tokenizer, tokenizer_dir: str, cache_dir: Path,
                  val_fraction: float, num_proc: int, progress: bool = True) -> dict:
    """Write train.bin / val.bin token streams (each document = boundary token + its ids); returns
    their paths and counts. Reuses the files when the same inputs were encoded before."""
    from tqdm.auto import tqdm

    key = _fingerprint(files, tokenizer_dir, text_column, val_fraction)
    folder = cache_dir / f"tokens-{key}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text()) | {"folder": str(folder)}
    folder.mkdir(parents=True, exist_ok=True)
    encode = corpus_encoder(tokenizer, num_proc)
    dtype = token_dtype(len(tokenizer))
    boundary = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    counts = {"train": [0, 0, 0], "val": [0, 0, 0]}  # docs, tokens, bytes
    handles = {split: open(folder / f"{split}.bin.tmp", "wb") for split in counts}
    bar = tqdm(desc="tokenizing", unit=" docs", disable=not progress, mininterval=2)

    def flush(texts: list[str]):
        for text, ids in zip(texts, encode(texts)):
            split = "val" if stable_split(text, val_fraction) else "train"
            np.asarray([boundary, *ids], dtype=dtype).tofile(handles[split])
            counts[split][0] += 1
            counts[split][1] += len(ids) + 1
            counts[split][2] += len(text.encode("utf-8"))
        bar.update(len(texts))

    chunk: list[str] = []
    for text in read_texts(files, text_column):
        chunk.append(text)
        if len(chunk) == CHUNK_DOCS:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    bar.close()
    for split, handle in handles.items():
        handle.close()
        os.replace(folder / f"{split}.bin.tmp", folder / f"{split}.bin")  # complete files only
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": len(tokenizer)} | {
        f"{split}_{name}": value for split, values in counts.items()
        for name, value in zip(("docs", "tokens", "bytes"), values)}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta | {"folder": str(folder)}


class PackedBlocks:
    """A token stream cut into consecutive `seq_len` blocks (the remainder is dropped); a torch-style
    map dataset of {"input_ids", "labels"}, labels being the inputs (the model shifts them)."""

    def __init__(self, path: str | Path, dtype: str, seq_len: int):
        self.seq_len = seq_len
        self.tokens = np.memmap(path, dtype=dtype, mode="r") if os.path.getsize(path) else np.zeros(0, dtype)
        self.n_blocks = len(self.tokens) // seq_len

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, index: int) -> dict:
        import torch

        if not 0 <= index < self.n_blocks:
            raise IndexError(index)
        block = torch.from_numpy(self.tokens[index * self.seq_len:(index + 1) * self.seq_len].astype(np.int64))
        return {"input_ids": block, "labels": block}


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token stands for (special tokens: 0), to turn loss into bits per byte."""

    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    for token, index in tokenizer.get_vocab().items():
        if index not in special and index < len(lengths):
            try:
                lengths[index] = len(token_bytes(token))
            except KeyError:  # a character outside the byte-level alphabet
                raise ConfigError(f"pretrain: token {token!r} is not a byte-level BPE token; the tokenizer must be "
                                  "byte-level (as hfstack's and gpt2's are) to count bits per byte") from None
    return lengths


def load_splits(meta: dict, seq_len: int, micro_batch_size: int) -> tuple[PackedBlocks, PackedBlocks]:
    folder = Path(meta["folder"])
    train = PackedBlocks(folder / "train.bin", meta["dtype"], seq_len)
    val = PackedBlocks(folder / "val.bin", meta["dtype"], seq_len)
    if len(train) < micro_batch_size:
        raise ConfigError(f"pretrain: too little data for one batch: {meta['train_tokens']} training tokens make "
                          f"{len(train)} blocks of seq_len {seq_len}, and micro_batch_size is {micro_batch_size}; "
                          "add data or lower seq_len/micro_batch_size")
    return train, val
