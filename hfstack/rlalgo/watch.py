"""The reward-hacking watch: while `hfstack rlhf` trains against a learned reward model, track that
reward next to measurable stand-ins (the scripted judge, length, distinct-2) and flag when they part.
`hfstack dpo` has the same watch on what it optimises, the implicit reward margin of the preference
pairs: every `watch_steps` it asks the Trainer to log, and greedy answers to a few held-out prompts
give the judge's score, their length and distinct-2 (`DPOWatch`, `StepWatchCallback`).

Tests: python -m pytest -q tests/stages/test_rlhf.py tests/stages/test_dpo.py
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from hfstack.core.launch import print0
from hfstack.core.textfiles import read_jsonl
from hfstack.rlalgo.attacks import last_text, looks_like_an_attack
from hfstack.tasks.judges import distinct_n
from hfstack.tools.loop import assistant_replies


def read_watch(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(str(path), "watch log")]


class HackingWatch:
    """Compares each log with the first one; says when the RM score and the judge disagree."""

    stage, score, score_label = "rlhf", "rm_score", "RM score"  # the score the run optimises, in the rows

    def __init__(self, cfg, path: Path, record: bool = True, resuming: bool = False):
        self.cfg, self.path, self.first, self.alarms, self.record = cfg, path, None, [], record
        self.earlier = read_watch(path) if resuming and path.is_file() else []
        # every process decides alike (the metrics are gathered); the main one writes and prints. A resumed
        # run's earlier logs stay until its first look (a run resumed at its last step looks no more)
        if record and not self.earlier:
            path.write_text("")

    def observe(self, step: int, metrics: dict) -> bool:
        """Record one log; True when the run should stop."""
        row = {"step": step, **{k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}}
        if self.first is None:  # a resumed run keeps the logs from before its checkpoint, and their baseline
            kept = [r for r in self.earlier if r["step"] < step]
            if self.record and self.earlier:
                self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            self.first = kept[0] if kept else row
        alarm = None
        known = row.get(self.score) is not None and self.first.get(self.score) is not None
        score_up = row[self.score] - self.first[self.score] if known else 0.0
        judge_down = self.first["judge"] - row["judge"]
        if known and score_up >= self.rise() and judge_down >= self.cfg.judge_drop:
            alarm = (f"reward hacking? step {step}: {self.score_label} up {score_up:+.2f} while the judge's score "
                     f"fell {judge_down:.2f} ({self.context(row)})")
        elif self.first["distinct2"] > 0 and row["distinct2"] < self.cfg.distinct_floor * self.first["distinct2"]:
            alarm = (f"reward hacking? step {step}: repetition spiked, distinct bigrams {row['distinct2']:.2f} "
                     f"(from {self.first['distinct2']:.2f})")
        elif (share := getattr(self.cfg, "attack_share", None)) is not None and row.get("attack_like") is not None \
                and row["attack_like"] >= share > (self.first.get("attack_like") or 0.0):
            alarm = (f"reward hacking? step {step}: {row['attack_like']:.0%} of answers look like an attack found on "
                     f"the reward model before training (from {self.first.get('attack_like') or 0.0:.0%})")
        row["alarm"] = alarm
        if alarm:
            self.alarms.append(alarm)
        if not self.record:
            return alarm is not None and self.cfg.on_hack in ("stop", "rollback")
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        attacks = f"  attack-like {row['attack_like']:.0%}" if row.get("attack_like") is not None else ""
        print0(f"[{self.stage}] step {step}: {self.line(row)}  judge {row['judge']:.3f}  len {row['length']:.1f}  "
               f"distinct2 {row['distinct2']:.2f}{attacks}  e.g. {row.get('sample', '')[:60]!r}")
        if alarm:
            print0(f"[{self.stage}] WARNING {alarm}")
        return alarm is not None and self.cfg.on_hack in ("stop", "rollback")

    def rise(self) -> float:
        """How far the optimised score must climb above its first log, with the judge down, to alarm."""
        return self.cfg.rm_rise

    def context(self, row: dict) -> str:
        return f"KL {row.get('kl', 'n/a')}"

    def line(self, row: dict) -> str:
        kl = f"{row['kl']:.3f}" if "kl" in row else "n/a"
        return f"RM {row['rm_score']:+.3f}  KL {kl}"


class DPOWatch(HackingWatch):
    """The watch on `hfstack dpo`: the implicit reward margin (beta times how much more the policy than
    the reference favours the chosen answer over the rejected one) is what DPO pushes up; it is
    gamed when it climbs by `margin_rise` while the held-out judge's score falls by `judge_drop`, or
    when the greedy answers turn repetitive."""

    stage, score, score_label = "dpo", "margin", "reward margin"

    def rise(self) -> float:
        return self.cfg.margin_rise

    def context(self, row: dict) -> str:
        logps = [f"{row[k]:+.1f}" if row.get(k) is not None else "n/a" for k in ("logp_chosen", "logp_rejected")]
        return f"log-probs chosen {logps[0]}, rejected {logps[1]}"

    def line(self, row: dict) -> str:
        margin = f"{row['margin']:+.3f}" if row.get("margin") is not None else "n/a"
        return f"margin {margin}  {self.context(row)}"


# TRL's logged metrics (DPO, KTO and ORPO log these names) -> the watch's row
TRL_METRICS = {"margin": "rewards/margins", "accuracy": "rewards/accuracies", "logp_chosen": "logps/chosen",
               "logp_rejected": "logps/rejected", "kl": "kl"}


class StepWatchCallback(TrainerCallback):
    """Every `every` steps and at the last, asks the Trainer to log, then feeds that log's metrics
    (TRL_METRICS, averaged since the previous log) and `measure()` to the watch; stops training when
    the watch says so."""

    def __init__(self, watch: HackingWatch, every: int, measure):
        self.watch, self.every, self.measure, self.due = watch, every, measure, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step >= state.max_steps:
            control.should_log, self.due = True, state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if self.due != state.global_step or "loss" not in logs:  # an evaluation's log, or not a watch step
            return
        self.due = None
        metrics = {name: float(logs[key]) if key in logs else None for name, key in TRL_METRICS.items()}
        metrics = {k: v for k, v in metrics.items() if v is not None or k == "margin"} | self.measure()
        if self.watch.observe(state.global_step, metrics):
            control.should_training_stop = True


def sample_metrics(model, tokenizer, prompts: list[list[dict]], judge, max_new_tokens: int) -> dict:
    """Greedy answers of `model` to `prompts` (messages): the held-out judge's mean score, mean length
    in tokens, mean distinct-2, and one answer as a sample. No tools run."""
    training = model.training
    model.eval()
    replies = assistant_replies(model, tokenizer, prompts, max_new_tokens, max_tool_calls=0, temperature=0.0)
    model.train(training)
    answers = [r.answer for r in replies]
    return {"judge": sum(judge(p[-1]["content"], [a])[0] for p, a in zip(prompts, answers)) / len(answers),
            "distinct2": sum(distinct_n(a) for a in answers) / len(answers),
            "length": sum(len(r.completion_ids) for r in replies) / len(replies), "sample": answers[0]}


class WatchCallback(TrainerCallback):
    """Feeds TRL's logs (the reward model's score, the zero-weight judge and distinct-2 rewards,
    completion length, KL) into the watch; stops training when the watch says so."""

    def __init__(self, watch: HackingWatch, rm_name: str, samples: list):
        self.watch, self.rm_name, self.samples = watch, rm_name, samples

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if f"rewards/{self.rm_name}/mean" not in logs:
            return
        metrics = {"rm_score": float(logs[f"rewards/{self.rm_name}/mean"]),
                   "judge": float(logs["rewards/judge_score/mean"]),
                   "distinct2": float(logs["rewards/distinct2/mean"]),
                   "length": float(logs.get("completions/mean_length", 0.0))}
        if "kl" in logs:
            metrics["kl"] = float(logs["kl"])
        if "attack_like" in logs:
            metrics["attack_like"] = float(logs["attack_like"])
        if self.samples:
            metrics["sample"] = self.samples[-1]
        if self.watch.observe(state.global_step, metrics):
            control.should_training_stop = True


def metric_rewards(judge, samples: list, probes: list[dict] | None = None):
    """Zero-weight 'rewards' so TRL computes and logs them per step: the held-out judge and distinct-2
    (the newest answer is kept in `samples` for the watch's log); with `probes` (attacks found on the reward
    model: hfstack.rlalgo.attacks) distinct-2 also logs `attack_like`, the share of answers that look like one."""

    def texts(completions, reply):  # the visible answer (a tool rollout's `reply`: its tool blocks left out)
        return reply or [last_text(c) for c in completions]

    def judge_score(prompts, completions, reply=None, **_):
        return [judge(last_text(p), [a])[0] for p, a in zip(prompts, texts(completions, reply))]

    def distinct2(prompts, completions, reply=None, log_metric=None, **_):
        answers = texts(completions, reply)
        samples[:] = answers[:1]
        if probes and log_metric:  # a metric, not a reward function: a user's reward_weights keep their length
            log_metric("attack_like", sum(looks_like_an_attack(last_text(p), a, probes)
                                          for p, a in zip(prompts, answers)) / len(answers))
        return [distinct_n(a) for a in answers]

    return [judge_score, distinct2]
