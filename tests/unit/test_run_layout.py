"""RunLayout, the one place that knows a run directory's folders: a folder per speedrun step, the
launch folder, the final model, and each model's parent and training data.

    python -m pytest -q tests/unit/test_run_layout.py
"""

import ast
from pathlib import Path

import pytest

from hfstack.core.layout import FOLDERS, MODELS, RunLayout

PACKAGE = Path(__file__).resolve().parents[2] / "hfstack"


def test_a_folder_per_step_and_by_name(tmp_path):
    run = RunLayout(tmp_path)
    assert run.base == run.folder("pretrain") == tmp_path / "base"
    assert run.prefs == run.folder("rank") == tmp_path / "prefs"
    assert run.rm == run.folder("reward") == tmp_path / "rm"
    assert run.final_eval == run.folder("final-eval") == tmp_path / "final-eval"
    assert run.eval == tmp_path / "eval" and run.report == tmp_path / "report" and run.launch == tmp_path / "launch"
    assert RunLayout(str(tmp_path)).root == tmp_path  # a string root is a Path
    with pytest.raises(KeyError, match="no step 'base'"):  # a folder's name is not a step's
        run.folder("base")
    assert len(set(FOLDERS.values())) == len(FOLDERS)  # no two steps share a folder
    # a step's old marker folder (RUN/<step name>) is never another step's folder: clearing it loses nothing
    assert not set(FOLDERS) & {f for step, f in FOLDERS.items() if f != step}
    assert {step for step in FOLDERS if run.old_marker(step)} == {"pretrain", "rank", "reward"}
    assert run.old_marker("pretrain") == tmp_path / "pretrain" and run.old_marker("data") is None


def test_the_final_model_is_the_newest_that_saved_one(tmp_path):
    run = RunLayout(tmp_path)
    assert run.final_model() is None and run.final_step() is None and run.models() == []
    for step in ("pretrain", "sft", "reward", "rl"):
        run.folder(step).mkdir()
        (run.folder(step) / "config.json").write_text("{}")
    (run.rlhf).mkdir()  # RLHF started but saved no model yet: the RL model is the final one
    assert run.final_step() == "rl" and run.final_model() == tmp_path / "rl"
    assert run.models() == ["pretrain", "sft", "rl", "reward"]
    (run.rlhf / "config.json").write_text("{}")
    assert run.final_model() == run.rlhf and run.models() == list(MODELS)


def test_lineage():
    assert [RunLayout.parent(step) for step in MODELS] == [None, "pretrain", "sft", "rl", "rl"]
    assert {step: RunLayout.trained_on(step) for step in MODELS} == {
        "pretrain": ("data",), "sft": (), "rl": (), "reward": ("rank",), "rlhf": ("rank",)}


@pytest.mark.parametrize("module", ["stages/speedrun.py", "stages/report.py", "stages/push.py"])
def test_only_the_layout_spells_the_run_folders(module):
    """The modules that walk a run ask RunLayout: no string literal there is a run folder's name."""
    tree = ast.parse((PACKAGE / module).read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    folders = {"base", "prefs", "rm", "launch"}  # the names that are no step's
    spelled = [(node.lineno, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
               and node.value in folders and id(node) not in docstrings]
    assert not spelled, f"hfstack/{module} spells run folders: {spelled}"
