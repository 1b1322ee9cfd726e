"""Give any causal LM and its tokenizer hfstack's conversation protocol, so SFT can start from a Hub
base (SmolLM2, Qwen, Llama, ...) as well as from hfstack's own pretraining.

    report = adopt_protocol(model, tokenizer, chat_template="hfstack", default_system="You are ...")

- `chat_template: hfstack` (the default): the protocol's special tokens a tokenizer lacks are added
  (a tokenizer that has them all, such as one hfstack wrote, is left as it is), and its chat template
  becomes hfstack's, so the tool loop, eval, RL rollouts and serve all speak one protocol.
- `chat_template: keep`: the model's own template stays and no token is added; the assistant-only
  mask then comes from TRL's training template or from rendering prefixes (hfstack.core.templates).
  Tool calls are then written in the model's own format, which hfstack's tool loop does not run.
- New token rows are set to the mean of the existing rows (input embeddings and an untied output
  head alike), the standard initialisation: a new token starts as an average token instead of a
  random vector that would dominate the first logits. When the embedding matrix has no spare rows,
  it grows to a multiple of 64 (a padded vocabulary, as Hub models have); a model whose vocab_size
  already exceeds the tokenizer is accepted as it is.
- A tokenizer without a pad token gets `<|pad|>` (hfstack) or its eos (keep).

Used by `hfstack sft`. Tests: python -m pytest -q tests/unit/test_adopt.py
"""

from __future__ import annotations

from hfstack.core.errors import ConfigError
from hfstack.core.launch import print0
from hfstack.core.protocol import END_OF_TURN, PAD, SPECIAL_TOKENS, chat_template
from hfstack.core.templates import assistant_mask, has_generation_markers, training_template
from hfstack.core.tokens import vocab_id

TEMPLATE_CHOICES = ("hfstack", "keep")
PAD_TO_MULTIPLE = 64  # rows the embedding grows by at a time: GPU matmuls like multiples of 64


def missing_protocol_tokens(tokenizer) -> list[str]:
    """The protocol's special tokens this tokenizer does not have as single tokens."""
    return [token for token in SPECIAL_TOKENS if vocab_id(tokenizer, token) is None]


def adopt_protocol(model, tokenizer, chat_template_mode: str = "hfstack", default_system: str | None = None,
                   stage: str = "sft") -> dict:
    """Tokens, embeddings and template as the stage needs them (see the module docstring). Changes
    `model` and `tokenizer` in place; returns what it did, for the stage's summary."""
    if chat_template_mode not in TEMPLATE_CHOICES:
        raise ConfigError(f"{stage}: 'chat_template' must be one of {', '.join(TEMPLATE_CHOICES)}, "
                          f"got {chat_template_mode!r}")
    known = len(tokenizer)  # rows that stand for real tokens: the mean is taken over these
    added: list[str] = []
    if chat_template_mode == "hfstack":
        added = missing_protocol_tokens(tokenizer)
        if added:
            tokenizer.add_special_tokens({"extra_special_tokens": added}, replace_extra_special_tokens=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = PAD
        tokenizer.chat_template = chat_template(default_system=default_system)
    else:
        if not tokenizer.chat_template:
            raise ConfigError(f"{stage}: 'chat_template: keep' but the model's tokenizer has no chat template; "
                              "use chat_template: hfstack")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # training reads generation markers: the template's own, or TRL's marked version of a template it
        # knows; the caller saves the kept one (`kept_template`). Without either, the mask comes from
        # rendering prefixes (training_rows)
        kept = tokenizer.chat_template
        tokenizer.chat_template = training_template(tokenizer) or kept
    rows_before = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows_before:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=PAD_TO_MULTIPLE, mean_resizing=False)
    rows_after = model.get_input_embeddings().weight.shape[0]
    new_rows = sorted({tokenizer.convert_tokens_to_ids(t) for t in added} | set(range(rows_before, rows_after)))
    mean_initialise(model, new_rows, min(known, rows_before))
    if model.config.vocab_size < len(tokenizer):
        raise ConfigError(f"{stage}: model vocab_size {model.config.vocab_size} < tokenizer's {len(tokenizer)}")
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):  # the config speaks of the tokenizer loaded
        if getattr(tokenizer, name) is not None:
            setattr(model.config, name, getattr(tokenizer, name))
    return {"chat_template": chat_template_mode, "tokens_added": len(added),
            "new_token_ids": sorted(tokenizer.convert_tokens_to_ids(t) for t in added),
            "vocab_rows": [rows_before, rows_after] if rows_after != rows_before else rows_after} | (
        {"kept_template": kept} if chat_template_mode == "keep" else {})


