"""The Python tool's sandbox: ordinary code works, and every escape attempt is blocked by the OS.

Each attempt runs, then the host is checked from outside: a shared folder's files are unchanged
(names, sizes, modes, mtimes, contents, extended attributes), a hidden secret did not leak, nothing
new appeared in site-packages or /dev/shm, a sentinel process is alive, no loopback listener got a
connection or a datagram, and no sandbox process is left. Most attempts first disarm the in-sandbox
audit hook (`DISARM`), so they test the kernel's boundary alone. `expect` is what the attempt must
print, proving it ran as far as the refusal (a typo in an attempt cannot pass as a block).
"""

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig

import pytest

from hfstack.tools import sandbox
from hfstack.tools.sandbox import run_python, seccomp_program

from sandbox_checks import left_running, needs_sandbox, sandbox_processes

# rewrites the hook's policy from inside, as a hostile program would (the hook reads module globals)
DENIED = "Read-only file system|Permission denied|Operation not permitted"
DISARM = "import __main__\n__main__._REFUSED_EVENTS = ('-',)\n__main__._BLOCKED_MODULES = ()\n"
SYSCALL = DISARM + "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def report(code: str) -> str:
    """Wrap an attempt so its result or error is printed as `result: ...`."""
    body = "\n".join("    " + line for line in code.splitlines())
    return f"try:\n{body}\nexcept BaseException as e:\n    print('result:', type(e).__name__, e)\n"


