"""Judges that stand in for a person: the word-overlap judge for facts, the refusal check, the scripted
ranking judge, distinct-n for repetition; a user's own judge loads by dotted path."""

from __future__ import annotations

import re

from hfstack.core.config import import_object

_WORD = re.compile(r"[a-z0-9]{4,}")


def topic_of(prompt: str) -> str:
    match = re.search(r"about (.+?)[.?]?$", prompt) or re.search(r"^Describe (.+?) in", prompt)
    return (match.group(1) if match else prompt).lower().removeprefix("the ")


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the words: 1.0 for no repetition, near 0 for 'the the the'."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def reference_judge(prompt: str, completions: list[str]) -> list[float]:
    """The scripted person: on topic (mentions the prompt's subject), not repetitive (distinct
    bigrams), and not empty (up to 20 words). Also the held-out judge that watches for reward hacking."""
    topic = topic_of(prompt)
    scores = []
    for text in completions:
        words = len(text.split())
        scores.append(float(topic in text.lower()) + distinct_n(text) + 0.5 * min(words, 20) / 20)
    return scores


def load_judge(path: str):
    return import_object(path, "rank", "judge")


def word_overlap_judge(answer: str, reference: str) -> bool:
    """Correct when most of the reference's content words appear in the answer."""
    wanted = set(_WORD.findall(reference.lower()))
    return bool(wanted) and len(wanted & set(_WORD.findall(answer.lower()))) / len(wanted) >= 0.6


def is_refusal(answer: str) -> bool:
    """The answer declines ("I don't know", "not sure", "won't make something up"): the knowledge
    task's refusals, in any of their wordings."""
    return bool(re.search(r"don't know|do not know|not sure|won't make", answer.lower()))
