"""hfstack: build your own ChatGPT, from a raw web crawl onwards, on the Hugging Face stack.

Every stage is a plain function taking its config dataclass:

    import hfstack
    hfstack.data(hfstack.DataConfig(input=["crawl/*.warc.gz"], output_dir="runs/me/data"))
    hfstack.tokenizer(hfstack.TokenizerConfig(input=["runs/me/data"], output_dir="runs/me/tokenizer"))
    hfstack.speedrun(hfstack.SpeedrunConfig(preset="tiny"))
    hfstack.sft(hfstack.recipe("sft", "tiny", max_steps=10))

The names come from the one registry of stages (hfstack/stages/__init__.py) and are resolved lazily,
so `import hfstack` stays instant.
"""

import functools

__version__ = "0.1.0"

_EXTRAS = {
    "recipe": ("hfstack.stages", "recipe"),
    "ConfigError": ("hfstack.core.config", "ConfigError"),
    "load_config": ("hfstack.core.config", "load_config"),
}


@functools.cache
def _exports() -> dict[str, tuple[str, str]]:
    """public name -> (module, attribute): each stage's runner and config class, plus a few helpers."""
    from hfstack.stages import STAGES

    names = dict(_EXTRAS)
    for stage in STAGES:
        module = f"hfstack.stages.{stage.module}"
        names[stage.api] = (module, "run")
        names[stage.config] = (module, "Config")
    return names


def __getattr__(name):
    exports = _exports()
    if name not in exports:
        raise AttributeError(f"module 'hfstack' has no attribute '{name}'")
    import importlib

    module, attr = exports[name]
    return getattr(importlib.import_module(module), attr)


def __dir__():
    return sorted(set(globals()) | set(_exports()))
