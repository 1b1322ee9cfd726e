"""Plan a preset before running it: per training stage, parameters, tokens, FLOPs, memory per device, and wall time.

    hfstack plan --preset tiny --gpu cpu
    hfstack plan --preset gpu-small --gpus 8 --gpu h100 [--mfu 0.4] [--gradient_checkpointing] [--output plan.json]

`plan_run(RUN)` plans a finished run instead, from each training stage's recorded config.yaml, saved
config.json and device count, beside what it measured: the report card's "Compute plan" section.
Arithmetic only: nothing is loaded, trained or measured. The model's size comes from the preset's
pretrain recipe (the depth dial, the tokenizer recipe's vocabulary) or, for a Hub base, from a
table of known models. The formulas, each an estimate:

- training FLOPs: 6·N·D for the matmuls (forward + backward; N = the parameters without the
  embedding lookup but with the output projection, as `hfstack.core.model.flops_per_token`) plus
  attention's 12·L·d·T per token; generating a token costs 2·N (forward only, KV cache; the
  attention's share is left out), and so does a frozen reference or reward model reading one.
- memory per device: AdamW in mixed precision, 16 bytes a parameter (fp32 weights 4, fp32 gradients
  4, AdamW's two moments 8; Rajbhandari et al., ZeRO), a frozen bf16 copy 2 bytes a parameter;
  FSDP / ZeRO-3 divides all of it by the device count. Activations (Korthikanti et al. 2022, bf16,
  per token per layer): 34·d bytes, without their 5·heads·T attention-score term because SDPA /
  flash attention never stores the scores; with gradient checkpointing 2·d bytes a layer (its
  input) plus one layer's 34·d being recomputed; plus the logits, 4·V bytes a token (fp32 for the loss).
- wall time: FLOPs ÷ (devices × peak bf16 dense FLOP/s × MFU). On CPU the peak is `cpu_flops`,
  by default the fp32 2048² matmul docs/benchmarks.md measured on the 2-core machine (303 GFLOP/s,
  at which `hfstack pretrain` reached 67.5% MFU on an 11.4M-parameter model).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from hfstack.core.config import ConfigError, bounded, check_fields, from_dict, read_yaml
from hfstack.core.layout import RunLayout
from hfstack.core.model import model_dims
from hfstack.core.recipes import recipes_dir
from hfstack.core.rundir import MARKER, read_json
from hfstack.stages import config_class, recipe

# device: (memory in bytes, peak bf16 dense FLOP/s); cpu: the machine's RAM, and `cpu_flops`
DEVICES = {"h100": (80e9, 989e12), "h200": (141e9, 989e12), "a100": (80e9, 312e12), "l4": (24e9, 121e12)}
CPU_FLOPS = 303e9  # docs/benchmarks.md: fp32 2048² matmul on the 2-core CPU machine
CHINCHILLA = 20  # tokens per parameter (Hoffmann et al. 2022)
TRAINING_STAGES = ("pretrain", "sft", "rl", "reward", "rlhf", "dpo")


class Model(NamedTuple):
    """A Llama-shaped transformer's sizes."""

    name: str
    layers: int
    width: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = True
    mlp_matrices: int = 3  # SwiGLU: gate, up, down; a plain (ReLU²) MLP has 2


# Hub bases a preset may start from: sizes from their config.json, the vocabulary as hfstack's SFT grows it
KNOWN_MODELS = {
    "HuggingFaceTB/SmolLM2-135M": Model("SmolLM2-135M", 30, 576, 9, 3, 1536, 49_216),
}


@dataclass
class PlanConfig:
    """Which preset, on what hardware, at what efficiency."""

    preset: str = "tiny"  # a folder of hfstack/recipes: tiny, gpu-small, smollm
    gpus: int = bounded(1, ge=1)  # devices training together (data parallel; FSDP shards over them)
    gpu: Literal["h100", "h200", "a100", "l4", "cpu"] = "h100"  # the device: its memory and peak bf16 FLOP/s
    mfu: float = bounded(0.4, gt=0, le=1)  # model FLOPs utilisation assumed: achieved ÷ peak FLOP/s
    gradient_checkpointing: bool = False  # count activations as recomputed (a layer's input kept) for the verdict
    cpu_flops: float = bounded(CPU_FLOPS, gt=0)  # --gpu cpu: peak FLOP/s (docs/benchmarks.md's measured matmul)
    output: str | None = None  # also write the plan as JSON to this file

    def __post_init__(self):
        check_fields(self, "plan")
        if self.preset in ("accelerate", "data", "tokenizer") or not (recipes_dir() / self.preset).is_dir():
            presets = sorted(p.name for p in recipes_dir().iterdir() if (p / "sft.yaml").is_file())
            raise ConfigError(f"plan: unknown preset '{self.preset}'; choose from: {', '.join(presets)}")


