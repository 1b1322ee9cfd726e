"""The over-optimisation curve of `hfstack rlhf` and `hfstack dpo`: KL is zero at the start and grows as the policy
moves, the best-judged point's weights are kept, `on_hack: rollback` puts exactly those weights back, the report
card plots the curve, and the KL-off hack recipe on the tiny run shows the judge's peak and the rollback.

    python -m pytest -q tests/stages/test_overopt.py
"""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from hfstack.core.config import ConfigError, load_config
from hfstack.core.layout import RunLayout
from hfstack.core.recipes import recipes_dir
from hfstack.rlalgo.overopt import Curve, curve_section, finish_curve, read_curve
from hfstack.stages.dpo import DPOStageConfig
from hfstack.stages.rlhf import RLHFConfig, run_rlhf
from hfstack.ui.card import Report

PROMPTS = [[{"role": "user", "content": f"Tell me a joke about {topic}."}] for topic in ("owls", "tea", "rain")]


def scripted_judge(scores: list[float]):
    """A judge whose score is set by the test between points (scores[0])."""
    return lambda prompt, answers: [scores[0]] * len(answers)


def nudge(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def policy(tiny_sft_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_sft_model), AutoTokenizer.from_pretrained(tiny_sft_model)


@pytest.mark.parametrize("alarmed", [True, False])
def test_rollback_puts_back_exactly_the_best_judged_weights(policy, tmp_path, alarmed):
    model, tokenizer = policy
    scores = [1.0]
    curve = Curve(tmp_path / "curve", copy.deepcopy(model).eval(), tokenizer, PROMPTS, scripted_judge(scores),
                  rm_score=lambda conversations, answers: [0.5] * len(answers), samples=2, max_new_tokens=8)
    start = curve.measure(0, model)
    assert start["kl"] == 0.0 and start["sqrt_kl"] == 0.0  # the policy is its reference
    nudge(model, 1)
    scores[0] = 2.0  # the judge's peak
    assert curve.measure(5, model)["kl"] > 0
    peak = weights(model)
    nudge(model, 2)
    scores[0] = 0.5
    curve.measure(10, model)
    trained = weights(model)
    assert [r["step"] for r in read_curve(tmp_path)] == [0, 5, 10]
    assert json.loads((tmp_path / "curve" / "best" / "point.json").read_text())["step"] == 5

    watch = SimpleNamespace(cfg=SimpleNamespace(on_hack="rollback"), alarms=["reward hacking?"] if alarmed else [])
    summary = finish_curve(curve, watch, "rlhf", model)
    assert summary["judge_peak"]["step"] == 5 and summary["stopped_at"] == 10
    expected = peak if alarmed else trained
    assert summary["rolled_back_to"] == (5 if alarmed else None)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_the_report_card_plots_the_curve(tmp_path):
    run = RunLayout(tmp_path / "run")
    report = Report(tmp_path)
    curve_section(report, run)
    assert report.parts == []  # no curve: no section
    run.rlhf.mkdir(parents=True)
    rows = [{"step": 0, "kl": 0.0, "sqrt_kl": 0.0, "judge": 1.0, "rm": 0.1},
            {"step": 10, "kl": 4.0, "sqrt_kl": 2.0, "judge": 1.4, "rm": 0.9},
            {"step": 20, "kl": 16.0, "sqrt_kl": 4.0, "judge": 0.6, "rm": 1.8}]
    (run.rlhf / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run.rlhf / "eval.json").write_text(json.dumps({"curve": {"stopped_at": 20, "rolled_back_to": 10}}))
    curve_section(report, run)
    text = report.markdown()
    assert "judge peaked at step 10" in text and "rolled back to step 10" in text
    assert (tmp_path / "overoptimisation_rlhf.png").is_file()


def test_rollback_needs_the_curve():
    with pytest.raises(ConfigError, match="set curve_steps"):
        RLHFConfig(on_hack="rollback", curve_steps=0)
    with pytest.raises(ConfigError, match="set curve_steps"):
        DPOStageConfig(on_hack="rollback", curve_steps=0)
    with pytest.raises(ConfigError, match="'warn', 'stop' or 'rollback'"):
        RLHFConfig(on_hack="undo")


@pytest.mark.slow
def test_the_kl_off_hack_recipe_shows_the_judge_peak_and_rolls_back(tiny_sft_model, tiny_reward_model, tmp_path):
    """recipes/tiny/rlhf-hack.yaml (no KL leash, a high learning rate) with `on_hack: rollback`: the judge peaks
    before the end, the watch alarms, and the saved model is the peak's checkpoint. The suite's reward model
    (10 steps of training) scores on about a tenth of the speedrun's scale, so its rise is watched at 0.05."""
    out = tmp_path / "hack"
    cfg = load_config(RLHFConfig, recipes_dir() / "tiny" / "rlhf-hack.yaml",
                      ["--model_name_or_path", str(tiny_sft_model), "--reward_model_path", str(tiny_reward_model),
                       "--output_dir", str(out), "--on_hack", "rollback", "--curve_steps", "5", "--rm_rise", "0.05"])
    run_rlhf(cfg)
    report = json.loads((out / "eval.json").read_text())
    rows, summary = read_curve(out), report["curve"]
    assert rows[0]["step"] == 0 and rows[0]["kl"] == 0.0 and rows[-1]["kl"] > 0
    assert report["alarms"], report  # the hack was caught ...
    peak = max(rows, key=lambda r: r["judge"])
    assert summary["judge_peak"]["step"] == peak["step"] < summary["stopped_at"] < cfg.max_steps  # ... early
    assert summary["rolled_back_to"] == peak["step"]
    from safetensors.torch import load_file

    saved, best = load_file(out / "model.safetensors"), load_file(out / "curve" / "best" / "model.safetensors")
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)
