"""See text the way the model sees it: tokens in alternating colours, their ids, and the counts.

    hfstack tokenize [--tokenizer DIR|cl100k] "some text"
    hfstack tokenize --file notes.txt
    hfstack tokenize --chat conversation.json [--html view.html]

`--chat` renders a conversation (a JSON list of messages, or {"messages": [...]}) through the
tokenizer's chat template, special tokens included, and marks the tokens the assistant is trained
on. `--html` writes the same view as a standalone page. Plain text never produces special tokens:
"<|user_start|>" typed by a user is just characters.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hfstack.core.config import ConfigError
from hfstack.ui.tokens import (
    Token,
    render_html,
    render_terminal,
    summary,
    tokens_of_chat,
    tokens_of_text,
)


@dataclass
class TokenizeConfig:
    text: str | None = None  # the text to show (the command's positional argument)
    file: str | None = None  # ...or a text file
    chat: str | None = None  # ...or a conversation JSON file, shown through the chat template
    tokenizer: str = "runs/tiny/tokenizer"  # a tokenizer directory, or 'cl100k' for GPT-4's
    html: str | None = None  # also write the view to this HTML file
    color: Literal["auto", "always", "never"] = "auto"  # colour the tokens; auto: when stdout is a terminal
    ids: bool = True  # print the id list under the tokens

    def __post_init__(self):
        given = [name for name in ("text", "file", "chat") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError("tokenize: give exactly one of TEXT, --file or --chat")
        for name in ("file", "chat"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"tokenize: --{name} '{path}' does not exist")
        if self.tokenizer != "cl100k" and not (Path(self.tokenizer) / "tokenizer.json").is_file():
            raise ConfigError(f"tokenize: no tokenizer at '{self.tokenizer}' (expected tokenizer.json there); "
                              f"train one with `hfstack tokenizer` or `hfstack speedrun`, or pass --tokenizer cl100k")


def load_conversation(path: str) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--chat '{path}': not valid JSON ({e})") from None
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ConfigError(f"--chat '{path}': expected a list of messages with a 'role' each, "
                          "or an object with a 'messages' list")
    return messages


def tokenize(cfg: TokenizeConfig) -> list[Token]:
    """Print the view (and write the page); returns the tokens."""
    if cfg.chat is not None:
        tokens = tokens_of_chat(cfg.tokenizer, load_conversation(cfg.chat), cfg.chat)
        title = f"{cfg.chat} through {cfg.tokenizer}"
    else:
        text = cfg.text if cfg.text is not None else Path(cfg.file).read_text(encoding="utf-8", errors="replace")
        tokens = tokens_of_text(cfg.tokenizer, text)
        title = f"{'text' if cfg.text is not None else cfg.file} through {cfg.tokenizer}"
    stats = summary(tokens, sum(len(t.data) for t in tokens))
    color = cfg.color == "always" or (cfg.color == "auto" and sys.stdout.isatty())
    print(render_terminal(tokens, color))
    print()
    if cfg.ids:
        print("ids:", " ".join(str(t.id) for t in tokens))
    print(stats)
    if cfg.html:
        Path(cfg.html).write_text(render_html(tokens, title, stats, cfg.ids), encoding="utf-8")
        print(f"wrote {cfg.html}")
    return tokens


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = TokenizeConfig
run = tokenize
