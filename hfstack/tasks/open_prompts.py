"""Open-ended prompts with no checkable answer (jokes, poems, facts about a topic): what `hfstack rank`
has rolled out and ranked, and what `hfstack rlhf` trains on against the reward model."""

from __future__ import annotations

import random

from hfstack.core.config import ConfigError
from hfstack.core.textfiles import load_records

PROMPT_TEMPLATES = ["Tell me a joke about {topic}.", "Write a short poem about {topic}.",
                    "Describe {topic} in one sentence.", "What is interesting about {topic}?",
                    "Say something nice about {topic}.", "Give me a fun fact about {topic}."]
TOPICS = ["pelicans", "the sea", "coffee", "trains", "cats", "the moon", "bread", "rain", "music", "bicycles",
          "mountains", "books", "owls", "winter", "gardens", "rivers", "clocks", "honey", "bridges", "stars",
          "dogs", "tea", "islands", "robots", "snow", "apples", "lighthouses", "forests", "kites", "volcanoes"]


def open_prompts(prompts_file: str | None, num_prompts: int, seed: int, stage: str = "rank") -> list[str]:
    """The first `num_prompts` of the user's prompts file (a 'prompt' column), or of the built-in
    templates × topics shuffled by `seed`."""
    if prompts_file:
        rows = load_records(prompts_file, "train", "prompts file")
        if rows and "prompt" not in rows[0]:
            raise ConfigError(f"{stage}: prompts file '{prompts_file}' has no 'prompt' column")
        return [str(r["prompt"]) for r in rows][:num_prompts]
    everything = [t.format(topic=topic) for topic in TOPICS for t in PROMPT_TEMPLATES]
    random.Random(seed).shuffle(everything)
    return everything[:num_prompts]