ESCAPES = {  # name: (code, regex the output must match)
    # --- files: the shared folder is bound read-only; the rest of the host is not there at all
    "write a file outside": ("open('{outside}/pwned', 'w').write('x')", "Read-only file system"),
    "write with pathlib": ("import pathlib\npathlib.Path('{outside}/pwned').write_text('x')", "Read-only"),
    "os.open O_CREAT": ("import os\nos.open('{outside}/pwned', os.O_CREAT | os.O_WRONLY)", "Read-only"),
    "os.open with dir_fd": (DISARM + "import os\nd = os.open('{outside}', os.O_RDONLY)\n"
                            "os.open('pwned', os.O_CREAT | os.O_WRONLY, dir_fd=d)", "Read-only"),
    "O_RDONLY|O_TRUNC": ("import os\nos.open('{outside}/secret.txt', os.O_RDONLY | os.O_TRUNC)", "Read-only"),
    "truncate": ("import os\nos.truncate('{outside}/secret.txt', 0)", DENIED),
    "remove": ("import os\nos.remove('{outside}/secret.txt')", "Read-only"),
    "remove with dir_fd": ("import os\nos.remove('secret.txt', dir_fd=os.open('{outside}', os.O_RDONLY))",
                           "Read-only"),
    "rmtree": ("import shutil\nshutil.rmtree('{outside}/sub')", "Read-only"),
    "rename out": ("import os\nos.rename('{outside}/secret.txt', '/tmp/stolen')", "Read-only|cross-device"),
    "chmod": ("import os\nos.chmod('{outside}/secret.txt', 0o777)", "Read-only"),
    "utime": ("import os\nos.utime('{outside}/secret.txt', (0, 0))", "Read-only"),
    "symlink outside": ("import os\nos.symlink('/etc/passwd', '{outside}/link')", "Read-only"),
    "hard link": ("import os\nos.link('{outside}/secret.txt', '/tmp/hard')", "Read-only|Invalid cross-device"),
    "setxattr": ("import os\nos.setxattr('{outside}/secret.txt', 'user.pwned', b'1')", "Operation not permitted"),
    "mkfifo": ("import os\nos.mkfifo('{outside}/fifo')", "Read-only|not permitted"),
    "mknod": ("import os, stat\nos.mknod('{outside}/node', stat.S_IFREG | 0o600)", "not permitted|Read-only"),
    "sqlite3 database": ("import sqlite3\nsqlite3.connect('{outside}/x.db').execute('create table t(x)')",
                         "readonly|unable to open"),
    "shared memory": ("import _posixshmem\n_posixshmem.shm_open('/hfstack-pwned', 0o102, 0o600)", DENIED),
    "a .pth into site-packages": ("open('{site}/hfstack_pwned.pth', 'w').write('import os')", "Read-only"),
    "a .pth with dir_fd": ("import os\nos.open('hfstack_pwned.pth', os.O_CREAT | os.O_WRONLY,"
                           " dir_fd=os.open('{site}', os.O_RDONLY))", "Read-only"),
    "write to /usr": ("open('/usr/lib/hfstack_pwned', 'w')", "Read-only"),
    "write to the root": ("open('/hfstack_pwned', 'w')", DENIED),
    "write to /dev": ("open('/dev/hfstack_pwned', 'w')", DENIED),
    # --- reads: secrets of the host are not in the sandbox's view
    "read a hidden file": ("print(open('{hidden}/hidden.txt').read())", "No such file"),
    "read /etc/shadow": ("print(open('/etc/shadow').read())", "No such file"),
    "pid 1's environment": ("print(open('/proc/1/environ').read())", "PATH=/usr/bin:/bin"),  # its own: clean
    "list the host": ("import os\nprint(os.listdir('/root'), os.listdir('/home'))", "No such file|\\[\\]"),
    "open_by_handle_at": (SYSCALL + "print('result:', libc.syscall(304, -100, 0, 0))", "result: -1"),
    # --- native code: /tmp is noexec, memfd is refused
    "import a .so written to /tmp": (
        "import glob, shutil, importlib.util, sys\n"
        "src = glob.glob(sys.base_prefix + '/lib/python3*/lib-dynload/_json*.so')[0]\n"
        "shutil.copy(src, '/tmp/_json.so')\n"
        "spec = importlib.util.spec_from_file_location('_json', '/tmp/_json.so')\n"
        "importlib.util.module_from_spec(spec)", "failed to map segment"),
    "dlopen a .so in /tmp": (
        "import glob, shutil, ctypes, sys\n"
        "shutil.copy(glob.glob(sys.base_prefix + '/lib/python3*/lib-dynload/_json*.so')[0], '/tmp/x.so')\n"
        "ctypes.CDLL('/tmp/x.so')", "failed to map segment"),
    "execute a script in /tmp": (DISARM + "import os\nopen('/tmp/x', 'w').write('#!/bin/sh\\ntouch {outside}/pwned')\n"
                                 "os.chmod('/tmp/x', 0o755)\nos.execv('/tmp/x', ['/tmp/x'])", "Permission denied"),
    "memfd_create": ("import os\nos.memfd_create('x')", "Operation not permitted"),
    "anonymous executable memory": ("import mmap\nmmap.mmap(-1, 4096, prot=7)", "Operation not permitted"),
    "mprotect to executable": (SYSCALL + "libc.mmap.restype = ctypes.c_void_p\n"
                               "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + "
                               "[ctypes.c_long]\na = libc.mmap(None, 4096, 3, 0x22, -1, 0)\n"
                               "print('result:', libc.mprotect(ctypes.c_void_p(a), 4096, 5), ctypes.get_errno())",
                               "result: -1 1"),
    "map a /tmp file executable": ("import mmap, os\nopen('/tmp/code.bin', 'wb').write(b'\\xc3' * 4096)\n"
                                   "mmap.mmap(os.open('/tmp/code.bin', os.O_RDWR), 4096, prot=5)",
                                   "Operation not permitted|Permission denied"),
    "the loader runs a /tmp binary": (DISARM + "import glob, os, shutil\nshutil.copy('/usr/bin/true', '/tmp/t')\n"
                                      "os.execv(glob.glob('/lib*/ld-linux*.so*')[0], ['ld.so', '/tmp/t'])",
                                      "failed to map segment|Permission denied|not permitted"),
    # --- processes and signals: no new processes, and nothing outside is visible
    "fork": (DISARM + "import os\nos.fork()", "Operation not permitted"),
    "fork bomb": (DISARM + "import os\nwhile True:\n    os.fork()", "Operation not permitted"),
    "subprocess": (DISARM + "import subprocess\nsubprocess.run(['touch', '{outside}/pwned'])", "not permitted"),
    "os.system": (DISARM + "import os\nprint('result:', os.system('touch {outside}/pwned'))",
                  "result: (-1|32512)"),  # 127 << 8: the shell could not be started
    "posix_spawn": (DISARM + "import os\nos.posix_spawn('/bin/touch', ['touch', '{outside}/pwned'], {{}})",
                    "not permitted"),
    "libc fork via ctypes": (SYSCALL + "print('result:', libc.fork(), ctypes.get_errno())", "result: -1 1"),
    "kill the sentinel": ("import os\nos.kill({pid}, 9)", "No such process"),
    "kill everything visible": ("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('result: alive')",
                                "result: alive|^$"),
    "pidfd_send_signal to the parent": (
        "import os, signal\nos.pidfd_open(os.getppid())", "Operation not permitted"),
    "ptrace the parent": (SYSCALL + "print('result:', libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())",
                          "result: -1 1"),
    "setsid grandchild": (DISARM + "import os\nif os.fork() == 0:\n    os.setsid()\n    import time\n"
                          "    time.sleep(60)", "Operation not permitted"),
    # --- network: the sandbox has its own, empty network namespace
    "tcp to a host listener": (DISARM + "import socket\nsocket.create_connection(('127.0.0.1', {tcp}), timeout=2)",
                               "Network is unreachable|Connection refused"),
    "udp to a host listener": (DISARM + "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                               "print('result: sent', s.sendto(b'pwned', ('127.0.0.1', {udp})))",
                               "result: sent 5"),  # to the sandbox's own loopback; the host's hears nothing
    "abstract unix socket": (DISARM + "import socket\ns = socket.socket(socket.AF_UNIX)\n"
                             "s.connect('\\0{unix}')", "Connection refused"),
    "the internet": (DISARM + "import urllib.request\nurllib.request.urlopen('http://1.1.1.1', timeout=2)",
                     "unreachable|URLError"),
    # --- the kernel: namespaces, mounts, keyrings, bpf, io_uring are refused
    "unshare a user namespace": (SYSCALL + "print('result:', libc.unshare(0x10000000), ctypes.get_errno())",
                                 "result: -1 1"),
    "mount over /usr": (SYSCALL + "print('result:', libc.mount(b'none', b'/usr', b'tmpfs', 0, None))", "result: -1"),
    "setns": (SYSCALL + "print('result:', libc.setns(os.open('/proc/1/ns/mnt', os.O_RDONLY), 0))",
              "result: -1|Permission denied"),
    "keyctl": (SYSCALL + "print('result:', libc.syscall(250, 0, 0), ctypes.get_errno())", "result: -1 1"),
    "bpf": (SYSCALL + "print('result:', libc.syscall(321, 0, 0, 0), ctypes.get_errno())", "result: -1 1"),
    "io_uring": (SYSCALL + "print('result:', libc.syscall(425, 8, 0), ctypes.get_errno())", "result: -1 1"),
    "x32 syscall": (SYSCALL + "print('result:', libc.syscall(0x40000000 | 39), ctypes.get_errno())", "result: -1"),
    "a syscall newer than the filter": (SYSCALL + "print('result:', libc.syscall(463, -100, b'/tmp', 0, b'user.a', "
                                        "0, 0), ctypes.get_errno())", "result: -1 38"),
    "fanotify": (SYSCALL + "import platform\nnr = 300 if platform.machine() == 'x86_64' else 262\n"
                 "print('result:', libc.syscall(nr, 0x200, 0), ctypes.get_errno())", "result: -1 1"),
    "SysV shared memory": (SYSCALL + "print('result:', libc.shmget(0, 1 << 26, 0o1600), ctypes.get_errno())",
                           "result: -1 1"),
    "SysV message queue": (SYSCALL + "print('result:', libc.msgget(0, 0o1600), ctypes.get_errno())", "result: -1 1"),
    "vsock to the hypervisor": (DISARM + "import socket\nsocket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)",
                                "Address family not supported"),
    "netlink": (DISARM + "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
                "Address family not supported"),
    "raw packets": (DISARM + "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)",
                    "Address family not supported"),
    "a controlling terminal": ("import os\nos.open('/dev/tty', os.O_RDWR)", "No such device"),
    "/proc/sys": ("import os\nos.write(os.open('/proc/sys/kernel/hostname', os.O_WRONLY), b'pwned')", DENIED),
    "sysrq": ("import os\nos.write(os.open('/proc/sysrq-trigger', os.O_WRONLY), b'b')", DENIED + "|No such file"),
    "become root": ("import os\nos.setresuid(0, 0, 0)", "Invalid argument|not permitted"),
    "oom_score_adj": ("import os\nos.write(os.open('/proc/self/oom_score_adj', os.O_WRONLY), b'-1000')", DENIED),
    "clone3": (SYSCALL + "print('result:', libc.syscall(435, 0, 0), ctypes.get_errno())", "result: -1 38"),
    # --- tampering with the policy from inside, then writing outside
    "disarm the hook, then write": (DISARM + "open('{outside}/pwned', 'w')", "Read-only"),
    "swap the hook's code via gc": (
        "import gc\nfor f in gc.get_objects():\n    if getattr(f, '__name__', '') == '_hook':\n"
        "        f.__code__ = (lambda event, args: None).__code__\n"
        "import subprocess\nsubprocess.run(['touch', '{outside}/pwned'])", "not permitted|sandbox:"),
    "patch os.path.realpath": ("import os\nos.path.realpath = lambda p, **k: '/tmp/x'\n"
                               "open('{outside}/pwned', 'w')", "Read-only"),
    "sys.addaudithook": ("import sys\nsys.addaudithook(lambda *a: None)\nopen('{outside}/pwned', 'w')", "Read-only"),
}


