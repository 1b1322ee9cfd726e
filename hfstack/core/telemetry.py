"""Training telemetry shared by the training stages: a local `log.jsonl` with tokens/s and MFU,
samples from fixed prompts at each evaluation, tracker selection, and the FLOP/s peak for MFU.

MFU (model FLOPs utilisation) = FLOPs the model needs per second ÷ what the hardware can do. On a
GPU the peak is the datasheet's dense bf16/fp32 figure; on a CPU, which has no datasheet figure we
can trust, it is a large fp32 matmul measured in the same process ("CPU MFU").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from hfstack.core.launch import print0
from hfstack.core.model import prompt_ids

GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
                 "4090": 165e12, "3090": 71e12}


def available_trackers(wanted: list[str]) -> list[str]:
    """The requested `report_to` integrations that are installed (others are skipped with a note)."""
    from transformers.integrations import get_available_reporting_integrations

    installed = set(get_available_reporting_integrations())
    missing = [name for name in wanted if name not in installed]
    if missing:
        print0(f"[telemetry] not installed, not reporting to: {', '.join(missing)}")
    return [name for name in wanted if name in installed] or ["none"]


def measured_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a square fp32 matmul on this CPU: the best of a few timed runs."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_flops_per_device(bf16: bool) -> float:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak if bf16 else peak / 2  # TF32 tensor-core rate is half the bf16 one on these parts
        print0(f"[telemetry] unknown GPU '{name}': MFU uses a measured matmul peak; set peak_flops to fix it")
    return measured_matmul_flops()


class JsonlLogger(TrainerCallback):
    """Appends every Trainer log (loss, lr, grad_norm, eval) to a jsonl file, with tokens/s and MFU."""

    def __init__(self, path: Path, tokens_per_step: int, flops_per_token: float, peak_flops: float):
        self.path = Path(path)
        self.tokens_per_step, self.flops_per_token, self.peak_flops = tokens_per_step, flops_per_token, peak_flops
        self.last_time = self.last_step = None
        self.last_eval: dict = {}

    def write(self, record: dict, state) -> None:
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time, self.last_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        now = time.perf_counter()
        if "loss" in logs and self.last_time is not None and state.global_step > self.last_step:
            tokens_per_s = (state.global_step - self.last_step) * self.tokens_per_step / (now - self.last_time)
            logs["tokens_per_s"] = round(tokens_per_s, 1)
            logs["mfu"] = round(tokens_per_s * self.flops_per_token / self.peak_flops, 4)
            self.last_time, self.last_step = now, state.global_step
        if "eval_loss" in logs:
            self.last_eval = {k: v for k, v in logs.items() if k.startswith("eval_")}
            self.last_time = now  # evaluation time is not training throughput
        self.write({"step": state.global_step, "time": round(time.time(), 2), **logs}, state)


class SampleWriter(TrainerCallback):
    """At each evaluation, continues the fixed prompts (greedy) and logs what the model writes."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int, logger: JsonlLogger):
        self.tokenizer, self.prompts, self.max_new_tokens, self.logger = tokenizer, prompts, max_new_tokens, logger

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        # a sharded model's forward needs every rank (each holds a slice of each weight): they all
        # generate, in step; otherwise the main process does it alone
        if not self.prompts or model is None or not (state.is_world_process_zero or is_sharded(model)):
            return
        samples = [{"prompt": p, "sample": continue_text(model, self.tokenizer, p, self.max_new_tokens)}
                   for p in self.prompts]
        if not state.is_world_process_zero:
            return
        self.logger.write({"step": state.global_step, "samples": samples}, state)
        for sample in samples:
            print0(f"[sample @{state.global_step}] {sample['prompt']!r} → {sample['sample']!r}")


def is_sharded(model) -> bool:
    """The model's weights are split across processes (FSDP2 turns parameters into DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def continue_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of a document that starts with `prompt` (after the boundary token)."""
    import torch

    was_training = model.training
    model.eval()
    ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=model.device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, synced_gpus=is_sharded(model))
    model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False)
