"""Speedrun: every stage that exists, in order, on one preset, each in RUN/<stage>/.

    hfstack speedrun [--preset tiny] [--output_dir runs/tiny]

Stages: crawl → data → tokenizer → pretrain (RUN/base) → generate → regurgitation → sft → eval →
rl → rank (RUN/prefs, a scripted judge) → reward (RUN/rm) → rlhf → final-eval (the SFT model's
held-out sets on the final model) → report; RUN/rlhf is the final model, and RUN/report the report
card (also the final model's README.md).
The tiny preset runs offline on CPU. A stage that finished with the same settings and inputs (its
fingerprint, hfstack.rundir) is skipped, so rerunning after an interruption continues where it stopped
(and each stage resumes its own unfinished work); a stage whose folder holds a run with other settings
stops the speedrun with one line naming them. `--force` recomputes every stage from scratch (each
removes what it wrote before, and nothing else).
Tests: python -m pytest -q tests/test_rundir.py tests/test_cli.py
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hfstack.config import ConfigError, bounded, check_fields, check_values, load_config, save_config
from hfstack.rundir import (
    check_output_dir,
    claim_output,
    clear_done,
    finish_output,
    is_done,
    mark_done,
    stored_run,
)

RECIPES = Path(__file__).resolve().parent / "recipes"  # package data; the checkout's top-level recipes/ links here


def recipes_dir() -> Path:
    """The presets and accelerate configs, shipped inside the package (hfstack/recipes) so a plain
    `pip install` keeps them."""
    return RECIPES


@dataclass
class SpeedrunConfig:
    preset: str = "tiny"
    output_dir: str | None = None  # default: runs/<preset>
    crawl_pages: int = bounded(300, ge=10)  # size of the synthetic crawl used when the preset has no data input
    force: bool = False  # recompute every stage from scratch (each runs with overwrite)
    # per-stage field overrides on top of the preset's recipes, e.g. for a quick trial:
    #   --overrides '{pretrain: {max_steps: 20}, sft: {max_steps: 10}, eval: {limit: 10}}'
    overrides: dict = field(default_factory=dict)
    # training stages (pretrain, sft, rl, reward, rlhf) under `accelerate launch` on N processes
    launcher: str = "none"  # none | accelerate
    num_processes: int = bounded(1, ge=1)
    launch_config: str | None = None  # default: recipes/accelerate/multi_gpu.yaml (GPUs) or cpu.yaml

    def __post_init__(self):
        check_fields(self, "speedrun")
        if self.launch_config is not None and not Path(self.launch_config).is_file():
            raise ConfigError(f"speedrun: 'launch_config' '{self.launch_config}' is not a file (an accelerate config)")
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
        from hfstack.cli import _commands

        commands = _commands()
        for stage, fields in self.overrides.items():
            if stage in commands:  # a misspelt field or a bad value stops the run now, not hours in
                check_values(commands[stage]()[0], fields, f"speedrun overrides for {stage}")


def recipe(stage: str, preset: str = "tiny", **fields):
    """A stage's config from a preset's recipe, with `fields` on top: the Python twin of
    `hfstack <stage> --config recipes/<preset>/<stage>.yaml --field value`."""
    from hfstack.cli import _commands
    from hfstack.config import from_dict, read_yaml

    commands = _commands()  # the CLI's table of stage → (config class, runner)
    if stage not in commands:
        raise ConfigError(f"recipe: unknown stage '{stage}'; choose from {', '.join(commands)}")
    cls, _ = commands[stage]()
    path = recipes_dir() / preset / f"{stage}.yaml"
    return from_dict(cls, (read_yaml(path) if path.is_file() else {}) | fields, f"recipe {preset}/{stage}")


def stage_config(cls, cfg: SpeedrunConfig, stage: str, run_args: list[str]):
    """The preset's recipe for a stage, the run's paths, then the speedrun's overrides for that stage."""
    from hfstack.config import from_dict

    path = recipes_dir() / cfg.preset / f"{stage}.yaml"
    loaded = load_config(cls, path if path.is_file() else None, run_args)
    forced = {"overwrite": True} if cfg.force and hasattr(loaded, "overwrite") else {}  # --force recomputes
    return from_dict(cls, asdict(loaded) | forced | cfg.overrides.get(stage, {}), f"speedrun overrides for {stage}")