def mean_initialise(model, rows: list[int], known: int) -> None:
    """Set `rows` of the input embeddings (and of an untied output head) to the mean of the first
    `known` rows."""
    import torch

    if not rows:
        return
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(head.weight)
    index = torch.tensor(rows, dtype=torch.long)
    with torch.no_grad():
        for weight in matrices:
            weight[index] = weight[:known].mean(dim=0, dtype=torch.float32).to(weight.dtype)


def turn_end_token(tokenizer, chat_template_mode: str = "auto") -> str | None:
    """The token that ends an assistant turn: hfstack's (with `hfstack`, or with `auto` when the
    tokenizer has it), else the first special token the template writes after an assistant message
    (ChatML's <|im_end|>); None when it writes none or there is no template."""
    if chat_template_mode == "hfstack" or (chat_template_mode == "auto" and vocab_id(tokenizer, END_OF_TURN)):
        return END_OF_TURN
    if not tokenizer.chat_template:
        return None
    marker = "\u2063turn end probe\u2063"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    after = text[text.rindex(marker) + len(marker):] if marker in text else ""
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    found = [(after.index(t), t) for t in specials if t in after]
    return min(found)[1] if found else None


def training_rows(tokenizer, rows: list[dict], chat_template_mode: str, max_length: int,
                  assistant_only: bool = True) -> tuple[list[dict], dict]:
    """The conversations as SFTTrainer takes them, and how many were dropped and why. With hfstack's
    template (generation markers) or a kept one TRL can mark, the `messages` rows as they are. With a
    kept template, conversations with tool calls are dropped (the model's own tool format is not
    hfstack's tool loop's); when neither the template nor TRL marks the assistant's tokens, rows are
    tokenized here with `assistant_masks` computed by rendering prefixes."""
    if chat_template_mode == "hfstack":
        return rows, {}
    dropped = {"tool_calls": 0, "template_not_prefix_stable": 0, "nothing_to_train": 0}
    chats = [row for row in rows if not any(m.get("tool_calls") or m["role"] == "tool" for m in row["messages"])]
    dropped["tool_calls"] = len(rows) - len(chats)
    if has_generation_markers(tokenizer.chat_template) or not assistant_only:  # TRL reads the markers
        return chats, dropped
    tokenized = []
    for row in chats:
        try:
            ids, mask = assistant_mask(tokenizer, row["messages"])
        except ConfigError:
            dropped["template_not_prefix_stable"] += 1
            continue
        if 1 not in mask[:max_length]:
            dropped["nothing_to_train"] += 1
            continue
        tokenized.append({"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]})
    if not tokenized:
        raise ConfigError(f"sft: no conversation left to train on with the kept chat template ({dropped}); "
                          "use chat_template: hfstack")
    return tokenized, dropped


def over_length(tokenizer, rows: list[dict], max_length: int, window: int | None, which: str) -> dict:
    """Says how many `messages` rows of `which` render longer than `max_length` tokens (training cuts
    their ends off: a conversation's last turns, the ones a follow-up question needs) and how many run
    past the model's context `window` when that is shorter (positions it never trained on); returns
    those counts and the longest, or {} if none."""
    chats = [row["messages"] for row in rows if "messages" in row]  # tokenized rows were cut already
    if not chats:
        return {}
    texts = tokenizer.apply_chat_template(chats, tokenize=False)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    report = {"conversations": sum(length > max_length for length in lengths), "of": len(chats),
              "longest": max(lengths)}
    if report["conversations"]:
        print0(f"[sft] {report['conversations']:,} of {len(chats):,} conversations in {which} are longer than "
               f"max_length {max_length} tokens (the longest {report['longest']}): training cuts their ends off")
    if window and window < max_length:
        report |= {"window": window, "past_window": sum(length > window for length in lengths)}
        if report["past_window"]:
            print0(f"[sft] {report['past_window']:,} of {len(chats):,} conversations in {which} run past the base "
                   f"model's {window}-token context window (positions it never trained on): pretrain a longer "
                   f"seq_len, or set max_length {window}")
    return report if report["conversations"] or report.get("past_window") else {}
