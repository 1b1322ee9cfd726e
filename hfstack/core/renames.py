"""Renamed config keys. The training stages speak the names transformers and TRL users type
(`per_device_train_batch_size`, `logging_steps`, `model_name_or_path`, ...); hfstack's older names
still work everywhere a config is built (YAML, flags, Python, speedrun overrides) and print one line
saying which name to use instead.

    @renamed(micro_batch_size="per_device_train_batch_size", precision=("bf16", precision_to_bf16))
    @dataclass
    class PretrainConfig(TrainConfig): ...

Tests: python -m pytest -q tests/unit/test_config_names.py
"""

from __future__ import annotations

import functools
import sys

from hfstack.core.errors import ConfigError

_WARNED: set[tuple[str, str]] = set()


def renamed(**mapping):
    """Class decorator, above `@dataclass`: old key → new key, or → (new key, convert(value, where)).
    The table merges the base classes' (a training config inherits TrainConfig's) and the class's
    constructor accepts the old keys too."""
    def wrap(cls):
        table = {}
        for klass in reversed(cls.__mro__[1:]):
            table |= getattr(klass, "RENAMED", {})
        table |= {old: new if isinstance(new, tuple) else (new, None) for old, new in mapping.items()}
        cls.RENAMED = table
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **current_names(cls, kwargs, cls.__name__))

        cls.__init__ = __init__
        for old_name, (new_name, convert) in table.items():  # `cfg.model` still reads `cfg.model_name_or_path`
            if convert is None and old_name not in cls.__dataclass_fields__:
                setattr(cls, old_name, property(functools.partial(_read_renamed, old=old_name, new=new_name)))
        return cls

    return wrap


def _read_renamed(self, old: str, new: str):
    _warn(type(self).__name__, old, new)
    return getattr(self, new)


def _warn(source: str, old: str, new: str) -> None:
    if (source, old) not in _WARNED:
        _WARNED.add((source, old))
        print(f"hfstack: {source}: '{old}' is deprecated; use '{new}'", file=sys.stderr)


def current_names(cls, values: dict, source: str, warn: bool = True) -> dict:
    """`values` with every old key replaced by its current name (and value); both given is an error."""
    table = getattr(cls, "RENAMED", {})
    out = {}
    for key, value in values.items():
        if key not in table:
            out[key] = value
            continue
        new, convert = table[key]
        if new in values:
            raise ConfigError(f"{source}: '{key}' and '{new}' set the same field; keep only '{new}'")
        if warn:
            _warn(source, key, new)
        out[new] = convert(value, f"{source}: '{key}'") if convert else value
    return out


def precision_to_bf16(value, where: str) -> bool | None:
    """The old `precision: auto | bf16 | fp32` as transformers' `bf16` (None: bf16 where the GPU has it)."""
    choices = {"auto": None, "bf16": True, "fp32": False}
    if value not in choices:
        raise ConfigError(f"{where} must be one of auto, bf16, fp32 (now 'bf16: true|false'); got {value!r}")
    return choices[value]


def scheduler_name(value, where: str) -> str:
    """The old `schedule: wsd | cosine | constant` as transformers' `lr_scheduler_type`."""
    return SCHEDULERS.get(value, value)


SCHEDULERS = {"wsd": "warmup_stable_decay", "cosine": "cosine_with_min_lr", "constant": "constant_with_warmup"}
