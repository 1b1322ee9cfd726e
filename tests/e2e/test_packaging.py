"""The recipes ship inside the package (hfstack/recipes), so a plain `pip install .` keeps `--preset tiny`
and the accelerate configs; the checkout's top-level recipes/ is a link to them.

    python -m pytest -q tests/e2e/test_packaging.py   (tests/e2e/test_installed_speedrun.py runs the wheel)
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import hfstack
from hfstack.core.recipes import recipes_dir

REPO = Path(__file__).resolve().parents[2]


def test_recipes_dir_is_inside_the_package():
    package = Path(hfstack.__file__).resolve().parent
    assert recipes_dir() == package / "recipes"
    assert (recipes_dir() / "tiny" / "data.yaml").is_file() and (recipes_dir() / "accelerate" / "cpu.yaml").is_file()
    assert not (recipes_dir() / "__init__.py").exists()  # data, not a package
    if (REPO / "recipes").exists():  # a checkout: the top-level link keeps `--config recipes/...` working
        assert (REPO / "recipes").is_symlink() and (REPO / "recipes").resolve() == recipes_dir()


def build_wheel(workdir: Path) -> Path:
    """The checkout's wheel, built offline (no index, no build isolation: this venv's setuptools) in `workdir`.

    Built from a clean copy: setuptools reuses build/ in the source tree, where an earlier build's
    files would land in the wheel whatever the package-data says. Also used by tests/e2e.
    """
    source = workdir / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
        ".ruff_cache"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                             "--no-index", "-w", str(workdir / "dist")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = (workdir / "dist").glob("hfstack-*.whl")
    return wheel


def test_the_wheel_holds_the_recipes_and_the_pages(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("tiny", "accelerate"):
        expected = {f"hfstack/recipes/{folder}/{p.name}" for p in (recipes_dir() / folder).glob("*.yaml")}
        assert expected and expected <= names, sorted(expected - names)
    assert "hfstack/recipes/__init__.py" not in names
    assert {"hfstack/ui/chat.html", "hfstack/ui/rank.html"} <= names  # the web pages, read at import
    assert not any(name.startswith("recipes/") for name in names)  # the top-level link is not installed