def train(cfg: SpeedrunConfig, command: str, stage_cfg, runner) -> None:
    """Run a training stage in this process, or under `accelerate launch` when the speedrun says so:
    the resolved config goes to RUN/launch/<command>.yaml (outside the stage's folder, which the stage
    claims) and `hfstack <command> --config` reads it back."""
    if cfg.launcher == "none":
        runner(stage_cfg)
        return
    import subprocess

    from hfstack.cli import launch_command

    recipe_file = save_config(stage_cfg, Path(cfg.output_dir) / "launch", f"{command}.yaml")
    line = launch_command(command, cfg.num_processes, cfg.launch_config, ["--config", str(recipe_file)])
    print(f"[speedrun] {' '.join(line[2:])}", flush=True)
    if subprocess.call(line) != 0:
        raise ConfigError(f"speedrun: `{' '.join(line[2:])}` failed; see its output above")


@dataclass(frozen=True)
class Step:
    """One step of the speedrun: its stage's config (built when its turn comes, so it sees what the steps
    before it wrote), the folder holding its outputs and fingerprint (RUN/<folder>), and how it runs.
    A step whose stage claims no folder of its own (claims=False) has the speedrun claim RUN/<folder>."""

    config: Callable[[SpeedrunConfig, Path], object]
    run: Callable[[SpeedrunConfig, Path, object], None]
    folder: str
    stage: str  # its fingerprint's kind (hfstack.fingerprint.STAGES)
    claims: bool = True


@dataclass
class SamplesConfig:
    """What the generate step depends on: the base model (its prompts and sampling are fixed)."""

    model: str


def _crawl_config(cfg: SpeedrunConfig, run: Path):
    from hfstack.web.synthetic import SynthCrawlConfig

    return SynthCrawlConfig(output=str(run / "crawl" / "crawl.warc.gz"), pages=cfg.crawl_pages)


def _crawl(cfg: SpeedrunConfig, run: Path, crawl_cfg) -> None:
    from hfstack.web.synthetic import write_crawl

    summary = write_crawl(crawl_cfg.output, pages=crawl_cfg.pages, seed=crawl_cfg.seed)
    print(f"[crawl] synthetic crawl: {summary.counts}")


def _data_config(cfg: SpeedrunConfig, run: Path):
    from hfstack.web import DataConfig

    return stage_config(DataConfig, cfg, "data", ["--output_dir", str(run / "data")] + _default_input(cfg, run))


def _default_input(cfg: SpeedrunConfig, run: Path) -> list[str]:
    from hfstack.config import read_yaml

    recipe = read_yaml(recipes_dir() / cfg.preset / "data.yaml")
    if recipe.get("input") or recipe.get("hub_dataset"):
        return []
    return ["--input", str(run / "crawl" / "*.warc.gz")]


def _tokenizer_config(cfg: SpeedrunConfig, run: Path):
    from hfstack.tokenization import TokenizerConfig

    return stage_config(TokenizerConfig, cfg, "tokenizer",
                        ["--input", str(run / "data"), "--output_dir", str(run / "tokenizer")])


def _pretrain_config(cfg: SpeedrunConfig, run: Path):
    from hfstack.pretraining import PretrainConfig

    return stage_config(PretrainConfig, cfg, "pretrain", ["--data", str(run / "data"), "--tokenizer",
                                                          str(run / "tokenizer"), "--output_dir", str(run / "base")])


