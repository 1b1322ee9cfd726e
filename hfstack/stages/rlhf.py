"""RLHF stage: optimise the policy against the reward model, on a KL leash, and watch for hacking.

    hfstack rlhf --config recipes/tiny/rlhf.yaml --algo rloo|grpo|ppo
    hfstack rlhf --config recipes/tiny/rlhf-hack.yaml          # KL off: watch the reward get gamed

Step 3 of RLHF in the notes. The reward model (from `hfstack reward`) stands in for the person, so
RL can ask it millions of times; but it is a network, and RL finds inputs that fool it ("the the
the the"). Algorithms:
- rloo, grpo: TRL's RLOOTrainer / GRPOTrainer with `reward_funcs` = the reward model; `beta` is the
  KL penalty to the starting (reference) policy;
- ppo: hfstack's own PPO with a critic and GAE (`hfstack.rlalgo.ppo`), fixed or adaptive KL.
With grpo the rollouts run the tool loop (`use_tools`, hfstack.rlalgo.rollouts): the policy may call Python
and search over the index its SFT run built, as in `hfstack chat`; rloo and ppo sample plain text.

The reward-hacking watch logs, at every logging step, the RM score, the KL to the reference (when
the algorithm computes it), the answer length, repetition (distinct bigrams) and a held-out judge's
score (a function by import path; default the scripted person of `hfstack rank`). When the RM score
has risen while the judge's score fell, or repetition spiked, it warns, or stops the run when
`on_hack: stop`. Everything goes to `output_dir/watch.jsonl` and `eval.json`. When the reward model was
red-teamed (`attacks.jsonl` beside it: `hfstack reward` or `hfstack rm-attack`), the watch also logs the share
of answers that look like a found attack (`attack_like`) and alarms when it reaches `attack_share`.

Every `curve_steps` the over-optimisation curve (hfstack.rlalgo.overopt) scores sampled answers with the RM,
the judge and the KL to the starting policy, into `output_dir/curve.jsonl`, keeping the best-judged weights;
`on_hack: rollback` ends the run at the first alarm and saves that checkpoint as the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hfstack.core.checkpoint import save_tokenizer, set_turn_end
from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.launch import process_state
from hfstack.core.model import load_reward_model
from hfstack.core.pretrained import resolve_model
from hfstack.core.renames import renamed
from hfstack.core.rundir import carry_run_files, newest_checkpoint, start_output
from hfstack.core.training import TrainConfig, common_trainer_args, finish_training, trainer_config
from hfstack.rlalgo.attacks import Scorer, looks_like_an_attack, probes_of, read_attacks
from hfstack.rlalgo.overopt import Curve, CurveCallback, finish_curve, frozen_copy
from hfstack.rlalgo.ppo import PPOSettings, newest_ppo_checkpoint, train_ppo
from hfstack.rlalgo.rollouts import rollout_tools, tool_rollout
from hfstack.rlalgo.watch import HackingWatch, WatchCallback, metric_rewards, read_watch
from hfstack.tasks.judges import distinct_n, load_judge
from hfstack.tasks.open_prompts import open_prompts

ALGORITHMS = ("rloo", "grpo", "ppo")


@renamed(model="model_name_or_path", reward_model="reward_model_path")
@dataclass
class RLHFConfig(TrainConfig):
    """Policy, reward model, algorithm, KL leash and the hacking watch."""

    model_name_or_path: str = model_folder("runs/tiny/rl")  # the starting policy, also the KL reference
    reward_model_path: str = model_folder("runs/tiny/rm")  # the reward model (`hfstack reward`'s output), or a Hub id
    output_dir: str = "runs/tiny/rlhf"  # the final policy, watch.jsonl, eval.json and checkpoints/
    algo: str = "rloo"  # rloo | grpo (TRL's trainers) | ppo (hfstack's own, with a critic)
    prompts_file: str | None = None  # jsonl/parquet with `prompt`; default: the rank stage's open prompts
    num_prompts: int = bounded(180, ge=1)  # training prompts
    # --- optimisation
    max_steps: int = bounded(40, ge=1)  # optimizer steps (ppo: rounds of sampling and updates)
    learning_rate: float = bounded(1e-4, gt=0)  # peak learning rate (ppo: the critic's too)
    num_generations: int = bounded(4, ge=1)  # answers per prompt (rloo/grpo groups; ppo samples as many)
    prompts_per_step: int = bounded(4, ge=1)  # per device; a batch is prompts_per_step × num_generations answers
    max_completion_length: int = bounded(32, ge=1)  # tokens per answer
    temperature: float = bounded(1.0, gt=0, why="the policy samples its answers")  # sampling temperature
    use_tools: bool | None = None  # rollouts run the tool loop (Python, search over the index): grpo; None: grpo only
    beta: float = bounded(0.05, ge=0, why="0 takes the KL leash off")  # KL penalty to the reference policy
    # ppo only: adapt beta towards this KL per answer (summed over tokens)
    kl_target: float | None = bounded(None, gt=0)  # ppo only: adaptive-KL target; None: beta stays fixed
    ppo_epochs: int = bounded(2, ge=1)  # ppo only: optimisation passes over each batch of answers
    # --- the watch
    judge: str = "hfstack.tasks.judges:reference_judge"  # held-out judge: judge(prompt, [answers]) -> scores
    rm_rise: float = bounded(0.5, ge=0)  # RM score up by at least this much over the first log ...
    judge_drop: float = bounded(0.1, ge=0)  # ... while the judge's score went down by at least this much
    distinct_floor: float = bounded(0.5, ge=0, le=1)  # or distinct bigrams fell below this share of their first value
    attack_share: float = bounded(0.5, gt=0, le=1)  # or this share of answers looks like an attack found on the RM
    on_hack: str = "warn"  # warn | stop | rollback (stop, then save the curve's best-judged checkpoint)
    # --- the over-optimisation curve: RM, judge and KL of sampled answers every curve_steps
    curve_steps: int = bounded(10, ge=0, why="0: no curve (and no rollback)")  # steps between points
    curve_prompts: int = bounded(8, ge=1)  # prompts each point samples answers to (after the training ones if any)
    curve_samples: int = bounded(2, ge=1)  # answers per prompt per point
    logging_steps: int = bounded(5, ge=1)  # the watch looks (and may stop the run) at each log
    save_steps: int = bounded(20, ge=1)  # checkpoint interval; a rerun continues from the newest checkpoint
    save_total_limit: int = bounded(1, ge=1)  # checkpoints kept

    def __post_init__(self):
        check_fields(self, "rlhf")
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"rlhf: unknown algo '{self.algo}'; choose from {', '.join(ALGORITHMS)}")
        if self.training_args and self.algo == "ppo":
            raise ConfigError("rlhf: training_args pass through to TRL's trainers; algo ppo is hfstack's own loop, "
                              "whose settings are this config's fields")
        self.check_training("rlhf", {"rloo": "trl.RLOOConfig", "grpo": "trl.GRPOConfig"}.get(self.algo))
        if self.algo != "ppo" and self.num_generations < 2:
            raise ConfigError(f"rlhf: algo {self.algo} needs num_generations >= 2 (it compares answers within a "
                              f"group), got {self.num_generations}")
        if self.on_hack not in ("warn", "stop", "rollback"):
            raise ConfigError(f"rlhf: on_hack must be 'warn', 'stop' or 'rollback', got '{self.on_hack}'")
        if self.on_hack == "rollback" and not self.curve_steps:
            raise ConfigError("rlhf: on_hack 'rollback' goes back along the over-optimisation curve; set curve_steps")
        if self.use_tools and self.algo != "grpo":
            raise ConfigError(f"rlhf: use_tools runs the tool loop inside TRL's GRPO rollouts; algo {self.algo} "
                              "samples plain text (use --algo grpo, or use_tools false)")
        if self.algo != "ppo" and self.kl_target is not None:
            raise ConfigError("rlhf: kl_target (adaptive KL) is for algo ppo; rloo and grpo use a fixed beta")


# ----------------------------------------------------------------------------- the watch


# ----------------------------------------------------------------------------- the stage


def rlhf_prompts(cfg: RLHFConfig) -> tuple[list[list[dict]], list[list[dict]]]:
    """The training prompts, and the curve's: the next ones when the source has them, else training ones."""
    texts = open_prompts(cfg.prompts_file, cfg.num_prompts + cfg.curve_prompts, cfg.seed + 1, "rlhf")
    train, rest = texts[:cfg.num_prompts], texts[cfg.num_prompts:]
    curve = rest if len(rest) == cfg.curve_prompts else train[::max(1, len(train) // cfg.curve_prompts)]
    return ([[{"role": "user", "content": t}] for t in train],
            [[{"role": "user", "content": t}] for t in curve[:cfg.curve_prompts]])


def run_rlhf(cfg: RLHFConfig) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "rlhf", "policy")
    reward_folder = resolve_model(cfg.reward_model_path, None, "rlhf", "reward model")
    out, main = start_output("rlhf", cfg)  # after the inputs are checked: a bad one writes nothing
    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=cfg.load_dtype())
    reward_model, reward_tokenizer = load_reward_model(reward_folder, cfg.load_dtype())
    judge = load_judge(cfg.judge)
    prompts, curve_prompts = rlhf_prompts(cfg)
    checkpoints = out / "checkpoints"
    resuming = bool(newest_ppo_checkpoint(checkpoints) if cfg.algo == "ppo" else newest_checkpoint(checkpoints))
    watch = HackingWatch(cfg, out / "watch.jsonl", record=main, resuming=resuming)
    probes = probes_of(read_attacks(reward_folder))
    if probes and main:
        print(f"[rlhf] watching for {len(probes)} attack(s) found on the reward model: "
              + ", ".join(f"{p['attack']} (RM {p['rm']:+.2f}, judge {p['judge']:.2f})" for p in probes))
    # the start, frozen: PPO's KL leash and the curve's origin (TRL's trainers keep their own for beta)
    reference = frozen_copy(policy) if cfg.algo == "ppo" or cfg.curve_steps else None
    scorer = Scorer(reward_model, reward_tokenizer)  # PPO's reward and the curve's RM score
    curve = Curve(out / "curve", reference, tokenizer, curve_prompts, judge, scorer.rm, samples=cfg.curve_samples,
                  max_new_tokens=cfg.max_completion_length, seed=cfg.seed, record=main, resuming=resuming) \
        if cfg.curve_steps else None
    if cfg.algo == "ppo":
        policy = run_ppo(cfg, policy, reference, tokenizer, scorer, judge, prompts, watch, reward_folder, probes,
                         curve)
    else:
        # grpo's rollouts run the tool loop with the policy's own tools, its search index included
        tools = rollout_tools(folder, True) if cfg.algo == "grpo" and cfg.use_tools is not False else None
        policy = run_trl(cfg, policy, tokenizer, reward_model, reward_tokenizer, judge, prompts, watch, probes, curve,
                         tools)
    if not main:
        return out
    rows = read_watch(out / "watch.jsonl")
    curve_summary = finish_curve(curve, watch, "rlhf", policy) if curve else None
    set_turn_end(policy, tokenizer)
    policy.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    carry_run_files(Path(folder), out)
    report = {"algo": cfg.algo, "beta": cfg.beta, "processes": process_state().num_processes,
              "steps_logged": len(rows), "first": rows[0] if rows else None, "last": rows[-1] if rows else None,
              "alarms": watch.alarms, "curve": curve_summary,
              "probes": [{k: p[k] for k in ("attack", "rm", "judge", "example")} for p in probes]}
    finish_training(cfg, out, "rlhf", report, steps=len(rows))
    return out


