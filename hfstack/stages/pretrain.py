"""Pretraining stage: a Llama-family causal LM trained from scratch on the data stage's text.

    hfstack pretrain --config recipes/tiny/pretrain.yaml [--max_steps 500 ...]
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m hfstack pretrain --config ...

Predict the next token, measure the error, update the weights, repeat. The loop is the transformers
Trainer: it measured as fast as a bare PyTorch loop here (benchmarks/pretrain_throughput.py) and
brings gradient accumulation, clipping, LR schedules, bf16, torch.compile, checkpoint rotation,
exact resume (same data order and schedule), `report_to` trackers and every Accelerate launch mode
(DDP, FSDP2, DeepSpeed) for free. hfstack adds the packing, the sizing dial, validation bits per
byte, samples from fixed prompts, tokens/s and MFU, and a local `log.jsonl`.

Writes `output_dir/` as a plain transformers model (safetensors, tokenizer inside), checkpoints
under `output_dir/checkpoints/`, and `log.jsonl`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import Trainer

from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.launch import print0, process_state, wait_for_all_ranks
from hfstack.core.model import build_config, count_parameters, flops_per_token, model_dims
from hfstack.core.pretrained import resolve_model, resolve_tokenizer
from hfstack.core.renames import renamed, scheduler_name
from hfstack.core.rundir import newest_checkpoint, start_output
from hfstack.core.telemetry import JsonlLogger, SampleWriter, peak_flops_per_device
from hfstack.core.tokens import resolve_text_files
from hfstack.core.training import (
    TrainConfig,
    common_trainer_args,
    finish_training,
    save_trained_model,
    sharding_report,
    trainer_config,
    wants_bf16,
)
from hfstack.dataprep.packing import encode_corpus, load_splits, token_byte_lengths

DEFAULT_PROMPTS = ["The", "In this article we", "The function returns", "Python is"]


@renamed(micro_batch_size="per_device_train_batch_size", eval_every="eval_steps", keep_checkpoints="save_total_limit",
         schedule=("lr_scheduler_type", scheduler_name), compile="torch_compile")
@dataclass
class PretrainConfig(TrainConfig):
    """Model size, data, optimizer and schedule, evaluation, checkpoints (with TrainConfig's shared fields)."""

    # --- inputs and output
    data: list[str] = field(default_factory=lambda: ["runs/tiny/data"])  # data-stage dir(s) or text files
    text_column: str = "text"  # the text column of parquet/jsonl files
    tokenizer: str = "runs/tiny/tokenizer"  # the tokenizer stage's folder, or a Hub tokenizer id (byte-level BPE)
    tokenizer_revision: str | None = None  # a Hub tokenizer's branch, tag or commit (None: main)
    output_dir: str = "runs/tiny/base"  # the base model, log.jsonl and checkpoints/
    # --- model: the depth dial, or explicit sizes
    depth: int = bounded(2, ge=1)  # layers; the dial: hidden size 64 × depth, in heads of 64, unless set below
    hidden_size: int | None = bounded(None, ge=1)  # None: 64 × depth
    num_heads: int | None = bounded(None, ge=1)  # None: hidden_size / 64 (heads of 64 dimensions)
    num_kv_heads: int | None = bounded(None, ge=1)  # key/value heads (grouped-query attention); None: num_heads
    intermediate_size: int | None = bounded(None, ge=1)  # MLP width; None: about 8/3 × hidden_size, a multiple of 64
    tie_embeddings: bool = True  # the output layer shares the token embedding's weights
    spread_unseen_tokens: bool = True  # pull the embeddings of tokens absent from training apart before saving
    init_from: str | None = model_folder(None)  # continue from a model (folder or Hub id) instead of a fresh init
    seq_len: int = bounded(256, ge=2, why="a token and the next one it predicts")  # tokens per training sequence
    # past seq_len, later training (SFT's max_length) teaches the rest, as a long-context extension does
    max_position_embeddings: int | None = bounded(None, ge=2)  # the model's context window; None: seq_len
    # --- batch and steps
    per_device_train_batch_size: int = bounded(8, ge=1)  # sequences per device per forward pass
    batch_tokens: int = bounded(4096, ge=1)  # tokens per optimizer step; gradient accumulation makes up the difference
    gradient_accumulation_steps: int | None = bounded(None, ge=1)  # default: what batch_tokens asks for
    max_steps: int = bounded(200, ge=1)  # optimizer steps to train for
    # --- optimizer and schedule
    learning_rate: float = bounded(3e-3, gt=0)  # peak learning rate (after warmup)
    lr_scheduler_type: Literal[  # the learning rate's shape over the run, after warmup_steps
        "warmup_stable_decay", "cosine_with_min_lr", "constant_with_warmup"] = "warmup_stable_decay"
    warmup_steps: int = bounded(20, ge=0)  # steps of linear warmup from 0 to learning_rate
    decay_fraction: float = bounded(0.2, ge=0, le=1)  # warmup_stable_decay: the last fraction of steps decays to zero
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)  # cosine_with_min_lr: floor as a fraction of the peak
    weight_decay: float = bounded(0.1, ge=0)  # AdamW weight decay
    adam_beta2: float = bounded(0.95, ge=0, lt=1)  # AdamW's second-moment decay (beta1 is 0.9)
    max_grad_norm: float = bounded(1.0, ge=0, why="0 turns clipping off")  # clip the gradient norm to this
    # --- speed
    torch_compile: bool = False  # compile the model with torch.compile: a slow start, then faster steps
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"  # transformers' attention kernel
    num_proc: int = bounded(2, ge=1)  # tokenizer threads
    # --- evaluation and logging
    val_fraction: float = bounded(0.02, gt=0, lt=1)  # same stable choice as the tokenizer's held-out documents
    eval_steps: int = bounded(50, ge=1)  # validate (loss, bits per byte) and sample every this many steps
    eval_batches: int = bounded(20, ge=1)  # validation batches per evaluation
    sample_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))  # continued at each evaluation
    sample_tokens: int = bounded(24, ge=1)  # tokens generated (greedy) per sample prompt
    peak_flops: float | None = bounded(None, gt=0)  # per device, for MFU; default: known GPU peak, or measured on CPU
    # --- checkpoints
    save_steps: int = bounded(100, ge=1)  # checkpoint interval; a rerun continues from the newest checkpoint
    resume: str = "auto"  # auto: continue from the newest checkpoint if any; never; or a checkpoint path

    def __post_init__(self):
        check_fields(self, "pretrain")
        self.check_training("pretrain", "transformers.TrainingArguments")
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.sample_prompts, str):
            self.sample_prompts = [self.sample_prompts]
        if not self.data:
            raise ConfigError("pretrain: 'data' is empty; name data-stage dir(s) or text files")
        one_micro_batch = self.per_device_train_batch_size * self.seq_len
        if self.gradient_accumulation_steps is None and self.batch_tokens < one_micro_batch:
            raise ConfigError(f"pretrain: 'batch_tokens' {self.batch_tokens} is less than one micro-batch "
                              f"(per_device_train_batch_size × seq_len = {one_micro_batch}); raise it, lower "
                              "per_device_train_batch_size, or set gradient_accumulation_steps")
        window = self.max_position_embeddings
        if window is not None and (window < self.seq_len or self.init_from):
            raise ConfigError(f"pretrain: 'max_position_embeddings' {window} must be at least seq_len "
                              f"{self.seq_len}, and is the init_from model's own when there is one")
        if self.resume not in ("auto", "never") and not Path(self.resume).is_dir():
            raise ConfigError(f"pretrain: 'resume' must be auto, never or a checkpoint directory; "
                              f"'{self.resume}' does not exist")

    def accumulation_steps(self, world_size: int) -> int:
        if self.gradient_accumulation_steps is not None:
            return self.gradient_accumulation_steps
        per_step = self.per_device_train_batch_size * self.seq_len * world_size
        return max(1, round(self.batch_tokens / per_step))


