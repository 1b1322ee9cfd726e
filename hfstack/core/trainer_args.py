"""`training_args`: any other field of a trainer's own config (TrainingArguments, SFTConfig, GRPOConfig,
RewardConfig, RLOOConfig), passed through the training stages unchanged on top of hfstack's settings.

    hfstack sft --training_args '{optim: adamw_torch_fused, neftune_noise_alpha: 5}'

Used by hfstack pretrain, sft, rl, reward and rlhf (rloo, grpo).
"""

from __future__ import annotations

import dataclasses

from hfstack.core.config import ConfigError, nearest

HFSTACK_TRAINING_ARGS = ("output_dir",)  # the run layout decides where checkpoints go


def check_training_args(config_cls, extra: dict, stage: str) -> None:
    """`training_args` names fields of the trainer's own config class (TrainingArguments, SFTConfig,
    GRPOConfig, ...): an unknown one is a one-line error naming that class and the nearest field."""
    valid = {f.name for f in dataclasses.fields(config_cls) if f.init}
    for key in extra:
        if key in HFSTACK_TRAINING_ARGS:
            raise ConfigError(f"{stage}: training_args: '{key}' is hfstack's to set (use --output_dir)")
        if key not in valid:
            hint = f"; did you mean '{close}'?" if (close := nearest(key, valid)) else ""
            raise ConfigError(f"{stage}: training_args: unknown key '{key}' for {config_cls.__name__}{hint}")


def trainer_config(config_cls, stage: str, extra: dict, **ours):
    """The trainer's config: hfstack's settings, then the user's `training_args` on top, unchanged."""
    if not extra:
        return config_cls(**ours)
    check_training_args(config_cls, extra, stage)
    try:
        return config_cls(**(ours | extra))
    except (TypeError, ValueError) as e:  # the trainer's own checks, on values the user passed through
        raise ConfigError(f"{stage}: training_args: {config_cls.__name__} refused them: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
