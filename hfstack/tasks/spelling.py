"""The spelling task: spell a word out letter by letter ("Spell the word 'queue'." → "q-u-e-u-e"), the
skill the counting task's chain of thought stands on ("models can't count, and spelling is hard":
they see tokens, not letters). An answer is right when the last letter-by-letter spelling in it is
the word: a letter count, or the word written whole, is not a spelling.

Words come from the standard library's docstrings and are split by `stable_split` with the same key
as counting's, so a word held out of one is held out of both. There are too few question templates
to hold any out: the eval split measures unseen words. Counting's training split mixes these rows in.
Taught by `hfstack sft`, measured by `hfstack eval`; tested in tests/unit/test_tasks.py.
"""

from __future__ import annotations

import random
import re

from hfstack.core.splits import stable_split
from hfstack.core.stdlib_text import stdlib_articles
from hfstack.tasks.base import Task
from hfstack.tasks.conversation import message

SPELLING_PHRASINGS = ["Spell the word '{w}'.", "How do you spell {w}?", "Spell out \"{w}\" letter by letter."]
# single letters joined by hyphens, not inside a longer word ("x-ray" is no spelling)
_SPELLED = re.compile(r"(?<![A-Za-z-])[A-Za-z](?:-[A-Za-z])+(?![A-Za-z])")


def word_list(min_len: int = 4, max_len: int = 12, limit: int = 4000) -> list[str]:
    """Lower-case words from the standard library's docstrings: real English, available offline."""
    words = {w.lower() for _, paragraphs in stdlib_articles() for p in paragraphs
             for w in re.findall(r"[A-Za-z]+", p) if min_len <= len(w) <= max_len}
    return sorted(words)[:limit] if len(words) > limit else sorted(words)


def spelling_row(rng: random.Random, word: str) -> dict:
    """One question and its answer, the word's letters joined by hyphens."""
    question = rng.choice(SPELLING_PHRASINGS).format(w=word)
    return {"messages": [message("user", question), message("assistant", "-".join(word))], "task": "spelling",
            "answer": "-".join(word), "word": word}


def spelled_word(answer: str) -> str | None:
    """The word the last letter-by-letter spelling in the answer spells, lower-cased, or None."""
    spellings = _SPELLED.findall(answer)
    return spellings[-1].replace("-", "").lower() if spellings else None


class SpellingTask(Task):
    name = "spelling"
    # RL does not train on spelling (answer_form None): SFT teaches it, for counting to build on

    def generate(self, n: int, seed: int, eval_fraction: float = 0.2, **settings) -> dict[str, list]:
        rng = random.Random(seed)
        words = word_list()
        out: dict[str, list] = {"train": [], "eval": []}
        for split in out:
            pool = [w for w in words if stable_split(w, eval_fraction) == (split == "eval")]
            out[split] = [spelling_row(rng, rng.choice(pool))
                          for _ in range(n if split == "train" else int(n * eval_fraction))]
        return out

    def score(self, row: dict, answer: str, no_tools: bool = False) -> bool:
        word = row.get("word") or row["answer"].replace("-", "")  # RL rows carry only the answer
        return spelled_word(answer) == word.lower()
