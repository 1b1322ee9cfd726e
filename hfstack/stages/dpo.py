"""DPO stage: learn the rankings straight into the policy, with no reward model and no RL (TRL DPOTrainer).

    hfstack dpo --config recipes/tiny/dpo.yaml [--algo dpo|kto|orpo] [--loss_type ipo] [--beta 0.1 ...]

The short way from `hfstack rank` to an aligned policy, instead of `hfstack reward` then `hfstack rlhf`:
the policy itself is the reward model, its implicit reward being beta times how much more it favours
an answer than the reference (the starting policy, frozen) does. Algorithms, all on the rank stage's
pairs (or a file, a Hub dataset, a `dataset_mixture`):
- dpo: TRL's DPOTrainer; `loss_type` is DPOConfig's (sigmoid, ipo, hinge, robust, ...), the reference
  TRL's own frozen copy of the starting model (`precompute_ref_log_probs` drops it after one pass);
- kto: TRL's KTOTrainer on unpaired rows derived from the pairs (an answer chosen more often than
  rejected is desirable; hfstack.dataprep.preferences.unpaired);
- orpo: TRL's experimental ORPOTrainer: SFT loss plus an odds-ratio term, no reference model.

Held-out pairs (the rank folder's data/test.parquet, `test_preferences`, or the mixture's test split)
are scored by TRL before and after training: the reward margin and accuracy, and the chosen and
rejected log-probs, in `output_dir/eval.json`. The hacking watch (hfstack.rlalgo.watch.DPOWatch)
logs, every `watch_steps`, TRL's margins and log-probs, and the held-out judge's score, length and
distinct-2 of greedy answers to a few held-out prompts, to `output_dir/watch.jsonl`.
Every `curve_steps` the over-optimisation curve (hfstack.rlalgo.overopt) scores sampled answers to held-out
prompts with the judge, the KL to the starting policy and, given `reward_model_path`, a reward model, into
`output_dir/curve.jsonl`; `on_hack: rollback` ends the run at the first alarm and saves the best-judged point.
Tests: python -m pytest -q tests/stages/test_dpo.py
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from hfstack.core.checkpoint import save_tokenizer, set_turn_end
from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.launch import process_state
from hfstack.core.model import load_reward_model
from hfstack.core.pretrained import resolve_model
from hfstack.core.rundir import carry_run_files, newest_checkpoint, start_output
from hfstack.core.training import (
    TrainConfig,
    common_trainer_args,
    evaluate_before_training,
    finish_training,
    save_trained_model,
    trainer_config,
)
from hfstack.dataprep.dataset_mixture import DatasetMixture
from hfstack.dataprep.preferences import preference_pairs, unpaired
from hfstack.rlalgo.attacks import Scorer
from hfstack.rlalgo.overopt import Curve, CurveCallback, finish_curve, frozen_copy
from hfstack.rlalgo.watch import DPOWatch, StepWatchCallback, read_watch, sample_metrics
from hfstack.tasks.judges import load_judge

ALGORITHMS = ("dpo", "kto", "orpo")
TRAINER_CONFIGS = {"dpo": "trl.DPOConfig", "kto": "trl.KTOConfig", "orpo": "trl.experimental.orpo.ORPOConfig"}
HELD_OUT = ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected", "loss")  # TRL's names


@dataclass
class DPOStageConfig(TrainConfig):
    """Starting policy, preference data, algorithm and the hacking watch."""

    model_name_or_path: str = model_folder("runs/tiny/rl")  # the starting policy (SFT or RL), also the reference
    dataset_name: str | None = "runs/tiny/prefs"  # the rank stage's directory, a parquet/jsonl file, or a Hub dataset
    test_preferences: str | None = None  # held-out pairs; default: <dataset_name>/data/test.parquet when it exists
    # pairs from several datasets by weight (hfstack.dataprep.dataset_mixture), added to dataset_name's; its
    # test_split_size holds some out for the held-out figures
    dataset_mixture: DatasetMixture | None = None  # Hub ids and local files in TRL's preference format
    dataset_rows: int | None = bounded(None, ge=1)  # pairs drawn from dataset_mixture (absent: until one runs out)
    output_dir: str = "runs/tiny/dpo"  # the tuned policy, eval.json, watch.jsonl and checkpoints/
    algo: str = "dpo"  # dpo (TRL DPOTrainer) | kto (KTOTrainer, the pairs unpaired) | orpo (no reference model)
    # dpo: DPOConfig.loss_type, one or several (sigmoid, ipo, hinge, robust, ...; weights via training_args
    # loss_weights); kto: kto | apo_zero_unpaired; orpo has its own loss
    loss_type: list[str] | None = None  # the loss; None: TRL's default (dpo: sigmoid, kto: kto)
    beta: float = bounded(0.1, gt=0)  # dpo/kto: how far from the reference the policy may go (higher: less); orpo: λ
    precompute_ref_log_probs: bool = False  # dpo/kto: score the pairs with the reference once, then free it
    max_steps: int = bounded(100, ge=1)  # optimizer steps to train for
    learning_rate: float = bounded(5e-5, gt=0)  # peak learning rate (after warmup)
    warmup_steps: int = bounded(5, ge=0)  # steps of linear warmup from 0 to learning_rate
    per_device_train_batch_size: int = bounded(8, ge=1)  # pairs per device per step (kto: unpaired rows, >= 2)
    max_length: int = bounded(192, ge=2)  # tokens of prompt and answer; longer ones are cut (kept from the start)
    logging_steps: int = bounded(10, ge=1)  # log loss and metrics every this many steps
    save_steps: int = bounded(100, ge=1)  # checkpoint interval; a rerun continues from the newest checkpoint
    save_total_limit: int = bounded(1, ge=1)  # checkpoints kept
    # --- the watch
    judge: str = "hfstack.tasks.judges:reference_judge"  # held-out judge: judge(prompt, [answers]) -> scores
    watch_steps: int = bounded(10, ge=1)  # the watch looks (and may stop the run) every this many steps
    watch_prompts: int = bounded(4, ge=1)  # held-out prompts answered greedily at each look
    max_completion_length: int = bounded(32, ge=1)  # tokens per greedy answer the watch samples
    margin_rise: float = bounded(2.0, ge=0)  # reward margin up by at least this much over the first look ...
    judge_drop: float = bounded(0.1, ge=0)  # ... while the judge's score went down by at least this much
    distinct_floor: float = bounded(0.5, ge=0, le=1)  # or distinct bigrams fell below this share of their first value
    on_hack: str = "warn"  # warn | stop | rollback (stop, then save the curve's best-judged checkpoint)
    # --- the over-optimisation curve: judge, KL (and a reward model's score) of sampled answers every curve_steps
    curve_steps: int = bounded(10, ge=0, why="0: no curve (and no rollback)")  # steps between points
    curve_prompts: int = bounded(8, ge=1)  # held-out prompts each point samples answers to
    curve_samples: int = bounded(2, ge=1)  # answers per prompt per point
    reward_model_path: str | None = None  # a reward model to score the curve with too (DPO trains without one)

    def __post_init__(self):
        check_fields(self, "dpo")
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"dpo: unknown algo '{self.algo}'; choose from {', '.join(ALGORITHMS)}")
        if self.on_hack not in ("warn", "stop", "rollback"):
            raise ConfigError(f"dpo: on_hack must be 'warn', 'stop' or 'rollback', got '{self.on_hack}'")
        if self.on_hack == "rollback" and not self.curve_steps:
            raise ConfigError("dpo: on_hack 'rollback' goes back along the over-optimisation curve; set curve_steps")
        if not (self.dataset_name or self.dataset_mixture):
            raise ConfigError("dpo: no preference pairs: set dataset_name (a rank folder, file or Hub dataset) "
                              "and/or dataset_mixture")
        if isinstance(self.loss_type, str):  # from Python, as TRL takes it
            self.loss_type = [self.loss_type]
        if self.loss_type is not None:
            check_loss_type(self.algo, self.loss_type)
        if self.algo == "orpo" and self.precompute_ref_log_probs:
            raise ConfigError("dpo: algo orpo has no reference model; precompute_ref_log_probs is for dpo and kto")
        if self.algo == "kto" and self.per_device_train_batch_size < 2:
            raise ConfigError("dpo: algo kto estimates its KL term within a batch: per_device_train_batch_size "
                              f"must be >= 2, got {self.per_device_train_batch_size}")
        if self.algo == "orpo" and self.training_args:
            orpo_classes()  # imported once here, its experimental notice silenced, before check_training imports it
        self.check_training("dpo", TRAINER_CONFIGS[self.algo])


def orpo_classes():
    """TRL's ORPOConfig and ORPOTrainer (trl.experimental), without the notice on every import."""
    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return ORPOConfig, ORPOTrainer


