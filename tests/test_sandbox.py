"""The Python tool's sandbox: ordinary code works; every escape attempt is blocked."""

import os

import pytest

from hfstack.tools.sandbox import run_python


def test_ordinary_code_runs_and_can_use_its_own_temp_dir():
    result = run_python("import math, json, collections\nprint(math.factorial(10))\n"
                        "open('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read())")
    assert result.ok and result.output == "3628800\nkept\n"


def test_errors_come_back_as_a_short_traceback_of_the_model_code():
    result = run_python("x = 1\nprint(x / 0)")
    assert not result.ok and "ZeroDivisionError" in result.output and "_BOOTSTRAP" not in result.output
    assert 'File "<tool>", line 2' in result.output


def test_output_is_truncated():
    result = run_python("print('x' * 100000)", max_output_chars=1000)
    assert result.ok and len(result.output) < 1100 and "more characters" in result.output


@pytest.fixture
def outside(tmp_path):
    """A directory outside the sandbox, with a secret in it."""
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    return tmp_path


ESCAPES = {
    "network socket": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
    "network via urllib": "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)",
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "subprocess": "import subprocess\nsubprocess.run(['touch', '{outside}/pwned'])",
    "os.system": "import os\nos.system('touch {outside}/pwned')",
    "os.exec": "import os\nos.execv('/bin/sh', ['sh', '-c', 'touch {outside}/pwned'])",
    "posix_spawn": "import os\nos.posix_spawn('/bin/touch', ['touch', '{outside}/pwned'], {{}})",
    "ctypes libc call": "import ctypes\nctypes.CDLL(None).system(b'touch {outside}/pwned')",
    "multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    "write outside": "open('{outside}/pwned', 'w').write('x')",
    "write outside with pathlib": "import pathlib\npathlib.Path('{outside}/pwned').write_text('x')",
    "write outside with os.open": "import os\nos.open('{outside}/pwned', os.O_CREAT | os.O_WRONLY)",
    "read a secret": "print(open('{outside}/secret.txt').read())",
    "delete outside": "import os\nos.remove('{outside}/secret.txt')",
    "rename outside": "import os\nos.rename('{outside}/secret.txt', 'stolen.txt')",
    "symlink out": "import os\nos.symlink('{outside}/secret.txt', 'link')\nprint(open('link').read())",
    "kill the parent": "import os\nos.kill(os.getppid(), 9)",
    "remove the hook": "import sys\nsys.addaudithook(lambda *a: None)\nopen('{outside}/pwned', 'w')",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_is_blocked(name, outside):
    result = run_python(ESCAPES[name].format(outside=outside), timeout=3)
    assert not result.ok and "PermissionError: sandbox:" in result.output, result.output
    assert "hunter2" not in result.output
    assert not (outside / "pwned").exists()
    assert (outside / "secret.txt").read_text() == "hunter2"


def test_environment_secrets_are_not_passed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_supersecret")
    result = run_python("import os\nprint(dict(os.environ))")
    assert result.ok and "supersecret" not in result.output


def test_infinite_loop_is_killed_at_the_time_limit():
    result = run_python("while True:\n    pass", timeout=1)
    assert result.timed_out and "time limit" in result.output


def test_memory_hog_is_stopped():
    result = run_python("x = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert not result.ok and "allocated" not in result.output


def test_huge_file_in_the_temp_dir_is_stopped():
    result = run_python("f = open('big', 'wb')\nfor _ in range(64):\n    f.write(b'x' * 2**20)\nprint('wrote')",
                        file_mb=4)
    assert not result.ok and "wrote" not in result.output


def test_child_processes_do_not_outlive_the_sandbox():
    before = set(os.listdir("/proc"))
    run_python("while True:\n    pass", timeout=0.5)
    leftover = [p for p in set(os.listdir("/proc")) - before if p.isdigit()
                and "hfstack-tool" in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")]
    assert not leftover
