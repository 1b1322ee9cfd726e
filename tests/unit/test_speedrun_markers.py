"""The speedrun's done markers sit in each step's output folder (RUN/base, RUN/prefs, RUN/rm, ...), with
the step's name and seconds, and decide resume: a finished step is skipped, a step killed midway runs
again, --force recomputes, and a run directory of the previous layout (markers in RUN/pretrain, RUN/rank,
RUN/reward) resumes where it stopped. Every step is a fake here (instant), with the real step names,
stage kinds and folders: hfstack.core.rundir claims and finishes them as a stage would.

    python -m pytest -q tests/unit/test_speedrun_markers.py
"""

import dataclasses
import json
from pathlib import Path

import pytest

from hfstack.core.config import ConfigError
from hfstack.core.layout import FOLDERS, RunLayout
from hfstack.core.rundir import MARKER, claim_output, finish_output, read_json
from hfstack.stages import speedrun as speedrunner
from hfstack.stages.speedrun import SpeedrunConfig, speedrun

# one output per stage kind, a name the stage writes (what makes a folder hold a run's work)
OUTPUT = {"crawl": "crawl.warc.gz", "data": "stats.json", "tokenizer": "tokenizer.json", "pretrain": "config.json",
          "generate": "samples.json", "regurgitation": "report.json", "sft": "config.json", "eval": "eval.json",
          "rl": "config.json", "rank": "summary.json", "reward": "config.json", "rlhf": "config.json",
          "honesty": "boundary.json", "report": "report.md"}


@dataclasses.dataclass
class FakeConfig:
    output_dir: str
    overwrite: bool = False
    knob: int = 1  # a setting: another value is another run


class Killed(Exception):
    """Stands for a kill: nothing after it runs (the speedrun has no cleanup to do on one)."""


@pytest.fixture
def fake_steps(monkeypatch):
    """The speedrun's steps with instant stages; returns (calls, kill): the steps run, and the names to kill
    midway (after the stage claimed its folder and wrote part of its output, before it finished)."""
    calls, kill = [], set()

    def fake(name, step):
        def config(cfg, run: RunLayout):
            return FakeConfig(output_dir=str(run.folder(name)), overwrite=cfg.force)

        def run_step(cfg, run: RunLayout, stage_cfg):
            calls.append(name)
            folder = Path(stage_cfg.output_dir)
            if step.claims:  # a stage that claims its own folder (the others the speedrun claims for them)
                claim_output(step.stage, stage_cfg, folder=folder)
            (folder / OUTPUT[step.stage]).write_text(name)
            if name in kill:
                raise Killed(name)
            if step.claims:
                finish_output(folder, step.stage)

        return dataclasses.replace(step, config=config, run=run_step)

    monkeypatch.setattr(speedrunner, "STAGES", [(name, fake(name, step)) for name, step in speedrunner.STAGES])
    return calls, kill


def markers(run: Path) -> dict[str, dict | None]:
    return {name: read_json(RunLayout(run).folder(name) / MARKER) for name in FOLDERS}


def test_markers_sit_in_the_output_folders_and_decide_resume(tmp_path, fake_steps, capsys):
    calls, kill = fake_steps
    run = tmp_path / "run"
    speedrun(SpeedrunConfig(output_dir=str(run)))
    assert calls == list(FOLDERS)
    done = markers(run)
    assert all(info["step"] == name and isinstance(info["seconds"], float) for name, info in done.items()), done
    assert done["final-eval"]["stage"] == done["eval"]["stage"] == "eval"  # two steps, one stage kind
    assert done["pretrain"]["stage"] == "pretrain" and (run / "base" / MARKER).is_file()
    assert (run / "prefs" / MARKER).is_file() and (run / "rm" / MARKER).is_file()
    assert not any((run / name).exists() for name in ("pretrain", "rank", "reward"))  # no folder for a marker only

    calls.clear()
    capsys.readouterr()
    speedrun(SpeedrunConfig(output_dir=str(run)))
    assert calls == [] and capsys.readouterr().out.count("already done, skipping") == len(FOLDERS)

    kill.add("reward")  # --force recomputes every step, and is killed in the middle of reward
    with pytest.raises(Killed):
        speedrun(SpeedrunConfig(output_dir=str(run), force=True))
    assert calls == list(FOLDERS)[:list(FOLDERS).index("reward") + 1]
    assert markers(run)["reward"] is None  # killed midway: not done
    calls.clear()
    kill.clear()
    speedrun(SpeedrunConfig(output_dir=str(run)))
    assert calls == ["reward"]  # the steps after it finished before, with these settings and inputs
    assert markers(run)["reward"]["step"] == "reward"
    assert not any((run / name).exists() for name in ("pretrain", "rank", "reward"))


