"""Export a checkpoint to GGUF, the one-file format of llama.cpp (llama-cli, llama-server) and the other
runtimes that read it:

    hfstack export --model_name_or_path RUN/sft --gguf RUN/sft.gguf [--outtype f32|f16|bf16] [--overwrite true]

It follows llama.cpp's own converter (convert_hf_to_gguf.py, `LlamaModel`) for a `LlamaForCausalLM`:
- tensors get their GGUF names from gguf's `TensorNameMap` (`model.layers.0.self_attn.q_proj.weight`
  → `blk.0.attn_q.weight`); q_proj and k_proj rows are permuted per head (`permute`) from the
  rotate-half RoPE layout of HF checkpoints to the interleaved pairs llama.cpp's Llama graph rotates;
- with tied embeddings there is no `output.weight`: llama.cpp then uses `token_embd.weight`;
- matrices are stored as `--outtype`; norms and biases stay F32, as llama.cpp wants them;
- the vocabulary is written as a GPT-2-style byte-level BPE (`tokenizer.ggml.model = gpt2`): tokens by
  id (padded to the embedding's rows with unused `[PADn]`), merges, special tokens as control tokens.
  `tokenizer.ggml.pre` names the pre-tokenizer split llama.cpp re-implements: hfstack's GPT-4 split
  with digit groups (`groups3`, `numbers`) is llama.cpp's `llama-bpe`, with single digits (the
  default) its `qwen2`. A split llama.cpp does not know is refused, not guessed;
- eos is the first of the model's generation stop ids (an hfstack chat model's `<|assistant_end|>`),
  eot the protocol's turn end, and `tokenizer.chat_template` the inference template (no
  `{% generation %}` tags); bos is added to prompts, as hfstack starts every document with it.
The file is written beside the target and renamed into place, so a failed export leaves no torn file.

Tests: python -m pytest -q tests/stages/test_export.py
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hfstack.core.config import ConfigError, check_fields, model_folder
from hfstack.core.pretrained import resolve_model
from hfstack.core.protocol import END_OF_TURN
from hfstack.core.templates import inference_template
from hfstack.core.tokens import vocab_id


@dataclass
class ExportConfig:
    model_name_or_path: str = model_folder("runs/tiny/sft", must_exist=True)  # the model to export: folder or Hub id
    model_revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    gguf: str = "runs/tiny/sft.gguf"  # the GGUF file to write
    outtype: Literal["f32", "f16", "bf16"] = "f16"  # type of the weight matrices (norms and biases stay f32)
    overwrite: bool = False  # replace an existing file at 'gguf'

    def __post_init__(self):
        check_fields(self, "export")
        if not self.gguf.endswith(".gguf"):
            raise ConfigError(f"export: 'gguf' must name a .gguf file, got '{self.gguf}'")


# the pre-tokenizer splits llama.cpp re-implements, as tokenizer.json spells them, by the name `tokenizer.ggml.pre`
# gives them in llama.cpp (src/llama-vocab.cpp); llama.cpp's own spelling of each regex is in the tests, which
# check that both split text the same way
_GPT4 = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|DIGITS| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|DIGITS| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
SPLIT_REGEXES = {
    _GPT4.replace("DIGITS", r"\p{N}{1,3}"): "llama-bpe",  # GPT-4's cl100k: hfstack's groups3 and numbers
    _GPT4.replace("DIGITS", r"\p{N}"): "qwen2",  # the same with single digits: hfstack's default
    _LLAMA3.replace("DIGITS", r"\p{N}{1,3}"): "llama-bpe",  # Llama 3's tokenizer.json
    _LLAMA3.replace("DIGITS", r"\p{N}"): "qwen2",  # Qwen2's tokenizer.json
}
# pre-tokenizers made of tokenizers' built-in steps: GPT-2's byte-level regex, alone or after single digits
STEP_SPLITS = {("gpt2",): "gpt-2", ("digits", "gpt2"): "smollm"}
OUTTYPES = {"f32": 0, "f16": 1, "bf16": 32}  # outtype → gguf.LlamaFileType (ALL_F32, MOSTLY_F16, MOSTLY_BF16)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5  # gguf.TokenType


def permute(weights, n_head: int):
    """llama.cpp's `LlamaModel.permute`: within each head, rows (i, i + d/2), which HF's rotate_half rotates
    together, become neighbours (2i, 2i + 1), which llama.cpp's RoPE rotates together. Works on numpy arrays
    and torch tensors; `n_head` is the number of heads the rows belong to (the kv heads for k_proj)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def unpermute(weights, n_head: int):
    """The inverse of `permute`: GGUF rows back in HF's order."""
    return (weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def check_architecture(folder: str, ref: str) -> dict:
    """config.json of a Llama causal LM (what hfstack trains); a one-line ConfigError for anything else."""
    config = json.loads((Path(folder) / "config.json").read_text())
    architectures = config.get("architectures") or []
    if config.get("model_type") != "llama" or architectures and architectures != ["LlamaForCausalLM"]:
        what = ", ".join(architectures) or "no architectures"
        raise ConfigError(f"export: '{ref}' is a {config.get('model_type')} model ({what}); GGUF export supports "
                          "LlamaForCausalLM, the architecture hfstack trains")
    return config


# ------------------------------------------------------------------------------------------ the vocabulary


def _steps(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    return [s for p in pre.get("pretokenizers", []) for s in _steps(p)] if pre.get("type") == "Sequence" else [pre]


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer of tokenizer.json `spec`; a one-line ConfigError for one it
    does not know, and for a tokenizer that is not byte-level BPE (SentencePiece-style, WordPiece, ...)."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ConfigError(f"export: the tokenizer is {model.get('type')}"
                          f"{' with byte fallback' if model.get('byte_fallback') else ''}, not byte-level BPE; "
                          "GGUF export writes GPT-2-style byte-level BPE vocabularies only")
    if spec.get("normalizer"):
        raise ConfigError(f"export: the tokenizer has a {spec['normalizer'].get('type')} normalizer, which "
                          "llama.cpp's BPE tokenizer does not apply; refusing to write a file that tokenizes "
                          "differently")
    names, byte_level = [], False
    for step in _steps(spec.get("pre_tokenizer")):
        kind = step.get("type")
        if kind == "ByteLevel" and not step.get("add_prefix_space"):
            byte_level = True
            names += ["gpt2"] if step.get("use_regex", True) else []
        elif kind == "Split" and "Regex" in (step.get("pattern") or {}) and step.get("behavior") == "Isolated" \
                and not step.get("invert"):
            regex = step["pattern"]["Regex"]
            if regex not in SPLIT_REGEXES:
                raise ConfigError(f"export: llama.cpp knows no pre-tokenizer for the split regex {regex!r}; "
                                  "refusing to guess one (the file would tokenize differently)")
            names.append(SPLIT_REGEXES[regex])
        elif kind == "Digits" and step.get("individual_digits"):
            names.append("digits")
        else:
            raise ConfigError(f"export: llama.cpp knows no pre-tokenizer with the step {json.dumps(step)}")
    known = names[0] if len(names) == 1 and names[0] not in ("gpt2", "digits") else STEP_SPLITS.get(tuple(names))
    if not byte_level or known is None:
        raise ConfigError(f"export: llama.cpp knows no pre-tokenizer for {json.dumps(spec.get('pre_tokenizer'))} "
                          "(expected one split regex, or GPT-2's, then byte-level)")
    return known


def stop_ids(model, tokenizer) -> tuple[int | None, int | None]:
    """(eos, eot): the first id the model's generation_config stops at (hfstack puts the turn end first), and
    the protocol's turn end when the tokenizer has it as one token."""
    configured = model.generation_config.eos_token_id
    ids = [i for i in (configured if isinstance(configured, (list, tuple)) else [configured]) if isinstance(i, int)]
    return (ids[0] if ids else tokenizer.eos_token_id), vocab_id(tokenizer, END_OF_TURN)


def add_vocab(writer, folder: str, tokenizer, model) -> dict:
    """Tokens, types, merges, special ids and the chat template, as llama.cpp's `_set_vocab_gpt2` writes them."""
    spec = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    pre = pre_tokenizer_name(spec)
    n_vocab = model.config.vocab_size
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if len(by_id) > n_vocab or max(by_id) >= n_vocab:
        raise ConfigError(f"export: the tokenizer has {len(by_id)} tokens (ids up to {max(by_id)}) but the model's "
                          f"embedding only {n_vocab} rows")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # a row no token uses (an embedding padded to a multiple): unused, as llama.cpp writes it
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
            continue
        tokens.append(by_id[i])
        special = i in added and (added[i].special or by_id[i].startswith("<|") and by_id[i].endswith("|>"))
        types.append(TOKEN_CONTROL if special else TOKEN_USER_DEFINED if i in added else TOKEN_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos, eot = stop_ids(model, tokenizer)
    ids = {"bos": tokenizer.bos_token_id, "eos": eos, "eot": eot, "pad": tokenizer.pad_token_id}
    for kind, token_id in ids.items():
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(tokenizer.bos_token_id is not None)  # bos starts a document (core.model.prompt_ids)
    writer.add_add_eos_token(False)
    template = tokenizer.chat_template
    if isinstance(template, dict):
        writer.add_chat_template([{"name": name, "template": inference_template(text)}
                                  for name, text in template.items()])
    elif template:
        writer.add_chat_template(inference_template(template))
    return {"pre": pre, "tokens": len(tokens), "merges": len(merges)} | ids


# ------------------------------------------------------------------------------------------- the weights


def rope_settings(config) -> tuple[str, dict]:
    """(rope type, its parameters) from a transformers 5 `rope_parameters` or an older `rope_theta`/`rope_scaling`."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10_000.0))
    return params.get("rope_type", params.get("type", "default")), params


def llama3_rope_factors(params: dict, head_dim: int):
    """The `rope_freqs` tensor llama.cpp's converter writes for Llama 3.1's rope scaling: per frequency, what
    the base frequency is divided by."""
    import numpy as np

    freqs = 1.0 / (params["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low = params.get("factor", 8.0), params.get("low_freq_factor", 1.0)
    high = params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    wavelen = 2 * np.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(wavelen < old_context / high, 1.0,
                       np.where(wavelen > old_context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def add_hyperparameters(writer, config, outtype: str, name: str) -> None:
    """The `llama.*` keys llama.cpp reads to build the graph, as `LlamaModel.set_gguf_parameters` writes them."""
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope_type, rope = rope_settings(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type not in ("default", "llama3"):
        raise ConfigError(f"export: rope scaling '{rope_type}' is not supported (default, linear and llama3 are)")
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(OUTTYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def gguf_tensors(model, outtype: str):
    """(GGUF name, numpy data, ggml type) for every tensor llama.cpp loads, in the state dict's order."""
    import gguf
    import numpy as np
    import torch

    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    rope_type, rope = rope_settings(config)
    if rope_type == "llama3":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        yield "rope_freqs.weight", llama3_rope_factors(rope, head_dim), gguf.GGMLQuantizationType.F32
    for name, tensor in model.state_dict().items():
        if name.endswith("rotary_emb.inv_freq") or name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # recomputed from the metadata / the token embedding doubles as the output matrix
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, heads)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, kv_heads)
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ConfigError(f"export: the checkpoint's tensor '{name}' has no place in a llama GGUF")
        if data.ndim <= 1 or new_name.endswith("_norm.weight") or outtype == "f32":
            yield new_name, np.ascontiguousarray(data), gguf.GGMLQuantizationType.F32
        elif outtype == "f16":
            yield new_name, data.astype(np.float16), gguf.GGMLQuantizationType.F16
        else:  # bf16: gguf packs it as bytes, rounding as llama.cpp's converter does
            yield new_name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16


