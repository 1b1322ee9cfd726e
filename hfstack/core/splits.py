"""The one held-out rule: an item is held out by a stable hash of its key, so the same items are held
out on every run, machine and Python version (Python's own `hash` is salted per process).

    stable_split("some document text", 0.1)  # True for about one key in ten, always the same ones
    held_out_quota(templates, 0.3)           # exactly 30% of a small set, the same ones every run

Every split uses it: pretraining documents (packing, tokenizer, regurgitation), the tasks' items,
knowledge and search questions, and ranked prompts. A handful of keys (a task's question templates,
an identity topic's phrasings) gets a quota instead, by the same hash: a per-key split of 17
templates held out 1 or 4 of them depending on the bucket count, and the held-out share is what
the eval measures paraphrase on. Tested in tests/unit/test_tasks.py.

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


def held_out_quota(keys: list[str], fraction: float) -> set[str]:
    """The held-out side of a small set: the round(fraction × n) keys with the lowest stable hash, at
    least one when there are two or more and `fraction` > 0, and never all of them."""
    if len(keys) < 2 or fraction <= 0:
        return set()
    count = min(len(keys) - 1, max(1, round(len(keys) * fraction)))
    return set(sorted(keys, key=lambda key: zlib.crc32(key.encode("utf-8", "replace")))[:count])
