"""Scaling out on CPU, for real: under FSDP2 each of 2 gloo ranks holds half of every weight and the run
trains as DDP does; the final save is a plain `from_pretrained` folder; a killed run resumes from its
sharded checkpoint and retraces the uninterrupted one; two "machines" of one process each on localhost
(`--num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1`) train as 2 processes on one machine.
Pretraining and SFT, each launched by `hfstack <stage> --launcher accelerate`.

    python -m pytest -q tests/e2e/test_scale_out.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from hfstack.core.stdlib_text import stdlib_articles

pytestmark = pytest.mark.slow

TWO = ["--launcher", "accelerate", "--num_processes", "2", "--mixed_precision", "no"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hfstack_command(stage: str, *args: str, config: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "hfstack", stage, *args, *TWO, "--launch_config", config, "--progress", "false"]


def hfstack(stage: str, *args: str, config: str = "cpu") -> str:
    """The stage as 2 processes under `config` (a recipe name: cpu is DDP over gloo, fsdp2 shards);
    its output, after checking it succeeded."""
    result = subprocess.run(hfstack_command(stage, *args, config=config), capture_output=True, text=True,
                            timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def two_machines(stage: str, *args: str) -> list[str]:
    """The stage as two machines of one process each on localhost: two launches, ranks 0 and 1."""
    port = str(free_port())
    machines = [subprocess.Popen(hfstack_command(stage, *args, "--num_machines", "2", "--machine_rank", str(rank),
                                                 "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                                                 config="multi_node"),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=os.environ | {"OMP_NUM_THREADS": "1"}) for rank in (0, 1)]
    outputs = [machine.communicate(timeout=600)[0] for machine in machines]
    for machine, output in zip(machines, outputs):
        assert machine.returncode == 0, output[-4000:]
    return outputs


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def losses(folder: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (folder / "log.jsonl").open()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def largest_difference(one: Path, two: Path) -> float:
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Standard-library prose and a 512-token tokenizer trained on it."""
    from hfstack.stages.tokenizer import TokenizerConfig, run_tokenizer

    root = tmp_path_factory.mktemp("scale")
    with (root / "docs.jsonl").open("w") as handle:
        for title, paragraphs in stdlib_articles()[:60]:
            handle.write(json.dumps({"text": title + "\n\n" + "\n\n".join(paragraphs)}) + "\n")
    run_tokenizer(TokenizerConfig(input=[str(root / "docs.jsonl")], output_dir=str(root / "tok"), vocab_size=512,
                                  compare_cl100k=False, progress=False))
    return root


def pretrain_args(root: Path, out: Path, steps: int = 12) -> list[str]:
    return ["--data", str(root / "docs.jsonl"), "--tokenizer", str(root / "tok"), "--output_dir", str(out),
            "--depth", "2", "--seq_len", "64", "--per_device_train_batch_size", "2", "--batch_tokens", "256",
            "--max_steps", str(steps), "--eval_steps", "6", "--save_steps", "3", "--logging_steps", "1",
            "--val_fraction", "0.1", "--learning_rate", "0.01", "--warmup_steps", "2"]


def sft_args(base: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", str(base), "--counts", "{arithmetic: 120}", "--max_steps", "4",
            "--learning_rate", "0.003", "--logging_steps", "1", "--per_device_train_batch_size", "4",
            "--output_dir", str(out)]


@pytest.fixture(scope="module")
def ddp(root) -> Path:
    hfstack("pretrain", *pretrain_args(root, root / "ddp"))
    return root / "ddp"


@pytest.fixture(scope="module")
def fsdp(root) -> Path:
    hfstack("pretrain", *pretrain_args(root, root / "fsdp"), config="fsdp2")
    return root / "fsdp"


@pytest.fixture(scope="module")
def sft_ddp(root, ddp) -> Path:
    hfstack("sft", *sft_args(ddp, root / "sft-ddp"))
    return root / "sft-ddp"


def test_pretraining_on_two_processes_matches_one(root, ddp, tmp_path):
    """The same global batch: 4 sequences a step on 1 process, 2 on each of 2."""
    from hfstack.core.config import load_config
    from hfstack.stages.pretrain import PretrainConfig, run_pretrain

    args = pretrain_args(root, tmp_path / "one")
    args[args.index("--per_device_train_batch_size") + 1] = "4"
    run_pretrain(load_config(PretrainConfig, cli_args=[*args, "--progress", "false"]))
    assert summary(tmp_path / "one")["world_size"] == 1 and summary(ddp)["world_size"] == 2
    one, two = losses(tmp_path / "one"), losses(ddp)
    assert max(abs(one[s] - two[s]) for s in one) < 1e-4
    difference = largest_difference(tmp_path / "one", ddp)
    print(f"\n[2 processes] pretrain: largest weight difference to 1 process {difference:.2e}")
    assert difference < 1e-4


def assert_sharded_in_half(report: dict) -> None:
    assert (report["world_size"], report["distributed_type"]) == (2, "FSDP")
    total, per_rank = report["fsdp"]["parameters"], report["fsdp"]["parameters_per_rank"]
    assert report["fsdp"]["version"] == 2 and len(per_rank) == 2
    assert sum(per_rank) == total and max(per_rank) - min(per_rank) <= 64  # each rank holds half of every weight


