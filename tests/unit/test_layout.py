"""The house rules, read from the source: dependencies flow one way
(stages → {dataprep, rlalgo} → tasks → {tools, ui} → core), no stage imports another, no import
cycles, hfstack imports sit at module top, and every command is one registered module.

    python -m pytest -q tests/unit/test_layout.py
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hfstack"
# a module may import its own package and the packages of lower layers; nothing imports upwards or sideways
LAYERS = {"core": 0, "tools": 1, "ui": 1, "tasks": 2, "dataprep": 3, "rlalgo": 3, "stages": 4}
TOP = 5  # hfstack/__init__.py, cli.py, __main__.py
LAZY = {"hfstack"}  # the one place a name is resolved on use (so `import hfstack` stays instant)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, bool, int]]:
    """(imported hfstack module, at module top?, line) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hfstack"):
            for alias in node.names:  # `from hfstack.x import y` imports hfstack.x.y when y is a module
                sub = f"{node.module}.{alias.name}"
                target = sub if sub in MODULES else node.module
                found.append((target, id(node) in top, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top, node.lineno) for a in node.names if a.name.startswith("hfstack")]
    return found


FILES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
MODULES = set(FILES)


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in LAYERS:
        return "hfstack", TOP
    return parts[1], LAYERS[parts[1]]


def test_every_module_lives_in_a_layer():
    loose = [m for m in MODULES if layer(m)[1] == TOP and m not in ("hfstack", "hfstack.cli", "hfstack.__main__")]
    assert not loose, f"modules outside core/tools/ui/tasks/dataprep/rlalgo/stages: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_one_way(module):
    package, rank = layer(module)
    wrong = []
    for target, at_top, line in imports_of(FILES[module]):
        other, other_rank = layer(target)
        if other != package and other_rank >= rank:
            wrong.append(f"line {line}: {target} ({other} may not be imported from {package})")
        if package == "stages" and other == "stages" and target != "hfstack.stages" and target != module:
            wrong.append(f"line {line}: {target} (a stage reaches another through the registry, hfstack.stages)")
        if module == "hfstack.stages" and target.startswith("hfstack.stages."):
            wrong.append(f"line {line}: the registry imports no stage (importing hfstack.stages stays light)")
        if not at_top and module not in LAZY:
            wrong.append(f"line {line}: {target} imported inside a function (imports go at module top)")
    assert not wrong, f"{module}:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in imports_of(FILES[m]) if t in MODULES and t != m} for m in MODULES}
    for m in graph:  # importing a.b.c runs a and a.b first
        graph[m] |= {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)} - {m}
    graph["hfstack"] = set()  # its names resolve on use, after every module has loaded
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycle = path[path.index(t):] + [t]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_registry_names_one_module_per_command_each_with_config_and_run():
    from hfstack.stages import STAGES

    stage_files = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__"}
    assert {s.module for s in STAGES} == stage_files
    for stage in STAGES:
        tree = ast.parse((PACKAGE / "stages" / f"{stage.module}.py").read_text())
        assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert {"Config", "run"} <= assigned, f"hfstack/stages/{stage.module}.py must export Config and run"
        assert ast.get_docstring(tree), f"hfstack/stages/{stage.module}.py has no docstring"


def test_the_python_api_names_are_not_hidden_by_subpackages():
    """`hfstack.data(cfg)` must stay the data stage once some module imports a hfstack subpackage."""
    import hfstack
    from hfstack.stages import STAGES

    subpackages = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert not {s.api for s in STAGES} & subpackages
    assert callable(hfstack.data) and callable(hfstack.rl) and hfstack.DataConfig.__name__ == "DataConfig"


def test_every_module_says_what_it_does():
    missing = [m for m, p in FILES.items() if not ast.get_docstring(ast.parse(p.read_text()))
               and p.read_text().strip()]
    assert not missing


def test_help_imports_no_stage_and_no_heavy_library():
    """`hfstack --help` and `import hfstack` answer at once: nothing heavy is imported for them."""
    code = ("import sys, hfstack, hfstack.cli; hfstack.cli.main(['--help']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'trl', 'datasets', 'datatrove', 'accelerate') "
            "or m.startswith('hfstack.stages.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
