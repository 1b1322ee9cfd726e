"""Through the real `hfstack` command: help is instant, errors are one line, data and speedrun run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hfstack.cli import main

ENV = os.environ | {"HF_HUB_OFFLINE": "1"}


def hfstack(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hfstack", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=600)


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from hfstack.cli import main; main(['--help']); print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'transformers', 'datatrove', 'datasets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert "speedrun" in out.stdout
    assert out.stdout.strip().endswith("[]")


def test_stage_help_lists_fields():
    out = hfstack("data", "--help")
    assert out.returncode == 0 and "--language_threshold" in out.stdout


def test_errors_are_one_line(tmp_path):
    out = hfstack("data", "--input", str(tmp_path / "missing.warc.gz"), "--output_dir", str(tmp_path / "o"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "missing.warc.gz" in out.stderr
    out = hfstack("data", "--input", "x.warc.gz", "--no_such_field", "1")
    assert out.returncode == 2 and "unknown key 'no_such_field'" in out.stderr and "Traceback" not in out.stderr
    out = hfstack("frobnicate")
    assert out.returncode == 2 and "unknown command" in out.stderr


def test_failed_work_is_one_line_and_exit_1(monkeypatch, capsys):
    """Work that failed (a data task on Ray) says where it logged why, in one line, exit 1; a config error exits 2."""
    from hfstack import cli
    from hfstack.core.errors import StageFailed
    from hfstack.stages import report as report_stage

    def fails(cfg):
        raise StageFailed("data: stage filter: 1/1 task(s) failed (ranks [0]); see RUN/data/logs/filter/logs")

    monkeypatch.setattr(report_stage, "run", fails)
    assert cli.main(["report", "--run", "."]) == 1
    err = capsys.readouterr().err
    assert err == "hfstack report: failed: data: stage filter: 1/1 task(s) failed (ranks [0]); see " \
                  "RUN/data/logs/filter/logs\n"


def test_python_api_matches_cli(tmp_path):
    import hfstack

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "A short English sentence about rivers, trees and the weather today."}))
    result = hfstack.data(hfstack.DataConfig(input=[str(data)], output_dir=str(tmp_path / "o"), quality=False,
                                             exact_dedup=False, minhash_dedup=False, progress=False))
    assert result["steps"][-1]["docs_out"] == 1
    assert Path(tmp_path / "o" / "config.yaml").is_file()


def test_tokenize_views_text_and_chat_in_terminal_and_html(tmp_path, capsys):
    from hfstack.cli import main
    from hfstack.stages.tokenizer import to_transformers, train_bpe

    tokenizer_dir = tmp_path / "tok"
    to_transformers(train_bpe(["the cat sat on the mat, and the dog sat on the log. "] * 50, 300)) \
        .save_pretrained(tokenizer_dir)
    assert main(["tokenize", "--tokenizer", str(tokenizer_dir), "--color", "never", "the cat <|pad|>"]) == 0
    out = capsys.readouterr().out
    assert "|the| cat| |<|||p|a|d|||>" in out  # a typed special token is plain characters
    assert "tokens, 15 bytes" in out
    conversation = tmp_path / "chat.json"
    conversation.write_text(json.dumps({"messages": [{"role": "user", "content": "the cat?"},
                                                     {"role": "assistant", "content": "the mat."}]}))
    page = tmp_path / "view.html"
    assert main(["tokenize", "--tokenizer", str(tokenizer_dir), "--chat", str(conversation), "--html", str(page),
                 "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "[the][ mat][.][<|assistant_end|>]" in out and "4 trained on (assistant)" in out
    assert "trained on" in page.read_text() and "&lt;|assistant_end|&gt;" in page.read_text()
    assert main(["tokenize", "--tokenizer", str(tmp_path / "none"), "hi"]) == 2
    assert "no tokenizer at" in capsys.readouterr().err


def test_every_public_name_stays_what_it_is_after_its_module_is_imported():
    import importlib

    import hfstack

    for name, (module, attr) in hfstack._exports().items():
        importlib.import_module(module)
        assert getattr(hfstack, name) is getattr(importlib.import_module(module), attr), name


def test_speedrun_can_launch_training_stages_through_accelerate(tmp_path, monkeypatch):
    """With `launcher: accelerate` a training stage's resolved config is written to RUN/launch/<stage>.yaml
    and `accelerate launch -m hfstack <stage> --config RUN/launch/<stage>.yaml` runs it; it loads back equal."""
    import subprocess

    from hfstack.core.config import load_config
    from hfstack.core.recipes import recipes_dir
    from hfstack.stages import recipe
    from hfstack.stages.reward import RewardStageConfig
    from hfstack.stages.speedrun import SpeedrunConfig, train

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda line: calls.append(line) or 0)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = SpeedrunConfig(output_dir=str(tmp_path), launcher="accelerate", num_processes=2)
    stage_cfg = recipe("reward", model_name_or_path="m", dataset_name="p", output_dir=str(tmp_path / "rm"))
    train(cfg, "reward", stage_cfg, lambda c: pytest.fail("ran in this process"))
    line = calls[0]
    assert line[1:6] == ["-m", "accelerate.commands.launch", "--config_file",
                         str(recipes_dir() / "accelerate/cpu.yaml"), "--num_processes"]
    assert line[6:11] == ["2", "-m", "hfstack", "reward", "--config"]
    assert load_config(RewardStageConfig, line[11]) == stage_cfg
    with pytest.raises(Exception, match="launcher"):
        SpeedrunConfig(launcher="slurm")


def test_single_process_stages_run_once_under_a_launcher(tmp_path, monkeypatch, capsys):
    """Under `accelerate launch` every rank runs `hfstack <stage>`; a stage that does not train (data,
    rank, report, ...) works on rank 0 only, so two processes never write the same files."""
    from hfstack.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["report", "--run", str(tmp_path / "missing")]) == 0  # rank 1 stands by: no error, no work
    monkeypatch.setenv("RANK", "0")
    assert main(["report", "--run", str(tmp_path / "missing")]) == 2  # rank 0 does the work (and fails here)
    assert "no run directory" in capsys.readouterr().err


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    out = hfstack("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"hfstack {version('hfstack')}"


def test_help_shows_each_fields_type_default_range_and_comment(capsys):
    assert main(["rlhf", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--beta                         float, default 0.05, >= 0 (0 takes the KL leash off)" in text
    assert "KL penalty to the reference policy" in text  # the field's comment in RLHFConfig


def test_an_unknown_key_suggests_the_nearest(capsys):
    assert main(["sft", "--learning_rat", "1e-3"]) == 2
    assert "unknown key 'learning_rat' for SFTStageConfig; did you mean 'learning_rate'?" in capsys.readouterr().err


def test_print0_prints_on_the_main_process_only(monkeypatch, capsys):
    """Under a launch every rank runs the stage's code; print0 says each line once (rank 0), reading the
    rank from the environment torchrun/accelerate set, without starting torch.distributed."""
    from hfstack.core.launch import print0

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    print0("[stage] not launched")
    monkeypatch.setenv("RANK", "0")
    print0("[stage] rank", 0)
    monkeypatch.setenv("RANK", "1")
    print0("[stage] rank 1 says nothing")
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("LOCAL_RANK", "1")  # no RANK: the local rank decides
    print0("[stage] local rank 1 says nothing")
    assert capsys.readouterr().out == "[stage] not launched\n[stage] rank 0\n"


def test_launch_flags_reach_accelerate_and_bad_ones_are_one_line_errors(monkeypatch, capsys):
    """`--launcher accelerate` passes accelerate's own multi-node flags on, takes a shipped config by name,
    and refuses a bad value in one line before anything starts."""
    import subprocess

    from hfstack import cli

    launched = []
    monkeypatch.setattr(subprocess, "call", lambda line: launched.append(line) or 0)
    assert cli.main(["pretrain", "--max_steps", "3", "--launcher", "accelerate", "--launch_config", "multi_node",
                     "--num_processes", "4", "--num_machines", "2", "--machine_rank", "1",
                     "--main_process_ip", "10.0.0.1", "--main_process_port=29555", "--mixed_precision", "no"]) == 0
    line = launched[0]
    assert line[line.index("--config_file") + 1].endswith("recipes/accelerate/multi_node.yaml")
    for flag, value in (("--num_processes", "4"), ("--num_machines", "2"), ("--machine_rank", "1"),
                        ("--main_process_ip", "10.0.0.1"), ("--main_process_port", "29555"),
                        ("--mixed_precision", "no")):
        assert line[line.index(flag) + 1] == value
    assert line[line.index("-m", 3):] == ["-m", "hfstack", "pretrain", "--max_steps", "3"]
    for bad, why in ((["--num_machines", "0"], "--num_machines must be a whole number >= 1, got '0'"),
                     (["--machine_rank", "-1"], "--machine_rank must be a whole number >= 0"),
                     (["--main_process_port", "70000"], "--main_process_port must be a port number"),
                     (["--mixed_precision", "fp8"], "--mixed_precision must be no, fp16 or bf16"),
                     (["--launch_config", "fsdp9"], "neither a file (an accelerate config YAML) nor one of "
                                                    "hfstack's: cpu, fsdp2, multi_gpu, multi_node, zero2, zero3")):
        assert cli.main(["sft", "--launcher", "accelerate", *bad]) == 2
        error = capsys.readouterr().err
        assert why in error and error.count("\n") == 1, error
    assert len(launched) == 1
