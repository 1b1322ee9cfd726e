"""What the sandbox tests share: skip where the OS mechanism is truly absent, and find sandbox
processes left on the host (their command line holds the in-sandbox bootstrap)."""

import os
import time

import pytest

from hfstack.tools.sandbox import unavailable_reason

needs_sandbox = pytest.mark.skipif(unavailable_reason() is not None,
                                   reason=f"no OS sandbox here: {unavailable_reason()}")


def sandbox_processes() -> set[str]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"sys.dont_write_bytecode = True" in open(f"/proc/{pid}/cmdline", "rb").read():
                found.add(pid)
        except OSError:
            pass
    return found


def left_running(before: set[str]) -> set[str]:
    """Sandbox processes started since `before` that are still there. A killed process lingers until
    the kernel has run its exit, which on a loaded machine can take a moment: wait for it (up to 10 s)."""
    deadline = time.monotonic() + 10
    while (left := sandbox_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