def parameters(m: Model) -> tuple[int, int]:
    """(transformer body: layers and norms, embeddings: the token matrix, twice when untied)."""
    head = m.width // m.heads
    attention = 2 * m.width * m.width + 2 * m.width * m.kv_heads * head
    body = m.layers * (attention + m.mlp_matrices * m.width * m.intermediate + 2 * m.width) + m.width
    return body, m.vocab * m.width * (1 if m.tied else 2)


def flops_per_token(m: Model, seq_len: int) -> int:
    """Training FLOPs per token: 6·N (N: body + output projection) plus attention's 12·L·d·T."""
    body, _ = parameters(m)
    return 6 * (body + m.vocab * m.width) + 12 * m.layers * m.width * seq_len


def memory(m: Model, micro_tokens: int, gpus: int, frozen_copies: int = 0) -> dict:
    """Bytes per device: weights, gradients, AdamW state, frozen copies, activations (plain and checkpointed)."""
    total = sum(parameters(m))
    states = {"weights": 4 * total, "gradients": 4 * total, "adamw": 8 * total, "frozen": 2 * total * frozen_copies}
    logits = 4 * m.vocab * micro_tokens
    full = 34 * m.width * m.layers * micro_tokens + logits
    checkpointed = 2 * m.width * m.layers * micro_tokens + 34 * m.width * micro_tokens + logits
    return {"replicated": states, "fsdp": {k: v / gpus for k, v in states.items()},
            "activations": full, "activations_checkpointed": checkpointed}


def device_memory(gpu: str) -> float:
    if gpu == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DEVICES[gpu][0]


def stage_plan(m: Model, stage: str, tokens: int, seq_len: int, micro_tokens: int, gpus: int, gpu: str, mfu: float,
               extra_flops: float = 0.0, frozen_copies: int = 0, checkpointing: bool = False,
               cpu_flops: float = CPU_FLOPS, note: str = "") -> dict:
    """One stage's row: its FLOPs, memory per device with and without FSDP, the verdict, the time."""
    if gpu != "cpu" and gpu not in DEVICES:
        raise ConfigError(f"plan: unknown gpu '{gpu}'; choose from: {', '.join([*DEVICES, 'cpu'])}")
    body, embeddings = parameters(m)
    train = tokens * flops_per_token(m, seq_len)
    mem = memory(m, micro_tokens, gpus, frozen_copies)
    activations = mem["activations_checkpointed" if checkpointing else "activations"]
    per_device = {"replicated": sum(mem["replicated"].values()) + activations,
                  "fsdp": sum(mem["fsdp"].values()) + activations}
    capacity = device_memory(gpu)
    fits = ("yes" if per_device["replicated"] <= capacity else
            "with FSDP" if per_device["fsdp"] <= capacity else "no")
    peak = cpu_flops if gpu == "cpu" else DEVICES[gpu][1]
    seconds = (train + extra_flops) / (gpus * peak * mfu)
    row = {"stage": stage, "parameters": body, "embedding_parameters": embeddings, "tokens": tokens,
           "seq_len": seq_len, "micro_batch_tokens": micro_tokens, "flops_per_token": flops_per_token(m, seq_len),
           "training_flops": train, "extra_flops": extra_flops, "total_flops": train + extra_flops,
           "memory": mem, "memory_per_device": per_device, "device_memory": capacity, "fits": fits,
           "seconds": seconds, "note": note}
    if stage == "pretrain":
        row["tokens_per_parameter"] = tokens / (body + embeddings)
    return row


