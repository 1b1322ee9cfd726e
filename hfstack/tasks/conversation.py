"""The pieces every task's conversations are built from: messages in TRL's format with one shared
schema, tool calls, a random opener and closer around a question, the held-out question templates,
and the conversation up to the question (what a model is asked to continue).

Used by the tasks in hfstack/tasks/ and by hfstack/dataprep (knowledge, the SFT mixture); tested
through tests/unit/test_tasks.py and tests/stages/test_sft.py.
"""

from __future__ import annotations

import random

from hfstack.core.protocol import TOOL_ARGUMENT
from hfstack.core.splits import held_out_quota


def message(role: str, content: str = "", tool_calls: list | None = None, name: str | None = None) -> dict:
    """One message with every field present, so a whole dataset shares one Arrow schema."""
    return {"role": role, "content": content, "tool_calls": tool_calls, "name": name}


def tool_call(tool: str, argument: str) -> dict:
    arguments = {key: (argument if key == TOOL_ARGUMENT[tool] else None) for key in TOOL_ARGUMENT.values()}
    return {"type": "function", "function": {"name": tool, "arguments": arguments}}


def python_turns(lead: str, code: str, output: str, answer: str) -> list[dict]:
    """Assistant calls Python, the tool answers, the assistant finishes: one turn in the protocol."""
    return [message("assistant", lead, [tool_call("python", code)]), message("tool", output, name="python"),
            message("assistant", answer)]


# Openers and closers around a question: users rarely ask in exactly a template's words.
OPENERS = ["", "", "", "Hi! ", "Hello. ", "Hey, ", "Quick question: ", "Excuse me, ", "So, ", "Tell me, ",
           "I wonder: ", "Good morning! "]
CLOSERS = ["", "", "", " Thanks!", " Please answer briefly.", " I'm curious.", " Just wondering."]


def dressed(rng: random.Random, question: str) -> str:
    return rng.choice(OPENERS) + question + rng.choice(CLOSERS)


def phrasings(templates: list[str], split: str, eval_fraction: float = 0.3) -> list[str]:
    """The templates a split may use: the eval split's (a quota of `eval_fraction`) are never trained
    on, so it measures paraphrases. All of them when there are too few to hold any out."""
    held = held_out_quota(templates, eval_fraction)
    chosen = [t for t in templates if (t in held) == (split == "eval")]
    return chosen or templates


def prompt_of(row: dict) -> list[dict]:
    """The conversation up to the last user turn (the question being asked), without empty fields."""
    messages = row["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return [{k: v for k, v in m.items() if v is not None} for m in messages[:last_user + 1]]