def test_a_kill_after_the_stage_finished_but_before_the_step_was_marked_runs_the_step_again(tmp_path, fake_steps):
    """The stage's own marker is not the step's: the step is done once the speedrun added its name."""
    calls, _ = fake_steps
    run = tmp_path / "run"
    speedrun(SpeedrunConfig(output_dir=str(run)))
    info = markers(run)["rank"]
    del info["step"], info["seconds"]
    (run / "prefs" / MARKER).write_text(json.dumps(info))  # as the rank stage left it
    calls.clear()
    speedrun(SpeedrunConfig(output_dir=str(run)))
    assert calls == ["rank"] and markers(run)["rank"]["step"] == "rank"


def test_a_different_setting_stops_the_run_rather_than_mixing_runs(tmp_path, fake_steps, monkeypatch):
    calls, _ = fake_steps
    run = tmp_path / "run"
    speedrun(SpeedrunConfig(output_dir=str(run)))
    steps = dict(speedrunner.STAGES)
    original = steps["final-eval"].config
    monkeypatch.setitem(steps, "final-eval", dataclasses.replace(
        steps["final-eval"], config=lambda cfg, layout: dataclasses.replace(original(cfg, layout), knob=2)))
    monkeypatch.setattr(speedrunner, "STAGES", list(steps.items()))
    with pytest.raises(ConfigError, match=r"speedrun: final-eval: .*final-eval was made with different settings "
                                        r"\(knob\)"):
        speedrun(SpeedrunConfig(output_dir=str(run)))
    assert markers(run)["final-eval"]["step"] == "final-eval"  # refused before anything was touched


def to_previous_layout(run: Path) -> None:
    """What the speedrun wrote before markers moved: RUN/<step>/.hfstack-done named the step (as "stage") with its
    seconds; for pretrain, rank and reward that was a folder of its own, beside the stage's marker."""
    layout = RunLayout(run)
    for name in FOLDERS:
        info = read_json(layout.folder(name) / MARKER)
        step_marker = {k: v for k, v in info.items() if k != "step"} | {"stage": name}
        if layout.old_marker(name) is None:
            (layout.folder(name) / MARKER).write_text(json.dumps(step_marker))
        else:
            layout.old_marker(name).mkdir()
            (layout.old_marker(name) / MARKER).write_text(json.dumps(step_marker))
            stage_marker = {k: v for k, v in info.items() if k not in ("step", "seconds")}
            (layout.folder(name) / MARKER).write_text(json.dumps(stage_marker))


def test_a_run_of_the_previous_layout_resumes_where_it_stopped(tmp_path, fake_steps):
    calls, _ = fake_steps
    run = tmp_path / "run"
    speedrun(SpeedrunConfig(output_dir=str(run)))
    to_previous_layout(run)
    calls.clear()
    speedrun(SpeedrunConfig(output_dir=str(run)))
    assert calls == []  # every step had finished: none trains again
    # killed after the reward stage finished, before the old speedrun marked the step: it runs again, and its
    # old marker folder goes (a new marker sits in RUN/rm)
    (run / "reward" / MARKER).unlink()
    speedrun(SpeedrunConfig(output_dir=str(run)))
    assert calls == ["reward"] and not (run / "reward").exists() and markers(run)["reward"]["step"] == "reward"
    assert (run / "pretrain" / MARKER).is_file()  # a finished step of the old layout keeps its marker
