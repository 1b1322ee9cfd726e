"""The report card's compute plan: on the tiny pretrained run its planned tokens and parameters are the ones the
stage says it trained; a stage planned from its recorded config matches `hfstack plan` on the preset it used; a
stage without its records, an unknown GPU and torn files still render, each with a line saying why.

    python -m pytest -q tests/stages/test_report_plan.py
"""

import json
import shutil

import pytest

from hfstack.core.config import save_config
from hfstack.stages import plan as planner
from hfstack.stages import recipe
from hfstack.stages.plan import human_time, plan_for, plan_run
from hfstack.stages.report import ReportConfig, report

HEADING = "## Compute plan against the run"


@pytest.fixture
def tiny_run(tiny_base_model, tmp_path):
    """A run directory holding the session's tiny pretrained model's records (RUN/base), weights left behind."""
    run = tmp_path / "run"
    shutil.copytree(tiny_base_model, run / "base", ignore=shutil.ignore_patterns("*.safetensors", "checkpoints",
                                                                                  "cache", "training_args.bin"))
    return run


def plan_rows(text: str) -> dict[str, list[str]]:
    """The section's table, stage → its cells."""
    section = text[text.index(HEADING):].split("\n## ")[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[1:]}


def test_the_tiny_runs_plan_trains_the_tokens_and_parameters_it_measured(tiny_run):
    summary = json.loads((tiny_run / "base" / "summary.json").read_text())
    plan = plan_run(tiny_run)
    assert plan["gpu"] in ("cpu", *planner.DEVICES) and [r["stage"] for r in plan["stages"]] == ["pretrain"]
    pretrain = plan["stages"][0]
    assert pretrain["tokens"] == summary["tokens_seen"] == pretrain["measured"]["tokens"] > 0
    assert pretrain["parameters"] + pretrain["embedding_parameters"] == summary["parameters"]
    assert pretrain["tokens_per_parameter"] == pytest.approx(summary["tokens_seen"] / summary["parameters"])
    assert pretrain["measured"] | {"timed": "training loop"} == pretrain["measured"]

    out = report(ReportConfig(run=str(tiny_run)))
    text = (out / "report.md").read_text()
    assert HEADING in text and text.index("## Time per stage") < text.index(HEADING) < text.index("## Environment")
    rows = plan_rows(text)
    assert list(rows) == ["pretrain"]  # the one stage that ran
    row = rows["pretrain"]
    assert row[2] == f"{summary['parameters']:,}"  # no "(counted …)": the planner's count is the model's
    assert row[3] == row[4] == f"{summary['tokens_seen']:,}"  # planned tokens, tokens trained
    assert "Chinchilla ~20" in row[5] and row[7] == "yes"
    assert row[9] == f"{human_time(summary['seconds'])} (training loop)"
    assert float(row[10].rstrip("×")) == pytest.approx(summary["seconds"] / pretrain["seconds"], rel=0.01)
    assert "<h2>Compute plan against the run</h2>" in (out / "report.html").read_text()


def test_a_stage_is_planned_from_its_recorded_config_like_the_preset_it_used(tiny_run):
    """An SFT step that ran the tiny recipe on 2 devices: its row is `hfstack plan --preset tiny --gpus 2`'s."""
    sft = tiny_run / "sft"
    sft.mkdir()
    save_config(recipe("sft", "tiny"), sft)
    shutil.copy(tiny_run / "base" / "config.json", sft / "config.json")
    (sft / "summary.json").write_text(json.dumps({"steps": 3000, "world_size": 2, "distributed_type": "MULTI_CPU"}))
    (sft / ".hfstack-done").write_text(json.dumps({"stage": "sft", "step": "sft", "seconds": 42.0}))
    rows = {r["stage"]: r for r in plan_run(tiny_run, {"sft": 42.0}, gpu="cpu")["stages"]}
    preset = {r["stage"]: r for r in plan_for("tiny", gpus=2, gpu="cpu")["stages"]}
    assert rows["sft"]["tokens"] == preset["sft"]["tokens"] and rows["sft"]["note"] == preset["sft"]["note"]
    assert rows["sft"]["measured"]["devices"] == 2 and rows["sft"]["measured"]["timed"] == "whole step"
    table = plan_rows((report(ReportConfig(run=str(tiny_run))) / "report.md").read_text())
    assert list(table) == ["pretrain", "sft"]
    assert table["sft"][1] == "2" and table["sft"][3] == f"{preset['sft']['tokens']:,}" and table["sft"][4] == "-"
    assert table["sft"][9] == "42.0 s (whole step)"


def test_a_stage_without_its_records_and_an_old_run_still_render(tiny_run):
    """SFT left only a summary from an older version (no config.yaml, no world size); RL never ran."""
    (tiny_run / "sft").mkdir()
    (tiny_run / "sft" / "summary.json").write_text(json.dumps({"steps": 15}))
    (tiny_run / "base" / "log.jsonl").write_text('{"step": 1, "loss": 5.0, "mfu": 0.25}\n')
    text = (report(ReportConfig(run=str(tiny_run))) / "report.md").read_text()
    rows = plan_rows(text)
    assert list(rows) == ["pretrain", "sft"]
    assert rows["pretrain"][3] == rows["pretrain"][4] and rows["pretrain"][11] == "25.0%"
    assert rows["sft"][1:] == ["1", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert "sft: not planned (no recorded config.yaml)" in text


def test_no_plan_is_one_line(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "this_device", lambda: None)  # a GPU the planner has no figures for
    text = (report(ReportConfig(run=str(tiny_run))) / "report.md").read_text()
    section = text[text.index(HEADING):].split("\n## ")[0].strip().splitlines()
    assert section[1:] == ["", "No compute plan: pretrain: the planner has no figures for this machine's GPU."]
    monkeypatch.undo()
    old = tmp_path / "old"  # an old run: a summary and a model config without the model's sizes
    (old / "base").mkdir(parents=True)
    (old / "base" / "summary.json").write_text(json.dumps({"steps": 2, "seconds": 1.0, "parameters": 10,
                                                           "tokens_seen": 8}))
    (old / "base" / "config.json").write_text("{}")
    text = (report(ReportConfig(run=str(old))) / "report.md").read_text()
    assert "No compute plan: pretrain: no saved model's config.json gives the model's sizes." in text
    data_only = tmp_path / "data-only"  # no training stage ran: no section
    (data_only / "data").mkdir(parents=True)
    assert HEADING not in (report(ReportConfig(run=str(data_only))) / "report.md").read_text()


def test_torn_and_edited_records_are_planned_around(tiny_run):
    (tiny_run / "base" / "summary.json").write_text('{"steps": 2')  # torn by a kill
    (tiny_run / "base" / "log.jsonl").write_text('{"step": 1, "mfu": "high"}\n[1]\n{"step": 2, "mf')
    (tiny_run / "rm").mkdir()
    (tiny_run / "rm" / "eval.json").write_text(json.dumps(["not", "a", "report"]))
    (tiny_run / "rm" / "config.json").write_text(json.dumps({"hidden_size": "wide"}))
    rows = {r["stage"]: r for r in plan_run(tiny_run, {"reward": "-"}, gpu="cpu")["stages"]}
    assert list(rows) == ["pretrain", "reward"]
    assert rows["pretrain"]["measured"] == {"devices": 1, "steps": None, "tokens": None, "parameters": None}
    assert rows["pretrain"]["tokens"] > 0  # still planned from its config.yaml and config.json
    assert rows["reward"]["missing"] == "no saved model's config.json gives the model's sizes"
