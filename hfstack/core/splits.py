"""The one held-out rule: an item is held out by a stable hash of its key, so the same items are held
out on every run, machine and Python version (Python's own `hash` is salted per process).

    stable_split("some document text", 0.1)  # True for about one key in ten, always the same ones

Every split uses it: pretraining documents (packing, tokenizer, regurgitation), the tasks' items and
phrasings, knowledge and search questions, and ranked prompts. Tested in tests/unit/test_tasks.py.

The tasks and `hfstack rank` used to hash into 1,000 buckets (documents already used these 10,000);
moving them onto this rule changed which task items, phrasings and ranked prompts are held out.
"""

from __future__ import annotations

import zlib

BUCKETS = 10_000  # a fraction is honoured to 1/10,000


def stable_split(key: str, fraction: float) -> bool:
    """Whether `key` is on the held-out side of a `fraction` split: crc32 of its UTF-8 bytes (a lone
    surrogate becomes '?', so any str works) into 10,000 buckets, the first `fraction` of them held out."""
    return zlib.crc32(key.encode("utf-8", "replace")) % BUCKETS < fraction * BUCKETS