def tokenizer_vocab(preset: str) -> int:
    """The vocabulary the preset's tokenizer recipe asks for (its config needs an input, so it is not built)."""
    path = recipes_dir() / preset / "tokenizer.yaml"
    values = read_yaml(path) if path.is_file() else {}
    default = next(f.default for f in dataclasses.fields(config_class("tokenizer")) if f.name == "vocab_size")
    return int(values.get("vocab_size", default))


def preset_model(preset: str) -> tuple[Model, int]:
    """The preset's model and its context length: its own pretraining, or the Hub base its SFT starts from."""
    folder = recipes_dir() / preset
    if (folder / "pretrain.yaml").is_file():
        cfg = recipe("pretrain", preset)
        dims = model_dims(cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size)
        vocab = tokenizer_vocab(preset)
        model = Model(f"depth {cfg.depth}", dims["num_hidden_layers"], dims["hidden_size"],
                      dims["num_attention_heads"], dims["num_key_value_heads"], dims["intermediate_size"], vocab,
                      cfg.tie_embeddings)
        return model, cfg.seq_len
    base = recipe("sft", preset).model_name_or_path if (folder / "sft.yaml").is_file() else None
    if base not in KNOWN_MODELS:
        raise ConfigError(f"plan: preset '{preset}' has no pretrain recipe and starts from '{base}', whose size "
                          f"is unknown; known Hub bases: {', '.join(KNOWN_MODELS)}")
    return KNOWN_MODELS[base], 0


def stage_shapes(stage: str, cfg, gpus: int, pretrain_seq: int, n_flops: int) -> dict:
    """Tokens, sequence length, tokens per device micro-batch, the FLOPs outside training, frozen copies."""
    accumulate = getattr(cfg, "gradient_accumulation_steps", None) or 1
    if stage == "pretrain":  # the stage's own step: accumulation × micro-batch × devices sequences (≈ batch_tokens)
        micro = cfg.per_device_train_batch_size * pretrain_seq
        return {"tokens": cfg.max_steps * cfg.accumulation_steps(gpus) * micro * gpus, "seq_len": pretrain_seq,
                "micro_tokens": micro, "note": "max_steps × accumulation × micro-batch × devices × seq_len"}
    if stage == "sft":
        sequences = cfg.max_steps * cfg.per_device_train_batch_size
        first = getattr(cfg, "first_phase", None)
        first = first if first is not None and getattr(first, "max_steps", 0) else None
        if first:
            sequences += first.max_steps * (first.per_device_train_batch_size or cfg.per_device_train_batch_size)
        return {"tokens": sequences * accumulate * gpus * cfg.max_length, "seq_len": cfg.max_length,
                "micro_tokens": cfg.per_device_train_batch_size * cfg.max_length,
                "note": "upper bound: every sequence max_length long" + (" (first phase included)" if first else "")}
    if stage in ("reward", "dpo"):
        pairs = cfg.max_steps * cfg.per_device_train_batch_size * accumulate * gpus
        reference = stage == "dpo" and getattr(cfg, "algo", "dpo") != "orpo"
        tokens = pairs * 2 * cfg.max_length
        return {"tokens": tokens, "seq_len": cfg.max_length, "extra": 2 * n_flops * tokens if reference else 0,
                "frozen": int(reference), "micro_tokens": cfg.per_device_train_batch_size * 2 * cfg.max_length,
                "note": "pairs × 2 × max_length, upper bound" + ("; + reference forward 2·N" if reference else "")}
    # rl, rlhf: every step generates prompts_per_step × num_generations completions on each device
    sequences = cfg.prompts_per_step * cfg.num_generations
    tokens = cfg.max_steps * sequences * gpus * cfg.max_completion_length
    forwards = 1 + (cfg.beta > 0) + (stage == "rlhf")  # generation, the KL reference, the reward model
    parts = ["generation 2·N"] + ["reference 2·N"] * (cfg.beta > 0) + ["reward model 2·N"] * (stage == "rlhf")
    return {"tokens": tokens, "seq_len": cfg.max_completion_length, "extra": 2 * n_flops * tokens * forwards,
            "frozen": forwards - 1, "micro_tokens": sequences * cfg.max_completion_length,
            "note": "prompts × generations × completion length (prompts not counted); + " + " + ".join(parts)}


