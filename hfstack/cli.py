"""The `hfstack` command: one subcommand per stage, plus the speedrun.

    hfstack <stage> [--config recipe.yaml] [--any_field value ...]

Flags override the YAML, which overrides the stage's defaults. Heavy libraries are imported only
when a stage runs, so `hfstack --help` answers at once.
"""

from __future__ import annotations

import os
import sys

USAGE = """usage: hfstack <command> [--config recipe.yaml] [--field value ...]

Build your own ChatGPT, from a raw web crawl onwards, on the Hugging Face stack.

commands:
  speedrun      run every stage in order on a preset (--preset tiny, --output_dir RUN)
  data          web data pipeline: URL/HTTP/language/quality filters, dedup, parquet (datatrove)
  synth-crawl   write the offline synthetic crawl (--output FILE.warc.gz --pages N --seed S)
  tokenizer     train a byte-level BPE tokenizer with the chat protocol; compare it with GPT-4's
  tokenize      show text as tokens: hfstack tokenize [--tokenizer DIR] "text" | --file F | --chat C.json
  pretrain      train a causal LM from scratch (Trainer + Accelerate); works under `accelerate launch`
  generate      sample from a model: --prompt "..." or --as_assistant "question"; streams
  regurgitation measure how much of its training documents a model recites verbatim
  sft           finetune the base model into an assistant on a conversation mixture (TRL SFTTrainer)
  chat          talk to the assistant, with tools: interactively, or --input in.jsonl --output out.jsonl
  eval          score the assistant on its held-out sets: identity, arithmetic and counting (tools or not)
  teach         have a teacher model answer prompts into a conversation file for review and SFT
  rl            reinforcement learning on verifiable tasks, tools in the rollouts (TRL GRPO)
  rank          rank the policy's rollouts best to worst: in the browser, or with a scripted --judge
  reward        train a reward model on the rankings (TRL RewardTrainer); held-out pair accuracy
  rlhf          RL against the reward model with a KL leash: --algo rloo|grpo|ppo; reward-hacking watch
  report        the run's report card (Markdown + HTML + plots); it becomes the final model's card
  push          push the run's final model (and datasets, intermediate models) to the Hub
  serve         chat with the assistant in the browser: streaming, tool calls shown (127.0.0.1:7860)

Run `hfstack <command> --help` to list a command's fields and defaults, `hfstack --version` for the version.
Any stage runs on N processes with `--launcher accelerate --num_processes N [--launch_config FILE]`
(default FILE: recipes/accelerate/multi_gpu.yaml with GPUs, recipes/accelerate/cpu.yaml without).
"""