@pytest.fixture
def host(tmp_path):
    """The host as the attempts see it: a shared folder (bound read-only) with a secret, a hidden one
    (not bound), a sentinel process, and a TCP, a UDP and an abstract unix listener."""
    outside, hidden = tmp_path / "shared", tmp_path / "hidden"
    (outside / "sub").mkdir(parents=True)
    hidden.mkdir()
    (outside / "secret.txt").write_text("hunter2")
    (outside / "sub" / "kept.txt").write_text("kept")
    (hidden / "hidden.txt").write_text("hidden-s3cret")
    sentinel = subprocess.Popen(["sleep", "120"])
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix_name = f"hfstack-test-{os.getpid()}"
    unix.bind("\0" + unix_name)
    unix.listen()
    for listener in (tcp, udp, unix):
        listener.setblocking(False)
    yield dict(outside=outside, hidden=hidden, sentinel=sentinel, tcp=tcp, udp=udp, unix=unix, unix_name=unix_name)
    sentinel.kill()
    for listener in (tcp, udp, unix):
        listener.close()


def snapshot(folder) -> dict:
    """Everything an attack could change about a folder's files."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            content = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) else None
            state[os.path.relpath(path, folder)] = (st.st_mode, st.st_size, st.st_mtime_ns, content,
                                                    sorted(os.listxattr(path, follow_symlinks=False)))
    return state


def nothing_arrived(listener) -> bool:
    try:
        listener.accept() if listener.type == socket.SOCK_STREAM else listener.recvfrom(64)
    except BlockingIOError:
        return True
    return False


@needs_sandbox
@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_is_blocked(name, host):
    code, expect = ESCAPES[name]
    site = sysconfig.get_paths()["purelib"]
    before = snapshot(host["outside"]), sorted(os.listdir(site)), sorted(os.listdir("/dev/shm"))
    leftover_before = sandbox_processes()
    code = code.format(outside=host["outside"], hidden=host["hidden"], site=site, pid=host["sentinel"].pid,
                       tcp=host["tcp"].getsockname()[1], udp=host["udp"].getsockname()[1], unix=host["unix_name"])
    result = run_python(report(code), timeout=4, read_only=(str(host["outside"]),))
    assert re.search(expect, result.output, re.M), result.output
    assert "hunter2" not in result.output and "hidden-s3cret" not in result.output
    assert (snapshot(host["outside"]), sorted(os.listdir(site)), sorted(os.listdir("/dev/shm"))) == before
    assert host["sentinel"].poll() is None, "the sentinel process was killed"
    assert all(nothing_arrived(host[kind]) for kind in ("tcp", "udp", "unix"))
    assert not left_running(leftover_before)


@needs_sandbox
def test_there_are_at_least_forty_attempts():
    assert len(ESCAPES) >= 40


@needs_sandbox
def test_ordinary_code_runs_and_can_use_its_own_temp_dir():
    result = run_python("import math, json, collections\nprint(math.factorial(10))\n"
                        "open('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read())")
    assert result.ok and result.output == "3628800\nkept\n"


@needs_sandbox
def test_the_code_runs_as_an_unprivileged_user_in_its_own_namespaces():
    result = run_python("import os\nprint(os.getuid(), os.getgid(), os.getpid(), os.uname().nodename)\n"
                        "print(open('/proc/self/status').read())")
    assert result.ok, result.output
    uid, gid, pid, hostname = result.output.splitlines()[0].split()
    assert (uid, gid, hostname) == ("65534", "65534", "sandbox") and int(pid) <= 3  # own pid namespace
    status = dict(line.split(":\t", 1) for line in result.output.splitlines()[1:] if ":\t" in line)
    assert status["CapEff"].strip() == "0000000000000000" and status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == ("2" if seccomp_program() else "0")


@needs_sandbox
def test_the_temp_dir_is_fresh_each_call_and_the_host_keeps_nothing():
    first = run_python("open('/tmp/left.txt', 'w').write('x')\nprint('ok')")
    second = run_python("import os\nprint(os.path.exists('/tmp/left.txt'), os.listdir('/tmp'))")
    # /tmp holds only mount points of read-only folders that live under the host's /tmp (a venv there)
    assert first.ok and second.ok and second.output.startswith("False"), second.output
    assert all(name not in second.output for name in ("left.txt", "hfstack-tool"))
    assert not [p for p in os.listdir("/tmp") if p.startswith("hfstack-tool-")]


@needs_sandbox
def test_errors_come_back_as_a_short_traceback_of_the_model_code():
    result = run_python("x = 1\nprint(x / 0)")
    assert not result.ok and "ZeroDivisionError" in result.output and "_BOOTSTRAP" not in result.output
    assert 'File "<tool>", line 2' in result.output


@needs_sandbox
def test_the_hook_still_gives_a_clear_message():
    result = run_python("import subprocess\nsubprocess.run(['true'])")
    assert "PermissionError: sandbox: import of _posixsubprocess is not allowed" in result.output


@needs_sandbox
def test_output_is_truncated_for_the_model():
    result = run_python("print('x' * 100000)", max_output_chars=1000)
    assert result.ok and len(result.output) < 1100 and "more characters" in result.output


@needs_sandbox
def test_environment_secrets_are_not_passed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_supersecret")
    result = run_python("import os\nprint(dict(os.environ))\nprint(open('/proc/self/environ').read())")
    assert result.ok and "supersecret" not in result.output


def test_seccomp_program_is_well_formed():
    for machine in ("x86_64", "aarch64"):
        program = seccomp_program(machine)
        assert program and len(program) % 8 == 0 and len(program) // 8 < 4096  # the kernel's limit
    assert seccomp_program("sparc64") is None


def test_without_the_os_mechanism_the_tool_is_off_and_runs_nothing(monkeypatch):
    monkeypatch.setattr(sandbox, "_missing_tools", lambda: "bwrap not found (apt-get install bubblewrap)")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("something ran without the sandbox"))
    sandbox.unavailable_reason.cache_clear()
    try:
        result = run_python("print('hi')")
    finally:
        sandbox.unavailable_reason.cache_clear()
    assert not result.ok and result.output.startswith("the Python tool is unavailable: bwrap not found")


def test_the_model_sees_the_tool_is_unavailable(monkeypatch):
    from hfstack.tools.loop import default_tools

    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "no user namespaces")
    assert default_tools()["python"]("print(1)") == "the Python tool is unavailable: no user namespaces"


@pytest.mark.skipif(shutil.which("bwrap") is None or sys.platform != "linux", reason="needs bwrap")
def test_a_broken_sandbox_is_reported_not_bypassed(monkeypatch):
    monkeypatch.setattr(sandbox, "_command", lambda *a, **k: ["sh", "-c", "echo 'bwrap: setting up uid map: denied'"])
    sandbox.unavailable_reason.cache_clear()
    try:
        reason = sandbox.unavailable_reason()
    finally:
        sandbox.unavailable_reason.cache_clear()
    assert reason and "did not start" in reason and "uid map" in reason
