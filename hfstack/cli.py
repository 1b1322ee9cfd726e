"""The `hfstack` command: one subcommand per stage, plus the speedrun.

    hfstack <stage> [--config recipe.yaml] [--any_field value ...]

Flags override the YAML, which overrides the stage's defaults. Heavy libraries are imported only
when a stage runs, so `hfstack --help` answers at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys

from hfstack import __version__
from hfstack.core.config import ConfigError, _field_types, _type_name, field_default, load_config
from hfstack.core.errors import StageFailed
from hfstack.core.fields import field_range
from hfstack.core.launch import launch_command, launch_config_file, packaged_launch_configs
from hfstack.stages import BY_COMMAND, STAGES, load


def usage() -> str:
    lines = ["usage: hfstack <command> [--config recipe.yaml] [--field value ...]", "",
             "Build your own ChatGPT, from a raw web crawl onwards, on the Hugging Face stack.", "", "commands:"]
    lines += [f"  {stage.command:<13} {stage.summary}" for stage in STAGES]
    return "\n".join(lines + ["", USAGE_TAIL])


USAGE_TAIL = """Run `hfstack <command> --help` to list a command's fields and defaults,
`hfstack --version` for the version.
Any stage runs on N processes with `--launcher accelerate --num_processes N [--launch_config FILE]`
(default FILE: recipes/accelerate/multi_gpu.yaml with GPUs, recipes/accelerate/cpu.yaml without; FILE can
also name one of those recipes: fsdp2, multi_node, zero3, ...). Across machines, add accelerate's own
--num_machines M --machine_rank R --main_process_ip HOST [--main_process_port P] on each.
"""


POSITIONAL = {"tokenize": "text", "trace": "text"}  # commands whose first bare argument fills a field


def _with_positional(command: str, args: list[str]) -> list[str]:
    """Turn the one bare argument into `--<field> value`; these commands' flags each take one value."""
    if command not in POSITIONAL:
        return args
    i = 0
    while i < len(args):
        if not args[i].startswith("--"):
            return ["--" + POSITIONAL[command], args[i], *args[:i], *args[i + 1:]]
        i += 1 if "=" in args[i] or i + 1 >= len(args) or args[i + 1].startswith("--") else 2
    return args


def _field_help(config_cls) -> str:
    """Every field: its type, default, valid range or choices, and the line of help its comment gives;
    the stage's own fields first, then those every training stage shares (TrainConfig), then old names."""
    types, comments = _field_types(config_cls), field_comments(config_cls)
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    own = [name for name in config_cls.__dict__.get("__annotations__", {}) if name in fields]  # in the class order
    title = f"fields of {config_cls.__name__} (set in YAML or as --field value):"
    groups = [(title, [fields[name] for name in own]),
              ("shared by every training stage:", [f for name, f in fields.items() if name not in own])]
    lines = []
    for title, group in groups:
        if not group:
            continue
        lines.append(title if not lines else "\n" + title)
        for f in group:
            default = field_default(f)
            if dataclasses.is_dataclass(default):  # a nested config: its fields as YAML would write them
                default = dataclasses.asdict(default)
            default = "(required)" if default is dataclasses.MISSING else repr(default)
            kind = _type_name(types[f.name])  # a Literal's name lists its choices
            bounds = field_range(f)  # declared with hfstack.core.config.bounded (and every seed's)
            line = f"  --{f.name:<28} {kind}, default {default}" + (f", {bounds}" if bounds else "")
            lines.append(line + (f"\n{'':<33}{comments[f.name]}" if f.name in comments else ""))
    renamed = getattr(config_cls, "RENAMED", {})
    if renamed:
        names = ", ".join(f"{old} → {new}" for old, (new, _) in renamed.items())
        lines.append(f"\nolder names, still accepted: {names}")
    return "\n".join(lines)


def field_comments(cls) -> dict[str, str]:
    """Each field's trailing `# comment` in the class's source, which says what the field does: the
    one line of help `--help` shows (a config's comments are its documentation)."""
    comments = {}
    for klass in reversed(cls.__mro__[:-1]):  # a subclass's comment wins over its base's
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.M):
            comments[match.group(1)] = match.group(2).strip()
    return comments



DISTRIBUTED = {stage.command for stage in STAGES if stage.trains}  # stages that train on every launched process
# the speedrun's config has launcher/num_processes/launch_config fields of its own: it launches each
# training stage itself, so the flags are its fields rather than a relaunch of the whole run
SELF_LAUNCHING = {"speedrun"}
# accelerate's own launcher flags, passed on as they are: how many processes and machines, this machine's
# rank and where rank 0 listens (a multi-node run), the precision
LAUNCHER_FLAGS = {"num_processes": "a whole number >= 1", "num_machines": "a whole number >= 1",
                  "machine_rank": "a whole number >= 0", "main_process_ip": "an address",
                  "main_process_port": "a port number", "mixed_precision": "no, fp16 or bf16"}
