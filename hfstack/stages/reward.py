"""Reward stage: train a reward model that simulates the person who ranked (TRL RewardTrainer).

    hfstack reward --config recipes/tiny/reward.yaml [--max_steps 300 ...]

Step 2 of RLHF in the notes. The reward model is the policy's own network with a one-number head
(`AutoModelForSequenceClassification`, `num_labels=1`) and the same tokenizer and chat template; it
learns from the ranking stage's pairs (Bradley-Terry loss: the chosen answer should score higher
than the rejected one). Its held-out pairwise accuracy (pairs from prompts it never trained on)
is measured before and after training and written to `output_dir/eval.json`.

It ends with a red-team of the model it trained (`attack: true`, as `hfstack rm-attack` does): answers it
over-scores relative to the held-out judge, in `output_dir/attacks.jsonl`, which `hfstack rlhf`'s watch
reads back as probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hfstack.core.adopt import turn_end_token
from hfstack.core.checkpoint import save_tokenizer
from hfstack.core.config import bounded, check_fields, model_folder
from hfstack.core.model import load_reward_model
from hfstack.core.pretrained import resolve_model
from hfstack.core.renames import renamed
from hfstack.core.rundir import newest_checkpoint, start_output
from hfstack.core.training import (
    TrainConfig,
    common_trainer_args,
    evaluate_before_training,
    finish_training,
    save_trained_model,
    trainer_config,
)
from hfstack.dataprep.dataset_mixture import DatasetMixture
from hfstack.dataprep.preferences import preference_pairs
from hfstack.rlalgo.attacks import AttackSettings, print_attacks, red_team, write_attacks


@renamed(model="model_name_or_path", micro_batch_size="per_device_train_batch_size", preferences="dataset_name")
@dataclass
class RewardStageConfig(TrainConfig):
    """Starting network, preference data and training settings."""

    model_name_or_path: str = model_folder("runs/tiny/rl")  # the network (and tokenizer) the reward model starts from
    dataset_name: str | None = "runs/tiny/prefs"  # the rank stage's directory, a parquet/jsonl file, or a Hub dataset
    test_preferences: str | None = None  # default: <dataset_name>/data/test.parquet when it exists
    # pairs from several datasets by weight (hfstack.dataprep.dataset_mixture), added to dataset_name's; its
    # test_split_size holds some out for the held-out accuracy
    dataset_mixture: DatasetMixture | None = None  # Hub ids and local files in TRL's preference format
    dataset_rows: int | None = bounded(None, ge=1)  # pairs drawn from dataset_mixture (absent: until one runs out)
    output_dir: str = "runs/tiny/rm"  # the reward model, eval.json and checkpoints/
    max_steps: int = bounded(200, ge=1)  # optimizer steps to train for
    learning_rate: float = bounded(1e-3, gt=0)  # peak learning rate (after warmup)
    warmup_steps: int = bounded(10, ge=0)  # steps of linear warmup from 0 to learning_rate
    per_device_train_batch_size: int = bounded(16, ge=1)  # preference pairs per device per forward pass
    max_length: int = bounded(192, ge=2)  # tokens per conversation; a pair with a longer side is left out
    center_rewards_coefficient: float | None = bounded(0.01, ge=0)  # keeps scores near 0, so RL sees a stable scale
    logging_steps: int = bounded(20, ge=1)  # log loss and metrics every this many steps
    save_steps: int = bounded(200, ge=1)  # checkpoint interval; a rerun continues from the newest checkpoint
    # --- the red-team at the end (hfstack rm-attack): needs held-out pairs
    attack: bool = True  # search for answers the trained model over-scores; writes attacks.jsonl
    judge: str = "hfstack.tasks.judges:reference_judge"  # the held-out judge the attacks are measured against

    def __post_init__(self):
        check_fields(self, "reward")
        self.check_training("reward", "trl.RewardConfig")


def run_reward(cfg: RewardStageConfig, callbacks: list | None = None) -> Path:
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "reward", "starting model")
    # the rank folder's pairs and held-out split, or a file, or the Hub, plus a mixture's draw: in one shape
    train_rows, test_rows = preference_pairs("reward", cfg.dataset_name, cfg.test_preferences, cfg.dataset_mixture,
                                             cfg.dataset_rows)
    out, main = start_output("reward", cfg)  # after the inputs are checked: a bad one writes nothing
    set_seed(cfg.seed)
    model, tokenizer = load_reward_model(folder, cfg.load_dtype())
    args = trainer_config(RewardConfig, "reward", cfg.training_args, **common_trainer_args(cfg, out),
        warmup_steps=cfg.warmup_steps, lr_scheduler_type="cosine",
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size, max_length=cfg.max_length,
        eos_token=turn_end_token(tokenizer),
        center_rewards_coefficient=cfg.center_rewards_coefficient,  # padding: the tokenizer's own
        eval_strategy="no", dataset_num_proc=None)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                            eval_dataset=Dataset.from_list(test_rows) if test_rows else None,
                            processing_class=tokenizer, callbacks=callbacks or [])
    before = evaluate_before_training(trainer)["eval_accuracy"] if test_rows else None
    trainer.train(resume_from_checkpoint=newest_checkpoint(out / "checkpoints"))
    after = trainer.evaluate()["eval_accuracy"] if test_rows else None
    trainer.model.config.pad_token_id = tokenizer.pad_token_id
    save_trained_model(trainer, out, main)
    if not main:
        return out
    save_tokenizer(tokenizer, out)
    found = None
    if cfg.attack and test_rows:
        rows, baseline = red_team(trainer.model, tokenizer, test_rows,
                                  AttackSettings(judge=cfg.judge, max_length=cfg.max_length, seed=cfg.seed))
        write_attacks(rows, baseline, out / "attacks.jsonl")
        print_attacks(rows, baseline, "reward")
        found = [r["attack"] for r in rows if r["found"]]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    report = {"held_out_accuracy_before": before, "held_out_accuracy_after": after, "train_pairs": len(train_rows),
              "test_pairs": len(test_rows), "steps": trainer.state.global_step, "first_loss": losses[:1],
              "last_loss": losses[-1:], "attacks_found": found}
    finish_training(cfg, out, "reward", report, steps=trainer.state.global_step)
    return out


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = RewardStageConfig
run = run_reward
