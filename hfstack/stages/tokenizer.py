"""Tokenizer stage: train a byte-level BPE tokenizer on the data stage's text, with the conversation
protocol's special tokens and chat template built in, and measure it against GPT-4's cl100k.

    hfstack tokenizer --input RUN/data --output_dir RUN/tokenizer [--vocab_size 8192]

Text becomes UTF-8 bytes, bytes become tokens: BPE starts from the 256 byte values and repeatedly
merges the most common adjacent pair into a new token until the vocabulary is full. Because the
alphabet is all 256 bytes, any Unicode string encodes and decodes back exactly.

Before merging, text is split into pieces with GPT-4's pre-tokenization regex (words with their
leading space, punctuation runs, whitespace), so merges never cross those boundaries. Three digit
rules: `single` splits digits one by one (every number spelled digit by digit); `groups3` is GPT-4's
groups of up to 3, merged as BPE learns them; `numbers` is groups of up to 3 where every group
("0"-"999", "00"-"99", "000"-"099") is guaranteed one token (1,110 of the vocabulary). With
`numbers`, copying a number (an operand into a tool call, the tool's result into the answer) is
copying one or two tokens, which a small model learns far sooner than copying digit by digit: that
needs induction heads, which form only after much more training. `benchmarks/tokenizer_speed.py`
measures what each rule costs in compression.

Writes a Hugging Face tokenizer (loadable offline with `AutoTokenizer.from_pretrained(DIR)`, on
transformers 4 as well as 5; its chat template is the inference one, without `{% generation %}`
markers: hfstack.core.templates.training_template gives them back) and `eval.json`: bytes per token
on held-out documents, side by side with cl100k.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hfstack.core.checkpoint import save_tokenizer
from hfstack.core.config import ConfigError, bounded, check_fields
from hfstack.core.protocol import DOCUMENT_BOUNDARY, PAD, SPECIAL_TOKENS, chat_template
from hfstack.core.rundir import claim_output, finish_output
from hfstack.core.splits import stable_split
from hfstack.core.textfiles import check_hub_dataset
from hfstack.core.tokens import cl100k, encode_ordinary, read_texts

# GPT-4's (cl100k) split pattern; only the digit rule differs between the choices
_SPLIT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|DIGITS| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
          r"""\s+(?!\S)|\s+""")
_GROUPS3 = _SPLIT.replace("DIGITS", r"\p{N}{1,3}")
SPLIT_PATTERNS = {"single": _SPLIT.replace("DIGITS", r"\p{N}"), "groups3": _GROUPS3, "numbers": _GROUPS3}
DIGIT_GROUPS = [f"{n:0{width}d}" for width in (1, 2, 3) for n in range(10 ** width)]  # 10 + 100 + 1000
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


@dataclass
class TokenizerConfig:
    """Byte-level BPE training: inputs, vocabulary, digit rule, held-out evaluation."""

    input: list[str] = field(default_factory=list)  # data-stage dirs, parquet/jsonl/txt files or globs
    hub_dataset: str | None = None  # a Hub dataset streamed instead of (or as well as) files
    hub_split: str = "train"  # the split of hub_dataset read
    hub_subset: str | None = None  # the subset (config name) of hub_dataset
    text_column: str = "text"  # the text column of parquet/jsonl files and Hub datasets
    output_dir: str = "runs/tokenizer"  # the tokenizer files and eval.json
    overwrite: bool = False  # start afresh in an output_dir a different run made (removes only hfstack's files)
    vocab_size: int = 8192  # bytes (256) + special tokens + merges
    digits: Literal["single", "groups3", "numbers"] = "single"  # one by one, GPT-4's groups of 3, or 0-999 as tokens
    min_frequency: int = bounded(2, ge=1)  # a pair seen fewer times is never merged
    max_token_length: int | None = bounded(32, ge=1)  # longest token in characters; keeps runs like '=====...' out
    max_chars: int = bounded(-1, ge=1, unset=-1, why="-1: the whole corpus")  # train on at most this many characters
    # documents held out of training, for bytes/token
    heldout_fraction: float = bounded(0.02, ge=0, lt=1, why="0 holds nothing out")  # share of documents held out
    eval_max_chars: int = bounded(2_000_000, ge=1)  # held-out characters kept for the evaluation
    compare_cl100k: bool = True  # also measure GPT-4's cl100k on the held-out documents
    progress: bool = True  # progress bars

    def __post_init__(self):
        check_fields(self, "tokenizer")
        if isinstance(self.input, str):
            self.input = [self.input]
        if not self.input and not self.hub_dataset:
            raise ConfigError("tokenizer: set 'input' (data-stage dir, parquet/jsonl/txt files) or 'hub_dataset'")
        if self.vocab_size < MIN_VOCAB:
            raise ConfigError(f"tokenizer: 'vocab_size' must be at least {MIN_VOCAB} (256 bytes + "
                              f"{len(SPECIAL_TOKENS)} special tokens), got {self.vocab_size}")
        if self.digits not in SPLIT_PATTERNS:
            raise ConfigError(f"tokenizer: 'digits' must be one of {', '.join(SPLIT_PATTERNS)}, got {self.digits!r}")
        if self.digits == "numbers" and self.vocab_size < MIN_VOCAB + len(DIGIT_GROUPS):
            raise ConfigError(f"tokenizer: 'digits: numbers' needs 'vocab_size' of at least "
                              f"{MIN_VOCAB + len(DIGIT_GROUPS)} (its {len(DIGIT_GROUPS)} digit groups), "
                              f"got {self.vocab_size}")


# ----------------------------------------------------------------------------------------------- input


def iter_documents(cfg: TokenizerConfig) -> Iterator[str]:
    """Every document's text, streamed file by file; the corpus is never held in memory."""
    yield from read_texts(cfg.input, cfg.text_column)
    if cfg.hub_dataset:
        from datasets import load_dataset

        check_hub_dataset(cfg.hub_dataset)
        stream = load_dataset(cfg.hub_dataset, cfg.hub_subset, split=cfg.hub_split, streaming=True)
        for row in stream:
            if row.get(cfg.text_column):
                yield row[cfg.text_column]


