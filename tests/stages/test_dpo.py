"""`hfstack dpo`: DPO learns a scripted preference into the policy (held-out margin and accuracy up), every
weight moves and the folder loads as a plain causal LM; KTO, ORPO and DPO with precomputed reference
log-probs run; the watch alarms; the speedrun's dpo tail; the report card; bad inputs are one-line errors.

    python -m pytest -q tests/stages/test_dpo.py
"""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from hfstack.core.config import ConfigError
from hfstack.core.layout import FOLDERS, RunLayout
from hfstack.core.rundir import MARKER, claim_output, finish_output, read_json
from hfstack.dataprep.preferences import unpaired
from hfstack.rlalgo.watch import DPOWatch
from hfstack.stages import speedrun as speedrunner
from hfstack.stages.dpo import DPOStageConfig, allowed_losses, run_dpo
from hfstack.stages.report import ReportConfig, report
from hfstack.stages.speedrun import SpeedrunConfig, speedrun

from tiny import Killed, dies_in_step, toy_preferences


@pytest.fixture(scope="module")
def dpo_run(tiny_sft_model, tmp_path_factory):
    """A run folder: the rank stage's toy pairs in RUN/prefs, then 30 DPO steps on them into RUN/dpo."""
    root = tmp_path_factory.mktemp("dpo-run")
    prefs = toy_preferences(root / "prefs")
    out = run_dpo(DPOStageConfig(model_name_or_path=str(tiny_sft_model), dataset_name=str(prefs),
                                 output_dir=str(root / "dpo"), max_steps=30, learning_rate=3e-3, warmup_steps=2,
                                 watch_steps=10, logging_steps=10, progress=False))
    return RunLayout(root), out


