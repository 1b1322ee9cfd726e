"""What the five training stages (pretrain, sft, rl, reward, rlhf) share: the `TrainConfig` fields,
named as transformers' TrainingArguments and TRL's configs name them; the Trainer arguments built from
them; and `training_args`, any other field of the trainer's own config passed through unchanged.

    hfstack sft --per_device_train_batch_size 4 --logging_steps 5 --bf16 true \
                --training_args '{optim: adamw_torch_fused, neftune_noise_alpha: 5}'

Tests: python -m pytest -q tests/unit/test_config_names.py
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hfstack.core.config import ConfigError, bounded, nearest
from hfstack.core.hub import push_model_folder
from hfstack.core.launch import distributed_type, num_machines, print0, process_state, wants_fsdp
from hfstack.core.renames import precision_to_bf16, renamed
from hfstack.core.rundir import finish_output
from hfstack.core.telemetry import available_trackers

# settings hfstack makes itself: where checkpoints go (the run layout), and pushes, which go through the
# allowlist (hfstack/core/hub.py), never the Trainer's upload of the whole output folder
HFSTACK_TRAINING_ARGS = ("output_dir", "push_to_hub", "hub_model_id", "hub_private_repo", "hub_strategy",
                         "hub_token", "hub_always_push")
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@renamed(log_every="logging_steps", save_every="save_steps", precision=("bf16", precision_to_bf16))
@dataclass
class TrainConfig:
    """The fields every training stage has; a stage redeclares one to change its default."""

    output_dir: str = "runs/model"  # the trained model's folder; checkpoints go in its checkpoints/
    model_revision: str | None = None  # the branch, tag or commit of a Hub id the stage starts from (None: main)
    # float32: full-precision master weights under bf16 autocast; auto: as stored, so a 16-bit Hub model
    # trains in pure 16-bit, where an update under 1/256 of a weight rounds away (RL's, mostly)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"  # the dtype the model's weights load in
    overwrite: bool = False  # start afresh in an output_dir a different run made (removes only hfstack's files)
    max_steps: int = bounded(100, ge=1)  # optimizer steps to train for
    learning_rate: float = bounded(1e-3, gt=0)  # peak learning rate (after any warmup)
    seed: int = 0  # seeds initialisation, data order and sampling: same seed, same run
    bf16: bool | None = None  # None: bf16 on GPUs that have it, fp32 on CPU (where bf16 is slower)
    logging_steps: int = bounded(10, ge=1)  # log loss and metrics every this many steps
    save_steps: int = bounded(100, ge=1)  # checkpoint interval; a rerun continues from the newest checkpoint
    save_total_limit: int = bounded(2, ge=1)  # checkpoints kept
    report_to: list[str] = field(default_factory=list)  # e.g. [wandb, tensorboard]; the local logs are always kept
    run_name: str | None = None  # the run's name in those trackers
    push_to_hub: bool = False  # at the end, push the model to hub_model_id (allowlisted files only)
    hub_model_id: str | None = None  # USER/NAME of the model repository push_to_hub creates or updates
    hub_private_repo: bool = True  # a repository push_to_hub creates is private
    progress: bool = True  # progress bars
    training_args: dict = field(default_factory=dict)  # other fields of the trainer config, e.g. {optim: adamw_torch}

    def load_dtype(self):
        """`dtype` as from_pretrained takes it."""
        import torch

        return "auto" if self.dtype == "auto" else getattr(torch, self.dtype)

    def check_training(self, stage: str, trainer_config_class: str | None = None) -> None:
        """The checks every training stage makes in its `__post_init__` (after `check_fields`);
        `trainer_config_class` is the import path of the trainer's config, e.g. "trl.SFTConfig"."""
        if self.push_to_hub and not (self.hub_model_id and REPO_ID.match(self.hub_model_id)):
            raise ConfigError(f"{stage}: push_to_hub needs 'hub_model_id' as USER/NAME; got {self.hub_model_id!r}")
        if self.training_args and trainer_config_class:  # before any work; imported only when there is some
            module, _, name = trainer_config_class.rpartition(".")
            check_training_args(getattr(importlib.import_module(module), name), self.training_args, stage)


