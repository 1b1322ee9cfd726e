"""Speedrun: every stage that exists, in order, on one preset, each step in its folder of RUN
(hfstack.core.layout.RunLayout names them).

    hfstack speedrun [--preset tiny] [--output_dir runs/tiny] [--preference rlhf|dpo]

Stages: crawl → data → tokenizer → pretrain (RUN/base) → generate → regurgitation → sft → eval →
rl → rank (RUN/prefs, a scripted judge) → reward (RUN/rm) → rlhf → final-eval (the SFT model's
held-out sets on the final model) → honesty (every model on the held-out facts: right, refused or
hallucinated, search on and off; the alignment tax) → report; RUN/rlhf is the final model, and RUN/report
the report card (also the final model's README.md). With `--preference dpo` the tail after rank is dpo
(RUN/dpo, the final model) instead of reward → rlhf.
The tiny preset runs offline on CPU. A step that finished with the same settings and inputs (its
fingerprint, hfstack.core.rundir; its done marker, with the step's seconds, in its output folder) is
skipped, so rerunning after an interruption continues where it stopped
(and each stage resumes its own unfinished work); a stage whose folder holds a run with other settings
stops the speedrun with one line naming them. `--force` recomputes every stage from scratch (each
removes what it wrote before, and nothing else).
Tests: python -m pytest -q tests/unit/test_speedrun_markers.py tests/e2e/test_speedrun.py
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from hfstack.core.config import (
    ConfigError,
    bounded,
    check_fields,
    check_values,
    from_dict,
    load_config,
    read_yaml,
    save_config,
)
from hfstack.core.launch import launch_command, launch_config_file, packaged_launch_configs
from hfstack.core.layout import RunLayout
from hfstack.core.recipes import recipes_dir
from hfstack.core.renames import current_names
from hfstack.core.rundir import (
    MARKER,
    check_output_dir,
    claim_output,
    clear_done,
    finish_output,
    is_done,
    mark_done,
    read_json,
    stored_run,
)
from hfstack.dataprep.synthetic import write_crawl
from hfstack.stages import BY_COMMAND, config_class, load
from hfstack.ui.console import Watch, previous_times, quiet_libraries


@dataclass
class SpeedrunConfig:
    preset: str = "tiny"  # the recipes in recipes/<preset>/, e.g. tiny (CPU, offline) or gpu-small
    output_dir: str | None = None  # default: runs/<preset>
    crawl_pages: int = bounded(300, ge=10)  # size of the synthetic crawl used when the preset has no data input
    force: bool = False  # recompute every stage from scratch (each runs with overwrite)
    # how the rankings reach the policy: rlhf (rank → reward → rlhf) or dpo (rank → dpo, no reward model)
    preference: Literal["rlhf", "dpo"] = "rlhf"  # the tail after rank; its model is the run's final model
    # per-stage field overrides on top of the preset's recipes, e.g. for a quick trial:
    #   --overrides '{pretrain: {max_steps: 20}, sft: {max_steps: 10}, eval: {limit: 10}}'
    overrides: dict = field(default_factory=dict)  # stage → {field: value}
    # training stages (pretrain, sft, rl, reward, rlhf, dpo) under `accelerate launch` on N processes
    launcher: str = "none"  # none | accelerate
    num_processes: int = bounded(1, ge=1)  # processes per training stage with launcher accelerate
    launch_config: str | None = None  # a file or a recipe name (fsdp2); default: multi_gpu.yaml (GPUs) or cpu.yaml
    verbose: bool = False  # show library warnings and every per-pass progress bar (quiet by default)

    def __post_init__(self):
        check_fields(self, "speedrun")
        if self.launch_config is not None and not launch_config_file(self.launch_config):
            raise ConfigError(f"speedrun: 'launch_config' '{self.launch_config}' is neither a file (an accelerate "
                              f"config) nor one of hfstack's: {', '.join(packaged_launch_configs())}")
        if not (recipes_dir() / self.preset).is_dir():
            presets = sorted(p.name for p in recipes_dir().iterdir() if (p / "data.yaml").is_file())
            raise ConfigError(f"speedrun: unknown preset '{self.preset}'; available: {', '.join(presets)}")
        if self.output_dir is None:
            self.output_dir = f"runs/{self.preset}"
        if self.launcher not in ("none", "accelerate"):
            raise ConfigError(f"speedrun: launcher must be 'none' or 'accelerate', got '{self.launcher}'")
        unknown = set(self.overrides) - {name for name, _ in STAGES}
        if unknown or not all(isinstance(v, dict) for v in self.overrides.values()):
            raise ConfigError(f"speedrun: 'overrides' maps a stage ({', '.join(n for n, _ in STAGES)}) to its "
                              f"fields; got {self.overrides}")

        for stage, fields in self.overrides.items():
            if stage in BY_COMMAND:  # a misspelt field or a bad value stops the run now, not hours in
                check_values(config_class(stage), fields, f"speedrun overrides for {stage}")


def stage_config(cfg: SpeedrunConfig, stage: str, run_args: list[str]):
    """The preset's recipe for a stage, the run's paths, then the speedrun's overrides for that stage."""
    cls = config_class(stage)

    path = recipes_dir() / cfg.preset / f"{stage}.yaml"
    loaded = load_config(cls, path if path.is_file() else None, run_args)
    forced = {"overwrite": True} if cfg.force and hasattr(loaded, "overwrite") else {}  # --force recomputes
    source = f"speedrun overrides for {stage}"
    # an override under a field's older name (save_every) replaces the recipe's value under its current one
    overrides = current_names(cls, cfg.overrides.get(stage, {}), source)
    return from_dict(cls, asdict(loaded) | forced | overrides, source)


