"""hfstack: build your own ChatGPT, from a raw web crawl onwards, on the Hugging Face stack.

Every stage is a plain function taking its config dataclass:

    import hfstack
    hfstack.data(hfstack.DataConfig(input=["crawl/*.warc.gz"], output_dir="runs/me/data"))
    hfstack.tokenizer(hfstack.TokenizerConfig(input=["runs/me/data"], output_dir="runs/me/tokenizer"))
    hfstack.speedrun(hfstack.SpeedrunConfig(preset="tiny"))

Names are resolved lazily, so `import hfstack` stays instant. Stage modules are named apart from
these functions (hfstack/tokenization.py, hfstack/speedrunner.py), so importing one never hides a
function.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": ("hfstack.web.config", "DataConfig"),
    "data": ("hfstack.web.pipeline", "run_data"),
    "TokenizerConfig": ("hfstack.tokenization", "TokenizerConfig"),
    "tokenizer": ("hfstack.tokenization", "run_tokenizer"),
    "TokenizeConfig": ("hfstack.tokenview", "TokenizeConfig"),
    "tokenize": ("hfstack.tokenview", "tokenize"),
    "PretrainConfig": ("hfstack.pretraining", "PretrainConfig"),
    "pretrain": ("hfstack.pretraining", "run_pretrain"),
    "GenerateConfig": ("hfstack.generation", "GenerateConfig"),
    "generate": ("hfstack.generation", "generate"),
    "RegurgitationConfig": ("hfstack.generation", "RegurgitationConfig"),
    "regurgitation": ("hfstack.generation", "regurgitation"),
    "SFTStageConfig": ("hfstack.finetuning", "SFTStageConfig"),
    "sft": ("hfstack.finetuning", "run_sft"),
    "ChatConfig": ("hfstack.chatting", "ChatConfig"),
    "chat": ("hfstack.chatting", "chat"),
    "EvalConfig": ("hfstack.evaluation", "EvalConfig"),
    "evaluate": ("hfstack.evaluation", "evaluate"),
    "RLConfig": ("hfstack.reinforcement", "RLConfig"),
    "rl": ("hfstack.reinforcement", "run_rl"),
    "RankConfig": ("hfstack.ranking", "RankConfig"),
    "rank": ("hfstack.ranking", "rank"),
    "RewardStageConfig": ("hfstack.reward_model", "RewardStageConfig"),
    "reward": ("hfstack.reward_model", "run_reward"),
    "RLHFConfig": ("hfstack.rlhf_training", "RLHFConfig"),
    "rlhf": ("hfstack.rlhf_training", "run_rlhf"),
    "ServeConfig": ("hfstack.serving", "ServeConfig"),
    "serve": ("hfstack.serving", "serve"),
    "ReportConfig": ("hfstack.reportcard", "ReportConfig"),
    "report": ("hfstack.reportcard", "report"),
    "PushConfig": ("hfstack.hub", "PushConfig"),
    "push": ("hfstack.hub", "push"),
    "recipe": ("hfstack.speedrunner", "recipe"),
    "SpeedrunConfig": ("hfstack.speedrunner", "SpeedrunConfig"),
    "speedrun": ("hfstack.speedrunner", "speedrun"),
    "SynthCrawlConfig": ("hfstack.web.synthetic", "SynthCrawlConfig"),
    "synth_crawl": ("hfstack.web.synthetic", "synth_crawl"),
    "ConfigError": ("hfstack.config", "ConfigError"),
    "load_config": ("hfstack.config", "load_config"),
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hfstack' has no attribute '{name}'")
    import importlib

    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)
