"""Pretraining throughput and decode speed, as ratios against baselines run in the same process.

    python benchmarks/pretrain_throughput.py [--depth 4] [--seq_len 256] [--micro_batch_size 8] [--steps 30]

On the same model and batches prints:
  1. tokens/s and MFU of hfstack's pretraining (the Trainer, via `run_pretrain`) against a minimal
     plain-PyTorch loop (forward, backward, clip, AdamW step); MFU = FLOPs per token × tokens/s ÷ the
     peak: a measured fp32 matmul on CPU ("CPU MFU"), the datasheet bf16 peak on a known GPU;
  2. decode tokens/s with and without the KV cache, generating up to 512 tokens of context, per
     output token after the first (prefill left out); after a warm-up call, the two alternated and
     the best of rounds + 1 each.
Goals: training overhead <= 5%; CPU MFU >= 60% (GPU bf16 >= 50%); KV cache >= 10x.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def corpus(workdir: Path, vocab_size: int = 2048) -> tuple[Path, Path]:
    """Standard-library prose and a tokenizer trained on it (2k tokens unless told)."""
    from hfstack.core.stdlib_text import stdlib_articles
    from hfstack.stages.tokenizer import TokenizerConfig, run_tokenizer

    data = workdir / "docs.jsonl"
    with data.open("w") as handle:
        for title, paragraphs in stdlib_articles():
            handle.write(json.dumps({"text": title + "\n\n" + "\n\n".join(paragraphs)}) + "\n")
    run_tokenizer(TokenizerConfig(input=[str(data)], output_dir=str(workdir / "tok"), vocab_size=vocab_size,
                                  compare_cl100k=False, progress=False))
    return data, workdir / "tok"


def plain_loop(cfg, steps: int, warmup: int) -> float:
    """tokens/s of the smallest correct training loop on the same model and packed data."""
    from hfstack.dataprep.packing import encode_corpus, load_splits
    from hfstack.stages.pretrain import build_model, load_tokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.tokenizer)
    model = build_model(cfg, tokenizer)
    meta = encode_corpus([cfg.data[0]], "text", tokenizer, cfg.tokenizer, Path(cfg.output_dir) / "cache",
                         cfg.val_fraction, cfg.num_proc, progress=False)
    train, _ = load_splits(meta, cfg.seq_len, cfg.micro_batch_size)
    loader = torch.utils.data.DataLoader(train, batch_size=cfg.micro_batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    batches = iter(loader)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * cfg.micro_batch_size * cfg.seq_len / (time.perf_counter() - start)


def hfstack_loop(cfg, run: int) -> float:
    """tokens/s from run_pretrain's own log, after the first logging interval (the warm-up)."""
    import dataclasses
    import shutil

    from hfstack.stages.pretrain import run_pretrain

    out = Path(cfg.output_dir) / f"run{run}"
    run_pretrain(dataclasses.replace(cfg, output_dir=str(out)))
    records = [json.loads(line) for line in (out / "log.jsonl").open()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return sum(rates) / len(rates)


def decode_speed(model, use_cache: bool, context: int = 512, new_tokens: int = 64) -> float:
    """Output tokens/s after the first: (time for N tokens − time for 1) ÷ (N − 1), so the prompt's
    prefill, the same for both ways, is left out (time per output token, as serving measures it)."""
    prompt = torch.randint(10, model.config.vocab_size, (1, context - new_tokens))

    def seconds(count: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():  # as hfstack generate and the tool loop decode
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=count,
                           min_new_tokens=count, do_sample=False, use_cache=use_cache, pad_token_id=0)
        return time.perf_counter() - start

    return (new_tokens - 1) / max(1e-9, seconds(new_tokens) - seconds(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--micro_batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two loops, keep each one's best")
    args = parser.parse_args()

    from hfstack.core.model import count_parameters, flops_per_token
    from hfstack.core.telemetry import peak_flops_per_device
    from hfstack.stages.pretrain import PretrainConfig, build_model, load_tokenizer

    workdir = Path(tempfile.mkdtemp(prefix="hfstack-prebench-"))
    data, tok = corpus(workdir)
    warmup = 5
    cfg = PretrainConfig(data=[str(data)], tokenizer=str(tok), output_dir=str(workdir / "run"), depth=args.depth,
                         seq_len=args.seq_len, micro_batch_size=args.micro_batch_size,
                         batch_tokens=args.micro_batch_size * args.seq_len, max_steps=warmup + args.steps,
                         log_every=warmup, eval_every=10**6, save_every=10**6, sample_prompts=[], progress=False)
    model = build_model(cfg, load_tokenizer(str(tok)))
    per_token = flops_per_token(model, cfg.seq_len)
    on_gpu = torch.cuda.is_available()
    peak = peak_flops_per_device(bf16=on_gpu)
    print(f"model: depth {args.depth}, {count_parameters(model) / 1e6:.2f}M parameters, {per_token / 1e6:.1f} MFLOP "
          f"per token; batch {args.micro_batch_size}×{args.seq_len}; peak {peak / 1e9:.1f} GFLOP/s "
          f"({'GPU datasheet, bf16' if on_gpu else 'measured fp32 matmul'})")

    base = ours = 0.0
    for run in range(args.rounds):  # alternating cancels slow drifts of a shared machine
        base = max(base, plain_loop(cfg, args.steps, warmup))
        ours = max(ours, hfstack_loop(cfg, run))
    print(f"plain PyTorch loop     {base:10.0f} tokens/s   MFU {base * per_token / peak:6.1%}")
    print(f"hfstack pretrain       {ours:10.0f} tokens/s   MFU {ours * per_token / peak:6.1%}   overhead "
          f"{1 - ours / base:+.1%}   (goal <= 5%; MFU goal >= {'50' if on_gpu else '60'}%)")

    decode_cfg = PretrainConfig(data=[str(data)], tokenizer=str(tok), depth=args.depth, seq_len=512)
    decoder = build_model(decode_cfg, load_tokenizer(str(tok))).eval()
    decode_speed(decoder, True, new_tokens=8)  # warm-up: first-call allocations and lazy initialisation
    cached = uncached = 0.0
    for _ in range(args.rounds + 1):  # alternated, best of each: a shared machine drifts
        cached = max(cached, decode_speed(decoder, True))
        uncached = max(uncached, decode_speed(decoder, False))
    print(f"decode with KV cache   {cached:10.1f} tokens/s")
    print(f"decode without cache   {uncached:10.1f} tokens/s   KV cache = {cached / uncached:.1f}x   (goal >= 10x)")


if __name__ == "__main__":
    main()
