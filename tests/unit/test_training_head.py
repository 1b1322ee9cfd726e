"""TRL's fused LM head on a CPU, scoring only the labelled positions (hfstack.core.training): the same
loss and gradients as scoring every position, from fewer rows through the head."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
trl_utils = pytest.importorskip("trl.trainer.utils")


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    return model


def loss_and_grads(model, ids, labels, rows_seen: list):
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *rest):
        rows_seen.append(hidden.shape[0])
        return apply(hidden, *rest)

    trl_utils._ChunkedLogProbFunction.apply = counting
    try:
        model.zero_grad()
        loss = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
        loss.backward()
    finally:
        trl_utils._ChunkedLogProbFunction.apply = apply
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_labelled_positions_only_give_the_same_loss_and_gradients(monkeypatch):
    from hfstack.core.training import score_labelled_positions_on_cpu

    ids = torch.randint(0, 97, (3, 20))
    labels = ids.clone()
    labels[:, :12] = -100  # the prompt: context only
    labels[2, 16:] = -100  # padding at the end of one row
    model = tiny_model()
    from trl.kernels import chunked_logprob

    # TRL's own choice for the baseline (an earlier test's trainer config may have switched it already)
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)  # restored after the test
    every_rows, compact_rows = [], []
    every_loss, every_grads = loss_and_grads(model, ids, labels, every_rows)
    assert score_labelled_positions_on_cpu()
    compact_loss, compact_grads = loss_and_grads(model, ids, labels, compact_rows)
    assert every_rows == [3 * 19] and compact_rows == [int((labels[:, 1:] != -100).sum())] == [8 + 8 + 4]
    assert torch.allclose(compact_loss, every_loss, atol=1e-6)
    for name, grad in every_grads.items():
        assert grad.abs().max() > 0, name
        assert torch.allclose(compact_grads[name], grad, atol=1e-6), name


def test_every_trl_trainer_config_switches_it_on(monkeypatch):
    from trl import SFTConfig

    from hfstack.core.training import trainer_config

    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: False)
    assert not trl_utils._use_triton(torch.device("cpu"))
    trainer_config(SFTConfig, "sft", {}, output_dir="/tmp/unused", use_cpu=True, report_to=[])
    assert trl_utils._use_triton(torch.device("cpu"))