def load_tokenizer(folder: str, ref: str):
    """The tokenizer in `folder` (the tokenizer stage's, or a Hub tokenizer's `ref` resolved into the cache: a
    byte-level BPE such as gpt2's)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        raise ConfigError(f"pretrain: tokenizer '{ref}' has neither a bos nor an eos token to separate documents")
    return tokenizer


def same_vocab(model_folder: str, tokenizer) -> bool:
    """The tokenizer is the one saved with the model (when one is): same tokens, same ids."""
    from transformers import AutoTokenizer

    if not (Path(model_folder) / "tokenizer.json").is_file():
        return True
    return AutoTokenizer.from_pretrained(model_folder).get_vocab() == tokenizer.get_vocab()


def build_model(cfg: PretrainConfig, tokenizer):
    """A fresh model from the dial, or `init_from`, checked against the tokenizer and seq_len."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.init_from:
        folder = resolve_model(cfg.init_from, cfg.model_revision, "pretrain", "model ('init_from')")
        config = AutoConfig.from_pretrained(folder)
        # a padded vocabulary (more rows than tokens) is fine; another tokenizer than the model's own is not
        if config.vocab_size < len(tokenizer) or not same_vocab(folder, tokenizer):
            raise ConfigError(f"pretrain: model '{cfg.init_from}' has vocab_size {config.vocab_size} but the "
                              f"tokenizer '{cfg.tokenizer}' has {len(tokenizer)} tokens, not the model's own; "
                              "they must match")
        if cfg.seq_len > config.max_position_embeddings:
            raise ConfigError(f"pretrain: seq_len {cfg.seq_len} is above the model's maximum "
                              f"(max_position_embeddings {config.max_position_embeddings})")
        return AutoModelForCausalLM.from_pretrained(folder, attn_implementation=cfg.attn_implementation,
                                                    dtype=cfg.load_dtype())
    dims = model_dims(cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size)
    config = build_config(len(tokenizer), cfg.max_position_embeddings or cfg.seq_len, dims, tokenizer,
                          cfg.tie_embeddings, cfg.attn_implementation)
    return AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)


