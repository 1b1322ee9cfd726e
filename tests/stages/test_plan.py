"""`hfstack plan`: the planner's FLOPs match the model code's, its times and memory scale the way the formulas
say, the tiny preset's CPU time agrees with docs/benchmarks.md's measured throughput, bad input is one line,
and nanochat's d20 lands near its published time.

    python -m pytest -q tests/stages/test_plan.py
"""

import json
import re
from pathlib import Path

import pytest

from hfstack.cli import main
from hfstack.core.config import ConfigError
from hfstack.core.model import count_parameters, model_dims
from hfstack.core.model import flops_per_token as model_flops_per_token
from hfstack.stages import recipe
from hfstack.stages.plan import (
    KNOWN_MODELS,
    Model,
    PlanConfig,
    flops_per_token,
    memory,
    parameters,
    plan_for,
    run_plan,
    stage_plan,
    stage_shapes,
    tokenizer_vocab,
)

BENCHMARKS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def llama(m: Model, seq_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=m.vocab, hidden_size=m.width, num_hidden_layers=m.layers,
                         num_attention_heads=m.heads, num_key_value_heads=m.kv_heads,
                         intermediate_size=m.intermediate, tie_word_embeddings=m.tied, max_position_embeddings=seq_len)
    return LlamaForCausalLM(config)


def tiny_model() -> tuple[Model, int]:
    cfg = recipe("pretrain", "tiny")
    dims = model_dims(cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size)
    m = Model("tiny", dims["num_hidden_layers"], dims["hidden_size"], dims["num_attention_heads"],
              dims["num_key_value_heads"], dims["intermediate_size"], tokenizer_vocab("tiny"), cfg.tie_embeddings)
    return m, cfg.seq_len


def test_flops_and_parameters_equal_the_model_code_for_the_tiny_recipe():
    m, seq_len = tiny_model()
    model = llama(m, seq_len)
    assert flops_per_token(m, seq_len) == model_flops_per_token(model, seq_len)
    body, embeddings = parameters(m)
    assert body + embeddings == count_parameters(model)
    assert body == count_parameters(model, exclude_embeddings=True)
    plan = plan_for("tiny", gpu="cpu")
    pretrain = plan["stages"][0]
    assert pretrain["stage"] == "pretrain" and pretrain["flops_per_token"] == flops_per_token(m, seq_len)
    assert pretrain["tokens"] == 300 * 4096  # the recipe's max_steps × batch_tokens
    assert pretrain["training_flops"] == pretrain["tokens"] * flops_per_token(m, seq_len)


def test_pretrain_tokens_are_the_steps_the_stage_takes():
    """`hfstack pretrain` trains max_steps × accumulation × micro-batch × devices sequences: batch_tokens only sets
    the accumulation (rounded, at least 1), and an explicit gradient_accumulation_steps overrides it."""
    cfg = recipe("pretrain", "tiny")
    micro = cfg.per_device_train_batch_size * cfg.seq_len
    assert plan_for("tiny", gpu="cpu")["stages"][0]["tokens"] == cfg.max_steps * cfg.batch_tokens  # 2 × 2048 a step
    eight = plan_for("tiny", gpus=8, gpu="cpu")["stages"][0]
    assert eight["tokens"] == cfg.max_steps * 8 * micro > cfg.max_steps * cfg.batch_tokens  # one micro-batch each
    explicit = recipe("pretrain", "tiny", gradient_accumulation_steps=3)
    assert stage_shapes("pretrain", explicit, 2, cfg.seq_len, 0)["tokens"] == cfg.max_steps * 3 * micro * 2


def test_an_untied_gqa_model_counts_like_transformers():
    m = Model("gqa", 3, 192, 6, 2, 512, 1000, tied=False)
    model = llama(m, 128)
    assert sum(parameters(m)) == count_parameters(model)
    assert flops_per_token(m, 128) == model_flops_per_token(model, 128)


def test_time_scales_with_devices_and_mfu_and_tokens_per_parameter_is_the_ratio():
    one = plan_for("gpu-small", gpus=1, gpu="h100", mfu=0.4)
    two = plan_for("gpu-small", gpus=2, gpu="h100", mfu=0.4)
    fast = plan_for("gpu-small", gpus=1, gpu="h100", mfu=0.8)
    p1, p2 = one["stages"][0], two["stages"][0]
    assert p1["stage"] == "pretrain" and p1["tokens"] == p2["tokens"]  # batch_tokens is global
    assert p2["seconds"] == pytest.approx(p1["seconds"] / 2)
    for a, b in zip(one["stages"], fast["stages"]):
        assert b["seconds"] == pytest.approx(a["seconds"] / 2)
    m = one["model"]
    assert p1["tokens_per_parameter"] == pytest.approx(2000 * 524288 / (m["parameters"] + m["embedding_parameters"]))
    assert [r["stage"] for r in one["stages"]] == ["pretrain", "sft", "rl", "reward", "rlhf", "dpo"]
    assert all("tokens_per_parameter" not in r for r in one["stages"][1:])
    # sft's batch is per device: twice the devices see twice the tokens in the same time
    assert two["stages"][1]["tokens"] == 2 * one["stages"][1]["tokens"]
    assert two["stages"][1]["seconds"] == pytest.approx(one["stages"][1]["seconds"])
    a100 = plan_for("gpu-small", gpus=1, gpu="a100", mfu=0.4)["stages"][0]
    assert a100["seconds"] == pytest.approx(p1["seconds"] * 989 / 312)


