"""What a speedrun prints: a numbered line per step with its time and key figure, the time left from
the previous run, a summary table; Ctrl-C stops it in one line and the same command resumes; library
notices are quiet unless asked for.

    python -m pytest -q tests/unit/test_console.py
"""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml
from test_speedrun_markers import fake_steps  # noqa: F401  (the instant steps, a fixture)

from hfstack.core.layout import FOLDERS, RunLayout
from hfstack.core.rundir import MARKER
from hfstack.stages import speedrun as speedrunner
from hfstack.stages.speedrun import SpeedrunConfig, speedrun
from hfstack.ui.console import Watch, duration, key_figure, previous_times


def test_every_step_gets_a_numbered_line_and_the_run_a_summary(tmp_path, fake_steps, capsys):  # noqa: F811
    run = tmp_path / "run"
    speedrun(SpeedrunConfig(output_dir=str(run)))
    out = capsys.readouterr().out
    total = len(FOLDERS)
    for number, step in enumerate(FOLDERS, 1):
        assert f"[{number}/{total}] {step}: starting" in out and f"[{number}/{total}] {step}: done in 0s" in out
    table = out[out.index("\nstep "):]
    assert all(f"\n{step} " in table for step in FOLDERS) and "[speedrun] finished:" in table
    speedrun(SpeedrunConfig(output_dir=str(run)))
    again = capsys.readouterr().out
    assert f"[4/{total}] pretrain: already done, skipping" in again and again.count("skipped") == total


def test_time_left_comes_from_the_previous_run_and_only_when_every_step_was_timed(tmp_path, capsys):
    watch = Watch(["data", "pretrain", "sft"], {"data": 10, "pretrain": 100, "sft": 1378})
    watch.started("data")
    assert capsys.readouterr().out == "[1/3] data: starting (last time 10s; about 24m48s left)\n"
    watch.finished("pretrain", tmp_path, 95)  # a folder without its summary: no key figure
    assert capsys.readouterr().out == "[2/3] pretrain: done in 1m35s · about 22m58s left\n"
    untimed = Watch(["data", "pretrain", "sft"], {"data": 10, "pretrain": 100})
    untimed.started("data")
    assert capsys.readouterr().out == "[1/3] data: starting (last time 10s)\n"  # sft never timed: no estimate
    assert (duration(59.6), duration(3725)) == ("1m00s", "1h02m")


def test_key_figures_are_read_from_what_each_step_wrote(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "summary.json").write_text(json.dumps({"eval_bpb": 1.9383}))
    assert key_figure("pretrain", tmp_path / "base") == "val 1.94 bpb"
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({
        "identity": {"accuracy": 0.7}, "arithmetic": {"accuracy": 0.91}, "counting": {"accuracy": 0.395},
        "search": {"accuracy": 0.0}}))
    assert key_figure("eval", tmp_path / "eval") == "arithmetic 91.0%, counting 39.5%, identity 70.0%"
    assert key_figure("final-eval", tmp_path / "eval") == key_figure("eval", tmp_path / "eval")
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "eval.json").write_text(json.dumps({"pass@1_before": {"arithmetic": 0.92, "counting": 0.39},
                                                           "pass@1_after": {"arithmetic": 0.93, "counting": 0.4}}))
    assert key_figure("rl", tmp_path / "rl") == "pass@1 arithmetic 92.0% → 93.0%, counting 39.0% → 40.0%"
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "eval.json").write_text('{"held_out_accuracy_after": 0.79')  # torn by a kill
    assert key_figure("reward", tmp_path / "rm") is None
    (tmp_path / "rm" / "eval.json").write_text(json.dumps({"held_out_accuracy_after": "high"}))  # not a number
    assert key_figure("reward", tmp_path / "rm") is None and key_figure("generate", tmp_path) is None
    (tmp_path / "rm" / "eval.json").write_text(json.dumps({"held_out_accuracy_after": 0.865,
                                                           "attacks_found": ["token edits"]}))
    assert key_figure("reward", tmp_path / "rm") == "held-out accuracy 86.5%, 1 RM attack(s) found"
    (tmp_path / "honesty").mkdir()
    group = {"items": 25, "right": 0, "refused": 24, "hallucinated": 1}
    (tmp_path / "honesty" / "boundary.json").write_text(json.dumps({"models": {
        "base": {"search_off": {"groups": {"unknown": group | {"refused": 0, "hallucinated": 25}}}},
        "sft": {"search_off": {"groups": {"unknown": group, "known": {"items": 5, "right": 5, "refused": 0,
                                                                         "hallucinated": 0}}}}}}))
    assert key_figure("honesty", tmp_path / "honesty") == "hallucinated base 100%, sft 3%"


