"""Tiny artifacts the stage tests build on: standard-library prose, a tokenizer trained on it, and a
1-layer base model pretrained for a few steps (seconds on a CPU)."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_tokenizer(root: Path, docs: int = 40, vocab_size: int = 400) -> Path:
    """ROOT/docs.jsonl (the first `docs` stdlib articles) and a BPE tokenizer in ROOT/tok."""
    from hfstack.core.stdlib_text import stdlib_articles
    from hfstack.stages.tokenizer import TokenizerConfig, run_tokenizer

    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(p)}) + "\n" for _, p in stdlib_articles()[:docs]))
    run_tokenizer(TokenizerConfig(input=[str(data)], output_dir=str(root / "tok"), vocab_size=vocab_size,
                                  compare_cl100k=False, progress=False))
    return root / "tok"


def tiny_base(root: Path, docs: int = 40, vocab_size: int = 400, steps: int = 5) -> Path:
    """The tokenizer above, then a depth-1 base model pretrained `steps` steps on the same prose: ROOT/base."""
    from hfstack.stages.pretrain import PretrainConfig, run_pretrain

    tokenizer = tiny_tokenizer(root, docs, vocab_size)
    run_pretrain(PretrainConfig(data=[str(root / "docs.jsonl")], tokenizer=str(tokenizer),
                                output_dir=str(root / "base"), depth=1, seq_len=64, per_device_train_batch_size=4,
                                batch_tokens=256, max_steps=steps, eval_steps=100, save_steps=100, sample_prompts=[],
                                progress=False))
    return root / "base"