def unseen_token_ids(train_tokens, vocab_size: int):
    """Ids of the tokens that never occur in the training stream."""
    import numpy as np
    import torch

    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size)[:vocab_size]
    return torch.from_numpy(np.flatnonzero(counts == 0))


def spread_unseen_tokens(model, unseen) -> int:
    """Pull the embeddings of tokens training never saw apart again, before saving; returns how
    many rows moved (none when fewer than two non-zero rows are unseen).

    An unseen token's only gradient comes from the output softmax pushing it down, the same push
    for all of them, so their tied rows drift into one shared vector (measured on the tiny preset:
    the 1,110 digit-group tokens at cosine 0.96 to each other after 300 steps). Finetuning then has
    nothing to tell "875" from "680" by, and copying a number from the prompt never starts. Each row
    becomes the shared direction at half the seen rows' mean norm (what the model learned about all
    of them: unlikely) plus its own leftover from the random initialisation at the full mean norm
    (cosine 0.2 between two of them). Alternatives measured on arithmetic-only SFT, 1,500 steps:
    leaving them collapsed copied no operand; keeping them at their initial values (no gradient)
    copied none either; the same, scaled to the mean norm, copied the first operand 55% of the time;
    this (with 0.45 and 0.9 of the mean norm), 83%.
    """
    import torch
    from torch.distributed.tensor import DTensor, distribute_tensor

    parameter = model.get_input_embeddings().weight
    sharded = isinstance(parameter, DTensor)  # under FSDP every rank gathers the whole table, spreads the
    weight = parameter.full_tensor().detach().clone() if sharded else parameter  # same rows, keeps its slice
    with torch.no_grad():
        rows = weight[unseen]
        live = rows.norm(dim=1) > 0  # the padding row starts at zero and stays there
        rows, ids = rows[live], unseen[live.cpu()]
        if len(ids) < 2:
            return 0
        seen = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        seen[unseen] = False
        norm = weight[seen].norm(dim=1).mean()
        shared = rows.mean(0)
        own = rows - shared
        weight[ids] = (shared / shared.norm() * norm / 2
                       + own / own.norm(dim=1, keepdim=True).clamp_min(1e-12) * norm)
        if sharded:
            parameter.copy_(distribute_tensor(weight, parameter.device_mesh, parameter.placements))
    return len(ids)


