"""The one registry of hfstack's commands: each is a module hfstack/stages/<module>.py exporting `Config`
(its config dataclass) and `run(cfg)`. The CLI, `hfstack.<api>()`, `hfstack.recipe()` and the speedrun
all read this table; no stage imports another.

Importing this package imports no stage: `load()` imports the one asked for, so `hfstack --help`
stays instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from hfstack.core.config import ConfigError, from_dict, read_yaml
from hfstack.core.recipes import recipes_dir


@dataclass(frozen=True)
class Stage:
    command: str  # `hfstack <command>`
    module: str  # hfstack.stages.<module>
    api: str  # hfstack.<api>(cfg) in Python
    config: str  # hfstack.<config>: the config class's public name
    summary: str  # its line in `hfstack --help`
    trains: bool = False  # trains on every process `accelerate launch` starts (the others run on rank 0)


STAGES = (
    Stage("speedrun", "speedrun", "speedrun", "SpeedrunConfig",
          "run every stage in order on a preset (--preset tiny, --output_dir RUN)"),
    Stage("data", "data", "data", "DataConfig",
          "web data pipeline: URL/HTTP/language/quality filters, dedup, parquet (datatrove)"),
    Stage("synth-crawl", "synth_crawl", "synth_crawl", "SynthCrawlConfig",
          "write the offline synthetic crawl (--output FILE.warc.gz --pages N --seed S)"),
    Stage("tokenizer", "tokenizer", "tokenizer", "TokenizerConfig",
          "train a byte-level BPE tokenizer with the chat protocol; compare it with GPT-4's"),
    Stage("tokenize", "tokenize", "tokenize", "TokenizeConfig",
          'show text as tokens: hfstack tokenize [--tokenizer DIR] "text" | --file F | --chat C.json'),
    Stage("pretrain", "pretrain", "pretrain", "PretrainConfig",
          "train a causal LM from scratch (Trainer + Accelerate); works under `accelerate launch`", trains=True),
    Stage("generate", "generate", "generate", "GenerateConfig",
          'sample from a model: --prompt "..." or --as_assistant "question"; streams'),
    Stage("regurgitation", "regurgitation", "regurgitation", "RegurgitationConfig",
          "measure how much of its training documents a model recites verbatim"),
    Stage("trace", "trace", "trace", "TraceConfig",
          'which crawl documents a text comes from: hfstack trace --run RUN "text" (BM25, longest shared span)'),
    Stage("sft", "sft", "sft", "SFTStageConfig",
          "finetune the base model into an assistant on a conversation mixture (TRL SFTTrainer)", trains=True),
    Stage("chat", "chat", "chat", "ChatConfig",
          "talk to the assistant, with tools: interactively, or --input in.jsonl --output out.jsonl"),
    Stage("eval", "eval", "evaluate", "EvalConfig",
          "score the assistant on its held-out sets: identity, arithmetic and counting (tools or not)"),
    Stage("teach", "teach", "teach", "TeachConfig",
          "have a teacher model answer prompts into a conversation file for review and SFT"),
    Stage("rl", "rl", "rl", "RLConfig",
          "reinforcement learning on verifiable tasks, tools in the rollouts (TRL GRPO)", trains=True),
    Stage("rank", "rank", "rank", "RankConfig",
          "rank the policy's rollouts best to worst: in the browser, or with a scripted --judge"),
    Stage("reward", "reward", "reward", "RewardStageConfig",
          "train a reward model on the rankings (TRL RewardTrainer); held-out pair accuracy", trains=True),
    Stage("rm-attack", "rm_attack", "rm_attack", "RMAttackConfig",
          "red-team a reward model: answers it over-scores relative to the held-out judge (--reward_model_path DIR)"),
    Stage("rlhf", "rlhf", "rlhf", "RLHFConfig",
          "RL against the reward model with a KL leash: --algo rloo|grpo|ppo; reward-hacking watch", trains=True),
    Stage("dpo", "dpo", "dpo", "DPOStageConfig",
          "learn the rankings straight into the policy: --algo dpo|kto|orpo (TRL); held-out margins, watch",
          trains=True),
    Stage("honesty", "honesty", "honesty", "HonestyConfig",
          "every model of the run on held-out facts: right, refused, hallucinated, search on and off; alignment tax"),
    Stage("report", "report", "report", "ReportConfig",
          "the run's report card (Markdown + HTML + plots); it becomes the final model's card"),
    Stage("plan", "plan", "plan", "PlanConfig",
          "plan a preset: parameters, tokens, FLOPs, memory per device, fits, time (--gpus 8 --gpu h100)"),
    Stage("push", "push", "push", "PushConfig",
          "push the run's final model (and datasets, intermediate models) to the Hub"),
    Stage("serve", "serve", "serve", "ServeConfig",
          "the assistant behind an OpenAI-style API (/v1/chat/completions) and a chat page (127.0.0.1:7860)"),
    Stage("export", "export", "export", "ExportConfig",
          "write the model as one GGUF file for llama.cpp: --gguf OUT.gguf [--outtype f32|f16|bf16]"),
)
BY_COMMAND = {stage.command: stage for stage in STAGES}


def load(command: str) -> ModuleType:
    """The stage module behind `hfstack <command>` (imported now, with its libraries)."""
    if command not in BY_COMMAND:
        raise ConfigError(f"unknown command '{command}'; choose from: {', '.join(BY_COMMAND)}")
    return importlib.import_module(f"hfstack.stages.{BY_COMMAND[command].module}")


def config_class(command: str) -> type:
    return load(command).Config


def recipe(stage: str, preset: str = "tiny", **fields):
    """A stage's config from a preset's recipe, with `fields` on top: the Python twin of
    `hfstack <stage> --config recipes/<preset>/<stage>.yaml --field value`."""
    if stage not in BY_COMMAND:
        raise ConfigError(f"recipe: unknown stage '{stage}'; choose from {', '.join(BY_COMMAND)}")
    path = recipes_dir() / preset / f"{stage}.yaml"
    return from_dict(config_class(stage), (read_yaml(path) if path.is_file() else {}) | fields,
                     f"recipe {preset}/{stage}")