def allowed_losses(algo: str) -> list[str]:
    """The loss types TRL's config accepts for `algo`: KTOConfig's declared choices; for DPO, the names
    its loss_type help lists (DPOConfig declares no choices; its trainer rejects others at the first step)."""
    import dataclasses

    from trl import DPOConfig, KTOConfig

    meta = {f.name: f.metadata for f in dataclasses.fields(KTOConfig if algo == "kto" else DPOConfig)}["loss_type"]
    return list(meta.get("choices") or re.findall(r"`'(\w+)'`", meta.get("help", "")))


def check_loss_type(algo: str, loss_type: list[str]) -> None:
    if algo == "orpo":
        raise ConfigError("dpo: algo orpo has its own loss (SFT plus the log odds ratio); loss_type is for dpo, kto")
    if algo == "kto" and len(loss_type) != 1:
        raise ConfigError(f"dpo: algo kto takes one loss_type, got {loss_type}")
    allowed = allowed_losses(algo)
    unknown = [name for name in loss_type if name not in allowed]
    if allowed and unknown:
        raise ConfigError(f"dpo: unknown loss_type {unknown[0]!r} for algo {algo}; TRL's are: {', '.join(allowed)}")


# ----------------------------------------------------------------------------- the stage


def make_trainer(cfg: DPOStageConfig, policy, tokenizer, train_rows: list[dict], test_rows: list[dict], out: Path):
    """TRL's trainer for `cfg.algo`, its reference (dpo, kto) TRL's frozen copy of the starting model."""
    from datasets import Dataset

    ours = common_trainer_args(cfg, out) | dict(
        warmup_steps=cfg.warmup_steps, lr_scheduler_type="cosine",
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size, max_length=cfg.max_length, beta=cfg.beta,
        eval_strategy="no", dataset_num_proc=None)
    if cfg.algo == "dpo":
        from trl import DPOConfig as config_cls
        from trl import DPOTrainer as trainer_cls
    elif cfg.algo == "kto":
        from trl import KTOConfig as config_cls
        from trl import KTOTrainer as trainer_cls

        train_rows, test_rows = unpaired(train_rows, cfg.seed), unpaired(test_rows, cfg.seed)
    else:
        config_cls, trainer_cls = orpo_classes()
    if cfg.algo != "orpo":
        ours["precompute_ref_log_probs"] = cfg.precompute_ref_log_probs
        if cfg.loss_type is not None:
            ours["loss_type"] = cfg.loss_type if cfg.algo == "dpo" else cfg.loss_type[0]
    args = trainer_config(config_cls, "dpo", cfg.training_args, **ours)
    test = Dataset.from_list(test_rows) if test_rows else None
    try:
        return trainer_cls(model=policy, args=args, train_dataset=Dataset.from_list(train_rows), eval_dataset=test,
                           processing_class=tokenizer)
    except ValueError as e:  # TRL's own checks of a combination (exo_pair without label_smoothing, ...)
        raise ConfigError(f"dpo: {trainer_cls.__name__} refused the settings: {str(e).strip().splitlines()[0]}"
                          ) from None


