"""A foreign base model and two chat datasets, published on the loopback Hub (tests/hub_server.py), for tests
that start from someone else's checkpoint instead of hfstack's own pretraining:

- `acme/tiny-base` (model): a tiny `LlamaForCausalLM` (hidden 64, 2 layers, 2 heads, intermediate 128, tied
  embeddings, random weights from `torch.manual_seed(0)`) with a FOREIGN byte-level BPE tokenizer trained here:
  none of hfstack's protocol tokens (no `<|endoftext|>`, no `<|pad|>`), special tokens `<s>` (bos, id 0),
  `</s>` (eos, id 1), `<|im_start|>` (2), `<|im_end|>` (3), NO pad token, no bos added by `encode`, and its own
  ChatML chat template. Its embeddings are padded: `config.vocab_size` = len(tokenizer) rounded up to a
  multiple of 64, plus 64 (so strictly larger than len(tokenizer): 512 → 576); generation_config eos = `</s>`.
- `acme/chat-a` (dataset): parquet, `data/train-00000-of-00001.parquet`, column `messages` (role/content),
  CHAT_A_ROWS = 200 rows, every message holds the marker word "alpha"; rows i % 4 == 0 open with a system
  message, so 50 rows have 3 messages and 150 have 2.
- `acme/chat-b` (dataset): ShareGPT JSON lines, `data/train.jsonl`, column `conversations` of {from, value}
  with human/gpt, CHAT_B_ROWS = 200 rows, every value holds the marker word "beta"; rows i % 5 == 0 have two
  exchanges (4 turns, 40 rows), the others one (2 turns).
- `acme/hfstack-like` (model, only with `loopback_hub(hfstack_like=True)`): for contrast, a base the way hfstack's
  own pretraining leaves it (its protocol tokens and chat template, vocab_size == len(tokenizer)).

Everything is deterministic, so commit shas are too. Use:

    with loopback_hub() as (server, state, env):
        subprocess.run([sys.executable, "-c", CODE], env=env, ...)   # clients see HF_ENDPOINT etc.

The clients read HF_ENDPOINT when they are imported: run them in a subprocess with `env`, not in the test.
As a pytest fixture: `with loopback_hub(tmp_path) as hub: yield hub`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path

BASE_REPO = "acme/tiny-base"
HFSTACK_LIKE_REPO = "acme/hfstack-like"  # published only with loopback_hub(hfstack_like=True)
CHAT_A_REPO, CHAT_B_REPO = "acme/chat-a", "acme/chat-b"
CHAT_A_ROWS, CHAT_B_ROWS = 200, 200
CHAT_A_MARKER, CHAT_B_MARKER = "alpha", "beta"
SPECIALS = {"bos": "<s>", "eos": "</s>", "im_start": "<|im_start|>", "im_end": "<|im_end|>"}
CHATML_TEMPLATE = ("{%- for message in messages -%}"
                   "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' -}}"
                   "{%- endfor -%}"
                   "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}")
BASE_CARD = """---
library_name: transformers
license: apache-2.0
pipeline_tag: text-generation
tags: [tiny, test]
---

# acme/tiny-base