def train(cfg: SpeedrunConfig, command: str, stage_cfg, runner) -> None:
    """Run a training stage in this process, or under `accelerate launch` when the speedrun says so:
    the resolved config goes to RUN/launch/<command>.yaml (outside the stage's folder, which the stage
    claims) and `hfstack <command> --config` reads it back."""
    if cfg.launcher == "none":
        runner(stage_cfg)
        return
    import subprocess

    recipe_file = save_config(stage_cfg, RunLayout(Path(cfg.output_dir)).launch, f"{command}.yaml")
    line = launch_command(command, cfg.num_processes, launch_config_file(cfg.launch_config),
                          ["--config", str(recipe_file)])
    print(f"[speedrun] {' '.join(line[2:])}", flush=True)
    if subprocess.call(line) != 0:
        raise ConfigError(f"speedrun: `{' '.join(line[2:])}` failed; see its output above")


@dataclass(frozen=True)
class Step:
    """One step of the speedrun: its stage's config (built when its turn comes, so it sees what the steps
    before it wrote) and how it runs. Its outputs, fingerprint and done marker are in the step's folder
    (RunLayout.folder(name)); a step whose stage claims no folder of its own (claims=False) has the
    speedrun claim that folder."""

    config: Callable[[SpeedrunConfig, RunLayout], object]
    run: Callable[[SpeedrunConfig, RunLayout, object], None]
    stage: str  # its fingerprint's kind (hfstack.core.fingerprint.STAGES)
    claims: bool = True


@dataclass
class SamplesConfig:
    """What the generate step depends on: the base model (its prompts and sampling are fixed)."""

    model: str


def _crawl_config(cfg: SpeedrunConfig, run: RunLayout):
    return config_class("synth-crawl")(output=str(run.crawl / "crawl.warc.gz"), pages=cfg.crawl_pages)


def _crawl(cfg: SpeedrunConfig, run: RunLayout, crawl_cfg) -> None:
    summary = write_crawl(crawl_cfg.output, pages=crawl_cfg.pages, seed=crawl_cfg.seed)
    print(f"[crawl] synthetic crawl: {summary.counts}")