def _generate(cfg: SpeedrunConfig, run: Path, samples_cfg: SamplesConfig) -> None:
    """The base model dreams documents from a few openings, and is asked a question the few-shot way."""
    import json

    from hfstack.generation import GenerateConfig, generate

    samples = []
    for prompt in ("The", "In this module,", "Python is"):
        text = generate(GenerateConfig(model=samples_cfg.model, prompt=prompt, max_new_tokens=48, seed=0,
                                       temperature=0.8, stream=False))[0]
        samples.append({"prompt": prompt, "sample": text})
    answer = generate(GenerateConfig(model=samples_cfg.model, as_assistant="What does the os module do?",
                                     max_new_tokens=48, temperature=0, stream=False))[0]
    samples.append({"as_assistant": "What does the os module do?", "answer": answer})
    (run / "generate" / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")


def _regurgitation_config(cfg: SpeedrunConfig, run: Path):
    from hfstack.config import read_yaml
    from hfstack.generation import RegurgitationConfig

    held_out = read_yaml(run / "base" / "config.yaml")["val_fraction"]  # the documents pretraining never saw
    return stage_config(RegurgitationConfig, cfg, "regurgitation", [
        "--model", str(run / "base"), "--data", str(run / "data"), "--val_fraction", str(held_out),
        "--output", str(run / "regurgitation" / "report.json")])


def _sft_config(cfg: SpeedrunConfig, run: Path):
    from hfstack.finetuning import SFTStageConfig

    return stage_config(SFTStageConfig, cfg, "sft", ["--model", str(run / "base"), "--output_dir",
                                                     str(run / "sft"), "--facts_from", str(run / "data")])


def _eval_config(model: str, folder: str):
    def build(cfg: SpeedrunConfig, run: Path):
        from hfstack.evaluation import EvalConfig

        return stage_config(EvalConfig, cfg, "eval", ["--model", str(run / model),
                                                      "--output", str(run / folder / "eval.json")])

    return build


def _rl_config(cfg: SpeedrunConfig, run: Path):
    from hfstack.reinforcement import RLConfig

    return stage_config(RLConfig, cfg, "rl", ["--model", str(run / "sft"), "--output_dir", str(run / "rl")])


def _rank_config(cfg: SpeedrunConfig, run: Path):
    """Offline, a scripted judge plays the person who ranks (the recipe names it)."""
    from hfstack.ranking import RankConfig

    rank_cfg = stage_config(RankConfig, cfg, "rank", ["--model", str(run / "rl"), "--output_dir", str(run / "prefs")])
    if not rank_cfg.judge:
        raise ConfigError("speedrun: the rank recipe needs a scripted 'judge' (a person ranks with `hfstack rank`)")
    return rank_cfg


def _reward_config(cfg: SpeedrunConfig, run: Path):
    from hfstack.reward_model import RewardStageConfig

    return stage_config(RewardStageConfig, cfg, "reward", [
        "--model", str(run / "rl"), "--preferences", str(run / "prefs"), "--output_dir", str(run / "rm")])


def _rlhf_config(cfg: SpeedrunConfig, run: Path):
    """The last stage: its policy is the run's final model."""
    from hfstack.rlhf_training import RLHFConfig

    return stage_config(RLHFConfig, cfg, "rlhf", [
        "--model", str(run / "rl"), "--reward_model", str(run / "rm"), "--output_dir", str(run / "rlhf")])


def _report_config(cfg: SpeedrunConfig, run: Path):
    from hfstack.reportcard import ReportConfig

    return ReportConfig(run=str(run))


def _runner(module: str, name: str, command: str | None = None):
    """Run hfstack.<module>.<name> on the step's config; a training `command` may go through `train`."""
    def run_step(cfg: SpeedrunConfig, run: Path, stage_cfg) -> None:
        import importlib

        runner = getattr(importlib.import_module(f"hfstack.{module}"), name)
        if command:
            train(cfg, command, stage_cfg, runner)
        else:
            runner(stage_cfg)

    return run_step


STAGES = [
    ("crawl", Step(_crawl_config, _crawl, "crawl", "crawl", claims=False)),
    ("data", Step(_data_config, _runner("web.pipeline", "run_data"), "data", "data")),
    ("tokenizer", Step(_tokenizer_config, _runner("tokenization", "run_tokenizer"), "tokenizer", "tokenizer")),
    ("pretrain", Step(_pretrain_config, _runner("pretraining", "run_pretrain", "pretrain"), "base", "pretrain")),
    ("generate", Step(lambda cfg, run: SamplesConfig(model=str(run / "base")), _generate, "generate", "generate",
                      claims=False)),
    ("regurgitation", Step(_regurgitation_config, _runner("generation", "regurgitation"), "regurgitation",
                           "regurgitation", claims=False)),
    ("sft", Step(_sft_config, _runner("finetuning", "run_sft", "sft"), "sft", "sft")),
    ("eval", Step(_eval_config("sft", "eval"), _runner("evaluation", "evaluate"), "eval", "eval", claims=False)),
    ("rl", Step(_rl_config, _runner("reinforcement", "run_rl", "rl"), "rl", "rl")),
    ("rank", Step(_rank_config, _runner("ranking", "rank"), "prefs", "rank")),
    ("reward", Step(_reward_config, _runner("reward_model", "run_reward", "reward"), "rm", "reward")),
    ("rlhf", Step(_rlhf_config, _runner("rlhf_training", "run_rlhf", "rlhf"), "rlhf", "rlhf")),
    # the final model on the SFT model's held-out sets: what RL and RLHF cost or gained
    ("final-eval", Step(_eval_config("rlhf", "final-eval"), _runner("evaluation", "evaluate"), "final-eval", "eval",
                        claims=False)),
    ("report", Step(_report_config, _runner("reportcard", "report"), "report", "report")),
]


def claim_run(cfg: SpeedrunConfig) -> Path:
    """RUN itself: never $HOME or a root, and a non-empty folder only if a speedrun made it."""
    run = Path(cfg.output_dir)  # `~` already expanded when the config was built
    check_output_dir("speedrun", run)
    if run.is_dir() and any(run.iterdir()) and not (run / "speedrun.yaml").is_file():
        raise ConfigError(f"speedrun: {run} is not empty and no speedrun made it (no speedrun.yaml); choose a new "
                          "or empty --output_dir")
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run, "speedrun.yaml")
    return run


