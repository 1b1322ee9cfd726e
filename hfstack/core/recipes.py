"""Where the presets and accelerate configs live: hfstack/recipes, package data, so a plain
`pip install` keeps `--preset tiny` and `--launcher accelerate` working from any folder (the
checkout's top-level recipes/ is a link to it)."""

from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def recipes_dir() -> Path:
    return RECIPES
