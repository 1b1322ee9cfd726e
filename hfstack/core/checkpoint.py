"""Saving a checkpoint's tokenizer and generation settings so the folder serves anywhere: the inference
chat template (no `{% generation %}` tags), a tokenizer config transformers 4 loads as well as 5, and
a generation_config that stops plain `model.generate` at the end of an assistant turn.

Tests: python -m pytest -q tests/unit/test_templates.py tests/e2e/test_transformers4.py (the second
loads a saved folder with transformers 4: the same ids, chat render and logits as transformers 5).
"""

from __future__ import annotations

import json
from pathlib import Path

from hfstack.core.errors import ConfigError
from hfstack.core.protocol import END_OF_TURN
from hfstack.core.templates import inference_template
from hfstack.core.tokens import vocab_id

# the class transformers 5 writes for a tokenizer built from a tokenizers object; transformers 4 has no such
# class, and both versions load the same files as PreTrainedTokenizerFast
_V5_ONLY_CLASSES = {"TokenizersBackend", "TokenizersBackendFast"}


def save_tokenizer(tokenizer, folder) -> Path:
    """`tokenizer.save_pretrained(folder)`, with the inference chat template and a tokenizer_config.json
    that transformers 4 reads too: `tokenizer_class` PreTrainedTokenizerFast where transformers 5 wrote
    TokenizersBackend (a model's own class, e.g. Qwen2Tokenizer, stays), the extra special tokens as
    the `additional_special_tokens` list both versions read, and the chat template in the config as
    well as chat_template.jinja (transformers before 4.47 reads only the config). Returns the folder."""
    folder = Path(folder)
    template = tokenizer.chat_template
    if isinstance(template, dict):
        inference = {name: inference_template(text) for name, text in template.items()}
    else:
        inference = inference_template(template) if template else template
    try:  # transformers writes the templates (chat_template.jinja, chat_templates/) from the attribute
        tokenizer.chat_template = inference
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template = template
    config_path = folder / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"save_tokenizer: cannot read back {config_path} ({e})") from None
    if config.get("tokenizer_class") in _V5_ONLY_CLASSES:
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):  # transformers 4 reads a list here as a name -> token mapping and fails
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    if isinstance(inference, str):
        config["chat_template"] = inference
    elif isinstance(inference, dict):
        config["chat_template"] = [{"name": name, "template": text} for name, text in inference.items()]
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def turn_end_ids(tokenizer, generation_config=None) -> list[int]:
    """The ids that end an assistant turn: hfstack's end-of-turn token when the tokenizer has it as one
    token, then the tokenizer's eos, then a `generation_config`'s own eos ids (a chat model's turn end,
    Llama 3's <|eom_id|>); deduplicated, ints only."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = []
    for token_id in (vocab_id(tokenizer, END_OF_TURN), tokenizer.eos_token_id,
                     *(configured if isinstance(configured, (list, tuple)) else [configured])):
        if isinstance(token_id, int) and not isinstance(token_id, bool) and token_id not in ids:
            ids.append(token_id)
    return ids


def set_turn_end(model, tokenizer) -> None:
    """Set the model's generation_config so plain `model.generate` stops where an assistant turn ends:
    `eos_token_id` the turn-end ids (before the model's own, which stay), `pad_token_id` the tokenizer's
    pad (its eos when it has none), and `bos_token_id` when the tokenizer has one."""
    if not turn_end_ids(tokenizer):
        raise ConfigError("the tokenizer has neither an end-of-turn token nor an eos token; generation could "
                          "never stop at the end of a turn")
    # the model's own stop ids stay (Llama 3's <|eom_id|>, Qwen's <|endoftext|>): a chat model keeps every one
    ends = turn_end_ids(tokenizer, model.generation_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    update = {"eos_token_id": ends if len(ends) > 1 else ends[0], "pad_token_id": pad}
    if tokenizer.bos_token_id is not None:
        update["bos_token_id"] = tokenizer.bos_token_id
    model.generation_config.update(**update)