def run_trl(cfg, policy, tokenizer, reward_model, reward_tokenizer, judge, prompts, watch, probes, curve,
            tools: dict | None):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if cfg.algo == "rloo" else (GRPOConfig, GRPOTrainer)
    args = trainer_config(config_cls, "rlhf", cfg.training_args, **common_trainer_args(cfg, cfg.output_dir),
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, beta=cfg.beta, reward_weights=[1.0, 0.0, 0.0])
    samples: list[str] = []
    metrics = metric_rewards(judge, samples, probes)  # zero-weight: logged, not optimised
    rollout = {"rollout_func": tool_rollout(cfg.max_completion_length, cfg.temperature, tools)} if tools else {}
    trainer = trainer_cls(model=policy, reward_funcs=[reward_model, *metrics], args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer,
                          reward_processing_classes=[reward_tokenizer] + [None] * len(metrics), **rollout)
    trainer.add_callback(WatchCallback(watch, trainer.reward_func_names[0], samples))
    if curve is not None:
        trainer.add_callback(CurveCallback(curve, cfg.curve_steps, trainer))
    trainer.train(resume_from_checkpoint=newest_checkpoint(Path(cfg.output_dir) / "checkpoints"))
    return trainer.accelerator.unwrap_model(trainer.model)


def run_ppo(cfg, policy, reference, tokenizer, scorer: Scorer, judge, prompts, watch, reward_folder: str, probes,
            curve):
    from transformers import AutoModelForTokenClassification, set_seed

    critic = AutoModelForTokenClassification.from_pretrained(reward_folder, num_labels=1, dtype=cfg.load_dtype())
    scorer.model.requires_grad_(False)  # the reward model scores; only the policy and the critic train
    # a seed per process, as TRL's GRPO/RLOO trainers set (seed + process index): with run_rlhf's one seed on
    # every rank, the ranks sampled the same tokens at the same batch positions (measured: 11 of 12 answers
    # identical across 2 ranks over 3 steps, from different prompts), so N processes drew 1/N of the samples
    set_seed(cfg.seed + process_state().process_index)

    def answer_metrics(batch_prompts, answers):  # per process; train_ppo averages them over processes
        return {"judge": sum(judge(p[-1]["content"], [a])[0] for p, a in zip(batch_prompts, answers)) / len(answers),
                "distinct2": sum(distinct_n(a) for a in answers) / len(answers)} | ({"attack_like": sum(
                    looks_like_an_attack(p[-1]["content"], a, probes) for p, a in zip(batch_prompts, answers))
                    / len(answers)} if probes else {})

    def on_log(step, metrics, batch_prompts, answers):
        if curve is not None and step % cfg.curve_steps == 0:
            curve.measure(step, policy)
        if step % cfg.logging_steps and step != cfg.max_steps:
            return False
        stop = watch.observe(step, metrics | {"sample": answers[0]})
        measured = curve is not None and curve.rows and curve.rows[-1]["step"] == step
        if curve is not None and (stop or step == cfg.max_steps) and not measured:  # where the run ends
            curve.measure(step, policy)
        return stop

    settings = PPOSettings(steps=cfg.max_steps, batch_size=cfg.prompts_per_step * cfg.num_generations,
                           minibatch_size=max(1, cfg.prompts_per_step * cfg.num_generations // 2),
                           ppo_epochs=cfg.ppo_epochs, learning_rate=cfg.learning_rate,
                           critic_learning_rate=cfg.learning_rate, max_new_tokens=cfg.max_completion_length,
                           temperature=cfg.temperature, beta=cfg.beta, kl_target=cfg.kl_target, seed=cfg.seed,
                           progress=cfg.progress)
    if curve is not None and not curve.earlier:  # the curve's origin (a resumed run has it already)
        curve.measure(0, policy)
    return train_ppo(policy, reference, critic, tokenizer, prompts, scorer.rm, settings, on_log,
                     answer_metrics=answer_metrics, checkpoint_dir=Path(cfg.output_dir) / "checkpoints",
                     save_every=cfg.save_steps)


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = RLHFConfig
run = run_rlhf
