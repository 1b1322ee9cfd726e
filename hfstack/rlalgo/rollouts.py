"""Rollouts with tools for TRL's GRPOTrainer: its `rollout_func` answers with hfstack's tool loop, so the
policy's Python and search calls run inside the rollout, as `hfstack chat` runs them.

    trainer = GRPOTrainer(..., rollout_func=tool_rollout(max_new_tokens, temperature, rollout_tools(MODEL, True)))

Used by `hfstack rl` (verifiable tasks) and `hfstack rlhf --algo grpo` (against the reward model). Tool output
tokens get `env_mask` 0, so the policy is trained only on what it wrote; the answer without its tool blocks
goes to the reward functions as `reply`.
Tests: python -m pytest -q tests/stages/test_rl.py tests/stages/test_rlhf.py
"""

from __future__ import annotations

from pathlib import Path

from hfstack.tools.loop import assistant_replies, default_tools
from hfstack.tools.search import index_of_model


def rollout_tools(model_dir: str | Path, use_tools: bool) -> dict:
    """The tools a rollout (and pass@1) may call: Python, and search over the model's index when it has one;
    none without `use_tools`."""
    return default_tools(index_of_model(model_dir)) if use_tools else {}


def tool_rollout(max_new_tokens: int, temperature: float, tools: dict):
    """A TRL `rollout_func` that answers with hfstack's tool loop: the tools run inside the rollout,
    and their output tokens get env_mask 0 so they carry no gradient."""

    def rollout(prompts: list[list[dict]], trainer) -> dict:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        replies = assistant_replies(model, trainer.processing_class, prompts, max_new_tokens,
                                    max_tool_calls=2 if tools else 0, temperature=temperature, tools=tools)
        model.train(was_training)
        return {"prompt_ids": [r.prompt_ids for r in replies], "completion_ids": [r.completion_ids for r in replies],
                "logprobs": None, "env_mask": [r.model_mask for r in replies],
                "reply": [r.answer for r in replies],
                "finished": [r.finished for r in replies],
                "tool_errors": [sum(c["output"].startswith(("Traceback", "error")) for c in r.tool_calls)
                                for r in replies]}

    return rollout
