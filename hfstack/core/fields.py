"""How a config field declares what it accepts: a numeric range (`bounded`, listed by `--help` and
checked when the config is built) or a model folder (`model_folder`, looked inside at once).

    max_steps: int = bounded(200, ge=1)
    model_name_or_path: str = model_folder("runs/tiny/base", must_exist=True)

Tests: python -m pytest -q tests/unit/test_bad_inputs.py
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hfstack.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: bounds (inclusive ge/le, exclusive gt/lt), plus an optional
    `unset` value outside them that means "no limit", and `why`, what an edge value means."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    unset: float | None = None
    why: str = ""

    def contains(self, value) -> bool:
        if self.unset is not None and value == self.unset:
            return True
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else ""
        high = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else ""
        if low and high:
            text = f"in {low}, {high}"  # interval notation: [ ] include the bound, ( ) exclude it
        elif low:
            text = (">= " if self.ge is not None else "> ") + low[1:]
        else:
            text = ("<= " if self.le is not None else "< ") + high[:-1]
        return text + (f", or {self.unset}" if self.unset is not None else "") + (f" ({self.why})" if self.why else "")


def bounded(default, *, ge=None, gt=None, le=None, lt=None, unset=None, why: str = ""):
    """A numeric field and its valid range, checked by `check_fields` and listed by `--help`:

        max_steps: int = bounded(200, ge=1)
        beta: float = bounded(0.05, ge=0, why="0 takes the KL leash off")
        limit: int = bounded(-1, ge=1, unset=-1, why="-1 reads everything")
    """
    return dataclasses.field(default=default, metadata={"range": Range(ge, gt, le, lt, unset, why)})


def model_folder(default, *, must_exist: bool = False):
    """A field naming a local model folder. A folder that holds a config.json must be loadable (valid
    JSON, weights beside it) as soon as the config is built. A missing folder is an error at once only
    with `must_exist` (stages that use the model right away); a recipe's training stages name folders
    that earlier stages of the run have not written yet, so those stages check when they load."""
    return dataclasses.field(default=default, metadata={"model_folder": "must_exist" if must_exist else "if_present"})


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_folder(path: str | Path, stage: str = "", what: str = "model") -> None:
    """A folder transformers can load without surprises: config.json parses (with a model_type) and a
    weights file is there; otherwise a one-line ConfigError naming the folder."""
    folder, prefix = Path(path).expanduser(), f"{stage}: " if stage else ""
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"{prefix}no {what} at '{path}' (expected config.json there; has the stage that writes "
                          "it finished?)")
    try:
        settings = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{prefix}{what} '{path}': config.json is unreadable ({e})") from None
    if not isinstance(settings, dict) or "model_type" not in settings:
        raise ConfigError(f"{prefix}{what} '{path}': config.json has no 'model_type'; is it a transformers model?")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"{prefix}{what} '{path}' has config.json but no weights ({' or '.join(WEIGHT_FILES)})")


SEED_RANGE = Range(ge=0, le=2**32 - 1, why="what torch and numpy accept")


def field_range(f: dataclasses.Field) -> Range | None:
    """The range declared with `bounded`; every field named `seed` gets the seeds' range."""
    return f.metadata.get("range") or (SEED_RANGE if f.name == "seed" else None)


def check_range(source: str, f: dataclasses.Field, value) -> None:
    bounds = field_range(f)
    if bounds is not None and not bounds.contains(value):
        raise ConfigError(f"{source}: '{f.name}' must be {bounds}, got {value}")