def _data_config(cfg: SpeedrunConfig, run: RunLayout):
    return stage_config(cfg, "data", ["--output_dir", str(run.data)] + _default_input(cfg, run))


def _default_input(cfg: SpeedrunConfig, run: RunLayout) -> list[str]:
    recipe = read_yaml(recipes_dir() / cfg.preset / "data.yaml")
    if recipe.get("input") or recipe.get("hub_dataset"):
        return []
    return ["--input", str(run.crawl / "*.warc.gz")]


def _tokenizer_config(cfg: SpeedrunConfig, run: RunLayout):
    return stage_config(cfg, "tokenizer", ["--input", str(run.data), "--output_dir", str(run.tokenizer)])


def _pretrain_config(cfg: SpeedrunConfig, run: RunLayout):
    return stage_config(cfg, "pretrain", ["--data", str(run.data), "--tokenizer", str(run.tokenizer),
                                          "--output_dir", str(run.base)])


def _generate(cfg: SpeedrunConfig, run: RunLayout, samples_cfg: SamplesConfig) -> None:
    """The base model dreams documents from a few openings, and is asked a question the few-shot way."""
    import json

    generate, settings = load("generate").run, config_class("generate")
    samples = []
    for prompt in ("The", "In this module,", "Python is"):
        text = generate(settings(model_name_or_path=samples_cfg.model, prompt=prompt, max_new_tokens=48, seed=0,
                                 temperature=0.8, stream=False))[0]
        samples.append({"prompt": prompt, "sample": text})
    answer = generate(settings(model_name_or_path=samples_cfg.model, as_assistant="What does the os module do?",
                               max_new_tokens=48, temperature=0, stream=False))[0]
    samples.append({"as_assistant": "What does the os module do?", "answer": answer})
    (run.generate / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")


def _regurgitation_config(cfg: SpeedrunConfig, run: RunLayout):
    held_out = read_yaml(run.base / "config.yaml")["val_fraction"]  # the documents pretraining never saw
    return stage_config(cfg, "regurgitation", [
        "--model_name_or_path", str(run.base), "--data", str(run.data), "--val_fraction", str(held_out),
        "--output", str(run.regurgitation / "report.json")])


def _sft_config(cfg: SpeedrunConfig, run: RunLayout):
    return stage_config(cfg, "sft", ["--model_name_or_path", str(run.base), "--output_dir", str(run.sft),
                                     "--facts_from", str(run.data)])


def _eval_config(model: str | None, step: str):
    """The eval stage on the model of step `model` (None: the preference tail's last step, rlhf or dpo),
    into the folder of step `step` (eval, final-eval)."""
    def build(cfg: SpeedrunConfig, run: RunLayout):
        source = run.folder(model or TAILS[cfg.preference][-1])
        return stage_config(cfg, "eval", ["--model_name_or_path", str(source),
                                          "--output", str(run.folder(step) / "eval.json")])

    return build


def _rl_config(cfg: SpeedrunConfig, run: RunLayout):
    return stage_config(cfg, "rl", ["--model_name_or_path", str(run.sft), "--output_dir", str(run.rl)])


def _rank_config(cfg: SpeedrunConfig, run: RunLayout):
    """Offline, a scripted judge plays the person who ranks (the recipe names it)."""

    rank_cfg = stage_config(cfg, "rank", ["--model_name_or_path", str(run.rl), "--output_dir", str(run.prefs)])
    if not rank_cfg.judge:
        raise ConfigError("speedrun: the rank recipe needs a scripted 'judge' (a person ranks with `hfstack rank`)")
    return rank_cfg


def _reward_config(cfg: SpeedrunConfig, run: RunLayout):
    return stage_config(cfg, "reward", [
        "--model_name_or_path", str(run.rl), "--dataset_name", str(run.prefs), "--output_dir", str(run.rm)])


def _rlhf_config(cfg: SpeedrunConfig, run: RunLayout):
    """The last stage: its policy is the run's final model."""

    return stage_config(cfg, "rlhf", [
        "--model_name_or_path", str(run.rl), "--reward_model_path", str(run.rm), "--output_dir", str(run.rlhf)])


def _dpo_config(cfg: SpeedrunConfig, run: RunLayout):
    """The other tail's one stage: the rankings straight into the RL policy; its model is the final one."""

    return stage_config(cfg, "dpo", [
        "--model_name_or_path", str(run.rl), "--dataset_name", str(run.prefs), "--output_dir", str(run.dpo)])


def _honesty_config(cfg: SpeedrunConfig, run: RunLayout):
    """Every model of the run so far (base, sft, rl, and the tail's) on the SFT run's held-out facts."""
    return stage_config(cfg, "honesty", ["--run", str(run.root), "--output_dir", str(run.honesty)])


def _report_config(cfg: SpeedrunConfig, run: RunLayout):
    return config_class("report")(run=str(run.root))  # into RUN/report, the report's own default


def _runner(command: str):
    """Run `hfstack <command>` on the step's config; a training stage may go through `train`."""
    def run_step(cfg: SpeedrunConfig, run: RunLayout, stage_cfg) -> None:
        runner = load(command).run
        if BY_COMMAND[command].trains:
            train(cfg, command, stage_cfg, runner)
        else:
            runner(stage_cfg)

    return run_step


STAGES = [
    ("crawl", Step(_crawl_config, _crawl, "crawl", claims=False)),
    ("data", Step(_data_config, _runner("data"), "data")),
    ("tokenizer", Step(_tokenizer_config, _runner("tokenizer"), "tokenizer")),
    ("pretrain", Step(_pretrain_config, _runner("pretrain"), "pretrain")),
    ("generate", Step(lambda cfg, run: SamplesConfig(model=str(run.base)), _generate, "generate", claims=False)),
    ("regurgitation", Step(_regurgitation_config, _runner("regurgitation"), "regurgitation", claims=False)),
    ("sft", Step(_sft_config, _runner("sft"), "sft")),
    ("eval", Step(_eval_config("sft", "eval"), _runner("eval"), "eval", claims=False)),
    ("rl", Step(_rl_config, _runner("rl"), "rl")),
    ("rank", Step(_rank_config, _runner("rank"), "rank")),
    ("reward", Step(_reward_config, _runner("reward"), "reward")),
    ("rlhf", Step(_rlhf_config, _runner("rlhf"), "rlhf")),
    ("dpo", Step(_dpo_config, _runner("dpo"), "dpo")),
    # the final model on the SFT model's held-out sets: what RL and RLHF (or DPO) cost or gained
    ("final-eval", Step(_eval_config(None, "final-eval"), _runner("eval"), "eval", claims=False)),
    # every model on the held-out facts (right, refused, hallucinated; search on and off) and the alignment tax
    ("honesty", Step(_honesty_config, _runner("honesty"), "honesty")),
    ("report", Step(_report_config, _runner("report"), "report")),
]


# the steps after rank that each `preference` runs; a run skips the other tail's
TAILS = {"rlhf": ("reward", "rlhf"), "dpo": ("dpo",)}


def claim_run(cfg: SpeedrunConfig) -> RunLayout:
    """RUN itself: never $HOME or a root, and a non-empty folder only if a speedrun made it."""
    run = Path(cfg.output_dir)  # `~` already expanded when the config was built
    check_output_dir("speedrun", run)
    if run.is_dir() and any(run.iterdir()) and not (run / "speedrun.yaml").is_file():
        raise ConfigError(f"speedrun: {run} is not empty and no speedrun made it (no speedrun.yaml); choose a new "
                          "or empty --output_dir")
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run, "speedrun.yaml")
    return RunLayout(run)


