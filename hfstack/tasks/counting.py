"""The counting task: how many times a letter appears in a word, solved by spelling the word out with
a running count, or with the Python tool ("models can't count, and spelling is hard": they see
tokens, not letters). An answer is right when the number it ends on is the count; without tools,
when it ends "So 'word' has N 'x'." with the right N.

Words and question templates are split by `stable_split`, so the eval split asks about unseen words
in unseen phrasings. The training split also holds spelling rows (made by the spelling task), the skill
the spelled-out solution stands on. Taught by `hfstack sft`, trained by `hfstack rl`, measured by
`hfstack eval`; tested in tests/unit/test_tasks.py and tests/stages/test_sft.py.
"""

from __future__ import annotations

import random
import re
import string
from collections import defaultdict

from hfstack.core.splits import stable_split
from hfstack.tasks.base import Task, stated_number
from hfstack.tasks.conversation import dressed, message, phrasings, python_turns
from hfstack.tasks.spelling import spelling_row, word_list

COUNTING_PHRASINGS = ["How many '{c}' are in '{w}'?", "Count the letter {c} in the word {w}.",
                      "How many times does '{c}' appear in \"{w}\"?", "how many {c}s in {w}",
                      "In the word '{w}', how many {c}'s are there?", "Number of '{c}' letters in '{w}'?",
                      "Tell me how often {c} occurs in {w}.", "'{w}': how many '{c}'?",
                      "How many {c}'s does '{w}' have?", "Count how many times the letter '{c}' shows up in '{w}'.",
                      "What is the number of '{c}' in the word \"{w}\"?",
                      "How often does the letter {c} appear in {w}?",
                      "Can you count the {c}'s in '{w}'?", "Letter count: '{c}' in '{w}'?",
                      "How many occurrences of '{c}' are in '{w}'?", "Find the number of {c}'s in the word {w}."]
SPELLING_SHARE = 0.15  # of training rows: spelling questions, the skill the spelled-out count stands on


def letter_to_count(rng: random.Random, word: str) -> str:
    """A letter whose count in the word is 0, 1 or 2+, each as likely as the word allows. Picking a
    letter of the word at random makes 1 the answer two times in three, and a model that always
    says 1 would look good (RL on the tiny preset found that)."""
    by_count: dict[int, list[str]] = defaultdict(list)
    for letter in string.ascii_lowercase:
        by_count[min(word.count(letter), 2)].append(letter)
    return rng.choice(by_count[rng.choice(sorted(by_count))])


class CountingTask(Task):
    name = "counting"
    no_tool_prefill = "Spelling it out:"
    answer_form = r"^(There (is|are) \d+ '.' in '[a-z]+'\.|Spelling it out: .*So '[a-z]+' has \d+ '.'\.)$"

    def generate(self, n: int, seed: int, eval_fraction: float = 0.2, tool_fraction: float = 0.5,
                 **settings) -> dict[str, list]:
        """Half the answers call Python (`tool_fraction`), the others spell the word out."""
        rng = random.Random(seed)
        words = word_list()
        splits = {s: [w for w in words if stable_split(w, eval_fraction) == (s == "eval")] for s in ("train", "eval")}
        out: dict[str, list] = {"train": [], "eval": []}
        for split, pool in splits.items():
            for _ in range(n if split == "train" else int(n * eval_fraction)):
                word = rng.choice(pool)
                if split == "train" and rng.random() < SPELLING_SHARE:
                    out[split].append(spelling_row(rng, word))
                    continue
                letter = letter_to_count(rng, word)
                answer = word.count(letter)
                question = rng.choice(phrasings(COUNTING_PHRASINGS, split)).format(c=letter, w=word)
                if rng.random() < tool_fraction:
                    turns = python_turns("Let me count with Python.", f"print('{word}'.count('{letter}'))",
                                         str(answer),
                                         f"There {'is' if answer == 1 else 'are'} {answer} '{letter}' in '{word}'.")
                else:  # spell it out, keeping a running count where the letter appears
                    seen, steps = 0, []
                    for char in word:
                        seen += char == letter
                        steps.append(f"{char}" + (f" ({seen})" if char == letter else ""))
                    turns = [message("assistant", f"Spelling it out: {', '.join(steps)}. "
                                                  f"So '{word}' has {answer} '{letter}'.")]
                out[split].append({"messages": [message("user", dressed(rng, question)), *turns], "task": self.name,
                                   "answer": str(answer), "word": word})
        return out

    def score(self, row: dict, answer: str, no_tools: bool = False) -> bool:
        if no_tools:  # the spelled-out path ends with "has N 'x'"
            match = re.search(r"has (\d+) '.'\.?$", answer.strip())
            return bool(match) and match.group(1) == row["answer"]
        return stated_number(answer) == row["answer"]
