"""The model card's YAML front matter (library, license, base model, datasets, tags) that the report
card and every push share."""

from __future__ import annotations


def card_front_matter(base_model: str | None = None, datasets: list[str] = ()) -> str:
    """Model-card metadata: the Hub reads the library, tags and lineage from it."""
    meta = ["library_name: transformers", "tags: [hfstack, text-generation]"]
    if base_model:
        meta.append(f"base_model: {base_model}")
    if datasets:
        meta.append("datasets: [" + ", ".join(datasets) + "]")
    return "---\n" + "\n".join(meta) + "\n---\n\n"
