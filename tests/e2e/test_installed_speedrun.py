"""The project's done-criterion: a non-editable install in a fresh venv runs `hfstack speedrun --preset tiny`
from any folder.

    python -m pytest -q tests/e2e/test_installed_speedrun.py      (slow: every stage, each shrunk to a few steps)

How it installs, and why this way:
  - The wheel is built offline from a clean copy of the checkout (test_packaging.build_wheel: no index,
    no build isolation), so it holds exactly what `pip install .` ships, package data included.
  - A fresh venv (no pip of its own, `venv --without-pip`) gets the wheel with `pip --python VENV install
    --no-deps --no-index`: a regular, non-editable install, `hfstack` console script included.
  - The dependencies are not downloaded again (torch & co: minutes and gigabytes, and the machine may
    be offline): one line in a .pth file of the fresh venv appends this interpreter's site-packages to
    its sys.path. That folder is appended as a plain path, not as a site dir, so the .pth files inside
    it are not run, among them the editable install's finder that would map `hfstack` to the checkout.
    (`venv --system-site-packages` would not do: it exposes the base interpreter's site-packages, not
    this venv's, where the dependencies live.) The fresh venv's own site-packages comes first, so even
    a regular install of hfstack in this venv would lose to the wheel's; the test checks that the
    speedrun's interpreter, in the speedrun's folder, imports hfstack from the fresh venv.
  - The speedrun runs in an empty folder outside the checkout, so a path relative to the checkout or
    to the current folder, or a file missing from the package data, fails here.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_packaging import REPO, build_wheel

# every stage at its smallest that still exercises it end to end (names as `hfstack <stage> --help` lists)
SHRUNK = ("{data: {tasks: 1, workers: 1, progress: false}, "
          "tokenizer: {compare_cl100k: false}, "
          "pretrain: {max_steps: 2, per_device_train_batch_size: 2, batch_tokens: 512, eval_batches: 1, "
          "sample_tokens: 4}, "
          "regurgitation: {num_docs: 2, prefix_tokens: 8, continuation_tokens: 8}, "
          "sft: {max_steps: 2, counts: {identity: 4, arithmetic: 4, counting: 4, knowledge: 2, search: 2}, "
          "interrogation_samples: 1, knowledge_repeats: 1, first_phase: {counts: {arithmetic: 4}, max_steps: 1, "
          "per_device_train_batch_size: 2}}, "
          "eval: {limit: 1, max_new_tokens: 8}, "
          "rl: {max_steps: 1, tasks: {arithmetic: 2, counting: 2}, num_generations: 2, prompts_per_step: 1, "
          "max_completion_length: 8, eval_limit: 1}, "
          "rank: {num_prompts: 5, k: 2, max_new_tokens: 8}, "
          "reward: {max_steps: 1}, "
          "rlhf: {max_steps: 1, num_generations: 2, prompts_per_step: 1, max_completion_length: 8}}")


@pytest.mark.slow
def test_the_installed_wheel_runs_the_tiny_speedrun_from_an_empty_folder(tmp_path):
    started = time.time()
    wheel = build_wheel(tmp_path / "build")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    dependencies = site.getsitepackages() + [p for p in [site.getusersitepackages()] if os.path.isdir(p)]
    (packages / "_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"  # empty, and not inside the checkout
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    where = subprocess.run([str(python), "-c", "import hfstack; print(hfstack.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    imported = Path(where.stdout.strip()).resolve()
    assert imported.is_relative_to(packages.resolve()) and not imported.is_relative_to(REPO), imported
    assert subprocess.run([str(venv / "bin" / "hfstack"), "--help"], cwd=elsewhere, env=env, capture_output=True,
                          timeout=60).returncode == 0  # the console script the wheel declares

    run = tmp_path / "run"
    speedrun = subprocess.run([str(python), "-m", "hfstack", "speedrun", "--preset", "tiny", "--output_dir",
                               str(run), "--crawl_pages", "30", "--overrides", SHRUNK],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
    printed = speedrun.stdout + speedrun.stderr
    assert speedrun.returncode == 0, speedrun.stdout[-3000:] + speedrun.stderr[-3000:]
    assert "[speedrun] finished" in speedrun.stdout
    assert str(REPO / "hfstack") not in printed  # warnings and logs name the installed files, never the checkout's

    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(run / "rlhf")  # the final model: plain transformers
    assert final.num_parameters() > 0
    assert (run / "report" / "report.md").is_file() and (run / "report" / "report.html").is_file()  # the card
    assert (run / "rlhf" / "README.md").read_text().startswith("---\n")  # ... which is the final model's card
    assert not any(elsewhere.iterdir())  # nothing was written relative to the current folder
    print(f"installed speedrun: {time.time() - started:.0f}s in all")