def _commands() -> dict:
    """name -> (config class loader, runner loader); imports happen only for the chosen command."""

    def data():
        from hfstack.web import DataConfig, run_data

        return DataConfig, run_data

    def speedrun():
        from hfstack.speedrunner import SpeedrunConfig, speedrun

        return SpeedrunConfig, speedrun

    def synth_crawl():
        from hfstack.web.synthetic import SynthCrawlConfig, synth_crawl

        return SynthCrawlConfig, synth_crawl

    def tokenizer():
        from hfstack.tokenization import TokenizerConfig, run_tokenizer

        return TokenizerConfig, run_tokenizer

    def tokenize():
        from hfstack.tokenview import TokenizeConfig, tokenize

        return TokenizeConfig, tokenize

    def pretrain():
        from hfstack.pretraining import PretrainConfig, run_pretrain

        return PretrainConfig, run_pretrain

    def generate():
        from hfstack.generation import GenerateConfig, generate

        return GenerateConfig, generate

    def regurgitation():
        from hfstack.generation import RegurgitationConfig, regurgitation

        return RegurgitationConfig, regurgitation

    def sft():
        from hfstack.finetuning import SFTStageConfig, run_sft

        return SFTStageConfig, run_sft

    def chat():
        from hfstack.chatting import ChatConfig, chat

        return ChatConfig, chat

    def teach():
        from hfstack.conversations.teacher import TeachConfig, teach

        return TeachConfig, teach

    def evaluate():
        from hfstack.evaluation import EvalConfig, evaluate

        return EvalConfig, evaluate

    def rl():
        from hfstack.reinforcement import RLConfig, run_rl

        return RLConfig, run_rl

    def rank():
        from hfstack.ranking import RankConfig, rank

        return RankConfig, rank

    def reward():
        from hfstack.reward_model import RewardStageConfig, run_reward

        return RewardStageConfig, run_reward

    def rlhf():
        from hfstack.rlhf_training import RLHFConfig, run_rlhf

        return RLHFConfig, run_rlhf

    def report():
        from hfstack.reportcard import ReportConfig, report

        return ReportConfig, report

    def push():
        from hfstack.hub import PushConfig, push

        return PushConfig, push

    def serve():
        from hfstack.serving import ServeConfig, serve

        return ServeConfig, serve

    return {"data": data, "speedrun": speedrun, "synth-crawl": synth_crawl, "tokenizer": tokenizer,
            "tokenize": tokenize, "pretrain": pretrain, "generate": generate, "regurgitation": regurgitation,
            "sft": sft, "chat": chat, "eval": evaluate, "teach": teach,
            "rl": rl, "rank": rank, "reward": reward, "rlhf": rlhf,
            "serve": serve, "report": report, "push": push}


POSITIONAL = {"tokenize": "text"}  # commands whose first bare argument fills a field


def _with_positional(command: str, args: list[str]) -> list[str]:
    """Turn the one bare argument into `--<field> value`; these commands' flags each take one value."""
    if command not in POSITIONAL:
        return args
    i = 0
    while i < len(args):
        if not args[i].startswith("--"):
            return ["--" + POSITIONAL[command], args[i], *args[:i], *args[i + 1:]]
        i += 1 if "=" in args[i] or i + 1 >= len(args) or args[i + 1].startswith("--") else 2
    return args


def _field_help(config_cls) -> str:
    """Every field: its type, default, valid range or choices, and the line of help its comment gives."""
    import dataclasses

    from hfstack.config import _field_types, _type_name, field_comments, field_range

    lines = [f"fields of {config_cls.__name__} (set in YAML or as --field value):"]
    types, comments = _field_types(config_cls), field_comments(config_cls)
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        kind = _type_name(types[f.name]) if f.name in types else "?"  # a Literal's name lists its choices
        bounds = field_range(f)  # declared with hfstack.config.bounded (and every seed's)
        line = f"  --{f.name:<22} {kind}, default {default!r}" + (f", {bounds}" if bounds else "")
        lines.append(line + (f"\n  {'':<24}{comments[f.name]}" if f.name in comments else ""))
    return "\n".join(lines)


DISTRIBUTED = {"pretrain", "sft", "rl", "reward", "rlhf"}  # stages that train on every launched process
# the speedrun's config has launcher/num_processes/launch_config fields of its own: it launches each
# training stage itself, so the flags are its fields rather than a relaunch of the whole run
SELF_LAUNCHING = {"speedrun"}
LAUNCH_FLAGS = ("--launcher", "--num_processes", "--launch_config")


def _pop_launch_flags(args: list[str]) -> tuple[dict, list[str]]:
    """Take `--launcher accelerate --num_processes N --launch_config FILE` out of a stage's flags."""
    launch, rest, i = {}, [], 0
    while i < len(args):
        flag = args[i].split("=", 1)[0]
        if flag in LAUNCH_FLAGS:
            value = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else "")
            launch[flag.lstrip("-")] = value
            i += 1 if "=" in args[i] else 2
        else:
            rest.append(args[i])
            i += 1
    return launch, rest


