"""Config handling shared by every stage: one dataclass per stage, filled from YAML, CLI flags or Python.

    cfg = load_config(DataConfig, yaml_path="recipes/tiny/data.yaml", cli_args=["--tasks", "2"])

CLI flags override YAML values, which override the dataclass defaults; a recipe can start from
another with `extends: other.yaml` and list only what it changes. Unknown keys are a one-line
`ConfigError` that names the key and lists the valid ones. Each stage validates its own fields in
`__post_init__` and writes the resolved config next to its output with `save_config`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem the user can fix: the message names the file/field and what was expected."""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unwrap_optional(tp):
    """`int | None` -> (int, True); anything else -> (tp, False)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _is_list(tp) -> bool:
    return typing.get_origin(_unwrap_optional(tp)[0]) in (list, tuple)


def _coerce(name: str, value: Any, tp) -> Any:
    """Convert a YAML or CLI value to the field's declared type, or raise ConfigError naming the field."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        return None
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin in (list, tuple):
            (item_tp,) = typing.get_args(base)[:1] or (Any,)
            items = value if isinstance(value, (list, tuple)) else [value]
            return [_coerce(name, v, item_tp) if item_tp is not Any else v for v in items]
        if origin is dict or base is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if typing.get_origin(base) is typing.Literal:
            if value not in typing.get_args(base):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"field '{name}': expected {_type_name(tp)}, got {value!r}") from None
    return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_cli_args(args: list[str], field_types: dict[str, Any]) -> dict[str, Any]:
    """Parse `--key value`, `--key=value`, `--flag` (bool) and `--list a b c` into a dict of raw values."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}': stage options look like --name value")
        key, eq, inline = arg[2:].partition("=")
        key = key.replace("-", "_")
        values: list[str] = [inline] if eq else []
        i += 1
        while not eq and i < len(args) and not (args[i].startswith("--") and len(args[i]) > 2):
            values.append(args[i])
            i += 1
        tp = field_types.get(key)
        if tp is not None and _is_list(tp):
            out[key] = values
        elif not values:
            if tp is not None and _unwrap_optional(tp)[0] is not bool:
                raise ConfigError(f"option --{key} needs a value")
            out[key] = True
        elif len(values) == 1:
            out[key] = values[0]
        else:
            raise ConfigError(f"option --{key} takes one value, got {values}")
    return out


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a dict, rejecting unknown keys with the list of valid ones."""
    field_types = _field_types(cls)
    for key in values:
        if key not in field_types:
            valid = ", ".join(sorted(field_types))
            raise ConfigError(f"{source}: unknown key '{key}' for {cls.__name__}; valid keys: {valid}")
    kwargs = {k: _coerce(k, v, field_types[k]) for k, v in values.items()}
    return cls(**kwargs)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe's options. `extends: other.yaml` (relative to this file) starts from that recipe's
    options and overrides them key by key, so a variant lists only what it changes; a mapping such
    as `counts` is replaced whole, not merged, so the variant reads as exactly what runs."""
    return read_recipe(path)[0]


def read_recipe(path: str | Path, _extended_by: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """`read_yaml`, plus the file each option came from, so an error can name the recipe that set it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
    if "extends" not in data:
        return data, dict.fromkeys(data, path)
    parent = data.pop("extends")
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: 'extends' must name a recipe file, e.g. extends: sft.yaml; got {parent!r}")
    parent_path = path.parent / parent
    if not parent_path.is_file():
        raise ConfigError(f"{path}: 'extends' names {parent_path}, which does not exist")
    chain = _extended_by + (path.resolve(),)
    if parent_path.resolve() in chain:
        raise ConfigError(f"{path}: 'extends' loops back to {parent_path}")
    values, origins = read_recipe(parent_path, chain)
    return values | data, origins | dict.fromkeys(data, path)


def load_config(cls: type[T], yaml_path: str | Path | None = None, cli_args: list[str] | None = None) -> T:
    """Defaults < YAML < CLI flags. A `--config PATH` inside cli_args is honoured too."""
    cli = parse_cli_args(list(cli_args or []), _field_types(cls) | {"config": str})
    yaml_path = cli.pop("config", None) or yaml_path
    values, origins = read_recipe(yaml_path) if yaml_path else ({}, {})
    source = str(yaml_path) if yaml_path else "command line"
    for key in values:
        if key not in _field_types(cls):
            from_dict(cls, {key: None}, str(origins[key]))  # the unknown-key error, naming the file that set it
    values.update(cli)
    return from_dict(cls, values, source)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg, output_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config (all fields, after defaults and overrides) into the stage's output dir."""
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg), default=str)), sort_keys=False))
    return path


def import_object(path: str, stage: str, kind: str):
    """The function a config names by import path ("package.module:function"), e.g. a judge or a
    reward function; a path that does not import is a one-line ConfigError naming the stage and field."""
    import importlib

    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{stage}: cannot import {kind} '{path}' (expected 'package.module:function'): {e}") from None
