"""How one dataset row becomes the row a stage trains on, whatever its layout: chat `messages` (SFT),
RL prompts (`prompt` as messages, the other columns kept for reward functions), or TRL's preference
pairs (prompt, chosen, rejected). A row whose text spells a protocol token comes back as None (the
caller drops and counts it); a row in no known layout is a one-line ConfigError naming it.

    convert_row({"conversations": [...]}, "chat", columns=None, where="dataset 'x' row 3")

Used by hfstack.dataprep.dataset_mixture. Tests: python -m pytest -q tests/unit/test_dataset_mixture.py
"""

from __future__ import annotations

from hfstack.core.config import ConfigError
from hfstack.core.protocol import contains_protocol_token
from hfstack.dataprep.mixture import LAYOUTS, check_messages, has, layout_messages

KINDS = ("chat", "prompts", "preferences")
KIND_LAYOUTS = {"chat": LAYOUTS,
                "prompts": "prompt (a string or messages), messages, conversations, question, instruction/input",
                "preferences": "chosen/rejected, with an optional prompt (TRL's preference format)"}


def _pick(row: dict, columns, where: str) -> dict:
    if columns is None:
        return row
    pairs = list(columns.items()) if isinstance(columns, dict) else [(c, c) for c in columns]
    missing = [source for source, _ in pairs if source not in row]
    if missing:
        raise ConfigError(f"{where}: no column(s) {missing} (from 'columns'); it has {', '.join(sorted(row))}")
    return {target: row[source] for source, target in pairs}


def _plain(messages: list[dict]) -> list[dict]:
    """Messages without their empty fields, as prompts and preference pairs hold them."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _chat_row(row: dict, where: str) -> dict | None:
    messages = layout_messages(row, where)
    return None if messages is None else {"messages": messages}


def _prompt_row(row: dict, where: str) -> dict | None:
    """{"prompt": messages, **the other columns}; a conversation is cut before its last assistant message."""
    rest = dict(row)
    if has(row, "prompt"):
        value = rest.pop("prompt")
        prompt = check_messages([{"role": "user", "content": value}] if isinstance(value, str) else value, where)
    elif has(row, "messages") or has(row, "conversations"):
        key = "messages" if has(row, "messages") else "conversations"
        messages = layout_messages({key: rest.pop(key)}, where)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        prompt = messages[:last]
    elif has(row, "question") or has(row, "instruction"):
        key = "question" if has(row, "question") else "instruction"
        text, extra = rest.pop(key), rest.pop("input", None) if key == "instruction" else None
        text = f"{text}\n\n{extra}" if isinstance(extra, str) and extra.strip() else text
        prompt = check_messages([{"role": "user", "content": text}], where)
    else:
        return None
    if not prompt:
        raise ConfigError(f"{where}: the prompt is empty (the conversation starts with the assistant)")
    return {"prompt": _plain(prompt), **rest}


def _preference_row(row: dict, where: str) -> dict | None:
    """TRL's preference format. Conversations that start with the prompt (implicit prompt) are split at
    the end of what chosen and rejected share; a pair mixing strings and messages becomes all messages."""
    if not (has(row, "chosen") and has(row, "rejected")):
        return None
    pair = {"prompt": row.get("prompt"), "chosen": row["chosen"], "rejected": row["rejected"]}
    for key, value in pair.items():
        if value is not None and not isinstance(value, (str, list)):
            raise ConfigError(f"{where}: '{key}' must be a string or a list of messages, got {type(value).__name__}")
    if isinstance(pair["chosen"], list) and isinstance(pair["rejected"], list):
        chosen, rejected = (_plain(check_messages(pair[k], where)) for k in ("chosen", "rejected"))
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared and chosen[0]["role"] != "assistant":  # the prompt is inside both (UltraFeedback): take it out
            pair = {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
    if any(isinstance(v, list) for v in pair.values()):
        pair = to_conversational(pair, where)
    return pair if pair["prompt"] is not None else {"chosen": pair["chosen"], "rejected": pair["rejected"]}


def to_conversational(pair: dict, where: str = "preferences") -> dict:
    """A preference pair as messages: a string prompt is a user message, a string answer an assistant one."""
    roles = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}
    return {key: value if value is None else _plain(check_messages(
        [{"role": roles[key], "content": value}] if isinstance(value, str) else value, where))
        for key, value in pair.items()}


CONVERTERS = {"chat": _chat_row, "prompts": _prompt_row, "preferences": _preference_row}
SEEN = {"chat": ("messages",), "prompts": ("prompt",), "preferences": ("prompt", "chosen", "rejected")}


def _token_in(value) -> str | None:
    """The first protocol token spelled out anywhere in a value's strings."""
    if isinstance(value, str):
        return contains_protocol_token(value)
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((token for v in values if (token := _token_in(v))), None)


def convert_row(row: dict, kind: str, columns, where: str) -> dict | None:
    """The row as `kind` wants it, or None when its text holds a protocol token (it is dropped)."""
    row = _pick(dict(row), columns, where)
    out = CONVERTERS[kind](row, where)
    if out is None:
        raise ConfigError(f"{where}: no known {kind} layout (expected {KIND_LAYOUTS[kind]}); keys: {sorted(row)}")
    return None if _token_in([out.get(key) for key in SEEN[kind]]) else out
