"""Through the real `hfstack` command: help is instant, errors are one line, data and speedrun run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hfstack.rundir import MARKER

ENV = os.environ | {"HF_HUB_OFFLINE": "1"}


def hfstack(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hfstack", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=600)


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from hfstack.cli import main; main(['--help']); print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'datatrove', 'datasets')))"
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


@pytest.mark.slow
def test_speedrun_tiny_runs_and_skips_finished_stages(tmp_path):
    run = tmp_path / "run"
    first = hfstack("speedrun", "--preset", "tiny", "--output_dir", str(run), "--crawl_pages", "60")
    assert first.returncode == 0, first.stderr[-3000:]
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["documents_kept"] > 10
    assert (run / "data" / "config.yaml").is_file() and (run / "data" / MARKER).is_file()
    assert list((run / "data").glob("*.parquet"))
    second = hfstack("speedrun", "--preset", "tiny", "--output_dir", str(run), "--crawl_pages", "60")
    assert second.returncode == 0
    assert "data: already done, skipping" in second.stdout and "crawl: already done, skipping" in second.stdout


def test_python_api_matches_cli(tmp_path):
    import hfstack

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "A short English sentence about rivers, trees and the weather today."}))
    result = hfstack.data(hfstack.DataConfig(input=[str(data)], output_dir=str(tmp_path / "o"), quality=False,
                                             exact_dedup=False, minhash_dedup=False, progress=False))
    assert result["steps"][-1]["docs_out"] == 1
    assert Path(tmp_path / "o" / "config.yaml").is_file()