def plan_for(preset: str, gpus: int = 1, gpu: str = "h100", mfu: float = 0.4, gradient_checkpointing: bool = False,
             cpu_flops: float = CPU_FLOPS) -> dict:
    """The plan of every training stage the preset has a recipe for, as a dict (the report card's, and JSON's)."""
    cfg = PlanConfig(preset=preset, gpus=gpus, gpu=gpu, mfu=mfu, gradient_checkpointing=gradient_checkpointing,
                     cpu_flops=cpu_flops)
    model, seq_len = preset_model(preset)
    body, embeddings = parameters(model)
    n_flops = body + model.vocab * model.width
    rows = []
    for stage in TRAINING_STAGES:
        if not (recipes_dir() / preset / f"{stage}.yaml").is_file():
            continue
        shape = stage_shapes(stage, recipe(stage, preset), gpus, seq_len, n_flops)
        rows.append(stage_plan(model, stage, shape["tokens"], shape["seq_len"], shape["micro_tokens"], gpus, gpu,
                               mfu, shape.get("extra", 0), shape.get("frozen", 0), gradient_checkpointing,
                               cpu_flops, shape["note"]))
    return {"preset": preset, "gpus": gpus, "gpu": gpu, "mfu": mfu, "gradient_checkpointing": gradient_checkpointing,
            "peak_flops": cfg.cpu_flops if gpu == "cpu" else DEVICES[gpu][1],
            "model": model._asdict() | {"parameters": body, "embedding_parameters": embeddings},
            "stages": rows, "total_seconds": sum(r["seconds"] for r in rows)}


def saved_model(config: dict, name: str) -> Model:
    """A Model from a saved model's config.json (transformers' key names; a KeyError when one is missing)."""
    heads = config["num_attention_heads"]
    return Model(name, config["num_hidden_layers"], config["hidden_size"], heads,
                 config.get("num_key_value_heads") or heads, config["intermediate_size"], config["vocab_size"],
                 bool(config.get("tie_word_embeddings", False)))


def recorded_config(stage: str, folder: Path):
    """The stage's config as the run resolved it (FOLDER/config.yaml); keys this version no longer has are left out."""
    cls = config_class(stage)
    known = {f.name for f in dataclasses.fields(cls)}
    values = read_yaml(folder / "config.yaml")
    return from_dict(cls, {k: v for k, v in values.items() if k in known}, f"{folder / 'config.yaml'}")