def mark(run, step: str, seconds: float) -> None:
    folder = RunLayout(run).folder(step)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"stage": step, "step": step, "seconds": seconds}))


def test_previous_times_are_this_runs_then_the_newest_sibling_of_the_same_preset(tmp_path):
    for name, preset, seconds in (("old", "tiny", 50), ("other", "gpu-small", 7), ("run", "tiny", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speedrun.yaml").write_text(yaml.safe_dump({"preset": preset}))
        if seconds:
            for step in ("data", "pretrain", "sft"):
                mark(tmp_path / name, step, seconds)
    mark(tmp_path / "run", "data", 3)  # this run's own marker wins
    assert previous_times(tmp_path / "run", "tiny") == {"data": 3.0, "pretrain": 50.0, "sft": 50.0}
    assert previous_times(tmp_path / "other", "gpu-small") == {s: 7.0 for s in ("data", "pretrain", "sft")}


def test_ctrl_c_stops_in_one_line_and_the_same_command_resumes(tmp_path, fake_steps, monkeypatch,  # noqa: F811
                                                                capsys):
    calls, _ = fake_steps
    steps = dict(speedrunner.STAGES)
    finish_sft = steps["sft"].run

    def interrupted(cfg, run, stage_cfg):
        raise KeyboardInterrupt

    monkeypatch.setitem(steps, "sft", steps["sft"].__class__(**{**steps["sft"].__dict__, "run": interrupted}))
    monkeypatch.setattr(speedrunner, "STAGES", list(steps.items()))
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        speedrun(SpeedrunConfig(output_dir=str(run)))
    assert stopped.value.code == 130
    assert "[speedrun] stopped during sft; the same command resumes from there" in capsys.readouterr().out
    steps["sft"] = steps["sft"].__class__(**{**steps["sft"].__dict__, "run": finish_sft})
    monkeypatch.setattr(speedrunner, "STAGES", list(steps.items()))
    calls.clear()
    speedrun(SpeedrunConfig(output_dir=str(run)))
    assert calls == list(FOLDERS)[list(FOLDERS).index("sft"):]  # from the interrupted step on


def test_library_notices_are_quiet_unless_asked_for():
    code = ("import warnings, sys, os\n"
            "from hfstack.ui.console import quiet_libraries\n"
            "with quiet_libraries(sys.argv[1] == 'quiet'):\n"
            "    warnings.warn('from a library', FutureWarning)\n"
            "    warnings.warn_explicit('ours', UserWarning, 'hfstack/x.py', 1, module='hfstack.x')\n"
            "    exec('from loguru import logger; logger.info(\"datatrove per-task log\")', "
            "{'__name__': 'datatrove.executor.local'})\n"
            "    import datasets\n"
            "    state = lambda: (datasets.utils.logging.is_progress_bar_enabled(), "
            "os.environ.get('HF_DATASETS_DISABLE_PROGRESS_BARS'))\n"
            "    print(*state())\n"
            "print(*state())")
    loud = subprocess.run([sys.executable, "-c", code, "loud"], capture_output=True, text=True, timeout=120)
    quiet = subprocess.run([sys.executable, "-c", code, "quiet"], capture_output=True, text=True, timeout=120)
    assert "datatrove per-task log" in loud.stderr and "datatrove per-task log" not in quiet.stderr
    assert "from a library" in loud.stderr and loud.stdout.split() == ["True", "None", "True", "None"]
    assert "from a library" not in quiet.stderr and quiet.stdout.split() == ["False", "1", "True", "None"]
    assert "ours" in quiet.stderr  # hfstack's own warnings still show


def test_a_trainer_without_its_bar_prints_no_log_dicts_while_quiet(capsys):
    """A stage run with `progress: false` gets transformers' PrinterCallback, which prints every log as a
    dict: the speedrun's quiet default leaves those out, and puts the callback back as it was after."""
    from transformers.trainer_callback import PrinterCallback

    from hfstack.ui.console import quiet_libraries

    def log(printer):
        printer.on_log(None, SimpleNamespace(is_local_process_zero=True), None, logs={"loss": 1.25})

    with quiet_libraries():
        log(PrinterCallback())
    assert "1.25" not in capsys.readouterr().out
    log(PrinterCallback())
    assert "1.25" in capsys.readouterr().out
