"""Config handling shared by every stage: one dataclass per stage, filled from YAML, CLI flags or Python.

    cfg = load_config(DataConfig, yaml_path="recipes/tiny/data.yaml", cli_args=["--tasks", "2"])
    hfstack data --config recipes/tiny/data.yaml --tasks 2     # the same, from the command line

CLI flags override YAML values, which override the dataclass defaults; a recipe can start from
another with `extends: other.yaml` and list only what it changes. Unknown keys are a one-line
`ConfigError` that names the key and lists the valid ones.

Validation happens when the config is built, before a stage does any work: `_coerce` turns each
value into its declared type (no null where the type has no `| None`, no NaN or infinity, a
`Literal` lists its choices); each stage's `__post_init__` calls `check_fields` first, which checks
the ranges declared on the fields themselves with `bounded(...)`, refuses an empty name where the
default is a name, and looks inside model folders declared with `model_folder(...)`. The stage then
checks what involves several fields, and writes the resolved config next to its output with
`save_config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hfstack.core.errors import ConfigError
from hfstack.core.fields import Range as Range  # re-exported: stages declare fields through hfstack.core.config
from hfstack.core.fields import bounded as bounded
from hfstack.core.fields import check_model_folder, check_range
from hfstack.core.fields import model_folder as model_folder
from hfstack.core.pretrained import is_local
from hfstack.core.renames import current_names

T = TypeVar("T")


def expand_home(value):
    """`~/x` as the home directory's x (also inside a list of paths); other values as they are."""
    if isinstance(value, list):
        return [expand_home(v) for v in value]
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def check_fields(cfg, stage: str) -> None:
    """What every stage config checks first in `__post_init__`, so it holds when built from Python too:
    no null where the type has no `| None`, finite floats, each `bounded` range, no empty name where
    the default is one (an empty path would silently mean the current directory); then model folders,
    last, so a mistyped number is reported before anything on disk is looked at."""
    hints = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        if f.name not in hints:
            continue
        value, (base, optional) = getattr(cfg, f.name), _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(base) and isinstance(value, dict):  # built in Python with a plain dict
            setattr(cfg, f.name, value := nested(f.name, value, base))
        if value is None:
            if optional:
                continue
            raise ConfigError(f"{stage}: field '{f.name}': expected {_type_name(base)}, got null")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{stage}: field '{f.name}': expected a finite number, got {value}")
        check_range(stage, f, value)
        if isinstance(value, str) and value.startswith("~") or isinstance(value, list):
            setattr(cfg, f.name, value := expand_home(value))  # neither YAML nor `--field=~/x` expands it
        if base is str and value == "" and isinstance(f.default, str) and f.default:
            raise ConfigError(f"{stage}: '{f.name}' is empty; it names something (default: '{f.default}')")
    for f in dataclasses.fields(cfg):
        folder, value = f.metadata.get("model_folder"), getattr(cfg, f.name)
        if folder and value and is_local(value) and (folder == "must_exist"
                                                     or (Path(value).expanduser() / "config.json").exists()):
            plain = f.name in ("model", "model_name_or_path")
            check_model_folder(value, stage, "model" if plain else f"model ('{f.name}')")


def check_values(cls, values: dict[str, Any], source: str) -> None:
    """Names, types and ranges of some of a config's fields (a speedrun's overrides for a stage) without
    building the config, whose other fields are only known when the stage runs."""
    field_types, fields = _field_types(cls), {f.name: f for f in dataclasses.fields(cls)}
    for key, raw in current_names(cls, values, source).items():
        if key not in field_types:
            raise unknown_key(source, key, cls)
        value = _coerce(key, raw, field_types[key])
        if value is not None:
            check_range(source, fields[key], value)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unwrap_optional(tp):
    """`int | None` -> (int, True); anything else -> (tp, False)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007 - built at run time
    return tp, False


def _is_list(tp) -> bool:
    return typing.get_origin(_unwrap_optional(tp)[0]) in (list, tuple)


def _coerce(name: str, value: Any, tp) -> Any:
    """Convert a YAML or CLI value to the field's declared type, or raise ConfigError naming the field."""
    base, optional = _unwrap_optional(tp)
    if optional and (value is None or isinstance(value, str) and value.lower() in ("none", "null")):
        return None
    if value is None:  # YAML `key: ~` or `key:` on a field that needs a value
        raise ConfigError(f"field '{name}': expected {_type_name(base)}, got null")
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
            if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                raise ValueError  # int(2.5) would quietly train 2 steps
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"field '{name}': expected a finite number, got {value!r}")
            return number
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
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError as e:
                    raise ConfigError(f"field '{name}': not a valid YAML mapping ({str(e).splitlines()[0]})") from None
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if dataclasses.is_dataclass(base):  # a nested config (sft's identity, first_phase): a mapping of its fields
            return nested(name, value, base)
        if origin is typing.Literal:
            if value not in typing.get_args(base):
                choices = ", ".join(str(c) for c in typing.get_args(base))
                raise ConfigError(f"field '{name}': expected one of: {choices}; got {value!r}")
            return value
    except ConfigError:
        raise  # already names the field and what was expected
    except (TypeError, ValueError):
        raise ConfigError(f"field '{name}': expected {_type_name(tp)}, got {value!r}") from None
    return value


