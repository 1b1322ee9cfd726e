"""The over-optimisation curve: how far the policy has moved from where it started, against what the reward
model and the held-out judge make of it (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization").

    hfstack rlhf --config recipes/tiny/rlhf-hack.yaml --on_hack rollback    # also hfstack dpo

Every `curve_steps` during `hfstack rlhf` or `hfstack dpo` (and once before the first step), `Curve.measure`
samples answers to a fixed set of held-out prompts (the same random stream each time, so points differ by
the policy alone) and records, in `output_dir/curve.jsonl`:
- the reward model's mean score on them (none for DPO without a reward model);
- the held-out judge's mean score;
- KL(policy ‖ reference) per answer, estimated from the samples as the mean of log π(y) − log π_ref(y)
  summed over the answer's tokens, and its square root, the curve's x-axis.

A light checkpoint (the weights and config, no optimizer state) of the point with the best judge score so far
is kept in `output_dir/curve/best`. With `on_hack: rollback`, the first alarm of the reward-hacking watch ends
the run and the stage saves that checkpoint as its model, and says so. The report card plots the curve and
marks the judge's peak and where training stopped.

Tests: python -m pytest -q tests/stages/test_overopt.py
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from transformers import TrainerCallback

from hfstack.core.launch import print0
from hfstack.rlalgo.ppo import token_logprobs
from hfstack.tools.loop import assistant_replies


class Curve:
    """Measures the policy at intervals; keeps the best-judged weights; rolls back to them when asked."""

    def __init__(self, folder: Path, reference, tokenizer, prompts: list[list[dict]], judge, rm_score=None,
                 samples: int = 2, max_new_tokens: int = 32, seed: int = 0, record: bool = True,
                 resuming: bool = False):
        self.folder, self.reference, self.tokenizer = Path(folder), reference, tokenizer
        self.prompts, self.judge, self.rm_score = prompts, judge, rm_score
        self.samples, self.max_new_tokens, self.seed, self.record = samples, max_new_tokens, seed, record
        self.path, self.best_dir = self.folder.parent / "curve.jsonl", self.folder / "best"
        self.rows: list[dict] = []
        self.best: dict | None = None
        self.earlier = read_curve(self.folder.parent) if resuming else []  # kept up to the step it resumes at
        if record and not self.earlier:  # a fresh run measures afresh: this run's curve only
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            self.path.write_text("")

    def measure(self, step: int, policy) -> dict:
        """One point of the curve for `policy` at `step`; saves its weights when its judge score is the best."""
        import torch

        if self.earlier:  # a resumed run: the points before its checkpoint stay, and their best if it is saved
            self.rows = [r for r in self.earlier if r["step"] < step]
            saved = self.best_dir / "point.json"
            best = json.loads(saved.read_text()) if saved.is_file() else None
            self.best = best if best and best["step"] < step else None
            if self.record:
                self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
            self.earlier = []
        conversations = [p for p in self.prompts for _ in range(self.samples)]
        training = policy.training
        policy.eval()
        with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
            torch.manual_seed(self.seed)  # common random numbers: every point samples from the same stream
            replies = assistant_replies(policy, self.tokenizer, conversations, self.max_new_tokens, max_tool_calls=0,
                                        temperature=1.0)
        kl = [a - b for a, b in zip(answer_logprobs(policy, replies), answer_logprobs(self.reference, replies))]
        policy.train(training)
        answers = [r.answer for r in replies]
        judged = [self.judge(c[-1]["content"], [a])[0] for c, a in zip(conversations, answers)]
        row = {"step": step, "kl": sum(kl) / len(kl), "judge": sum(judged) / len(judged), "sample": answers[0]}
        row["sqrt_kl"] = math.sqrt(max(row["kl"], 0.0))
        if self.rm_score is not None:
            scores = self.rm_score(conversations, answers)
            row["rm"] = sum(scores) / len(scores)
        row = {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}
        self.rows.append(row)
        if self.best is None or row["judge"] > self.best["judge"]:
            self.best = row
            if self.record:
                policy.save_pretrained(self.best_dir, safe_serialization=True)
                (self.best_dir / "point.json").write_text(json.dumps(row))
        if self.record:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            rm = f"RM {row['rm']:+.3f}  " if "rm" in row else ""
            print0(f"[curve] step {step}: {rm}judge {row['judge']:.3f}  KL {row['kl']:.3f} (√KL {row['sqrt_kl']:.3f})")
        return row

    def restore(self, model) -> None:
        """Put the best-judged checkpoint's weights back into `model` (a LoRA model: its adapters)."""
        from safetensors.torch import load_file

        if getattr(model, "peft_config", None):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(self.best_dir / "adapter_model.safetensors"))
            return
        state = {}
        for shard in sorted(self.best_dir.glob("model*.safetensors")):
            state |= load_file(shard)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = getattr(model.config, "tie_word_embeddings", False)
        if unexpected or any(not (tied and "lm_head" in key) for key in missing):  # only a tied head may be absent
            raise RuntimeError(f"rollback: the checkpoint in {self.best_dir} does not match the model "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def frozen_copy(model):
    """The curve's reference: a copy of `model` as it is now, frozen. Take it before a trainer wraps the model: a
    forward patched onto the instance (mixed precision, trainers' own wrappers) is copied as a method bound to the
    original, so the copy would answer with the trained weights; such an override is dropped here too."""
    import copy

    reference = copy.deepcopy(model).eval().requires_grad_(False)
    reference.__dict__.pop("forward", None)
    return reference


def answer_logprobs(model, replies) -> list[float]:
    """log π(answer | prompt) of each reply under `model`, summed over the answer's tokens."""
    import torch

    sums = []
    with torch.no_grad():
        for reply in replies:
            if not reply.completion_ids:
                sums.append(0.0)
                continue
            ids = torch.tensor([reply.prompt_ids + reply.completion_ids], device=model.device)
            sums.append(token_logprobs(model, ids, torch.ones_like(ids), len(reply.prompt_ids)).sum().item())
    return sums


def held_out_prompts(prompts: list[list[dict]], count: int) -> list[list[dict]]:
    """Every len/count-th prompt: spread over the prompt list, the same ones on every run."""
    stride = max(1, len(prompts) // count)
    return prompts[::stride][:count]


class CurveCallback(TrainerCallback):
    """Measures the curve before training and every `every` steps (and at the last one) of a TRL trainer."""

    def __init__(self, curve: Curve, every: int, trainer):
        self.curve, self.every, self.trainer = curve, every, trainer
        # sharded weights (FSDP, DeepSpeed ZeRO) cannot generate from the unwrapped module, nor be saved light
        self.sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
        if self.sharded:
            print0("[curve] off: the weights are sharded (FSDP or DeepSpeed), and the curve samples from one copy")

    def measure(self, step: int) -> None:
        if not self.sharded:
            self.curve.measure(step, self.trainer.accelerator.unwrap_model(self.trainer.model))

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.curve.rows and not self.curve.earlier:  # the origin; a resumed run has it already
            self.measure(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.measure(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):  # the last step, or where the watch stopped the run
        if not self.curve.rows or self.curve.rows[-1]["step"] != state.global_step:  # (a resumed run: its first)
            self.measure(state.global_step)


def finish_curve(curve: Curve, watch, stage: str, model) -> dict:
    """After training, on the main process: with `on_hack: rollback` and an alarm, put the best-judged
    checkpoint's weights back into `model` (the caller saves it); the curve's summary."""
    rows = curve.rows
    peak = max(rows, key=lambda r: r["judge"]) if rows else None
    last_step = rows[-1]["step"] if rows else None
    summary = {"points": len(rows), "judge_peak": peak, "stopped_at": last_step, "rolled_back_to": None}
    if watch.cfg.on_hack != "rollback" or not watch.alarms or peak is None:
        return summary
    curve.restore(model)
    summary["rolled_back_to"] = peak["step"]
    print0(f"[{stage}] rolled back: the watch alarmed and the run stopped at step {last_step}; saving the "
           f"step-{peak['step']} checkpoint, the best held-out judge score on the curve ({peak['judge']:.3f})")
    return summary


def read_curve(folder: Path) -> list[dict]:
    path = Path(folder) / "curve.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def curve_section(report, run) -> None:
    """The report card's over-optimisation curve for the run's RLHF and DPO, when they measured one."""
    for step in ("rlhf", "dpo"):
        rows = read_curve(run.folder(step))
        if not rows:
            continue
        summary = (json.loads((run.folder(step) / "eval.json").read_text()) if (run.folder(step) / "eval.json")
                   .is_file() else {}).get("curve") or {}
        peak = max(rows, key=lambda r: r["judge"])
        stopped, back = summary.get("stopped_at", rows[-1]["step"]), summary.get("rolled_back_to")
        report.heading(f"Over-optimisation curve ({step.upper()})")
        report.text(f"Scores of sampled answers to held-out prompts against √KL to the starting policy. The judge "
                    f"peaked at step {peak['step']} ({peak['judge']:.3f}, √KL {peak['sqrt_kl']:.3f}); training "
                    f"stopped at step {stopped}" + (f" and rolled back to step {back}." if back is not None else "."))
        report.table(["step", "√KL", "KL", "RM", "judge"],
                     [[r["step"], f"{r['sqrt_kl']:.3f}", f"{r['kl']:.3f}", f"{r['rm']:+.3f}" if "rm" in r else "-",
                       f"{r['judge']:.3f}"] for r in rows])

        def draw(ax, rows=rows, peak=peak, back=back):
            x = [r["sqrt_kl"] for r in rows]
            if all("rm" in r for r in rows):
                ax.plot(x, [r["rm"] for r in rows], "o-", label="reward model")
            ax.plot(x, [r["judge"] for r in rows], "s-", label="held-out judge")
            for r in rows:  # the points in training order: KL estimated from samples need not grow every time
                ax.annotate(str(r["step"]), (r["sqrt_kl"], r["judge"]), textcoords="offset points", xytext=(0, -12),
                            fontsize="x-small", ha="center")
            ax.axvline(peak["sqrt_kl"], color="grey", linestyle=":", label=f"judge peak (step {peak['step']})")
            if back is not None:
                ax.annotate("rolled back here", (peak["sqrt_kl"], peak["judge"]))
            ax.set_xlabel("√KL to the starting policy")
            ax.legend()

        report.plot(f"overoptimisation_{step}", draw)