LAUNCH_FLAGS = ("--launcher", "--launch_config", *(f"--{name}" for name in LAUNCHER_FLAGS))


def _pop_launch_flags(args: list[str]) -> tuple[dict, list[str]]:
    """Take `--launcher accelerate --launch_config FILE --num_processes N ...` out of a stage's flags."""
    launch, rest, i = {}, [], 0
    while i < len(args):
        flag = args[i].split("=", 1)[0]
        if flag in LAUNCH_FLAGS:
            value = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else "")
            launch[flag.lstrip("-")] = value
            i += 1 if "=" in args[i] else 2
        else:
            rest.append(args[i])
            i += 1
    return launch, rest


def _launch_problem(launch: dict) -> str | None:
    """What is wrong with the launch flags, in one line; None when nothing is."""
    if launch.get("launcher") != "accelerate":
        return f"--launcher must be 'accelerate', got '{launch.get('launcher')}'"
    if "launch_config" in launch and not launch_config_file(launch["launch_config"]):
        return (f"--launch_config '{launch['launch_config']}' is neither a file (an accelerate config YAML) nor "
                f"one of hfstack's: {', '.join(packaged_launch_configs())}")
    for name, expected in LAUNCHER_FLAGS.items():
        value = launch.get(name)
        if value is None:
            continue
        number = value.isdigit() and (int(value) >= 1 or name == "machine_rank")
        good = {"main_process_ip": bool(value) and not value.startswith("-"),
                "mixed_precision": value in ("no", "fp16", "bf16"),
                "main_process_port": value.isdigit() and 0 < int(value) < 65536}.get(name, number)
        if not good:
            return f"--{name} must be {expected}, got '{value}'"
    return None


def _launch(command: str, launch: dict, args: list[str]) -> int:
    """Re-run this stage under `accelerate launch`."""
    import subprocess

    problem = _launch_problem(launch)
    if problem:
        print(f"hfstack {command}: error: {problem}", file=sys.stderr)
        return 2
    options = {name: launch[name] for name in LAUNCHER_FLAGS if name in launch and name != "num_processes"}
    return subprocess.call(launch_command(command, int(launch.get("num_processes") or 0),
                                          launch_config_file(launch.get("launch_config")), args, **options))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"hfstack {version()}")
        return 0
    command, args = argv[0], argv[1:]
    args = _with_positional(command, args)
    if command not in BY_COMMAND:
        print(f"hfstack: error: unknown command '{command}'; choose from: {', '.join(BY_COMMAND)}", file=sys.stderr)
        return 2
    launch, args = ({}, args) if command in SELF_LAUNCHING else _pop_launch_flags(args)
    if launch:
        return _launch(command, launch, args)
    if (command not in DISTRIBUTED and int(os.environ.get("WORLD_SIZE", "1")) > 1
            and os.environ.get("RANK", "0") != "0"):
        return 0  # a single-process stage under `accelerate launch`: rank 0 does the work, the others stand by
    module = load(command)
    config_cls, runner = module.Config, module.run
    if "-h" in args or "--help" in args:
        print(f"usage: hfstack {command} [--config recipe.yaml] [--field value ...]\n")
        print(_field_help(config_cls))
        return 0
    try:
        cfg = load_config(config_cls, cli_args=args)
        runner(cfg)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; checkpoints and done markers stay
        print(f"\nhfstack {command}: stopped (Ctrl-C); the same command continues from the last checkpoint",
              file=sys.stderr)
        return 130
    except (*user_errors(), StageFailed) as e:
        if os.environ.get("HFSTACK_DEBUG", "0") not in ("0", ""):
            raise  # the traceback, for whoever debugs hfstack itself
        failed = isinstance(e, StageFailed)  # the work failed, not the config: its log says why
        print(f"hfstack {command}: {'failed' if failed else 'error'}: {one_line(e)}", file=sys.stderr)
        return 1 if failed else 2
    return 0


def version() -> str:
    """The installed distribution's version; the package's own __version__ where it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("hfstack")
    except PackageNotFoundError:
        return __version__


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix: a ConfigError, or a file that is missing, unreadable, a directory, or not
    text/JSON/YAML where a stage reads one. These print one line and exit 2; any other exception is a
    bug in hfstack and keeps its traceback."""
    import json

    import yaml

    return (ConfigError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
            json.JSONDecodeError, UnicodeDecodeError, yaml.YAMLError)


def one_line(error: BaseException) -> str:
    """The error as one line that says what and where (an OSError's own text leads with its errno)."""
    import json

    if isinstance(error, (ConfigError, StageFailed)):
        text = str(error)
    elif isinstance(error, OSError):
        text = f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
    elif isinstance(error, json.JSONDecodeError):
        text = f"an input file is not valid JSON ({error}); HFSTACK_DEBUG=1 shows which"
    elif isinstance(error, UnicodeDecodeError):
        text = f"an input file is not UTF-8 text ({error.reason} at byte {error.start}); HFSTACK_DEBUG=1 shows which"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
