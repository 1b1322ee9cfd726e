"""`hfstack export`: a checkpoint as one GGUF file for llama.cpp. The file is read back with gguf's reader:
metadata, vocabulary, chat template and every tensor; a forward pass computed from the file alone, the way
llama.cpp's Llama graph computes it (RoPE on neighbouring pairs), gives the transformers model's logits.

    python -m pytest -q tests/stages/test_export.py
"""

import json

import numpy as np
import pytest
import regex
import torch

from hfstack.core.config import ConfigError
from hfstack.core.templates import has_generation_markers
from hfstack.stages.export import ExportConfig, export, llama3_rope_factors, permute, pre_tokenizer_name, unpermute
from hfstack.stages.tokenizer import SPLIT_PATTERNS, new_tokenizer

gguf = pytest.importorskip("gguf")

# llama.cpp's spelling of the splits it re-implements (src/llama-vocab.cpp), by pre-tokenizer name
LLAMA_CPP_REGEX = {
    "llama-bpe": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
# the text llama.cpp's converter hashes to recognise a pre-tokenizer, and a few more
SAMPLES = ["\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ ✅ 🦙🦙 3 33 333 3333 "
           "33333 3.3 3..3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
           "''''''```````\"\"\"\"......!!!!!!?????? "
           "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
           "What is 12345 times 678? It's 8,369,910.\r\n\r\n  Done!\t", "x  \n\n  y   z\u00a0\u3000end "]


def read(path):
    """(metadata {key: value}, tensors {name: (type name, ggml shape, data as float64)}) of a GGUF file."""
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        data = np.array(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            data = gguf.quants.dequantize(data, t.tensor_type)
        tensors[t.name] = (t.tensor_type.name, [int(n) for n in t.shape], data.astype(np.float64), int(t.n_bytes))
    return fields, tensors


@pytest.fixture(scope="module")
def sft(tiny_sft_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_sft_model), AutoTokenizer.from_pretrained(tiny_sft_model)


@pytest.fixture(scope="module")
def exported(tiny_sft_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {t: export(ExportConfig(model_name_or_path=str(tiny_sft_model), gguf=str(out / f"sft-{t}.gguf"), outtype=t))
            for t in ("f32", "f16", "bf16")}


def test_metadata_vocabulary_and_chat_template(exported, sft, tiny_sft_model):
    model, tokenizer = sft
    fields, _ = read(exported["f32"])
    config = model.config
    assert fields["general.architecture"] == "llama" and fields["general.file_type"] == 0
    assert {k: fields[f"llama.{k}"] for k in ("block_count", "context_length", "embedding_length",
                                              "feed_forward_length", "attention.head_count",
                                              "attention.head_count_kv", "rope.dimension_count", "vocab_size")} == {
        "block_count": config.num_hidden_layers, "context_length": config.max_position_embeddings,
        "embedding_length": config.hidden_size, "feed_forward_length": config.intermediate_size,
        "attention.head_count": config.num_attention_heads, "attention.head_count_kv": config.num_key_value_heads,
        "rope.dimension_count": config.hidden_size // config.num_attention_heads, "vocab_size": len(tokenizer)}
    assert fields["llama.rope.freq_base"] == pytest.approx(10_000.0)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)

    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == len(tokenizer) and tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    spec = json.loads((tiny_sft_model / "tokenizer.json").read_text())
    assert fields["tokenizer.ggml.merges"] == [" ".join(pair) for pair in spec["model"]["merges"]]
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "qwen2"  # the tiny tokenizer splits digits one by one
    special = set(tokenizer.all_special_ids)
    assert len(special) == 14 and [i for i, kind in enumerate(fields["tokenizer.ggml.token_type"]) if kind == 3] \
        == sorted(special) and set(fields["tokenizer.ggml.token_type"]) == {1, 3}  # control / normal
    ids = {key: fields[f"tokenizer.ggml.{key}_token_id"] for key in ("bos", "eos", "eot", "padding")}
    assert ids == {"bos": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                   "eos": tokenizer.convert_tokens_to_ids("<|assistant_end|>"),  # the chat model's turn end
                   "eot": tokenizer.convert_tokens_to_ids("<|assistant_end|>"),
                   "padding": tokenizer.convert_tokens_to_ids("<|pad|>")}
    assert model.generation_config.eos_token_id[0] == ids["eos"]
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.ggml.add_eos_token"] is False
    template = fields["tokenizer.chat_template"]
    assert template == tokenizer.chat_template == (tiny_sft_model / "chat_template.jinja").read_text()
    assert not has_generation_markers(template) and "<|assistant_end|>" in template


def test_every_tensor_has_its_gguf_name_shape_and_weights(exported, sft):
    model, _ = sft
    _, tensors = read(exported["f32"])
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    hf = {name: value.detach().numpy().astype(np.float64) for name, value in model.state_dict().items()
          if name != "lm_head.weight"}  # tied: llama.cpp reads the output matrix from token_embd
    assert config.tie_word_embeddings and "output.weight" not in tensors
    assert set(tensors) == {names.get_name(name, try_suffixes=(".weight",)) for name in hf} == {
        "token_embd.weight", "output_norm.weight", *(f"blk.0.{n}.weight" for n in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"))}
    for name, weights in hf.items():
        kind, shape, data, _ = tensors[names.get_name(name, try_suffixes=(".weight",))]
        assert kind == "F32" and shape == list(reversed(weights.shape))  # ggml lists dimensions innermost first
        if "q_proj" in name or "k_proj" in name:
            n = heads if "q_proj" in name else kv_heads
            assert np.array_equal(data, permute(weights, n)) and np.array_equal(unpermute(data, n), weights)
        else:
            assert np.array_equal(data, weights)


def test_permute_pairs_the_rotate_half_rows_and_unpermute_undoes_it():
    rows = np.arange(2 * 8)[:, None]  # 2 heads of dimension 8: HF rotates row i with row i + 4 in each head
    assert permute(rows, 2)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
    weights = np.random.default_rng(0).normal(size=(24, 5))
    assert np.array_equal(unpermute(permute(weights, 3), 3), weights)
    assert torch.equal(permute(torch.from_numpy(weights), 3), torch.from_numpy(permute(weights, 3)))


def test_f16_and_bf16_halve_the_matrices_and_keep_norms_f32(exported):
    (f32, t32), (f16, t16), (bf16, tb16) = (read(exported[t]) for t in ("f32", "f16", "bf16"))
    assert (f16["general.file_type"], bf16["general.file_type"]) == (1, 32)  # MOSTLY_F16, MOSTLY_BF16
    for name, (_, shape, data, nbytes) in t32.items():
        matrix = len(shape) == 2
        assert t16[name][0] == ("F16" if matrix else "F32") and tb16[name][0] == ("BF16" if matrix else "F32")
        assert t16[name][3] == (nbytes // 2 if matrix else nbytes) == tb16[name][3]
        np.testing.assert_allclose(t16[name][2], data, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(tb16[name][2], data, rtol=1e-2, atol=1e-6)
    assert exported["f16"].stat().st_size < 0.6 * exported["f32"].stat().st_size


def ggml_llama_logits(path, ids):
    """Logits computed from the GGUF file alone, as llama.cpp's Llama graph computes them: RMS norms, RoPE
    rotating neighbouring pairs (2i, 2i + 1) with the file's base, grouped-query attention, SwiGLU."""
    fields, tensors = read(path)
    w = {name: data for name, (_, _, data, _) in tensors.items()}
    heads, kv_heads = fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]
    dim, eps = fields["llama.rope.dimension_count"], fields["llama.attention.layer_norm_rms_epsilon"]
    n = len(ids)
    angles = np.arange(n)[:, None, None] * fields["llama.rope.freq_base"] ** (-np.arange(0, dim, 2) / dim)
    cos, sin = np.cos(angles), np.sin(angles)

    def rope(v):
        out = np.empty_like(v)
        out[..., 0::2] = v[..., 0::2] * cos - v[..., 1::2] * sin
        out[..., 1::2] = v[..., 0::2] * sin + v[..., 1::2] * cos
        return out

    def norm(v, weight):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * weight

    x = w["token_embd.weight"][ids]
    for block in range(fields["llama.block_count"]):
        def p(name, block=block):
            return w[f"blk.{block}.{name}.weight"]

        h = norm(x, p("attn_norm"))
        q = rope((h @ p("attn_q").T).reshape(n, heads, dim))
        k = np.repeat(rope((h @ p("attn_k").T).reshape(n, kv_heads, dim)), heads // kv_heads, axis=1)
        v = np.repeat((h @ p("attn_v").T).reshape(n, kv_heads, dim), heads // kv_heads, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dim) + np.triu(np.full((n, n), -np.inf), 1)
        attention = np.exp(scores - scores.max(-1, keepdims=True))
        attention /= attention.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", attention, v).reshape(n, -1) @ p("attn_output").T
        h = norm(x, p("ffn_norm"))
        gate = h @ p("ffn_gate").T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ p("ffn_up").T)) @ p("ffn_down").T
    return norm(x, w["output_norm.weight"]) @ w.get("output.weight", w["token_embd.weight"]).T


def test_the_file_computes_the_models_logits_grouped_heads_untied(tiny_sft_model, sft, tmp_path):
    """A 2-layer model with 4 query heads sharing 2 key/value heads and its own output matrix: the permuted
    q/k rows, the head grouping and the output matrix all have to be right for the logits to agree."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = sft
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 50_000.0},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3) if param.ndim > 1 else param.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path / "gqa")
    tokenizer.save_pretrained(tmp_path / "gqa")
    path = export(ExportConfig(model_name_or_path=str(tmp_path / "gqa"), gguf=str(tmp_path / "gqa.gguf"),
                               outtype="f32"))
    assert "output.weight" in read(path)[1]
    ids = [tokenizer.bos_token_id, *tokenizer("The module provides functions for 42 things.")["input_ids"]]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].double().numpy()
    np.testing.assert_allclose(ggml_llama_logits(path, ids), expected, atol=2e-4, rtol=1e-4)
    assert np.abs(expected).max() > 1  # not a vacuous match
    stored = read(path)[1]["blk.0.attn_q.weight"][2]
    assert not np.allclose(stored, model.model.layers[0].self_attn.q_proj.weight.detach().numpy())


def test_llama3_rope_factors_are_transformers_llama3_frequencies():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=512, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 1.0 / (500_000.0 ** (np.arange(0, 128, 2) / 128))
    factors = llama3_rope_factors(rope, 128)
    assert factors.min() == 1.0 and factors.max() == 8.0  # both ends of the spectrum and the smooth middle
    np.testing.assert_allclose(base / factors, scaled.numpy(), rtol=1e-5)


@pytest.mark.parametrize("digits", sorted(SPLIT_PATTERNS))
def test_hfstack_splits_are_ones_llama_cpp_knows(digits):
    """Each digit rule's split has a llama.cpp name, and llama.cpp's spelling of that split cuts text exactly
    where the tokenizer's own regex does (possessive quantifiers and (?i:...) are rewritten in llama.cpp)."""
    spec = json.loads(new_tokenizer(digits).to_str())
    name = pre_tokenizer_name(spec)
    assert name == ("qwen2" if digits == "single" else "llama-bpe")
    ours = regex.compile(spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"])
    theirs = regex.compile(LLAMA_CPP_REGEX[name])
    for text in SAMPLES:
        assert ours.findall(text) == theirs.findall(text)


@pytest.mark.parametrize("name", sorted(LLAMA_CPP_REGEX))
def test_llama3_and_qwen2_tokenizers_get_llama_cpps_names(name):
    """The regexes llama.cpp quotes as the originals from Llama 3's and Qwen2's tokenizer.json."""
    original = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|DIGITS| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+").replace("DIGITS", r"\p{N}{1,3}" if name == "llama-bpe" else r"\p{N}")
    spec = json.loads(new_tokenizer("single").to_str())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = original
    assert pre_tokenizer_name(spec) == name
    assert all(regex.findall(original, text) == regex.findall(LLAMA_CPP_REGEX[name], text) for text in SAMPLES)


def test_a_pre_tokenizer_llama_cpp_does_not_know_is_refused_in_one_line():
    spec = json.loads(new_tokenizer("single").to_str())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}{1,4}|\s+"
    with pytest.raises(ConfigError, match=r"no pre-tokenizer for the split regex '\\\\p\{L\}\+") as error:
        pre_tokenizer_name(spec)
    spec = json.loads(new_tokenizer("single").to_str())
    spec["normalizer"] = {"type": "NFC"}
    with pytest.raises(ConfigError, match="NFC normalizer"):
        pre_tokenizer_name(spec)
    spec["normalizer"], spec["model"]["byte_fallback"] = None, True  # SentencePiece-style BPE
    with pytest.raises(ConfigError, match="with byte fallback, not byte-level BPE"):
        pre_tokenizer_name(spec)
    assert "\n" not in str(error.value)


def test_an_existing_file_is_replaced_only_with_overwrite(tiny_sft_model, tmp_path):
    out = tmp_path / "model.gguf"
    out.write_text("keep me")
    cfg = ExportConfig(model_name_or_path=str(tiny_sft_model), gguf=str(out), outtype="f16")
    with pytest.raises(ConfigError, match="exists; pass --overwrite true") as error:
        export(cfg)
    assert "\n" not in str(error.value) and out.read_text() == "keep me"
    cfg.overwrite = True
    assert export(cfg) == out and read(out)[0]["general.architecture"] == "llama"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no partial file left beside it
    with pytest.raises(ConfigError, match="must name a .gguf file"):
        ExportConfig(model_name_or_path=str(tiny_sft_model), gguf=str(tmp_path / "model.bin"))


def test_a_model_that_is_not_llama_is_a_one_line_error(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        tmp_path / "gpt2")
    with pytest.raises(ConfigError) as error:
        export(ExportConfig(model_name_or_path=str(tmp_path / "gpt2"), gguf=str(tmp_path / "gpt2.gguf")))
    assert "\n" not in str(error.value) and "gpt2 model (GPT2LMHeadModel)" in str(error.value)
    assert "LlamaForCausalLM" in str(error.value) and not (tmp_path / "gpt2.gguf").exists()