def test_fsdp_divides_weights_gradients_and_optimizer_state_by_the_device_count():
    m, _ = tiny_model()
    mem = memory(m, 2048, gpus=4, frozen_copies=1)
    total = sum(parameters(m))
    assert mem["replicated"] == {"weights": 4 * total, "gradients": 4 * total, "adamw": 8 * total,
                                 "frozen": 2 * total}
    assert all(mem["fsdp"][k] == pytest.approx(v / 4) for k, v in mem["replicated"].items())
    assert mem["activations_checkpointed"] < mem["activations"]
    row = plan_for("gpu-small", gpus=8, gpu="h100")["stages"][0]
    states = row["memory"]["replicated"]
    saved = row["memory_per_device"]["replicated"] - row["memory_per_device"]["fsdp"]
    assert saved == pytest.approx(sum(states.values()) * (1 - 1 / 8))


def test_the_verdict_follows_the_device_memory():
    big = Model("big", 32, 4096, 32, 8, 14336, 128_256, tied=False)  # Llama-3-8B's shape
    on_l4 = stage_plan(big, "sft", 10**9, 2048, 2048, gpus=8, gpu="l4", mfu=0.4)
    on_h100 = stage_plan(big, "sft", 10**9, 2048, 2048, gpus=8, gpu="h100", mfu=0.4, checkpointing=True)
    on_h200 = stage_plan(big, "sft", 10**9, 2048, 2048, gpus=8, gpu="h200", mfu=0.4, checkpointing=True)
    assert on_l4["fits"] == "no"  # 128 GB of state, 16 GB a device sharded, plus activations, on 24 GB
    assert on_h100["fits"] == "with FSDP"  # 128 GB replicated is over 80 GB; sharded over 8 it is 16 GB
    assert on_h200["fits"] == "yes"  # 128 GB + ~1 GB of checkpointed activations and logits under 141 GB


def test_the_tiny_cpu_time_agrees_with_the_measured_benchmark():
    """docs/benchmarks.md: an 11.4M depth-6 model (8 × 256 tokens, 2k vocab) trained at 2704 tokens/s,
    67.5% MFU of a 303 GFLOP/s matmul. The planner's formula must reproduce that MFU from those tokens/s,
    and at that MFU its tiny pretrain time is the measured rate scaled by the two models' FLOPs per token."""
    text = BENCHMARKS.read_text()
    tokens_per_s = float(re.search(r"`hfstack pretrain` \(Trainer\) \| (\d+) tokens/s", text).group(1))
    mfu = float(re.search(r"`hfstack pretrain` \(Trainer\) \| \d+ tokens/s, CPU MFU ([\d.]+)%", text).group(1)) / 100
    peak = float(re.search(r"\((\d+) GFLOP/s\)", text).group(1)) * 1e9
    d6 = Model("d6", 6, 384, 6, 6, 64 * round(8 * 384 / 3 / 64), 2048)
    assert sum(parameters(d6)) / 1e6 == pytest.approx(11.4, abs=0.1)  # the benchmark's model
    assert tokens_per_s * flops_per_token(d6, 256) / peak == pytest.approx(mfu, rel=0.02)
    plan = plan_for("tiny", gpu="cpu", mfu=mfu, cpu_flops=peak)
    m, seq_len = tiny_model()
    row = plan["stages"][0]
    factor = flops_per_token(m, seq_len) / flops_per_token(d6, 256)  # the tiny model is this much cheaper a token
    assert row["seconds"] == pytest.approx(row["tokens"] / tokens_per_s * factor, rel=0.02)
    assert 10 < row["seconds"] < 600  # the recipe says "about a minute"; the default 40% MFU is in this range too
    assert 10 < plan_for("tiny", gpu="cpu")["stages"][0]["seconds"] < 600


def test_nanochat_d20_anchor_lands_near_its_published_three_hours():
    d20 = Model("nanochat d20", 20, 1280, 10, 10, 4 * 1280, 65_536, tied=False, mlp_matrices=2)
    total = sum(parameters(d20))
    assert total / 1e6 == pytest.approx(561, abs=5)
    row = stage_plan(d20, "pretrain", 20 * total, 2048, 32 * 2048, gpus=8, gpu="h100", mfu=0.48)
    assert row["tokens_per_parameter"] == pytest.approx(20)
    assert 2.0 < row["seconds"] / 3600 < 4.0  # nanochat: ~3 h on 8×H100; the planner says ~2.9 h
    assert row["fits"] != "no"  # ~83 GB replicated by this (conservative) estimate: 80 GB needs FSDP or less


def test_smollm_sizes_come_from_the_table():
    assert sum(parameters(KNOWN_MODELS["HuggingFaceTB/SmolLM2-135M"]._replace(vocab=49_152))) == 134_515_008
    plan = plan_for("smollm", gpu="l4")
    assert plan["model"]["name"] == "SmolLM2-135M"
    assert "pretrain" not in [r["stage"] for r in plan["stages"]]
    assert plan["stages"][0]["note"].startswith("upper bound")


def test_unknown_preset_or_gpu_is_one_line(capsys):
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose from: .*tiny") as err:
        PlanConfig(preset="nope")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown gpu 'tpu'"):
        stage_plan(tiny_model()[0], "pretrain", 1, 8, 8, gpus=1, gpu="tpu", mfu=0.4)
    assert main(["plan", "--gpu", "tpu"]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "tpu" in lines[0]


def test_run_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    plan = run_plan(PlanConfig(preset="tiny", gpu="cpu", gradient_checkpointing=True, output=str(out)))
    printed = capsys.readouterr().out
    assert "pretrain" in printed and "Chinchilla" in printed and "with gradient checkpointing" in printed
    assert json.loads(out.read_text())["total_seconds"] == pytest.approx(plan["total_seconds"])
