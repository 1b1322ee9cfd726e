"""Speedrun: every stage that exists, in order, on one preset, each in RUN/<stage>/.

    hfstack speedrun [--preset tiny] [--output_dir runs/tiny]

Stages: crawl → data → tokenizer → pretrain (RUN/base) → generate → regurgitation → sft → eval →
rl → rank (RUN/prefs, a scripted judge) → reward (RUN/rm) → rlhf → final-eval (the SFT model's
held-out sets on the final model) → report; RUN/rlhf is the final model, and RUN/report the report
card (also the final model's README.md).
The tiny preset runs offline on CPU. A stage that left a completion marker is skipped, so rerunning
after an interruption continues where it stopped (and each stage resumes its own unfinished work).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hfstack.config import ConfigError, load_config, save_config
from hfstack.rundir import is_done, mark_done

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def recipes_dir() -> Path:
    """Recipes ship inside the package (hfstack/recipes) when installed, next to it in a checkout."""
    packaged = Path(__file__).resolve().parent / "recipes"
    return packaged if packaged.is_dir() else RECIPES


@dataclass
class SpeedrunConfig:
    preset: str = "tiny"
    output_dir: str | None = None  # default: runs/<preset>
    crawl_pages: int = 300  # size of the synthetic crawl used when the preset has no data input
    force: bool = False  # rerun stages even if they left a completion marker
    # per-stage field overrides on top of the preset's recipes, e.g. for a quick trial:
    #   --overrides '{pretrain: {max_steps: 20}, sft: {max_steps: 10}, eval: {limit: 10}}'
    overrides: dict = field(default_factory=dict)
    # training stages (pretrain, sft, rl, reward, rlhf) under `accelerate launch` on N processes
    launcher: str = "none"  # none | accelerate
    num_processes: int = 1
    launch_config: str | None = None  # default: recipes/accelerate/multi_gpu.yaml (GPUs) or cpu.yaml

    def __post_init__(self):
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


def stage_config(cls, cfg: SpeedrunConfig, stage: str, run_args: list[str], recipe_name: str | None = None):
    """The preset's recipe for a stage, the run's paths, then the speedrun's overrides for that stage."""
    from hfstack.config import from_dict

    path = recipes_dir() / cfg.preset / f"{recipe_name or stage}.yaml"
    loaded = load_config(cls, path if path.is_file() else None, run_args)
    return from_dict(cls, asdict(loaded) | cfg.overrides.get(stage, {}), f"speedrun overrides for {stage}")


def train(cfg: SpeedrunConfig, command: str, stage_cfg, runner, folder: Path) -> None:
    """Run a training stage in this process, or under `accelerate launch` when the speedrun says so:
    the resolved config goes to FOLDER/launch.yaml and `hfstack <command> --config` reads it back."""
    if cfg.launcher == "none":
        runner(stage_cfg)
        return
    import subprocess

    from hfstack.cli import launch_command

    folder.mkdir(parents=True, exist_ok=True)
    recipe_file = save_config(stage_cfg, folder, "launch.yaml")
    line = launch_command(command, cfg.num_processes, cfg.launch_config, ["--config", str(recipe_file)])
    print(f"[speedrun] {' '.join(line[2:])}", flush=True)
    if subprocess.call(line) != 0:
        raise ConfigError(f"speedrun: `{' '.join(line[2:])}` failed; see its output above")