def speedrun(cfg: SpeedrunConfig) -> Path:
    run = claim_run(cfg)
    for name, step in STAGES:
        if name == "crawl" and _default_input(cfg, run) == []:
            continue
        stage_cfg = step.config(cfg, run)
        folder = run / step.folder
        # without --force a step is skipped only when done with the same settings and inputs, and
        # one whose folder holds a different run stops the speedrun rather than mixing the two
        stored = "none" if cfg.force else stored_run(step.stage, stage_cfg, folder)  # "none", "same", or fields
        if stored not in ("none", "same"):
            raise ConfigError(f"speedrun: {name}: {folder} was made with different settings ({', '.join(stored)}); "
                              "rerun with --force to recompute, or choose another --output_dir")
        if stored == "same" and is_done(run / name) and is_done(folder):
            print(f"[speedrun] {name}: already done, skipping ({folder})")
            continue
        print(f"[speedrun] {name}: starting", flush=True)
        started = time.time()
        clear_done(run / name)  # a kill from here on leaves the step not done (RUN/pretrain is not base's folder)
        if not step.claims:  # --force recomputes: the earlier run's files go, unknown ones stay
            claim_output(step.stage, stage_cfg, overwrite=cfg.force, folder=folder)
        step.run(cfg, run, stage_cfg)
        if not step.claims:
            finish_output(folder, step.stage)
        (run / name).mkdir(parents=True, exist_ok=True)  # RUN/pretrain, RUN/rank, RUN/reward hold only this marker
        mark_done(run / name, name, seconds=round(time.time() - started, 1))
        print(f"[speedrun] {name}: done in {time.time() - started:.1f}s", flush=True)
    print(f"[speedrun] finished: {run}")
    return run
