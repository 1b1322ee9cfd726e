"""Teacher-written conversations: a stronger model answers prompts, a person reviews the file later.

    hfstack teach --model_name_or_path MODEL_DIR_OR_HUB_ID --prompts prompts.jsonl --output teacher.jsonl

The teacher is any Hugging Face causal LM with a chat template (a local directory or a Hub name).
Prompts are a jsonl of `prompt` (or `messages`) rows, or a text file with one prompt per line; a
row may carry `instructions` (labelling guidance), which becomes the teacher's system message. The
output is one `messages` row per prompt, with `"reviewed": false`, ready to edit and then to pass to
`hfstack sft` as a chat file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.pretrained import resolve_model
from hfstack.core.protocol import without_protocol_tokens
from hfstack.core.renames import renamed
from hfstack.core.textfiles import read_jsonl
from hfstack.tools.loop import assistant_replies


@renamed(teacher="model_name_or_path", model="model_name_or_path")
@dataclass
class TeachConfig:
    model_name_or_path: str = model_folder("")  # the teacher: a model folder or a Hub id, with a chat template
    model_revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    prompts: str = ""  # jsonl of prompt (or messages) rows, or a text file with one prompt per line
    output: str = "teacher.jsonl"  # the conversations written, one messages row per prompt
    instructions: str | None = None  # default labelling guidance for every prompt
    max_new_tokens: int = bounded(256, ge=1)  # tokens per teacher answer
    temperature: float = bounded(0.0, ge=0, why="0 = greedy")  # sampling temperature
    batch_size: int = bounded(16, ge=1)  # prompts answered together
    progress: bool = True  # a progress bar over the conversations answered (main process only)
    overwrite: bool = False  # replace an existing --output (a file people may already have reviewed)

    def __post_init__(self):
        check_fields(self, "teach")
        if not self.model_name_or_path:
            raise ConfigError("teach: set --model_name_or_path (the teacher: a model folder or Hub id with a chat "
                              "template)")
        if not Path(self.prompts).is_file():
            raise ConfigError(f"teach: --prompts '{self.prompts}' does not exist")
        output = Path(self.output)
        if output.exists() and not self.overwrite:
            raise ConfigError(f"teach: --output '{self.output}' exists (its rows may have been reviewed); "
                              "choose another file, or pass --overwrite true")
        if not output.parent.is_dir():
            raise ConfigError(f"teach: the folder of --output '{self.output}' does not exist")


def _prompt_rows(path: str):
    """(line number, row) from a jsonl file, or a {"prompt": line} row per line of a text file."""

    if path.endswith((".jsonl", ".json")):
        yield from read_jsonl(path, "teach:")
        return
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            yield number, {"prompt": line.strip()}


def read_prompts(path: str, instructions: str | None) -> list[list[dict]]:
    conversations = []
    for number, row in _prompt_rows(path):
        messages = row.get("messages") or [{"role": "user", "content": row.get("prompt", "")}]
        guidance = row.get("instructions", instructions)
        if not messages[-1].get("content"):
            raise ConfigError(f"teach: '{path}' line {number}: no prompt")
        conversations.append(([{"role": "system", "content": guidance}] if guidance else []) + messages)
    return conversations


def teach(cfg: TeachConfig) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "teach", "teacher")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    if not tokenizer.chat_template:
        raise ConfigError(f"teach: teacher '{cfg.model_name_or_path}' has no chat template")
    conversations = read_prompts(cfg.prompts, cfg.instructions)
    replies = assistant_replies(model, tokenizer, conversations, cfg.max_new_tokens, max_tool_calls=0,
                                temperature=cfg.temperature, tools={}, batch_size=cfg.batch_size,
                                progress="teach" if cfg.progress else None)
    rows = [{"messages": [m for m in conv if m["role"] != "system"] + [{"role": "assistant",
                                                                       "content": _clean(r.answer, tokenizer)}],
             "teacher": cfg.model_name_or_path, "reviewed": False} for conv, r in zip(conversations, replies)]
    Path(cfg.output).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"[teach] {len(rows)} conversations written by {cfg.model_name_or_path} → {cfg.output} "
          "(review, then use as chat_files)")
    return rows


def _clean(answer: str, tokenizer) -> str:
    """The answer as plain text: the teacher's own control tokens (and ours) removed."""

    return without_protocol_tokens(answer, also=tokenizer.all_special_tokens).strip()


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = TeachConfig
run = teach