def wants_bf16(bf16: bool | None) -> bool:
    """bf16 when asked for, or when unset and a GPU that has it is present (on CPU it is slower)."""
    import torch

    if bf16 is not None:
        return bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def common_trainer_args(cfg: TrainConfig, out: str | Path) -> dict:
    """The Trainer arguments every training stage sets the same way from its TrainConfig fields."""
    import torch

    return dict(output_dir=str(Path(out) / "checkpoints"), max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
                bf16=wants_bf16(cfg.bf16), use_cpu=not torch.cuda.is_available(), seed=cfg.seed,
                logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
                report_to=available_trackers(cfg.report_to), run_name=cfg.run_name, disable_tqdm=not cfg.progress,
                activation_checkpointing=False) | sharding_on_cpu_args()


def sharding_on_cpu_args() -> dict:
    """FSDP launched on a machine without GPUs: the trainer keeps the launched processes' state (which
    hfstack.core.launch.process_state declared shardable) instead of resetting it to plain CPU ranks."""
    import torch

    if torch.cuda.is_available() or not wants_fsdp():
        return {}
    process_state()
    return {"accelerator_config": {"use_configured_state": True}}


def finish_training(cfg: TrainConfig, out: Path, stage: str, report: dict, report_name: str = "eval.json",
                    main: bool = True, **info) -> None:
    """A training stage's last steps, in order: the main process writes and prints its report (with the
    world size and distributed type added), the folder is recorded as finished (hfstack.core.rundir),
    then the model is pushed when asked."""
    state = process_state()  # how the run was spread: recorded with its figures
    report = report | {"world_size": state.num_processes, "num_machines": num_machines(state.num_processes),
                       "distributed_type": distributed_type()}
    if main:
        (out / report_name).write_text(json.dumps(report, indent=2) + "\n")
        print0(f"[{stage}] done: {json.dumps(report)}")
    finish_output(out, stage, main, **info)
    push_trained(cfg, out, stage, main)


def evaluate_before_training(trainer) -> dict:
    """`trainer.evaluate()` on the starting model, leaving the model as `train()` needs it on N processes.

    Upstream cause (transformers 5.24 Trainer with accelerate 1.15): `evaluate()` before `train()`, with no
    model yet registered with the accelerator, runs `accelerator.prepare_model(model, evaluation_mode=True)`,
    which leaves the bare model marked `_is_accelerate_prepared`; `train()`'s `accelerator.prepare(model,
    optimizer)` then returns it as it is, never wrapped in DistributedDataParallel. Each rank then stepped on
    its own half-batch's gradient (no all-reduce), the ranks drifted apart and rank 0 saved its own weights:
    the reward model ended 3.3e-3 away from 1 process after 4 steps (tests/e2e/test_multiprocess.py). A
    trainer with a reference model prepared first (DPO) escapes it; one without (ORPO) would not. So the
    evaluation-only preparation is undone here (an autocast wrapper on forward too, as unwrap_model does)."""
    from accelerate.utils import extract_model_from_parallel

    metrics = trainer.evaluate()
    model, accelerator = trainer.model, trainer.accelerator
    if trainer.model_wrapped is model and getattr(model, "_is_accelerate_prepared", False):
        extract_model_from_parallel(model, keep_fp32_wrapper=False)
        del model._is_accelerate_prepared
        accelerator._models = [m for m in accelerator._models if m is not model]
    return metrics


def save_trained_model(trainer, folder: str | Path, main: bool, model=None) -> None:
    """The trained model as a plain `from_pretrained` folder. Every rank calls this: under FSDP each
    holds a slice of every weight, so the full state dict is gathered (a collective) and the main
    process writes it; the checkpoints stay sharded, which is what resuming reads. `model` is the
    model to write when it is not the trainer's own (a merged LoRA)."""
    if getattr(trainer, "is_deepspeed_enabled", False):  # ZeRO-3 gathers its partitions (zero3_save_16bit_model)
        trainer.save_model(str(folder))
        return
    model = model or trainer.accelerator.unwrap_model(trainer.model)
    if not getattr(trainer, "is_fsdp_enabled", False):
        if main:
            model.save_pretrained(folder)
        return
    trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if main:  # gathered copies no longer share storage: a tied weight is dropped as save_pretrained would
        tied = getattr(model, "all_tied_weights_keys", None) or {}
        model.save_pretrained(folder, state_dict={k: v for k, v in state_dict.items() if k not in tied})


