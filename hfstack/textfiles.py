"""Reading the project's text inputs: plain or gzipped text, and JSON lines with errors that name
the file and the line."""

from __future__ import annotations

import json
from typing import Iterator


def open_text(path: str):
    import gzip

    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def read_jsonl(path: str, label: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for every non-blank line. A line that does not parse is a
    ConfigError reading "<label> '<path>' line N: not a JSON object"."""
    from hfstack.config import ConfigError

    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{label} '{path}' line {number}: not a JSON object") from None
            yield number, value