A tiny random Llama with a byte-level BPE tokenizer and a ChatML template, for tests.
"""

_SUBJECTS = "the cat|a small dog|the old man|my sister|the teacher|a young bird|the farmer|our neighbour".split("|")
_VERBS = "sees|likes|finds|carries|paints|follows|remembers|builds".split("|")
_OBJECTS = ("a red ball|the green door|some warm bread|the quiet river|a long letter|the bright moon|"
            "an open window|the wooden boat").split("|")
_ENDINGS = ("in the morning|after the rain|near the market|before dinner|on a cold day|with great care|"
            "every summer|at the station").split("|")
_TOPICS = "cats tea rain owls trains books snow bread kites bridges maps clocks".split()


def english_text(sentences: int = 600, seed: int = 0) -> list[str]:
    """Simple English sentences, generated (no data files needed)."""
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_ENDINGS)}." for _ in range(sentences)]


def chat_a_rows(n: int = CHAT_A_ROWS) -> list[dict]:
    """{'messages': [...]} rows; every content holds 'alpha'."""
    rows = []
    for i in range(n):
        topic, a, b = _TOPICS[i % len(_TOPICS)], i % 7 + 1, i % 5 + 2
        messages = [{"role": "system", "content": "You are alpha, a helpful assistant."}] if i % 4 == 0 else []
        question = f"alpha question {i}: what is {a} plus {b}, and do you like {topic}?"
        answer = f"alpha answer {i}: {a} plus {b} is {a + b}, and I like {topic}."
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def chat_b_rows(n: int = CHAT_B_ROWS) -> list[dict]:
    """ShareGPT {'conversations': [{'from', 'value'}]} rows; every value holds 'beta'."""
    rows = []
    for i in range(n):
        topic = _TOPICS[(i * 5) % len(_TOPICS)]
        turns = [{"from": "human", "value": f"beta prompt {i}: tell me one thing about {topic}."},
                 {"from": "gpt", "value": f"beta reply {i}: {topic} are nice in the beta world."}]
        if i % 5 == 0:
            turns += [{"from": "human", "value": f"beta follow-up {i}: and another?"},
                      {"from": "gpt", "value": f"beta reply {i}b: {topic} can be small or large."}]
        rows.append({"conversations": turns})
    return rows


def padded_vocab(n: int, multiple: int = 64) -> int:
    """len(tokenizer) rounded up to a multiple of `multiple`, plus one more `multiple`: always > n."""
    return -(-n // multiple) * multiple + multiple


def train_foreign_tokenizer(vocab_size: int = 512):
    """A byte-level BPE (GPT-2 style pre-tokenizer and decoder) with <s>, </s>, <|im_start|>, <|im_end|> only,
    no pad, ChatML template, as a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    text = english_text()
    text += [m["content"] for row in chat_a_rows() for m in row["messages"]]
    text += [t["value"] for row in chat_b_rows() for t in row["conversations"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS.values()), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS["bos"], eos_token=SPECIALS["eos"],
                                        extra_special_tokens=[SPECIALS["im_start"], SPECIALS["im_end"]],
                                        model_max_length=256, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_base(folder) -> Path:
    """The foreign base model (see the module docstring) saved in `folder`, with a README.md card."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = train_foreign_tokenizer()
    bos, eos = tokenizer.convert_tokens_to_ids([SPECIALS["bos"], SPECIALS["eos"]])
    config = LlamaConfig(vocab_size=padded_vocab(len(tokenizer)), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=128,
                         max_position_embeddings=256, bos_token_id=bos, eos_token_id=eos, pad_token_id=None,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(BASE_CARD)
    return folder


def build_hfstack_like_base(folder) -> Path:
    """For contrast, a base as hfstack's own pretraining leaves it (acme/hfstack-like when published): hfstack's
    protocol tokenizer and chat template (hfstack.stages.tokenizer, hfstack.core.protocol), a depth-1 Llama with
    vocab_size == len(tokenizer), tied embeddings, random weights from torch.manual_seed(0)."""
    import torch
    from transformers import AutoModelForCausalLM

    from hfstack.core.model import build_config, model_dims
    from hfstack.core.protocol import chat_template
    from hfstack.stages.tokenizer import to_transformers, train_bpe

    folder = Path(folder)
    tokenizer = to_transformers(train_bpe(english_text(), 400))
    tokenizer.chat_template = chat_template()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(len(tokenizer), 256, model_dims(1), tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n\n# acme/hfstack-like\n")
    return folder


def _dataset_card(name: str, path_glob: str, rows: int, marker: str, layout: str) -> str:
    return (f"---\nlicense: cc0-1.0\ntask_categories: [text-generation]\nconfigs:\n- config_name: default\n"
            f"  data_files:\n  - split: train\n    path: {path_glob}\n---\n\n# {name}\n\n"
            f"{rows} short chat rows ({layout}), each holding the marker word \"{marker}\".\n")


def build_chat_a(folder) -> Path:
    """acme/chat-a as the Hub holds it: README.md and data/train-00000-of-00001.parquet (column `messages`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(chat_a_rows()), folder / "data" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text(_dataset_card(CHAT_A_REPO, "data/train-*", CHAT_A_ROWS, CHAT_A_MARKER,
                                                    "parquet, `messages` with role/content"))
    return folder


def build_chat_b(folder) -> Path:
    """acme/chat-b as the Hub holds it: README.md and data/train.jsonl (ShareGPT `conversations`, from/value)."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chat_b_rows()))
    (folder / "README.md").write_text(_dataset_card(CHAT_B_REPO, "data/train.jsonl", CHAT_B_ROWS, CHAT_B_MARKER,
                                                    "JSON lines, ShareGPT `conversations` with human/gpt"))
    return folder


def publish(state, repo: str, folder, kind: str = "model") -> str:
    """Put every file under `folder` into the server's state as one commit of `kind` ("model" or "dataset")
    repo `repo` (replacing what it held); returns the commit sha."""
    if kind not in ("model", "dataset"):
        raise ValueError(f"kind must be 'model' or 'dataset', not {kind!r}")
    folder = Path(folder)
    key = f"{kind}:{repo}"
    state.repos[key] = {p.relative_to(folder).as_posix(): p.read_bytes()
                        for p in sorted(folder.rglob("*")) if p.is_file()}
    return state.commit(key)


def hub_env(server, hf_home) -> dict:
    """The clients' environment for the loopback Hub: endpoint, no Xet, an empty HF_HOME, online, a dummy token."""
    env = os.environ | {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HUB_DISABLE_XET": "1",
                        "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
                        "TRANSFORMERS_OFFLINE": "0", "HF_TOKEN": "hf_dummy", "HF_HUB_DISABLE_TELEMETRY": "1",
                        "HF_UPDATE_DOWNLOAD_COUNTS": "0"}
    for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(name, None)  # everything under HF_HOME
    return env


@contextlib.contextmanager
def loopback_hub(root=None, hfstack_like: bool = False):
    """Start the loopback Hub with acme/tiny-base, acme/chat-a and acme/chat-b published (and acme/hfstack-like
    with `hfstack_like`); yields (server, state, env). The folders built (and HF_HOME) go under `root` (pytest's
    tmp_path) or a temporary directory removed afterwards. The server is shut down on exit."""
    from hub_server import start_hub

    with contextlib.ExitStack() as stack:
        root = Path(root) if root is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server, state = start_hub()
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        publish(state, BASE_REPO, build_tiny_base(root / "tiny-base"), "model")
        publish(state, CHAT_A_REPO, build_chat_a(root / "chat-a"), "dataset")
        publish(state, CHAT_B_REPO, build_chat_b(root / "chat-b"), "dataset")
        if hfstack_like:
            publish(state, HFSTACK_LIKE_REPO, build_hfstack_like_base(root / "hfstack-like"), "model")
        yield server, state, hub_env(server, root / "hf_home")