def _launch(command: str, launch: dict, args: list[str]) -> int:
    """Re-run this stage under `accelerate launch` on N processes."""
    import subprocess

    problem = None
    processes, config = launch.get("num_processes", ""), launch.get("launch_config")
    if launch.get("launcher") != "accelerate":
        problem = f"--launcher must be 'accelerate', got '{launch.get('launcher')}'"
    elif "num_processes" in launch and not (processes.isdigit() and int(processes) >= 1):
        problem = f"--num_processes must be a whole number >= 1, got '{processes}'"
    elif "launch_config" in launch and not (config and os.path.isfile(config)):
        problem = f"--launch_config '{config}' is not a file (an accelerate config YAML)"
    if problem:
        print(f"hfstack {command}: error: {problem}", file=sys.stderr)
        return 2
    return subprocess.call(launch_command(command, int(processes or 0), config, args))


def launch_command(command: str, num_processes: int, config: str | None, args: list[str]) -> list[str]:
    """`accelerate launch --config_file CONFIG [--num_processes N] -m hfstack COMMAND ARGS`; the default
    config is recipes/accelerate/multi_gpu.yaml on a GPU machine and cpu.yaml (gloo ranks) without."""
    if not config:
        import torch

        from hfstack.speedrunner import recipes_dir

        config = str(recipes_dir() / "accelerate" / ("multi_gpu.yaml" if torch.cuda.is_available() else "cpu.yaml"))
    line = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
    if num_processes:
        line += ["--num_processes", str(num_processes)]
    return line + ["-m", "hfstack", command, *args]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"hfstack {version()}")
        return 0
    command, args = argv[0], argv[1:]
    args = _with_positional(command, args)
    commands = _commands()
    if command not in commands:
        print(f"hfstack: error: unknown command '{command}'; choose from: {', '.join(commands)}", file=sys.stderr)
        return 2
    launch, args = ({}, args) if command in SELF_LAUNCHING else _pop_launch_flags(args)
    if launch:
        return _launch(command, launch, args)
    if (command not in DISTRIBUTED and int(os.environ.get("WORLD_SIZE", "1")) > 1
            and os.environ.get("RANK", "0") != "0"):
        return 0  # a single-process stage under `accelerate launch`: rank 0 does the work, the others stand by
    config_cls, runner = commands[command]()
    if "-h" in args or "--help" in args:
        print(f"usage: hfstack {command} [--config recipe.yaml] [--field value ...]\n")
        print(_field_help(config_cls))
        return 0
    from hfstack.config import load_config

    try:
        cfg = load_config(config_cls, cli_args=args)
        runner(cfg)
    except user_errors() as e:
        if os.environ.get("HFSTACK_DEBUG", "0") not in ("0", ""):
            raise  # the traceback, for whoever debugs hfstack itself
        print(f"hfstack {command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


def version() -> str:
    """The installed distribution's version; the package's own __version__ where it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("hfstack")
    except PackageNotFoundError:
        import hfstack

        return getattr(hfstack, "__version__", "unknown")


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix: a ConfigError, or a file that is missing, unreadable, a directory, or not
    text/JSON/YAML where a stage reads one. These print one line and exit 2; any other exception is a
    bug in hfstack and keeps its traceback."""
    import json

    import yaml

    from hfstack.config import ConfigError

    return (ConfigError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
            json.JSONDecodeError, UnicodeDecodeError, yaml.YAMLError)


def one_line(error: BaseException) -> str:
    """The error as one line that says what and where (an OSError's own text leads with its errno)."""
    import json

    from hfstack.config import ConfigError

    if isinstance(error, ConfigError):
        text = str(error)
    elif isinstance(error, OSError):
        text = f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
    elif isinstance(error, json.JSONDecodeError):
        text = f"an input file is not valid JSON ({error}); HFSTACK_DEBUG=1 shows which"
    elif isinstance(error, UnicodeDecodeError):
        text = f"an input file is not UTF-8 text ({error.reason} at byte {error.start}); HFSTACK_DEBUG=1 shows which"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