def this_device() -> str | None:
    """The planner's name for this machine's device: cpu without CUDA; None for a GPU missing from DEVICES."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    return next((key for key in DEVICES if re.search(rf"\b{key}\b", name)), None)


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def measured(stage: str, folder: Path, step_seconds=None) -> dict:
    """What the stage recorded: devices, steps, tokens, parameters, seconds (and what they time), mean MFU."""
    report = read_json(folder / "summary.json") or read_json(folder / "eval.json") or {}
    steps = _number(report.get("steps"))
    got = {"devices": int(_number(report.get("world_size")) or _number(report.get("processes")) or 1), "steps": steps,
           "tokens": _number(report.get("tokens_seen")), "parameters": _number(report.get("parameters"))}
    if stage == "pretrain" and _number(report.get("seconds")) is not None:
        got |= {"seconds": report["seconds"], "timed": "training loop"}
    elif _number(report.get("seconds_per_step")) and steps:
        got |= {"seconds": report["seconds_per_step"] * steps, "timed": "training steps"}
    elif _number(step_seconds) is not None:
        got |= {"seconds": step_seconds, "timed": "whole step"}
    lines = (folder / "log.jsonl").read_text().splitlines() if (folder / "log.jsonl").is_file() else []
    mfus = []
    for line in lines:
        try:
            mfus.append(float(json.loads(line)["mfu"]))
        except (ValueError, KeyError, TypeError):
            continue
    if mfus:
        got["mfu"] = sum(mfus) / len(mfus)
    return got


def plan_run(run_dir: str | Path, seconds: dict | None = None, gpu: str | None = None, mfu: float = 0.4,
             cpu_flops: float = CPU_FLOPS) -> dict:
    """The plan of a finished run, stage by stage, from what each training stage recorded (its resolved config,
    its saved model's config.json, its devices) beside what it measured; `seconds`: the whole steps' times
    (the speedrun's markers). A stage that did not run is left out; one that cannot be planned says why."""

    layout, seconds = RunLayout(Path(run_dir)), seconds or {}
    gpu = gpu or this_device()
    rows, model = [], None
    for stage in TRAINING_STAGES:
        folder = layout.folder(stage)
        recorded = any((folder / name).is_file() for name in (MARKER, "summary.json", "eval.json", "config.yaml"))
        if not recorded and stage not in seconds:
            continue
        got = measured(stage, folder, seconds.get(stage))
        config = read_json(folder / "config.json")
        try:  # a stage without a saved model of its own: the model before it
            model = saved_model(config, stage) if config else model
        except (KeyError, TypeError):  # a config.json without a transformer's sizes
            model = None
        try:
            if model is None:
                raise ValueError("no saved model's config.json gives the model's sizes")
            if not (folder / "config.yaml").is_file():
                raise ValueError("no recorded config.yaml")
            if gpu is None:
                raise ValueError("the planner has no figures for this machine's GPU")
            cfg = recorded_config(stage, folder)
            checkpointing = bool((getattr(cfg, "training_args", None) or {}).get("gradient_checkpointing"))
            shape = stage_shapes(stage, cfg, got["devices"], getattr(cfg, "seq_len", 0),
                                 parameters(model)[0] + model.vocab * model.width)
            row = stage_plan(model, stage, shape["tokens"], shape["seq_len"], shape["micro_tokens"], got["devices"],
                             gpu, mfu, shape.get("extra", 0), shape.get("frozen", 0), checkpointing, cpu_flops,
                             shape["note"])
        except (ConfigError, AttributeError, TypeError, ValueError) as e:  # an old or edited record: said, not raised
            row = {"stage": stage, "missing": str(e).splitlines()[0] if str(e) else type(e).__name__}
        rows.append(row | {"measured": got})
    return {"gpu": gpu, "mfu": mfu, "peak_flops": cpu_flops if gpu == "cpu" else DEVICES.get(gpu, (0, 0))[1],
            "stages": rows}


def human_count(x: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def human_bytes(x: float) -> str:
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def human_time(s: float) -> str:
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def format_plan(plan: dict) -> str:
    m = plan["model"]
    device = "CPU" if plan["gpu"] == "cpu" else plan["gpu"].upper()
    lines = [f"plan for preset '{plan['preset']}': {m['name']} ({human_count(m['parameters'])} parameters + "
             f"{human_count(m['embedding_parameters'])} in embeddings; width {m['width']}, {m['layers']} layers, "
             f"vocab {m['vocab']}) on {plan['gpus']}× {device} at {plan['mfu']:.0%} MFU "
             f"(peak {plan['peak_flops']:.3g} FLOP/s a device)"]
    header = ("stage", "tokens", "FLOPs", "memory/device", "with FSDP", "fits", "time", "tokens/param")
    table = [header]
    for r in plan["stages"]:
        ratio = r.get("tokens_per_parameter")
        per_device = r["memory_per_device"]
        table.append((r["stage"], human_count(r["tokens"]), f"{r['total_flops']:.3g}",
                      human_bytes(per_device["replicated"]), human_bytes(per_device["fsdp"]), r["fits"],
                      human_time(r["seconds"]),
                      f"{ratio:.1f} (Chinchilla ~{CHINCHILLA})" if ratio is not None else ""))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.append(f"total: {human_time(plan['total_seconds'])}; activations "
                 f"{'with' if plan['gradient_checkpointing'] else 'without'} gradient checkpointing")
    lines += [f"  {r['stage']}: {r['note']}" for r in plan["stages"]]
    return "\n".join(lines)


def run_plan(cfg: PlanConfig) -> dict:
    plan = plan_for(cfg.preset, cfg.gpus, cfg.gpu, cfg.mfu, cfg.gradient_checkpointing, cfg.cpu_flops)
    print(format_plan(plan))
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(plan, indent=2))
        print(f"[plan] wrote {cfg.output}")
    return plan


Config = PlanConfig
run = run_plan
