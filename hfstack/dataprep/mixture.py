"""The SFT conversation mixture: generated sources with a count each, plus chat datasets from files
or the Hub, all as TRL `messages` rows with one shared schema.

Chat files (jsonl) may hold `messages`, or a common layout that is mapped to it (`layout_messages`,
shared with the weighted mixtures of hfstack/dataprep/dataset_mixture.py): ShareGPT `conversations`
(`from`/`value`, or `role`/`content`), TRL's `prompt`/`completion` (strings, or lists of messages),
Alpaca `instruction`/`input`/`output`, `prompt`/`response`, `question`/`answer`.
A row that cannot be read is an error naming the file and line; nothing is dropped silently.

Tests: python -m pytest -q tests/stages/test_sft.py -k chat_files; tests/unit/test_dataset_mixture.py
"""

from __future__ import annotations

import os

from hfstack.core.config import ConfigError
from hfstack.core.launch import print0
from hfstack.core.protocol import contains_protocol_token
from hfstack.core.textfiles import check_hub_dataset, read_jsonl
from hfstack.tasks.conversation import message
from hfstack.tasks.identity import IdentityCard
from hfstack.tasks.registry import TASKS

# The tasks generated from the identity card alone (no corpus, no model), each with the offset of its
# own seeded stream (seed + offset), so that changing one source's count leaves the others'
# conversations as they were. Knowledge and search need the corpus: they come in through `extra`.
SEED_OFFSETS = {"identity": 0, "arithmetic": 1, "counting": 2, "spelling": 3, "multiturn": 4}
GENERATED_SOURCES = tuple(SEED_OFFSETS)
ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PAIR_LAYOUTS = [("prompt", "response"), ("instruction", "output"), ("question", "answer"), ("prompt", "completion")]
LAYOUTS = ("messages, conversations (ShareGPT), prompt/completion, instruction/input/output, prompt/response, "
           "question/answer")


def has(row: dict, key: str) -> bool:
    """The row has a value under `key` (a file whose rows differ in layout gives the missing keys as null)."""
    return row.get(key) is not None


def check_messages(messages, where: str) -> list[dict]:
    """Messages in the shared schema (`message`), after checking each has a known role and text content."""
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ConfigError(f"{where}: every message needs a role in {sorted(ROLES)}, got {m!r:.80}")
        content = m.get("content") or ""
        if not isinstance(content, str):
            raise ConfigError(f"{where}: message content must be a string")
        out.append(message(m["role"], content, m.get("tool_calls"), m.get("name")))
    return out


def _turns(value, role: str) -> list:
    """A prompt or completion: a string is one message of `role`, a list is already messages."""
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def layout_messages(row: dict, where: str) -> list[dict] | None:
    """The conversation a row holds in any known layout (`LAYOUTS`), checked; None when no layout fits."""
    if has(row, "messages"):
        return check_messages(row["messages"], where)
    if has(row, "conversations"):
        turns = row["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise ConfigError(f"{where}: 'conversations' must be a list of turns with from/value or role/content")
        return check_messages([{"role": SHAREGPT_ROLES.get(t.get("from"), t.get("from")), "content": t.get("value")}
                               if "from" in t else t for t in turns], where)
    if has(row, "prompt") and has(row, "completion"):  # TRL's prompt-completion, standard or conversational
        return check_messages(_turns(row["prompt"], "user") + _turns(row["completion"], "assistant"), where)
    if has(row, "instruction") and has(row, "output"):  # Alpaca: a non-empty input follows the instruction
        extra = row.get("input")
        text = f"{row['instruction']}\n\n{extra}" if isinstance(extra, str) and extra.strip() else row["instruction"]
        return check_messages([{"role": "user", "content": text}, {"role": "assistant", "content": row["output"]}],
                              where)
    for prompt, answer in PAIR_LAYOUTS:
        if has(row, prompt) and has(row, answer):
            return check_messages([{"role": "user", "content": row[prompt]},
                                   {"role": "assistant", "content": row[answer]}], where)
    return None


def row_to_messages(row: dict, where: str) -> list[dict]:
    messages = layout_messages(row, where)
    if messages is None:
        raise ConfigError(f"{where}: no 'messages' and no known layout ({LAYOUTS}); keys: {sorted(row)}")
    for m in messages:
        token = contains_protocol_token(m["content"])
        if token:
            raise ConfigError(f"{where}: the text contains the protocol token {token}; it would be read as "
                              "a real one. Remove or escape it")
    return messages


def load_chat_file(path: str, limit: int = -1) -> list[dict]:
    if not os.path.isfile(path):
        raise ConfigError(f"chat file '{path}' does not exist")

    rows = []
    for number, row in read_jsonl(path, "chat file"):
        rows.append({"messages": row_to_messages(row, f"chat file '{path}' line {number}"), "task": "chat"})
        if 0 <= limit <= len(rows):
            break
    return rows


def load_chat_hub(name: str, split: str = "train", limit: int = 1000) -> list[dict]:
    """A Hub chat dataset, streamed; skipped with a note when the Hub cannot be reached."""

    try:
        check_hub_dataset(name)
    except ConfigError as e:
        print0(f"[sft] skipping chat dataset: {e}")
        return []
    from datasets import load_dataset

    rows = []
    for index, row in enumerate(load_dataset(name, split=split, streaming=True)):
        if index >= limit:
            break
        rows.append({"messages": row_to_messages(row, f"hub dataset '{name}' row {index}"), "task": "chat"})
    return rows


def build_mixture(counts: dict, card: IdentityCard, chat_files: list[str], chat_hub: list[str], chat_limit: int,
                  seed: int, extra: dict | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """(training rows, held-out rows per task). Training rows are shuffled with the seed. `extra`
    holds already generated sources ({name: {"train": rows, "eval": rows}}), e.g. knowledge."""
    import random

    generated = (extra or {}) | {name: TASKS[name].generate(counts[name], seed + offset, card=card)
                                 for name, offset in SEED_OFFSETS.items() if counts.get(name, 0)}
    train = [row for name, splits in generated.items() if counts.get(name, 0) for row in splits["train"]]
    held_out = {name: splits["eval"] for name, splits in generated.items() if counts.get(name, 0) and splits["eval"]}
    for path in chat_files:
        train += load_chat_file(path, chat_limit)
    for name in chat_hub:
        train += load_chat_hub(name, limit=chat_limit if chat_limit > 0 else 1000)
    random.Random(seed).shuffle(train)
    return [{"messages": row["messages"]} for row in train], held_out
