"""The reward-hacking watch: while `hfstack rlhf` trains against a learned reward model, track that
reward next to measurable stand-ins (the scripted judge, length, distinct-2) and flag when they part."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from hfstack.core.launch import print0
from hfstack.core.textfiles import read_jsonl
from hfstack.tasks.judges import distinct_n


def read_watch(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(str(path), "watch log")]


class HackingWatch:
    """Compares each log with the first one; says when the RM score and the judge disagree."""

    def __init__(self, cfg, path: Path, record: bool = True, resuming: bool = False):
        self.cfg, self.path, self.first, self.alarms, self.record = cfg, path, None, [], record
        self.earlier = read_watch(path) if resuming and path.is_file() else []
        if record:  # every process decides alike (the metrics are gathered); the main one writes and prints
            path.write_text("")

    def observe(self, step: int, metrics: dict) -> bool:
        """Record one log; True when the run should stop."""
        row = {"step": step, **{k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}}
        if self.first is None:  # a resumed run keeps the logs from before its checkpoint, and their baseline
            kept = [r for r in self.earlier if r["step"] < step]
            if self.record and kept:
                self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            self.first = kept[0] if kept else row
        alarm = None
        rm_up = row["rm_score"] - self.first["rm_score"]
        judge_down = self.first["judge"] - row["judge"]
        if rm_up >= self.cfg.rm_rise and judge_down >= self.cfg.judge_drop:
            alarm = (f"reward hacking? step {step}: RM score up {rm_up:+.2f} while the judge's score fell "
                     f"{judge_down:.2f} (KL {row.get('kl', 'n/a')})")
        elif self.first["distinct2"] > 0 and row["distinct2"] < self.cfg.distinct_floor * self.first["distinct2"]:
            alarm = (f"reward hacking? step {step}: repetition spiked, distinct bigrams {row['distinct2']:.2f} "
                     f"(from {self.first['distinct2']:.2f})")
        row["alarm"] = alarm
        if alarm:
            self.alarms.append(alarm)
        if not self.record:
            return alarm is not None and self.cfg.on_hack == "stop"
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        kl = f"{row['kl']:.3f}" if "kl" in row else "n/a"
        print0(f"[rlhf] step {step}: RM {row['rm_score']:+.3f}  judge {row['judge']:.3f}  KL {kl}  "
               f"len {row['length']:.1f}  distinct2 {row['distinct2']:.2f}  e.g. {row.get('sample', '')[:60]!r}")
        if alarm:
            print0(f"[rlhf] WARNING {alarm}")
        return alarm is not None and self.cfg.on_hack == "stop"


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
        if self.samples:
            metrics["sample"] = self.samples[-1]
        if self.watch.observe(state.global_step, metrics):
            control.should_training_stop = True


def metric_rewards(judge, samples: list):
    """Zero-weight 'rewards' so TRL computes and logs them per step: the held-out judge and distinct-2
    (the newest answer is kept in `samples` for the watch's log)."""

    def text_of(completion):
        return completion[-1]["content"] if isinstance(completion, list) else completion

    def judge_score(prompts, completions, **_):
        return [judge(p[-1]["content"] if isinstance(p, list) else p, [text_of(c)])[0]
                for p, c in zip(prompts, completions)]

    def distinct2(prompts, completions, **_):
        samples[:] = [text_of(completions[0])]
        return [distinct_n(text_of(c)) for c in completions]

    return [judge_score, distinct2]