class CorpusSplit:
    """Streams the training side to the trainer and keeps (a capped amount of) the held-out side."""

    def __init__(self, cfg: TokenizerConfig):
        self.cfg = cfg
        self.heldout: list[str] = []
        self.train_docs = self.train_chars = self.heldout_chars = 0

    def training_texts(self) -> Iterator[str]:
        from tqdm.auto import tqdm

        bar = tqdm(desc="reading", unit=" docs", disable=not self.cfg.progress, mininterval=2)
        for text in iter_documents(self.cfg):
            bar.update(1)
            if stable_split(text, self.cfg.heldout_fraction):
                if self.heldout_chars < self.cfg.eval_max_chars:
                    self.heldout.append(text)
                    self.heldout_chars += len(text)
                continue
            if 0 <= self.cfg.max_chars <= self.train_chars:
                break
            self.train_docs += 1
            self.train_chars += len(text)
            yield text
        bar.close()


# -------------------------------------------------------------------------------------------- training


def new_tokenizer(digits: str = "single"):
    """An untrained byte-level BPE tokenizer with the GPT-4-style split and the protocol's specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERNS[digits]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(texts, vocab_size: int, digits: str = "single", min_frequency: int = 2,
              max_token_length: int | None = 32, progress: bool = False):
    """Train on an iterator of strings; returns a `tokenizers.Tokenizer` (ids 0.. are the specials)."""
    from tokenizers import pre_tokenizers, trainers

    tokenizer = new_tokenizer(digits)
    reserved = len(DIGIT_GROUPS) if digits == "numbers" else 0  # room for the digit groups BPE did not learn
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - reserved, min_frequency=min_frequency,
                                  show_progress=progress, special_tokens=SPECIAL_TOKENS,
                                  max_token_length=max_token_length,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return with_digit_groups(tokenizer) if digits == "numbers" else tokenizer


def with_digit_groups(tokenizer):
    """Every group of up to 3 digits as one token: append the merges that build the missing ones.

    Digit groups are pieces of their own after the split, so these merges never touch text. A group
    "abc" gets both ("ab", "c") and ("a", "bc"): whichever pair the earlier merges form first, it
    ends as one token.
    """
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.to_str())
    vocab, merges = state["model"]["vocab"], state["model"]["merges"]
    known = {tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in merges}
    for group in DIGIT_GROUPS[10:]:  # the single digits are bytes, already in the alphabet
        vocab.setdefault(group, len(vocab))
        for pair in {(group[:-1], group[-1]), (group[0], group[1:])}:
            if pair not in known:  # in the file's own format: ["a", "b"], or "a b" in older tokenizers
                merges.append(list(pair) if not merges or isinstance(merges[0], list) else " ".join(pair))
    return Tokenizer.from_str(json.dumps(state))


def to_transformers(tokenizer):
    """Wrap as a transformers tokenizer: named special tokens, the chat template, no text clean-up."""
    from transformers import PreTrainedTokenizerFast

    named = {DOCUMENT_BOUNDARY, PAD}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=DOCUMENT_BOUNDARY, eos_token=DOCUMENT_BOUNDARY, pad_token=PAD,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in named], chat_template=chat_template(),
        clean_up_tokenization_spaces=False, model_input_names=["input_ids", "attention_mask"])


# -------------------------------------------------------------------------------------- fast encoding


# ------------------------------------------------------------------------------------------ the stage


def bytes_per_token(encode, texts: list[str]) -> float:
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in encode(texts))
    return n_bytes / max(1, n_tokens)


def evaluate(hf_tokenizer, heldout: list[str], compare_cl100k: bool = True) -> dict:
    result = {"heldout_docs": len(heldout), "heldout_bytes": sum(len(t.encode("utf-8")) for t in heldout),
              "vocab_size": len(hf_tokenizer)}
    if not heldout:
        return result
    result["bytes_per_token"] = round(bytes_per_token(lambda ts: encode_ordinary(hf_tokenizer, ts), heldout), 4)
    if compare_cl100k:
        gpt4 = cl100k()
        result["cl100k_bytes_per_token"] = round(bytes_per_token(gpt4.encode_ordinary_batch, heldout), 4)
        result["cl100k_vocab_size"] = gpt4.n_vocab
        result["ratio_to_cl100k"] = round(result["bytes_per_token"] / result["cl100k_bytes_per_token"], 4)
    return result


def run_tokenizer(cfg: TokenizerConfig) -> Path:
    """Train, save and evaluate; returns the output directory."""
    import time

    out = claim_output("tokenizer", cfg)
    split = CorpusSplit(cfg)
    started = time.perf_counter()
    trained = train_bpe(split.training_texts(), cfg.vocab_size, cfg.digits, cfg.min_frequency,
                        cfg.max_token_length, cfg.progress)
    seconds = time.perf_counter() - started
    if split.train_docs == 0:
        raise ConfigError(f"tokenizer: no text to train on in {cfg.input or cfg.hub_dataset} "
                          f"(column '{cfg.text_column}'); is the corpus empty?")
    if not split.heldout and cfg.heldout_fraction > 0:
        print("[tokenizer] note: the corpus is too small to hold documents out; bytes/token is not measured")
    hf_tokenizer = to_transformers(trained)
    save_tokenizer(hf_tokenizer, out)  # the inference template; loadable by transformers 4 too
    report = {"train_docs": split.train_docs, "train_chars": split.train_chars, "train_seconds": round(seconds, 2),
              "digits": cfg.digits} | evaluate(hf_tokenizer, split.heldout, cfg.compare_cl100k)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_report(report, out)
    finish_output(out, "tokenizer", train_docs=split.train_docs)
    return out


def _print_report(report: dict, out: Path) -> None:
    print(f"[tokenizer] trained on {report['train_docs']} docs ({report['train_chars'] / 1e6:.2f}M chars) "
          f"in {report['train_seconds']}s → vocab {report['vocab_size']} ({out})")
    if "bytes_per_token" in report:
        line = f"[tokenizer] held-out ({report['heldout_docs']} docs): {report['bytes_per_token']:.3f} bytes/token"
        if "cl100k_bytes_per_token" in report:
            line += (f" vs cl100k {report['cl100k_bytes_per_token']:.3f} (vocab {report['cl100k_vocab_size']}):"
                     f" {report['ratio_to_cl100k']:.2f}x")
        print(line)


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = TokenizerConfig
run = run_tokenizer
