"""Multi-node launch recipes: recipes/accelerate/multi_node.yaml read by accelerate, recipes/slurm/launch.slurm
dry-run with fake srun/scontrol/accelerate on PATH, and benchmarks/gpu_check.sh's syntax and no-GPU exit.
Tests: python -m pytest -q tests/unit/test_launch_recipes.py
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hfstack.core.launch import launch_command
from hfstack.core.recipes import recipes_dir

REPO = Path(__file__).resolve().parents[2]
MULTI_NODE = recipes_dir() / "accelerate" / "multi_node.yaml"
SLURM = recipes_dir() / "slurm" / "launch.slurm"
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"


def validated(launcher_args: list[str]):
    """accelerate's own parse and validation of a launch command line: the config's fields with the
    command line's overrides, as `accelerate launch` would run them."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(launcher_args)
    _validate_launch_command(args)
    return args


def test_multi_node_config_loads_in_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(MULTI_NODE))
    assert getattr(config.distributed_type, "value", config.distributed_type) == "MULTI_GPU"
    assert (config.num_machines, config.machine_rank) == (2, 0)
    assert (config.rdzv_backend, config.same_network) == ("static", True)
    assert config.main_process_ip and config.main_process_port == 29500
    assert config.num_processes % config.num_machines == 0


def test_multi_node_flags_override_the_config_per_node():
    args = validated(["--config_file", str(MULTI_NODE), "--num_machines", "3", "--num_processes", "24",
                      "--machine_rank", "2", "--main_process_ip", "node-a",
                      "-m", "hfstack", "sft", "--config", "r.yaml"])
    assert (args.num_machines, args.num_processes, args.machine_rank) == (3, 24, 2)
    assert (args.main_process_ip, args.main_process_port, args.rdzv_backend) == ("node-a", 29500, "static")
    assert args.multi_gpu and args.mixed_precision == "bf16"
    assert args.module and args.training_script == "hfstack" and args.training_script_args == ["sft", "--config",
                                                                                               "r.yaml"]


def test_hfstack_launch_command_takes_the_multi_node_config():
    line = launch_command("pretrain", 16, str(MULTI_NODE), ["--config", "recipes/gpu-small/pretrain.yaml"])
    assert line[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args = validated(line[3:])
    assert (args.num_processes, args.num_machines) == (16, 2)
    assert args.training_script_args == ["pretrain", "--config", "recipes/gpu-small/pretrain.yaml"]


def shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def dry_run(tmp_path: Path, nodes: int, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """launch.slurm under fake Slurm: srun runs its command once per task with SLURM_PROCID set, scontrol
    names the nodes, and `accelerate` writes its arguments (one per line) to launched-RANK.txt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim(bin_dir, "scontrol", '[ "$1 $2" = "show hostnames" ] || exit 9\nprintf "gpu-node-%s\\n" a b c d\n')
    shim(bin_dir, "srun", 'while [ "${1#--}" != "$1" ]; do shift; done\n'
                          'for ((rank = 0; rank < SLURM_NNODES; rank++)); do SLURM_PROCID=$rank "$@" || exit; done\n')
    shim(bin_dir, "accelerate", f'printf "%s\\n" "$@" > "{tmp_path}/launched-$SLURM_PROCID.txt"\n')
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environment |= {"PATH": f"{bin_dir}:{environment['PATH']}", "SLURM_NNODES": str(nodes), "SLURM_JOB_ID": "42",
                    "SLURM_JOB_NODELIST": "gpu-node-[a-d]", "SLURM_GPUS_ON_NODE": "4"} | (env or {})
    return subprocess.run(["bash", str(SLURM), *args], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=30)


def launched(tmp_path: Path, rank: int) -> list[str]:
    return (tmp_path / f"launched-{rank}.txt").read_text().splitlines()


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_slurm_template_is_valid_bash():
    subprocess.run(["bash", "-n", str(SLURM)], check=True)
    text = SLURM.read_text()
    assert "#SBATCH --ntasks-per-node=1" in text and "sbatch --nodes=2 recipes/slurm/launch.slurm sft" in text


def test_slurm_dry_run_launches_every_node_with_its_rank(tmp_path):
    result = dry_run(tmp_path, 2, ["sft", "recipes/gpu-small/sft.yaml", "--max_steps", "10",
                                   "--output_dir", "runs/my run"])
    assert result.returncode == 0, result.stderr
    assert "2 node(s) × 4 GPU(s) = 8 processes, head gpu-node-a:29500" in result.stdout
    for rank in (0, 1):
        args = launched(tmp_path, rank)
        assert args[0] == "launch"
        assert option(args, "--machine_rank") == str(rank)
        assert (option(args, "--num_machines"), option(args, "--num_processes")) == ("2", "8")
        assert (option(args, "--main_process_ip"), option(args, "--main_process_port")) == ("gpu-node-a", "29500")
        assert option(args, "--config_file") == "recipes/accelerate/multi_node.yaml"
        # the stage, its recipe and the extra flags, word for word (a space inside one stays inside it)
        assert args[args.index("-m"):] == ["-m", "hfstack", "sft", "--config", "recipes/gpu-small/sft.yaml",
                                           "--max_steps", "10", "--output_dir", "runs/my run"]
        # and accelerate itself takes that command line
        parsed = validated(args[1:])
        assert (parsed.machine_rank, parsed.num_processes, parsed.num_machines) == (rank, 8, 2)
        assert parsed.training_script_args[0] == "sft"
    assert not (tmp_path / "launched-2.txt").exists()


def test_slurm_dry_run_settings_from_the_environment(tmp_path):
    result = dry_run(tmp_path, 3, ["pretrain", "recipes/gpu-small/pretrain.yaml"],
                     {"GPUS_PER_NODE": "8", "MASTER_PORT": "31000",
                      "ACCELERATE_CONFIG": "recipes/accelerate/fsdp2.yaml"})
    assert result.returncode == 0, result.stderr
    args = launched(tmp_path, 2)
    assert (option(args, "--machine_rank"), option(args, "--num_processes")) == ("2", "24")
    assert option(args, "--main_process_port") == "31000"
    assert option(args, "--config_file") == "recipes/accelerate/fsdp2.yaml"
    assert args[args.index("-m"):] == ["-m", "hfstack", "pretrain", "--config", "recipes/gpu-small/pretrain.yaml"]


def test_slurm_template_without_a_stage_says_how_to_use_it(tmp_path):
    result = dry_run(tmp_path, 2, ["sft"])
    assert result.returncode == 2 and "usage: sbatch" in result.stderr
    assert not list(tmp_path.glob("launched-*.txt"))


def test_gpu_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(GPU_CHECK)], check=True)
    text = GPU_CHECK.read_text()
    assert "set -euo pipefail" in text


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the check would run")
def test_gpu_check_without_a_gpu_stops_at_once(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TMPDIR=str(tmp_path))
    result = subprocess.run(["bash", str(GPU_CHECK)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 77, (result.stdout, result.stderr)
    assert "no CUDA GPU" in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())  # nothing written before the check