def step_done(run: RunLayout, name: str) -> bool:
    """Whether step `name` finished: the marker in its folder carries the step's name, which the speedrun adds
    (with the seconds) only once the step returned and its stage had written that marker (a stage's claim
    removes it when it starts again). A stage's marker without it (the stage was run alone, or killed
    between its end and the speedrun's) is not done, and the step runs again: the stage continues that run."""
    info = read_json(run.folder(name) / MARKER)
    if info is None:
        return False
    if info.get("step") == name:
        return True
    # A run directory of the previous layout: the speedrun marked the step in RUN/<step name> (its own
    # "stage" and the seconds); a separate folder for pretrain, rank and reward, else the step's folder
    # itself. Honoured when reading, so such a run resumes where it stopped instead of training finished
    # models again (which would change every later step's inputs and stop the run); never written.
    old = run.old_marker(name)
    info = info if old is None else read_json(old / MARKER)
    return info is not None and info.get("stage") == name and "seconds" in info


def planned_steps(cfg: SpeedrunConfig, run: RunLayout) -> list[tuple[str, Step]]:
    """The steps this run takes: the crawl only when the preset has no data input, one preference tail."""
    other_tail = {name for tail in TAILS.values() for name in tail} - set(TAILS[cfg.preference])
    return [(name, step) for name, step in STAGES
            if not (name == "crawl" and _default_input(cfg, run) == [] or name in other_tail)]