def training_arguments(cfg: PretrainConfig, world_size: int, use_bf16: bool, on_cpu: bool, evaluate: bool):
    from transformers import TrainingArguments

    # warmup_stable_decay: the stable phase is whatever warmup and decay leave of max_steps
    scheduler_kwargs = {"warmup_stable_decay": {"num_decay_steps": max(1, int(cfg.decay_fraction * cfg.max_steps))},
                        "cosine_with_min_lr": {"min_lr_rate": cfg.min_lr_ratio},
                        "constant_with_warmup": {}}[cfg.lr_scheduler_type]
    return trainer_config(TrainingArguments, "pretrain", cfg.training_args, **common_trainer_args(cfg, cfg.output_dir)
        | dict(bf16=use_bf16, use_cpu=on_cpu),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.accumulation_steps(world_size),
        lr_scheduler_type=cfg.lr_scheduler_type, lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, adam_beta1=0.9, adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm, torch_compile=cfg.torch_compile,
        eval_strategy="steps" if evaluate else "no", eval_steps=cfg.eval_steps, save_strategy="steps",
        data_seed=cfg.seed, dataloader_drop_last=True, save_only_model=False,
        include_num_input_tokens_seen="no", ddp_find_unused_parameters=False)


class PretrainTrainer(Trainer):
    """The Trainer, with evaluation as validation loss and bits per byte over `eval_batches` batches."""

    token_bytes = None  # tensor: UTF-8 bytes per token id
    eval_batches = 20

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        import torch

        model = self.model
        was_training = model.training
        model.eval()
        dataset = eval_dataset or self.eval_dataset
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        size = self.args.per_device_eval_batch_size
        # every rank takes its own slice of the first eval_batches × world batches; no drop_last here
        indices = list(range(rank, min(len(dataset), self.eval_batches * size * world), world))
        sums = torch.zeros(3, dtype=torch.float64, device=self.args.device)  # nats, tokens, bytes
        token_bytes = self.token_bytes.to(self.args.device)
        with torch.no_grad(), self.compute_loss_context_manager():
            for start in range(0, len(indices), size):
                ids = torch.stack([dataset[i]["input_ids"] for i in indices[start:start + size]])
                ids = ids.to(self.args.device)
                logits = model(input_ids=ids).logits[:, :-1].float()
                targets = ids[:, 1:]
                losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                           targets.reshape(-1), reduction="none")
                sums += torch.stack([losses.sum().double(), torch.tensor(float(losses.numel()), device=sums.device,
                                                                        dtype=torch.float64),
                                     token_bytes[targets].sum().double()])
        sums = self.accelerator.reduce(sums, reduction="sum")
        model.train(was_training)
        nats, tokens, n_bytes = sums.tolist()
        metrics = {f"{metric_key_prefix}_loss": nats / max(1.0, tokens),
                   f"{metric_key_prefix}_bpb": nats / math.log(2) / max(1.0, n_bytes)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def run_pretrain(cfg: PretrainConfig, callbacks: list | None = None) -> Path:
    """Train and save; returns the output directory. `callbacks` are extra TrainerCallbacks."""
    import torch
    from transformers import default_data_collator, set_seed

    # the tokenizer first (a Hub one is downloaded): a missing one writes nothing
    tokenizer_folder = resolve_tokenizer(cfg.tokenizer, cfg.tokenizer_revision, "pretrain")
    out, _ = start_output("pretrain", cfg)  # a checked launch and a claimed folder, before anything is written
    state = process_state()  # on CPU, 2 launched processes are 2 gloo ranks
    tokenizer = load_tokenizer(tokenizer_folder, cfg.tokenizer)
    files = resolve_text_files(cfg.data)
    set_seed(cfg.seed)  # the initial weights are part of the run: same seed, same model
    model = build_model(cfg, tokenizer)
    with state.main_process_first():  # rank 0 tokenizes, the others then read its cache
        meta = encode_corpus(files, cfg.text_column, tokenizer, tokenizer_folder, out / "cache", cfg.val_fraction,
                             cfg.num_proc, cfg.progress and state.is_main_process)
    train, val = load_splits(meta, cfg.seq_len, cfg.per_device_train_batch_size)
    if not len(val):
        print0(f"[pretrain] note: the held-out documents make no full block of {cfg.seq_len} tokens; no validation "
               "(raise val_fraction)")
    # a continued run's unseen rows already carry what an earlier corpus taught them: left alone
    wants_spread = cfg.spread_unseen_tokens and not cfg.init_from
    unseen = unseen_token_ids(train.tokens, len(tokenizer)) if wants_spread else None
    on_cpu = not torch.cuda.is_available()
    use_bf16 = wants_bf16(cfg.bf16)
    args = training_arguments(cfg, state.num_processes, use_bf16, on_cpu, evaluate=len(val) > 0)
    print0(f"[pretrain] {count_parameters(model) / 1e6:.2f}M parameters ({model.config.num_hidden_layers} layers, "
           f"width {model.config.hidden_size}); {len(train)} train / {len(val)} val blocks of {cfg.seq_len} "
           f"tokens; {args.gradient_accumulation_steps}×{cfg.per_device_train_batch_size}×{state.num_processes} "
           f"sequences per step" + (f"; {len(unseen)} tokens absent from the training blocks" if wants_spread else ""))
    sequences_per_step = args.gradient_accumulation_steps * cfg.per_device_train_batch_size * state.num_processes
    tokens_per_step = sequences_per_step * cfg.seq_len
    peak = cfg.peak_flops or peak_flops_per_device(use_bf16)
    logger = JsonlLogger(out / "log.jsonl", tokens_per_step, flops_per_token(model, cfg.seq_len),
                         peak * state.num_processes)
    sampler = SampleWriter(tokenizer, cfg.sample_prompts, cfg.sample_tokens, logger)
    # blocks are all seq_len long: stacked as they are (a Hub tokenizer may have no pad token to pad with)
    trainer = PretrainTrainer(model=model, args=args, train_dataset=train, eval_dataset=val if len(val) else None,
                              processing_class=tokenizer, data_collator=default_data_collator,
                              callbacks=[logger, sampler, *(callbacks or [])])
    trainer.token_bytes = torch.from_numpy(token_byte_lengths(tokenizer))
    trainer.eval_batches = cfg.eval_batches
    checkpoint = None
    if cfg.resume == "auto":
        checkpoint = newest_checkpoint(Path(args.output_dir))
    elif cfg.resume != "never":
        checkpoint = cfg.resume
    if checkpoint:
        print0(f"[pretrain] resuming from {checkpoint}")
    started = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.state.global_step < cfg.max_steps:  # stopped early (a callback): keep checkpoints, no final model
        return out
    spread = wants_spread and spread_unseen_tokens(model, unseen) > 0
    if len(val) and (spread or trainer.state.global_step % cfg.eval_steps):  # the saved weights' own figures
        trainer.evaluate()
    model.generation_config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    save_trained_model(trainer, out, state.is_main_process)
    if state.is_main_process:
        tokenizer.save_pretrained(out)
    steps = trainer.state.global_step
    summary = {"steps": steps, "seconds": round(time.time() - started, 1), "parameters": count_parameters(model),
               "train_tokens_available": meta["train_tokens"], "tokens_seen": steps * tokens_per_step,
               } | logger.last_eval | sharding_report(trainer)
    finish_training(cfg, out, "pretrain", summary, "summary.json", state.is_main_process,
                    steps=trainer.state.global_step)
    wait_for_all_ranks()
    return out


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = PretrainConfig
run = run_pretrain
