"""Launches: which process this is, whether the processes a launcher started form one run, and
waiting for each other. Used by every training stage's command (hfstack pretrain, sft, rl, reward,
rlhf), under `accelerate launch` or `--launcher accelerate --num_processes N`, and by print0 everywhere.
Tests: python -m pytest -q tests/unit/test_rundir.py tests/unit/test_cli.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hfstack.core.config import ConfigError
from hfstack.core.recipes import recipes_dir


def process_state():
    """Accelerate's view of this process. Created before any trainer, so that on a CPU machine the
    processes `accelerate launch` started become gloo ranks (not independent single runs).

    Launched with an FSDP config on a machine without GPUs, accelerate would quietly train plain data
    parallel (it shards only on the device types it lists, MULTI_GPU among them), yet FSDP2's
    `fully_shard` runs over gloo on CPU. So the ranks are declared MULTI_GPU here (the device stays the
    CPU): the Accelerator a trainer builds then takes the launcher's FSDP plugin and really shards."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.distributed_type == DistributedType.MULTI_CPU and wants_fsdp():
        state.distributed_type = DistributedType.MULTI_GPU
    return state


def wants_fsdp() -> bool:
    """The launcher asked for FSDP (an accelerate config of type FSDP sets this for every process)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1")


def distributed_type() -> str:
    """How the run is spread, as the trainer's Accelerator set it up (FSDP, MULTI_GPU, MULTI_CPU, NO...);
    before any Accelerator exists, the launched processes' own view."""
    from accelerate.state import AcceleratorState

    kind = AcceleratorState._shared_state.get("distributed_type") or process_state().distributed_type
    return str(getattr(kind, "value", kind))


def num_machines(world_size: int) -> int:
    """How many machines the launched processes span: the world over the processes on this machine
    (torchrun, and so accelerate, sets LOCAL_WORLD_SIZE); 1 when not launched."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return max(1, world_size // int(local)) if local.isdigit() and int(local) > 0 else 1


def is_main_env() -> bool:
    """Rank 0 as the launcher's environment says (RANK, else LOCAL_RANK; absent is rank 0)."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    return not rank.strip().isdigit() or int(rank) == 0  # an unreadable value counts as absent


def progress_bar(total: int, description: str | None, unit: str = " conversations"):
    """A tqdm bar on the main process when `description` is given (a stage's `progress: false` passes
    None), else a silent one: loops call update() either way."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, disable=not description or not is_main_env(),
                mininterval=2, dynamic_ncols=True)


def print0(*args, **kwargs) -> None:
    """print, on the main process only (flushed unless told otherwise), so that a launched run says each
    line once. "Main" is read from the environment (RANK, else LOCAL_RANK; absent is rank 0), which
    torchrun and accelerate set for every process they start: no torch.distributed or Accelerate state
    is created, and a single-process stage does not import torch to print."""
    if is_main_env():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # torchrun, MPI


def launched_processes() -> int | None:
    """How many processes this run was launched as, or None when not launched (or not known).
    torchrun and accelerate's multi-process launchers set WORLD_SIZE (mpirun its own variables);
    accelerate's single-process launcher (`accelerate launch --cpu`, or a config of type NO) sets none,
    but ACCELERATE_USE_CPU: then the count is on the launcher's own command line."""
    for name in WORLD_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return launcher_processes() if "ACCELERATE_USE_CPU" in os.environ else None


def launcher_processes() -> int | None:
    """--num_processes (or its --config_file's num_processes) of the `accelerate launch` that started
    this process, read from /proc (Linux); None when the parent is not accelerate or does not say."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    except OSError:
        return None
    start = next((i for i, a in enumerate(args[:3]) if "accelerate" in Path(a).name), None)
    if start is None:
        return None
    options = launcher_options(args[start + 1:])
    value = options.get("--num_processes")
    if value is None and options.get("--config_file"):
        import yaml

        try:
            value = (yaml.safe_load(Path(options["--config_file"]).read_text()) or {}).get("num_processes")
        except (OSError, yaml.YAMLError, AttributeError):
            return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def launcher_options(args: list[str]) -> dict[str, str]:
    """`--name value` / `--name=value` pairs of an accelerate command line, up to the launched
    script (whose own arguments are not the launcher's)."""
    options, i = {}, 0
    while i < len(args) and args[i] not in ("-m", "--module") and not args[i].endswith(".py"):
        name, eq, value = args[i].partition("=")
        if name.startswith("--") and not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value, i = args[i + 1], i + 1
        options[name] = value
        i += 1
    return options


def check_world_size(stage: str, state) -> None:
    """Stop when the launched processes do not form one world: each would then train alone and write
    the same folder (`accelerate launch --cpu --num_processes 2` starts only one process; an FSDP or
    DeepSpeed config on a machine without GPUs can start N that never meet)."""
    launched = launched_processes()
    if launched is None or launched == state.num_processes:
        return
    kind = getattr(state.distributed_type, "value", state.distributed_type)
    raise ConfigError(f"{stage}: launched for {launched} processes, but this process sees {state.num_processes} "
                      f"(distributed type {kind}), so the run would not be spread over them; without GPUs launch with "
                      "--config_file recipes/accelerate/cpu.yaml (`accelerate launch --cpu` starts one process)")


def wait_for_all_ranks() -> None:
    """Under a launch, every rank waits for the others at a stage's end: a rank that exits while the main
    one still writes can abort in the process group's teardown. Only where every rank reaches it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        process_state().wait_for_everyone()


def packaged_launch_configs() -> list[str]:
    """The accelerate configs hfstack ships (recipes/accelerate/NAME.yaml), by name."""
    return sorted(path.stem for path in (recipes_dir() / "accelerate").glob("*.yaml"))


def launch_config_file(name: str | None) -> str | None:
    """An accelerate config: a file, or the name of one hfstack ships (`fsdp2` for
    recipes/accelerate/fsdp2.yaml); None for the default, and for a name that is neither."""
    if not name:
        return None
    if Path(name).is_file():
        return name
    packaged = recipes_dir() / "accelerate" / f"{Path(name).stem}.yaml"
    return str(packaged) if name in (packaged.stem, packaged.name) and packaged.is_file() else None


def launch_command(command: str, num_processes: int, config: str | None, args: list[str], **launcher) -> list[str]:
    """`accelerate launch --config_file CONFIG [--num_processes N] [--NAME VALUE ...] -m hfstack COMMAND ARGS`;
    the default config is recipes/accelerate/multi_gpu.yaml on a GPU machine and cpu.yaml (gloo ranks)
    without. `launcher` holds accelerate's own flags (num_machines, machine_rank, main_process_ip, ...)."""
    if not config:
        import torch

        config = str(recipes_dir() / "accelerate" / ("multi_gpu.yaml" if torch.cuda.is_available() else "cpu.yaml"))
    line = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
    if num_processes:
        line += ["--num_processes", str(num_processes)]
    for name, value in launcher.items():
        line += [f"--{name}", str(value)]
    return line + ["-m", "hfstack", command, *args]