def held_out(trainer, before_training: bool = False) -> dict:
    """TRL's figures on the held-out pairs (the trainer's eval set), under TRL's names, and the mean
    log-prob margin of the chosen answers over the rejected ones (the policy's own preference)."""
    metrics = evaluate_before_training(trainer) if before_training else trainer.evaluate()
    figures = {name: round(float(metrics[f"eval_{name}"]), 5) if f"eval_{name}" in metrics else None
               for name in HELD_OUT}
    chosen, rejected = figures["logps/chosen"], figures["logps/rejected"]
    figures["logps/margins"] = None if chosen is None or rejected is None else round(chosen - rejected, 5)
    return figures


def watch_prompts(rows: list[dict], count: int) -> list[list[dict]]:
    """The first `count` distinct prompts of `rows`, as messages (a plain-text prompt as a user turn)."""
    prompts, seen = [], set()
    for row in rows:
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        key = repr(prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
        if len(prompts) == count:
            break
    return prompts


def dpo_curve(cfg: DPOStageConfig, out: Path, reference, tokenizer, rows: list[dict], judge,
              reward_folder: str | None, main: bool, resuming: bool):
    """The over-optimisation curve from the starting policy (`reference`, a frozen copy: the KL's reference)."""
    if reference is None:
        return None
    rm_score = None
    if reward_folder:
        reward_model, reward_tokenizer = load_reward_model(reward_folder, cfg.load_dtype())
        rm_score = Scorer(reward_model.to(reference.device), reward_tokenizer, max_length=cfg.max_length).rm

    return Curve(out / "curve", reference, tokenizer, watch_prompts(rows, cfg.curve_prompts), judge, rm_score,
                 samples=cfg.curve_samples, max_new_tokens=cfg.max_completion_length, seed=cfg.seed, record=main,
                 resuming=resuming)


def run_dpo(cfg: DPOStageConfig) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "dpo", "policy")
    train_rows, test_rows = preference_pairs("dpo", cfg.dataset_name, cfg.test_preferences, cfg.dataset_mixture,
                                             cfg.dataset_rows)
    judge = load_judge(cfg.judge)
    reward_folder = cfg.reward_model_path and resolve_model(cfg.reward_model_path, None, "dpo", "reward model")
    out, main = start_output("dpo", cfg)  # after the inputs are checked: a bad one writes nothing
    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=cfg.load_dtype())
    reference = frozen_copy(policy) if cfg.curve_steps else None  # before the trainer wraps the policy
    trainer = make_trainer(cfg, policy, tokenizer, train_rows, test_rows, out)
    before = held_out(trainer, before_training=True) if trainer.eval_dataset is not None else None
    resume = newest_checkpoint(out / "checkpoints")
    watch = DPOWatch(cfg, out / "watch.jsonl", record=main, resuming=bool(resume))
    prompts = watch_prompts(test_rows or train_rows, cfg.watch_prompts)
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainer.add_callback(StepWatchCallback(watch, cfg.watch_steps, lambda: sample_metrics(
        model, tokenizer, prompts, judge, cfg.max_completion_length)))
    curve = dpo_curve(cfg, out, reference, tokenizer, test_rows or train_rows, judge, reward_folder, main,
                      bool(resume))
    if curve is not None:
        trainer.add_callback(CurveCallback(curve, cfg.curve_steps, trainer))
    trainer.train(resume_from_checkpoint=resume)
    after = held_out(trainer) if trainer.eval_dataset is not None else None
    curve_summary = finish_curve(curve, watch, "dpo", model) if curve is not None and main else None
    set_turn_end(model, tokenizer)
    save_trained_model(trainer, out, main)
    if not main:
        return out
    save_tokenizer(tokenizer, out)
    carry_run_files(Path(folder), out)
    rows = read_watch(out / "watch.jsonl")
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    report = {"algo": cfg.algo, "loss_type": cfg.loss_type, "beta": cfg.beta,
              "processes": process_state().num_processes, "train_pairs": len(train_rows),
              "test_pairs": len(test_rows), "steps": trainer.state.global_step,
              "held_out": {"before": before, "after": after}, "first_loss": losses[:1], "last_loss": losses[-1:],
              "watch": {"steps_logged": len(rows), "first": rows[0] if rows else None,
                        "last": rows[-1] if rows else None, "alarms": watch.alarms}, "curve": curve_summary}
    finish_training(cfg, out, "dpo", report, steps=trainer.state.global_step)
    return out


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = DPOStageConfig
run = run_dpo