def _crawl(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.web.synthetic import write_crawl

    summary = write_crawl(run / "crawl" / "crawl.warc.gz", pages=cfg.crawl_pages)
    print(f"[crawl] synthetic crawl: {summary.counts}")


def _data(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.web import DataConfig, run_data

    data_cfg = stage_config(DataConfig, cfg, "data", ["--output_dir", str(run / "data")] + _default_input(cfg, run))
    run_data(data_cfg)


def _default_input(cfg: SpeedrunConfig, run: Path) -> list[str]:
    from hfstack.config import read_yaml

    recipe = read_yaml(recipes_dir() / cfg.preset / "data.yaml")
    if recipe.get("input") or recipe.get("hub_dataset"):
        return []
    return ["--input", str(run / "crawl" / "*.warc.gz")]


def _tokenizer(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.tokenization import TokenizerConfig, run_tokenizer

    tok_cfg = stage_config(TokenizerConfig, cfg, "tokenizer",
                           ["--input", str(run / "data"), "--output_dir", str(run / "tokenizer")])
    run_tokenizer(tok_cfg)


def _pretrain(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.pretraining import PretrainConfig, run_pretrain

    pre_cfg = stage_config(PretrainConfig, cfg, "pretrain", ["--data", str(run / "data"), "--tokenizer",
                                                             str(run / "tokenizer"), "--output_dir", str(run / "base")])
    train(cfg, "pretrain", pre_cfg, run_pretrain, run / "base")


def _generate(cfg: SpeedrunConfig, run: Path) -> None:
    """The base model dreams documents from a few openings, and is asked a question the few-shot way."""
    import json

    from hfstack.generation import GenerateConfig, generate

    samples = []
    for prompt in ("The", "In this module,", "Python is"):
        text = generate(GenerateConfig(model=str(run / "base"), prompt=prompt, max_new_tokens=48, seed=0,
                                       temperature=0.8, stream=False))[0]
        samples.append({"prompt": prompt, "sample": text})
    answer = generate(GenerateConfig(model=str(run / "base"), as_assistant="What does the os module do?",
                                     max_new_tokens=48, temperature=0, stream=False))[0]
    samples.append({"as_assistant": "What does the os module do?", "answer": answer})
    (run / "generate" / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")


def _regurgitation(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.config import read_yaml
    from hfstack.generation import RegurgitationConfig, regurgitation

    held_out = read_yaml(run / "base" / "config.yaml")["val_fraction"]  # the documents pretraining never saw
    regurgitation(stage_config(RegurgitationConfig, cfg, "regurgitation", [
        "--model", str(run / "base"), "--data", str(run / "data"), "--val_fraction", str(held_out),
        "--output", str(run / "regurgitation" / "report.json")]))


def _sft(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.finetuning import SFTStageConfig, run_sft

    sft_cfg = stage_config(SFTStageConfig, cfg, "sft", ["--model", str(run / "base"), "--output_dir",
                                                        str(run / "sft"), "--facts_from", str(run / "data")])
    train(cfg, "sft", sft_cfg, run_sft, run / "sft")


def _eval(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.evaluation import EvalConfig, evaluate

    evaluate(stage_config(EvalConfig, cfg, "eval", ["--model", str(run / "sft"),
                                                    "--output", str(run / "eval" / "eval.json")]))


def _rl(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.reinforcement import RLConfig, run_rl

    train(cfg, "rl", stage_config(RLConfig, cfg, "rl", ["--model", str(run / "sft"), "--output_dir", str(run / "rl")]),
          run_rl, run / "rl")


def _rank(cfg: SpeedrunConfig, run: Path) -> None:
    """Offline, a scripted judge plays the person who ranks (the recipe names it)."""
    from hfstack.ranking import RankConfig, rank

    rank_cfg = stage_config(RankConfig, cfg, "rank", ["--model", str(run / "rl"), "--output_dir", str(run / "prefs")])
    if not rank_cfg.judge:
        raise ConfigError("speedrun: the rank recipe needs a scripted 'judge' (a person ranks with `hfstack rank`)")
    rank(rank_cfg)


def _reward(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.reward_model import RewardStageConfig, run_reward

    train(cfg, "reward", stage_config(RewardStageConfig, cfg, "reward", [
        "--model", str(run / "rl"), "--preferences", str(run / "prefs"), "--output_dir", str(run / "rm")]),
          run_reward, run / "rm")


def _rlhf(cfg: SpeedrunConfig, run: Path) -> None:
    """The last stage: its policy is the run's final model."""
    from hfstack.rlhf_training import RLHFConfig, run_rlhf

    train(cfg, "rlhf", stage_config(RLHFConfig, cfg, "rlhf", [
        "--model", str(run / "rl"), "--reward_model", str(run / "rm"), "--output_dir", str(run / "rlhf")]),
          run_rlhf, run / "rlhf")


def _final_eval(cfg: SpeedrunConfig, run: Path) -> None:
    """The final model on the same held-out sets as the SFT model: what RL and RLHF cost or gained."""
    from hfstack.evaluation import EvalConfig, evaluate

    evaluate(stage_config(EvalConfig, cfg, "eval", ["--model", str(run / "rlhf"),
                                                    "--output", str(run / "final-eval" / "eval.json")]))


def _report(cfg: SpeedrunConfig, run: Path) -> None:
    from hfstack.reportcard import ReportConfig, report

    report(ReportConfig(run=str(run)))


STAGES = [("crawl", _crawl), ("data", _data), ("tokenizer", _tokenizer), ("pretrain", _pretrain),
          ("generate", _generate), ("regurgitation", _regurgitation), ("sft", _sft), ("eval", _eval),
          ("rl", _rl), ("rank", _rank), ("reward", _reward), ("rlhf", _rlhf),
          ("final-eval", _final_eval), ("report", _report)]


def speedrun(cfg: SpeedrunConfig) -> Path:
    run = Path(cfg.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run, "speedrun.yaml")
    for name, stage in STAGES:
        if name == "crawl" and _default_input(cfg, run) == []:
            continue
        if is_done(run / name) and not cfg.force:
            print(f"[speedrun] {name}: already done, skipping ({run / name})")
            continue
        print(f"[speedrun] {name}: starting", flush=True)
        started = time.time()
        (run / name).mkdir(parents=True, exist_ok=True)
        stage(cfg, run)
        mark_done(run / name, name, seconds=round(time.time() - started, 1))
        print(f"[speedrun] {name}: done in {time.time() - started:.1f}s", flush=True)
    print(f"[speedrun] finished: {run}")
    return run
