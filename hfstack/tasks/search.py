"""The search task: the user asks for a search in so many words, the assistant calls the search tool
with the question, reads the passage it gets back and answers from it. An answer is right when it
holds most of the reference answer's content words (the word-overlap judge).

Its items are facts derived from the pretraining corpus, so `generate` needs the facts and the
search index (`hfstack sft` passes them when `counts` has `search`); a fact is held out by
`stable_split` of its question. Measured by `hfstack eval`; tested in tests/unit/test_tasks.py and
tests/stages/test_sft.py.
"""

from __future__ import annotations

import random

from hfstack.core.splits import stable_split
from hfstack.tasks.base import Task
from hfstack.tasks.conversation import message, tool_call
from hfstack.tasks.judges import word_overlap_judge

SEARCH_REQUESTS = ["Search your documents: {q}", "Look it up: {q}", "Can you search for this? {q}",
                   "Use search to answer: {q}", "{q} Please search for it."]


class SearchTask(Task):
    name = "search"

    def generate(self, n: int, seed: int, facts: list[dict] | None = None, index=None, eval_fraction: float = 0.2,
                 **settings) -> dict[str, list]:
        """Search traces for the first `n` facts ({"question", "answer"}) whose answer the index's top
        passage holds; the others are left out, as a trace would teach answering without evidence.

        The user asks for a search in so many words, so these never contradict the knowledge task's
        refusals, where the same kind of question without a request to search gets "I don't know"."""
        if facts is None or index is None:
            raise ValueError("the search task's conversations need `facts` and a search `index`")
        rng = random.Random(seed)
        out: dict[str, list] = {"train": [], "eval": []}
        for fact in facts[:n]:
            results = index.search_text(fact["question"])
            if fact["answer"][:40] not in results:  # only traces where the search finds the answer
                continue
            # the prefix gives search its own split of the questions, independent of the knowledge task's
            split = "eval" if stable_split("search:" + fact["question"], eval_fraction) else "train"
            out[split].append({"messages": [
                message("user", rng.choice(SEARCH_REQUESTS).format(q=fact["question"])),
                message("assistant", "Let me search for that.", [tool_call("search", fact["question"])]),
                message("tool", results, name="search"),
                message("assistant", fact["answer"])], "task": self.name, "answer": fact["answer"]})
        return out

    def score(self, row: dict, answer: str, no_tools: bool = False) -> bool:
        return word_overlap_judge(answer, row["answer"])
