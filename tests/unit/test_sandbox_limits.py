"""The Python tool's sandbox under load: floods of output, endless loops and threads, thread bombs,
memory and disk hogs, empty-file floods. Each is stopped, and nothing is left running on the host."""

from hfstack.tools import sandbox
from hfstack.tools.sandbox import run_python

from sandbox_checks import left_running, needs_sandbox, sandbox_processes


@needs_sandbox
def test_a_flood_of_output_is_stopped_at_the_byte_cap():
    """768 MiB to stdout: the parent reads as it comes and kills the sandbox past the cap."""
    result = run_python("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(768):\n    sys.stdout.write(chunk)",
                        timeout=30, max_output_bytes=1 << 20, max_output_chars=100)
    assert not result.ok and "bytes of output" in result.output and not result.timed_out
    assert len(result.output) < 300


@needs_sandbox
def test_infinite_loop_is_killed_at_the_time_limit():
    result = run_python("while True:\n    pass", timeout=1)
    assert result.timed_out and "time limit" in result.output


@needs_sandbox
def test_a_thread_that_never_ends_dies_with_the_sandbox():
    before = sandbox_processes()
    result = run_python("import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()\n"
                        "print('main done', flush=True)", timeout=3)
    assert result.timed_out and "main done" in result.output
    assert not left_running(before)


@needs_sandbox
def test_closing_its_output_and_sleeping_still_ends_at_the_time_limit():
    before = sandbox_processes()
    result = run_python("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)", timeout=1)
    assert result.timed_out and not left_running(before)


@needs_sandbox
def test_a_thread_bomb_stops_at_the_task_limit():
    result = run_python("import threading, time\nthreading.stack_size(32768)\nn = 0\ntry:\n    while n < 3000:\n"
                        "        threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n        n += 1\n"
                        "except RuntimeError:\n    pass\nprint('threads', n)", timeout=8)
    assert result.ok and int(result.output.split()[-1]) < sandbox.MAX_TASKS, result.output


@needs_sandbox
def test_empty_files_cannot_exhaust_kernel_memory():
    result = run_python("for i in range(100000):\n    open(f'f{i}', 'w').close()", timeout=8)
    assert not result.ok and "No space left" in result.output


@needs_sandbox
def test_memory_hog_is_stopped():
    result = run_python("x = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert not result.ok and "allocated" not in result.output


@needs_sandbox
def test_filling_the_temp_dir_is_stopped():
    result = run_python("f = open('big', 'wb')\nfor _ in range(64):\n    f.write(b'x' * 2**20)\nprint('wrote')",
                        file_mb=4)
    assert not result.ok and "wrote" not in result.output


@needs_sandbox
def test_many_small_files_cannot_exceed_the_temp_dir_cap():
    result = run_python("for i in range(64):\n    open(f'f{i}', 'wb').write(b'x' * 2**19)\nprint('wrote')", file_mb=4)
    assert not result.ok and "wrote" not in result.output and "No space left" in result.output