def speedrun(cfg: SpeedrunConfig) -> Path:
    run = claim_run(cfg)
    steps = planned_steps(cfg, run)
    watch = Watch([name for name, _ in steps], previous_times(run.root, cfg.preset))
    name = None
    try:
        with quiet_libraries(enabled=not cfg.verbose):
            for name, step in steps:
                run_step(cfg, run, name, step, watch)
    except KeyboardInterrupt:  # Ctrl-C: a clean stop; the step's own checkpoints and the done markers stay
        print(f"\n[speedrun] stopped during {name}; the same command resumes from there", flush=True)
        raise SystemExit(130) from None
    report = run.folder("report") / "report.html"
    watch.summary(run.root, report if report.is_file() else None)
    return run.root


def run_step(cfg: SpeedrunConfig, run: RunLayout, name: str, step: Step, watch: Watch) -> None:
    """One step: skipped when done with the same settings and inputs, else run and marked done."""
    stage_cfg = step.config(cfg, run)
    folder = run.folder(name)
    # without --force a step is skipped only when done with the same settings and inputs, and
    # one whose folder holds a different run stops the speedrun rather than mixing the two
    stored = "none" if cfg.force else stored_run(step.stage, stage_cfg, folder)  # "none", "same", or fields
    if stored not in ("none", "same"):
        raise ConfigError(f"speedrun: {name}: {folder} was made with different settings ({', '.join(stored)}); "
                          "rerun with --force to recompute, or choose another --output_dir")
    if stored == "same" and step_done(run, name):
        watch.skipped(name, folder)
        return
    watch.started(name)
    started = time.time()
    clear_done(folder)  # a kill from here on leaves the step not done
    old = run.old_marker(name)
    if old is not None:  # a run of the previous layout: its marker there would outlive this attempt
        clear_done(old)
        with contextlib.suppress(OSError):  # the folder held nothing else: it goes (only when empty)
            old.rmdir()
    if not step.claims:  # --force recomputes: the earlier run's files go, unknown ones stay
        claim_output(step.stage, stage_cfg, overwrite=cfg.force, folder=folder)
    step.run(cfg, run, stage_cfg)
    if not step.claims:
        finish_output(folder, step.stage)
    if is_done(folder):  # the stage finished: its marker gets the step's name and time (kept by mark_done)
        mark_done(folder, step.stage, step=name, seconds=round(time.time() - started, 1))
    watch.finished(name, folder, time.time() - started)


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = SpeedrunConfig
run = speedrun