def test_fsdp_pretraining_shards_every_weight_in_half_and_trains_as_ddp(ddp, fsdp):
    assert summary(ddp)["distributed_type"] == "MULTI_CPU" and "fsdp" not in summary(ddp)
    assert_sharded_in_half(summary(fsdp))
    print(f"\n[FSDP2] pretrain parameters per rank {summary(fsdp)['fsdp']['parameters_per_rank']} "
          f"of {summary(fsdp)['fsdp']['parameters']}")
    sharded, replicated = losses(fsdp), losses(ddp)
    assert sharded.keys() == replicated.keys() == set(range(1, 13))
    assert max(abs(sharded[s] - replicated[s]) for s in sharded) < 1e-4
    assert sharded[12] < sharded[1] - 0.3  # and it learned
    difference = largest_difference(ddp, fsdp)
    print(f"[FSDP2] pretrain: largest weight difference to DDP {difference:.2e}")
    assert difference < 1e-4
    # the checkpoints are sharded (one slice per rank, what resume reads); the final save is a plain model
    assert (fsdp / "checkpoints" / "checkpoint-12" / "pytorch_model_fsdp_0").is_dir()
    assert not (fsdp / "checkpoints" / "checkpoint-12" / "model.safetensors").exists()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fsdp)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert sum(p.numel() for p in model.parameters()) == summary(fsdp)["fsdp"]["parameters"]


def killed_when(command: list[str], ready: Path, timeout: float = 300) -> None:
    """Start the launch, and kill it and every process it started (SIGKILL) as soon as `ready` exists."""
    launch = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    while not ready.exists() and launch.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    processes = [launch_process := psutil.Process(launch.pid), *launch_process.children(recursive=True)]
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    launch.wait(timeout=60)
    psutil.wait_procs(processes, timeout=60)


def test_a_killed_fsdp_run_resumes_from_its_sharded_checkpoint(root, fsdp, tmp_path):
    out = tmp_path / "killed"
    command = hfstack_command("pretrain", *pretrain_args(root, out), config="fsdp2")
    killed_when(command, out / "checkpoints" / "checkpoint-3" / "trainer_state.json")
    assert not (out / "model.safetensors").exists()  # killed before the end
    left = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))
    assert left and all((out / "checkpoints" / f"checkpoint-{n}" / "pytorch_model_fsdp_0").is_dir() for n in left)
    output = hfstack("pretrain", *pretrain_args(root, out), config="fsdp2")
    resumed_from = int(output.split("resuming from ")[1].split("checkpoint-")[1].split()[0])
    assert 3 <= resumed_from < 12 and resumed_from in left
    straight, resumed = losses(fsdp), losses(out)
    for step in range(resumed_from + 1, 13):  # after the checkpoint the resumed run retraces the uninterrupted one
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step
    assert largest_difference(fsdp, out) < 1e-5


def test_fsdp_sft_shards_every_weight_in_half_and_trains_as_ddp(root, ddp, sft_ddp):
    hfstack("sft", *sft_args(ddp, root / "sft-fsdp"), config="fsdp2")
    sharded = summary(root / "sft-fsdp")
    assert_sharded_in_half(sharded)
    assert sharded["first_loss"] == pytest.approx(summary(sft_ddp)["first_loss"], abs=1e-5)
    difference = largest_difference(sft_ddp, root / "sft-fsdp")
    print(f"\n[FSDP2] sft parameters per rank {sharded['fsdp']['parameters_per_rank']}; largest weight difference "
          f"to DDP {difference:.2e}")
    assert difference < 1e-4 < largest_difference(ddp, root / "sft-fsdp")  # the same training, not none


def test_two_machines_on_localhost_pretrain_as_two_processes_on_one(root, ddp, tmp_path):
    outputs = two_machines("pretrain", *pretrain_args(root, tmp_path / "nodes"))
    report = summary(tmp_path / "nodes")
    assert (report["world_size"], report["num_machines"], report["distributed_type"]) == (2, 2, "MULTI_CPU")
    assert summary(ddp)["num_machines"] == 1
    assert "[pretrain] done" in outputs[0] and "[pretrain] done" not in outputs[1]  # the main process reports
    difference = largest_difference(ddp, tmp_path / "nodes")
    print(f"\n[2 machines] pretrain: largest weight difference to 2 processes on one machine {difference:.2e}")
    assert difference < 1e-5


def test_two_machines_on_localhost_finetune_as_two_processes_on_one(ddp, sft_ddp, tmp_path):
    two_machines("sft", *sft_args(ddp, tmp_path / "nodes"))
    report = summary(tmp_path / "nodes")
    assert (report["world_size"], report["num_machines"]) == (2, 2)
    difference = largest_difference(sft_ddp, tmp_path / "nodes")
    print(f"\n[2 machines] sft: largest weight difference to 2 processes on one machine {difference:.2e}")
    assert difference < 1e-5