def test_dpo_raises_the_held_out_margin_of_a_scripted_preference(dpo_run):
    _, out = dpo_run
    report_ = json.loads((out / "eval.json").read_text())
    before, after = report_["held_out"]["before"], report_["held_out"]["after"]
    assert report_["test_pairs"] > 40 and report_["steps"] == 30 and report_["algo"] == "dpo"
    # policy == reference at the start: TRL's implicit reward margin is 0, and so is its accuracy (no pair ahead)
    assert before["rewards/margins"] == 0 and before["rewards/accuracies"] == 0
    assert after["rewards/margins"] > 0.3 and after["rewards/accuracies"] > 0.8, report_["held_out"]
    # the policy's own preference, not relative to the reference: the chosen answers gained on the rejected ones
    assert after["logps/margins"] > before["logps/margins"] + 2, report_["held_out"]
    rows = [json.loads(line) for line in (out / "watch.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]  # every watch_steps, whatever logging_steps says
    assert {"margin", "accuracy", "logp_chosen", "logp_rejected", "judge", "distinct2", "length"} <= set(rows[0])
    assert rows[-1]["margin"] > rows[0]["margin"] and report_["watch"]["steps_logged"] == 3
    # the over-optimisation curve: from the start (the policy is its reference: KL 0) every curve_steps; no RM
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [0, 10, 20, 30] and curve[0]["kl"] == 0 and curve[-1]["kl"] > 0
    assert "rm" not in curve[0] and report_["curve"]["points"] == 4 and report_["curve"]["rolled_back_to"] is None


def test_every_weight_moved_and_the_folder_loads_as_a_causal_lm(dpo_run, tiny_sft_model):
    import torch
    from transformers import AutoModelForCausalLM

    _, out = dpo_run
    start = AutoModelForCausalLM.from_pretrained(tiny_sft_model).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(out)
    unchanged = [name for name, value in tuned.state_dict().items() if torch.equal(value, start[name])]
    assert not unchanged, unchanged
    assert tuned.generation_config.eos_token_id is not None  # generate stops at the end of a turn
    assert (out / "eval_sets.jsonl").is_file() and (out / "tokenizer.json").is_file()  # final-eval can score it


@pytest.mark.parametrize("options", [{"algo": "kto"}, {"algo": "orpo"},
                                     {"algo": "dpo", "loss_type": "ipo", "precompute_ref_log_probs": True}],
                         ids=["kto", "orpo", "dpo-ipo-precomputed"])
def test_each_algorithm_runs_and_reports(dpo_run, tiny_sft_model, tmp_path, options):
    run, _ = dpo_run
    out = run_dpo(DPOStageConfig(model_name_or_path=str(tiny_sft_model), dataset_name=str(run.prefs),
                                 output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                                 watch_steps=1, watch_prompts=2, max_completion_length=8, progress=False, **options))
    report_ = json.loads((out / "eval.json").read_text())
    assert report_["steps"] == 2 and report_["algo"] == options["algo"]
    after = report_["held_out"]["after"]
    assert isinstance(after["rewards/margins"], float) and isinstance(after["logps/chosen"], float)
    rows = [json.loads(line) for line in (out / "watch.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "judge" in rows[0]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_a_rerun_resumes_from_the_checkpoint_and_keeps_the_watch(dpo_run, tiny_sft_model, tmp_path, monkeypatch):
    """Killed in step 3, after step 2's checkpoint: the same run, rerun, continues from it, and the watch
    keeps its earlier looks."""
    run, _ = dpo_run
    options = dict(model_name_or_path=str(tiny_sft_model), dataset_name=str(run.prefs), output_dir=str(tmp_path / "o"),
                   max_steps=4, save_steps=2, per_device_train_batch_size=4, watch_steps=1, watch_prompts=1,
                   max_completion_length=4, progress=False)

    dies_in_step(monkeypatch, DPOWatch, 3)  # after step 2's checkpoint
    with pytest.raises(Killed):
        run_dpo(DPOStageConfig(**options))
    monkeypatch.undo()
    first = (tmp_path / "o" / "watch.jsonl").read_text().splitlines()
    assert (tmp_path / "o" / "checkpoints" / "checkpoint-2").is_dir() and len(first) == 2
    out = run_dpo(DPOStageConfig(**options))
    rows = (out / "watch.jsonl").read_text().splitlines()
    assert rows[:2] == first and [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]
    assert json.loads((out / "eval.json").read_text())["steps"] == 4
    curve = [json.loads(line)["step"] for line in (out / "curve.jsonl").read_text().splitlines()]
    assert curve == [0, 4]  # the start measured before the kill, kept; the end measured after the resume


def test_kto_rows_from_ranked_pairs():
    """A ranking a > b > c gives the pairs (a,b), (a,c), (b,c): a is desirable, c not, and b, chosen once and
    rejected once, is left out; each answer is one row."""
    prompt = [{"role": "user", "content": "hi"}]
    a, b, c = ([{"role": "assistant", "content": t}] for t in ("a", "b", "c"))
    pairs = [{"prompt": prompt, "chosen": x, "rejected": y} for x, y in ((a, b), (a, c), (b, c))]
    rows = unpaired(pairs, seed=0)
    assert sorted((r["completion"][0]["content"], r["label"]) for r in rows) == [("a", True), ("c", False)]
    plain = unpaired([{"prompt": "p", "chosen": "yes", "rejected": "no"}], seed=0)
    assert sorted((r["completion"], r["label"]) for r in plain) == [("no", False), ("yes", True)]


def test_the_watch_alarms_when_the_margin_rises_while_the_judge_falls(tmp_path):
    watch = DPOWatch(DPOStageConfig(margin_rise=1.0), tmp_path / "watch.jsonl")
    look = {"logp_chosen": -20.0, "logp_rejected": -22.0, "distinct2": 1.0, "length": 20.0}
    assert not watch.observe(10, look | {"margin": 0.2, "judge": 1.5})
    watch.observe(20, look | {"margin": 1.5, "judge": 1.6})  # both up: fine
    assert not watch.alarms
    watch.observe(30, look | {"margin": 2.0, "judge": 1.0})  # margin up, judge down
    assert len(watch.alarms) == 1 and "reward margin up +1.80" in watch.alarms[0]
    watch.observe(40, look | {"margin": 0.3, "judge": 1.5, "distinct2": 0.2})  # repetition
    assert len(watch.alarms) == 2 and "repetition" in watch.alarms[1]
    assert [bool(json.loads(line)["alarm"]) for line in (tmp_path / "watch.jsonl").read_text().splitlines()] == [
        False, False, True, True]
    stopper = DPOWatch(DPOStageConfig(on_hack="stop", margin_rise=1.0), tmp_path / "stop.jsonl")
    stopper.observe(10, look | {"margin": 0.0, "judge": 1.5})
    assert stopper.observe(20, look | {"margin": 3.0, "judge": 0.5})


def test_the_report_card_shows_dpo_and_rlhf_when_both_ran(dpo_run):
    run, _ = dpo_run
    run.rlhf.mkdir(exist_ok=True)
    (run.rlhf / "watch.jsonl").write_text(json.dumps({"step": 5, "rm_score": 0.1, "judge": 1.2, "distinct2": 0.9,
                                                      "length": 20.0}) + "\n")
    text = (report(ReportConfig(run=str(run.root))) / "report.md").read_text()
    assert "## Preferences without a reward model (DPO, beta 0.1)" in text and "## RLHF" in text
    assert "| reward accuracy | 0.000 |" in text and "| 30 |" in text  # before, and the watch's last look
    assert (run.dpo / "README.md").is_file()  # RUN/dpo holds the newest model: the final one, with the card


def test_bad_inputs_are_one_line_errors(dpo_run, tiny_sft_model, tmp_path):
    prefs = dpo_run[0].prefs
    for options, message in [({"algo": "ppo"}, "unknown algo 'ppo'"),
                             ({"loss_type": ["sigmoidd"]}, "unknown loss_type 'sigmoidd' for algo dpo; TRL's are: "),
                             ({"algo": "kto", "loss_type": "ipo"}, "for algo kto; TRL's are: kto, apo_zero_unpaired"),
                             ({"algo": "orpo", "loss_type": "ipo"}, "orpo has its own loss"),
                             ({"algo": "orpo", "precompute_ref_log_probs": True}, "no reference model"),
                             ({"algo": "kto", "per_device_train_batch_size": 1}, "must be >= 2"),
                             ({"on_hack": "panic"}, "on_hack"),
                             ({"dataset_name": None}, "no preference pairs"),
                             ({"training_args": {"betta": 1}}, "unknown key 'betta' for DPOConfig")]:
        with pytest.raises(ConfigError, match=message):
            DPOStageConfig(**options)
    assert {"sigmoid", "ipo", "hinge", "robust"} <= set(allowed_losses("dpo"))
    with pytest.raises(ConfigError, match="run `hfstack rank` first"):
        run_dpo(DPOStageConfig(model_name_or_path=str(tiny_sft_model), dataset_name=str(tmp_path),
                               output_dir=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()  # refused before anything was written
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "good": "a"}) + "\n")
    with pytest.raises(ConfigError, match=r"dpo: preferences .* lack column\(s\) \['chosen', 'rejected'\]"):
        run_dpo(DPOStageConfig(model_name_or_path=str(tiny_sft_model), dataset_name=str(bad),
                               output_dir=str(tmp_path / "o")))
    with pytest.raises(ConfigError, match="DPOTrainer refused the settings: Label smoothing must be greater than 0"):
        run_dpo(DPOStageConfig(model_name_or_path=str(tiny_sft_model), dataset_name=str(prefs), loss_type="exo_pair",
                               output_dir=str(tmp_path / "exo"), progress=False))  # TRL's own check, one line
    with pytest.raises(ConfigError, match="no policy"):
        run_dpo(DPOStageConfig(model_name_or_path=str(tmp_path / "nope"), output_dir=str(tmp_path / "o")))


# ----------------------------------------------------------------------------- the speedrun's dpo tail


@dataclasses.dataclass
class FakeConfig:
    output_dir: str
    model: str = ""  # what the step reads (final-eval: the tail's model)
    overwrite: bool = False


def test_the_speedrun_takes_the_dpo_tail_when_asked(tmp_path, monkeypatch):
    """Instant fake stages with the real step names, kinds and folders: `--preference dpo` runs rank → dpo
    (RUN/dpo, marked done there) instead of reward → rlhf, and final-eval scores RUN/dpo."""
    calls = []
    # a name each stage writes
    written = {"crawl": "crawl.warc.gz", "data": "stats.json", "tokenizer": "tokenizer.json",
               "generate": "samples.json", "regurgitation": "report.json", "eval": "eval.json", "rank": "summary.json",
               "honesty": "boundary.json", "report": "report.md", "dpo": "watch.jsonl"}

    def fake(name, step):
        def config(cfg, run: RunLayout):
            model = step.config(cfg, run).model_name_or_path if name == "final-eval" else ""
            return FakeConfig(output_dir=str(run.folder(name)), model=model, overwrite=cfg.force)

        def run_step(cfg, run: RunLayout, stage_cfg):
            calls.append((name, stage_cfg.model) if stage_cfg.model else name)
            if step.claims:
                claim_output(step.stage, stage_cfg, folder=stage_cfg.output_dir)
            (Path(stage_cfg.output_dir) / written.get(step.stage, "config.json")).write_text(name)
            if step.claims:
                finish_output(stage_cfg.output_dir, step.stage)

        return dataclasses.replace(step, config=config, run=run_step)

    monkeypatch.setattr(speedrunner, "STAGES", [(name, fake(name, step)) for name, step in speedrunner.STAGES])
    # the real final-eval config function, its stage config reduced to the flags it is given
    monkeypatch.setattr(speedrunner, "stage_config", lambda cfg, stage, flags: argparse.Namespace(
        model_name_or_path=flags[flags.index("--model_name_or_path") + 1]))
    run = RunLayout(tmp_path / "run")
    speedrun(SpeedrunConfig(output_dir=str(run.root), preference="dpo"))
    expected = [n for n in FOLDERS if n not in ("reward", "rlhf")]
    expected.insert(expected.index("rank") + 1, "dpo")
    assert [c if isinstance(c, str) else c[0] for c in calls] == expected
    assert ("final-eval", str(run.dpo)) in calls and read_json(run.dpo / MARKER)["step"] == "dpo"
    assert not run.rm.exists() and not run.rlhf.exists()
    (run.dpo / "config.json").write_text("{}")
    assert run.final_step() == "dpo"  # newer than RUN/rl's model
    calls.clear()
    speedrun(SpeedrunConfig(output_dir=str(run.root), preference="dpo"))
    assert calls == []  # every step done: a rerun skips them all
