"""The Python tool: run model-written code in a sandboxed child process.

    from hfstack.tools.sandbox import run_python
    run_python("print(sum(range(10)))").output   # '45\n'

Layers, each covering what the others might miss:
- a separate process in its own session, killed as a group (SIGKILL) at the wall-clock limit;
- resource limits: CPU seconds, address space (memory), file size, open files, processes;
- a scrubbed environment (no tokens or other secrets of the parent) and a fresh temp dir as cwd/HOME;
- an audit hook (PEP 578: it cannot be removed from Python once installed) that refuses sockets,
  process creation (fork, exec, spawn, subprocess, os.system), signals to other processes, ctypes
  and other foreign-function modules, writes outside the temp dir, and reads outside the temp dir
  and Python's own library folders.
Output is truncated to `max_output_chars`.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

# runs in the child before the model's code: the policy, then the code from stdin
_BOOTSTRAP = r'''
import os, sys
sys.dont_write_bytecode = True
_ALLOWED_READ = tuple(os.path.realpath(p) for p in sys.argv[1].split(os.pathsep) if p)
_WORK = os.path.realpath(sys.argv[2])
_DEVICES = ("/dev/null", "/dev/urandom", "/dev/random", "/dev/zero")
_BLOCKED_MODULES = ("ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "multiprocessing", "pty",
                    "mmap", "_socket", "socket", "ssl", "_ssl", "select", "selectors", "fcntl", "resource")
_REFUSED_EVENTS = ("socket.", "subprocess.", "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn",
                   "os.system", "os.kill", "os.killpg", "ctypes.", "os.chdir",
                   "os.setuid", "os.setgid", "sys.addaudithook", "os.symlink", "os.link", "os.chroot",
                   "sys.remote_exec", "os.startfile")
_WRITES = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
           "shutil.rmtree", "shutil.move", "shutil.copytree", "shutil.copyfile")

def _inside(path, roots):
    path = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "/proc/self/fd")
    return any(path == root or path.startswith(root + os.sep) for root in roots)

def _hook(event, args):
    if event == "import" and args[0].split(".")[0] in _BLOCKED_MODULES:
        raise PermissionError(f"sandbox: import of {args[0]} is not allowed")
    if event.startswith(_REFUSED_EVENTS):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR)
        if _inside(path, (_WORK,)) or (not writing and (_inside(path, _ALLOWED_READ) or str(path) in _DEVICES)):
            return
        raise PermissionError(f"sandbox: {'writing' if writing else 'reading'} {path} is not allowed")
    if event in _WRITES and not all(_inside(a, (_WORK,)) for a in args[:2] if isinstance(a, (str, bytes))):
        raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

sys.addaudithook(_hook)
del _hook
_code = sys.stdin.read()
sys.stdin = open(os.devnull)
exec(compile(_code, "<tool>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass
class SandboxResult:
    output: str  # stdout, then stderr, truncated
    exit_code: int | None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _library_roots() -> list[str]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return sorted(roots)


def _limits(cpu_seconds: int, memory_mb: int, file_mb: int):
    def apply():
        os.setsid()  # own process group: the parent kills everything the code started, at once
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))  # not enforced for root; the audit hook is
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(code: str, timeout: float = 5.0, memory_mb: int = 512, file_mb: int = 16,
               max_output_chars: int = 4000) -> SandboxResult:
    """Run `code` in a fresh sandboxed interpreter; never raises for what the code does."""
    work = tempfile.mkdtemp(prefix="hfstack-tool-")
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    readable = os.pathsep.join(_library_roots())
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, readable, work], cwd=work, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_limits(int(timeout) + 1, memory_mb, file_mb))
        try:
            out, _ = process.communicate(code.encode("utf-8", "replace"), timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            timed_out = True
        text = out.decode("utf-8", "replace")
        if len(text) > max_output_chars:
            text = text[:max_output_chars] + f"\n... [{len(text) - max_output_chars} more characters]"
        if timed_out:
            text += f"\n[killed: over the {timeout:g}s time limit]"
        elif process.returncode and process.returncode < 0:
            text += f"\n[killed by signal {-process.returncode}: a resource limit was hit]"
        return SandboxResult(_clean_traceback(text), process.returncode, timed_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _clean_traceback(text: str) -> str:
    """Drop the bootstrap's frames, so the model sees only its own code in a traceback."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if 'File "<string>"' not in line and "exec(compile(_code" not in line)