# ------------------------------------------------------------------------------------------------ the stage


def export(cfg: ExportConfig) -> Path:
    """Write the GGUF file; returns its path."""
    out = Path(cfg.gguf).expanduser()
    if out.is_dir():
        raise ConfigError(f"export: 'gguf' ({cfg.gguf}) is a folder; name the .gguf file to write")
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"export: '{cfg.gguf}' exists; pass --overwrite true to replace it")
    try:
        import gguf
    except ImportError:
        raise ConfigError("export: the 'gguf' package is missing: pip install 'hfstack[export]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "export")
    check_architecture(folder, cfg.model_name_or_path)
    if not (Path(folder) / "tokenizer.json").is_file():
        raise ConfigError(f"export: '{cfg.model_name_or_path}' has no tokenizer.json (a fast tokenizer); "
                          "GGUF export writes the vocabulary from it")
    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    name = Path(folder).name if Path(str(cfg.model_name_or_path)).expanduser().exists() \
        else str(cfg.model_name_or_path).split("/")[-1]

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        add_hyperparameters(writer, model.config, cfg.outtype, name)
        vocab = add_vocab(writer, folder, tokenizer, model)
        count = 0
        for tensor_name, data, ggml_type in gguf_tensors(model, cfg.outtype):
            writer.add_tensor(tensor_name, data, raw_dtype=ggml_type)
            count += 1
        writer.write_header_to_file(path=partial)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, out)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    special = {kind: tokenizer.convert_ids_to_tokens(vocab[kind]) for kind in ("bos", "eos")
               if vocab[kind] is not None}
    print(f"[export] {out}: {count} tensors ({cfg.outtype}), {out.stat().st_size / 1e6:.1f} MB; vocab "
          f"{vocab['tokens']} tokens, {vocab['merges']} merges, pre-tokenizer {vocab['pre']}, "
          + ", ".join(f"{kind} {token}" for kind, token in special.items()))
    return out


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = ExportConfig
run = export