def nested(name: str, value: Any, cls):
    """A nested config from a mapping (YAML, or `--name '{key: value}'` on the command line), with the
    same unknown-key, type and range checks as a stage's own fields."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if not isinstance(value, dict):
        raise ConfigError(f"field '{name}': expected a mapping of {cls.__name__} fields, got {value!r}")
    return from_dict(cls, value, f"field '{name}'")


def _type_name(tp) -> str:
    base, optional = _unwrap_optional(tp)
    if dataclasses.is_dataclass(base):
        names = ", ".join(f.name for f in dataclasses.fields(base))
        return f"mapping of {names}" + (" or none" if optional else "")
    if typing.get_origin(base) is typing.Literal:
        return "one of: " + ", ".join(str(c) for c in typing.get_args(base)) + (" or none" if optional else "")
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


def nearest(key: str, valid) -> str | None:
    """The valid name closest to a mistyped `key`, if any is close."""
    import difflib

    matches = difflib.get_close_matches(key, sorted(valid), n=1)
    return matches[0] if matches else None


def unknown_key(source: str, key: str, cls) -> ConfigError:
    """The error for a key the config does not have: the nearest valid one first, then all of them."""
    valid = sorted(_field_types(cls))
    hint = f"did you mean '{close}'? " if (close := nearest(key, valid)) else ""
    return ConfigError(f"{source}: unknown key '{key}' for {cls.__name__}; {hint}valid keys: {', '.join(valid)}")


def field_default(f: dataclasses.Field):
    """A field's default value (a fresh one from its factory), or dataclasses.MISSING."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a dict, rejecting unknown keys with the list of valid ones (a renamed key is
    taken under its current name, with a deprecation line)."""
    values = current_names(cls, values, source)
    field_types = _field_types(cls)
    for key in values:
        if key not in field_types:
            raise unknown_key(source, key, cls)
    kwargs = {k: _coerce(k, v, field_types[k]) for k, v in values.items()}
    return cls(**kwargs)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe's options. `extends: other.yaml` (relative to this file) starts from that recipe's
    options and overrides them key by key, so a variant lists only what it changes; a mapping such
    as `counts` is replaced whole, not merged, so the variant reads as exactly what runs."""
    return read_recipe(path)[0]


def read_recipe(path: str | Path, _extended_by: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """`read_yaml`, plus the file each option came from, so an error can name the recipe that set it."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; expected a YAML recipe")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); expected a YAML recipe") from None
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
    if "config" in cli and not cli["config"]:
        raise ConfigError("option --config needs a recipe file, got an empty path")
    yaml_path = cli.pop("config", None) or yaml_path
    values, origins = read_recipe(yaml_path) if yaml_path else ({}, {})
    source = str(yaml_path) if yaml_path else "command line"
    for key in values:
        if key not in _field_types(cls) and key not in getattr(cls, "RENAMED", {}):
            from_dict(cls, {key: None}, str(origins[key]))  # the unknown-key error, naming the file that set it
    values = current_names(cls, values, source) | current_names(cls, cli, "command line")
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
        raise ConfigError(f"{stage}: cannot import {kind} '{path}' "
                          f"(expected 'package.module:function'): {e}") from None