def sharding_report(trainer) -> dict:
    """Under FSDP, how the weights were spread: the parameter values each rank held (its slices) and
    the model's total. Every rank calls this (a collective); empty when the weights were not sharded."""
    import torch.distributed as dist

    if not getattr(trainer, "is_fsdp_enabled", False):
        return {}
    parameters = list(trainer.model.parameters())
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in parameters)
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, local)
    return {"fsdp": {"version": trainer.accelerator.state.fsdp_plugin.fsdp_version,
                     "parameters": sum(p.numel() for p in parameters), "parameters_per_rank": per_rank}}


def push_trained(cfg: TrainConfig, folder: str | Path, stage: str, main: bool = True) -> str | None:
    """A training stage's last step: with `push_to_hub`, its model folder goes to `hub_model_id` through
    the same allowlist as `hfstack push` (weights, config, tokenizer, a model card; never checkpoints,
    pickles, logs or held-out sets). The main process pushes, once. The card names the starting model
    as `base_model` when that is a Hub repository."""
    if not (cfg.push_to_hub and main):
        return None
    start = getattr(cfg, "model_name_or_path", None) or getattr(cfg, "init_from", None)
    base_model = start if start and REPO_ID.match(start) and not Path(start).expanduser().exists() else None
    return push_model_folder(Path(folder), cfg.hub_model_id, private=cfg.hub_private_repo, base_model=base_model,
                             who=stage)


def check_training_args(config_cls, extra: dict, stage: str) -> None:
    """`training_args` names fields of the trainer's own config class (TrainingArguments, SFTConfig,
    GRPOConfig, ...): an unknown one is a one-line error naming that class and the nearest field."""
    valid = {f.name for f in dataclasses.fields(config_cls) if f.init}
    for key in extra:
        if key in HFSTACK_TRAINING_ARGS:
            raise ConfigError(f"{stage}: training_args: '{key}' is hfstack's to set (use --{key} where the stage "
                              "has it: pushes go through hfstack's allowlist)")
        if key not in valid:
            hint = f"; did you mean '{close}'?" if (close := nearest(key, valid)) else ""
            raise ConfigError(f"{stage}: training_args: unknown key '{key}' for {config_cls.__name__}{hint}")


def score_labelled_positions_on_cpu() -> bool:
    """Every TRL trainer's loss goes through TRL's fused LM head. On Triton devices it projects only
    the positions that carry a label; elsewhere it projects every position, so that compilers for
    other accelerators see fixed tile shapes. On a CPU nothing compiles that head, and most positions
    are the system message, the prompt or padding: hfstack has it score the labelled positions there
    too. Same loss and gradients (tests/unit/test_training_head.py); an SFT step on the tiny preset
    takes half the time (benchmarks/sft_step.py). Returns whether the switch is in place (False on a
    TRL without that hook: the slower, equal path stays)."""
    try:
        import trl.trainer.utils as trl_utils
        from trl.kernels import chunked_logprob
    except ImportError:
        return False
    if not hasattr(trl_utils, "_use_triton") or not hasattr(chunked_logprob, "_use_triton"):
        return False
    on_triton = chunked_logprob._use_triton  # the kernel keeps its own choice: torch ops on a CPU
    trl_utils._use_triton = lambda device: on_triton(device) or device.type == "cpu"
    return True


def trainer_config(config_cls, stage: str, extra: dict, **ours):
    """The trainer's config: hfstack's settings, then the user's `training_args` on top, unchanged."""
    if config_cls.__module__.startswith("trl.") and not (extra or {}).get("torch_compile"):
        score_labelled_positions_on_cpu()  # compiled: fixed shapes, TRL's own choice
    if not extra:
        return config_cls(**ours)
    check_training_args(config_cls, extra, stage)
    try:
        return config_cls(**(ours | extra))
    except (TypeError, ValueError) as e:  # the trainer's own checks, on values the user passed through
        raise ConfigError(f"{stage}: training_args: {config_cls.__name__} refused them: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
