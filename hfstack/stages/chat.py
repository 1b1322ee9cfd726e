"""Talk to the assistant: interactively, or in batch over a file of conversations.

    hfstack chat --model RUN/sft
    hfstack chat --model RUN/sft --input prompts.jsonl --output answers.jsonl

Tool calls are executed (the Python sandbox) and their outputs shown. Interactively, the history
keeps each answer whole (its tool calls and their outputs, as the model trained on conversations),
and once the conversation outgrows the model's context window the oldest questions are left out.
The model's default system message comes from its chat template; `--system` replaces it. In batch
mode every input line holds a `messages` list (or a `prompt`), and every output line gives the final
`answer` and the `tool_calls` made; conversations are generated together in batches, with the KV cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.model import load_model
from hfstack.core.pretrained import resolve_model
from hfstack.core.renames import renamed
from hfstack.core.textfiles import read_jsonl
from hfstack.tools.loop import assistant_replies, context_window, default_tools, fit_window
from hfstack.tools.search import index_of_model


@renamed(model="model_name_or_path")
@dataclass
class ChatConfig:
    model_name_or_path: str = model_folder("runs/tiny/sft", must_exist=True)  # the assistant: a folder or a Hub id
    model_revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    input: str | None = None  # batch mode: jsonl with messages (or prompt) per line
    output: str | None = None  # batch mode: where answers go (default: stdout)
    system: str | None = None  # replaces the model's default system message
    max_new_tokens: int = bounded(128, ge=1)  # tokens per reply, tool calls and their outputs included
    temperature: float = bounded(0.0, ge=0, why="0 = greedy")  # sampling temperature
    max_tool_calls: int = bounded(3, ge=0, why="0: answer without tools")  # tool calls per reply
    batch_size: int = bounded(32, ge=1)  # batch mode: conversations generated together
    progress: bool = True  # a progress bar over the conversations answered (main process only)

    def __post_init__(self):
        check_fields(self, "chat")
        if self.input is not None and not Path(self.input).is_file():
            raise ConfigError(f"chat: --input '{self.input}' does not exist")


def _read_batch(path: str) -> list[list[dict]]:
    conversations = []
    for number, row in read_jsonl(path, "chat:"):
        messages = row.get("messages") or ([{"role": "user", "content": row["prompt"]}] if "prompt" in row else None)
        if not isinstance(messages, list) or not messages:
            raise ConfigError(f"chat: '{path}' line {number}: expected a 'messages' list or a 'prompt'")
        conversations.append(messages)
    return conversations


def chat(cfg: ChatConfig) -> list[dict] | None:
    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "chat")
    model, tokenizer = load_model(folder)
    tools = default_tools(index_of_model(folder))
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    if cfg.input is not None:
        conversations = [system + c if system and c[0]["role"] != "system" else c for c in _read_batch(cfg.input)]
        replies = assistant_replies(model, tokenizer, conversations, cfg.max_new_tokens, cfg.max_tool_calls,
                                    cfg.temperature, tools=tools, batch_size=cfg.batch_size,
                                    progress="chat" if cfg.progress else None)
        rows = [{"answer": r.answer, "tool_calls": r.tool_calls} for r in replies]
        text = "".join(json.dumps(row) + "\n" for row in rows)
        if cfg.output:
            Path(cfg.output).write_text(text, encoding="utf-8")
            print(f"[chat] {len(rows)} answers → {cfg.output}")
        else:
            print(text, end="")
        return rows
    from transformers import TextStreamer

    print("hfstack chat — empty line or Ctrl-D to quit")
    history, window = list(system), context_window(model)
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        history, dropped = fit_window(tokenizer, history + [{"role": "user", "content": question}], window,
                                      cfg.max_new_tokens)
        if dropped:
            print(f"({dropped} earlier question{'s' if dropped > 1 else ''} left out: the conversation no longer "
                  f"fit the model's {window}-token context window)")
        print("assistant> ", end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False)  # tool calls stay visible
        reply = assistant_replies(model, tokenizer, [history], cfg.max_new_tokens, cfg.max_tool_calls,
                                  cfg.temperature, tools=tools, streamer=streamer)[0]
        print()
        history += reply.messages()  # tool calls and outputs kept, as in training and on the chat page
    return None


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = ChatConfig
run = chat
