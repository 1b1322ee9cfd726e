"""The Python tool: run model-written code behind an operating-system boundary.

    from hfstack.tools.sandbox import run_python
    run_python("print(sum(range(10)))").output   # '45\\n'

The assistant's `python` tool in `hfstack chat`, `serve`, `eval`, `rl` and `rlhf` runs through it.

The boundary is the kernel's, built with bubblewrap (`bwrap`, Debian's `bubblewrap` package):
- its own user, pid, network, mount, ipc, uts and cgroup namespaces: no network at all, and the
  code can neither see nor signal any process outside, the server that hosts the tool included;
- an unprivileged uid (65534) inside; when hfstack itself runs as root, the whole sandbox also runs
  as host uid 65534 (setpriv), so nothing in it holds root's file rights;
- a read-only filesystem of /usr and the interpreter's own folders, nothing else of the host;
- one writable folder, /tmp (also cwd and HOME): a fresh tmpfs mounted noexec, nosuid, nodev and
  capped at `file_mb`, gone when the call ends;
- a seccomp filter: no new processes (fork, vfork, clone without CLONE_THREAD), no ptrace, mounts,
  namespaces, kernel keyrings, bpf, io_uring, memfd (executable memory from a file), device nodes
  or extended attributes; foreign architectures (32-bit syscalls) kill the process;
- resource limits (CPU seconds, address space, file size, open files), a wall-clock limit at which
  the whole pid namespace dies, and an output cap: the output is read as it comes and the sandbox
  is killed once it passes `max_output_bytes`.
An audit hook inside stays as a second layer, only to give the model clear messages (no sockets, no
processes); it is not what keeps the host safe (PEP 578), so foreign-function modules such as ctypes
(which numpy imports) stay allowed: native code meets the same kernel boundary.

Where the OS mechanism is missing (no bwrap, no user namespaces) the tool is off: `run_python`
returns "the Python tool is unavailable: <reason>" without running anything, and
`unavailable_reason()` says why. Nothing ever runs unsandboxed.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass

SANDBOX_UID = 65534  # "nobody"
MAX_FILES = 4096  # inodes in /tmp: empty files cost kernel memory that the size cap does not count
MAX_TASKS = 256  # threads and processes in the sandbox's user namespace (the kernel counts them there)

# runs inside the sandbox before the model's code: clear messages for what the OS refuses anyway
_BOOTSTRAP = r'''
import resource, sys
sys.dont_write_bytecode = True
resource.setrlimit(resource.RLIMIT_NPROC, (int(sys.argv[1]), int(sys.argv[1])))  # a thread bomb stops here
_BLOCKED_MODULES = ("_posixsubprocess", "multiprocessing", "pty")
_REFUSED_EVENTS = ("socket.", "subprocess.", "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn",
                   "os.system")

def _hook(event, args):
    if event == "import" and args[0].split(".")[0] in _BLOCKED_MODULES:
        raise PermissionError(f"sandbox: import of {args[0]} is not allowed")
    if event.startswith(_REFUSED_EVENTS):
        raise PermissionError(f"sandbox: {event} is not allowed")

sys.addaudithook(_hook)
del _hook
_code = sys.stdin.read()
sys.stdin.close()
exec(compile(_code, "<tool>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''

# Sets the sandbox up: a private mount namespace holds a tmpfs over the (empty) call folder WORK, the
# noexec tmpfs the code writes to, and binds of the interpreter's folders, which bwrap (run as an
# unprivileged uid when we are root) can then reach even where the host path is not traversable.
_SETUP = r'''
set -e
work=$1; size=$2; inodes=$3; shift 3
mount -t tmpfs -o mode=0755,size=64k,nr_inodes=256 hfstack-sandbox "$work"
mkdir "$work/tmp"
mount -t tmpfs -o noexec,nosuid,nodev,mode=1777,size=$size,nr_inodes=$inodes hfstack-tool "$work/tmp"
i=0
while [ "$1" != "--" ]; do
  mkdir "$work/lib$i"; mount --rbind -- "$1" "$work/lib$i"; i=$((i + 1)); shift
done
shift
exec "$@"
'''


@dataclass
class SandboxResult:
    output: str  # stdout, then stderr, truncated
    exit_code: int | None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


# ---- the syscall filter (classic BPF, as bwrap's --seccomp takes it) ----

_ARCHES = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# name: (x86_64, aarch64); None where the architecture has no such call
_DENIED = {
    "fork": (57, None), "vfork": (58, None), "ptrace": (101, 117), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "unshare": (272, 97), "setns": (308, 268), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106), "reboot": (169, 142),
    "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89), "quotactl": (179, 60), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280), "perf_event_open": (298, 241),
    "userfaultfd": (323, 282), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "mknod": (133, None), "mknodat": (259, 33), "setxattr": (188, 5),
    "lsetxattr": (189, 6), "fsetxattr": (190, 7), "removexattr": (197, 14), "lremovexattr": (198, 15),
    "fremovexattr": (199, 16), "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265),
    "pidfd_open": (434, 434), "pidfd_send_signal": (424, 424), "pidfd_getfd": (438, 438),
    "memfd_create": (319, 279), "memfd_secret": (447, 447), "kcmp": (312, 272), "syslog": (103, 116),
    "uselib": (134, None), "ioperm": (173, None), "iopl": (172, None), "personality": (135, 92),
}
# SysV IPC and POSIX message queues hold kernel memory outside RLIMIT_AS; fanotify watches files
_DENIED |= {
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "shmdt": (67, 197), "semget": (64, 190),
    "semop": (65, 193), "semctl": (66, 191), "semtimedop": (220, 192), "msgget": (68, 186), "msgsnd": (69, 189),
    "msgrcv": (70, 188), "msgctl": (71, 187), "mq_open": (240, 180), "mq_unlink": (241, 181),
    "mq_timedsend": (242, 182), "mq_timedreceive": (243, 183), "mq_notify": (244, 184),
    "mq_getsetattr": (245, 185), "fanotify_init": (300, 262),
}
# calls numbered from 436 on (the same numbers on both architectures) were added after this table was
# reviewed: they answer ENOSYS, as on an older kernel, except these, which the C library uses
_NEWEST_REVIEWED = 436
_NEWER_ALLOWED = {"close_range": 436, "openat2": 437, "faccessat2": 439, "epoll_pwait2": 441,
                  "futex_waitv": 449, "fchmodat2": 452}
_CLONE, _CLONE3 = {"x86_64": 56, "aarch64": 220}, 435
_SOCKETS = {"x86_64": (41, 53), "aarch64": (198, 199)}  # socket, socketpair
_MMAP = {"x86_64": 9, "aarch64": 222}
_MPROTECT = {"x86_64": (10, 329), "aarch64": (226, 288)}  # mprotect, pkey_mprotect
_CLONE_THREAD, _PROT_EXEC, _MAP_ANONYMOUS = 0x00010000, 0x4, 0x20
_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6: not vsock, packet, netlink, alg, ...
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_KILL_PROCESS, _ALLOW = 0x80000000, 0x7FFF0000
_EPERM, _ENOSYS, _EAFNOSUPPORT = 0x00050000 | 1, 0x00050000 | 38, 0x00050000 | 97
_ARG = {0: 16, 2: 32, 3: 40}  # offsets of syscall arguments' low words in struct seccomp_data


def _when(number: int, block: list[tuple]) -> list[tuple]:
    """`block` (which always returns) runs for syscall `number`; other calls skip over it."""
    return [(_JEQ, 0, len(block), number), *block]


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The filter as packed `struct sock_filter`s, or None on an architecture without a table.
    - Threads stay allowed (clone with CLONE_THREAD); clone3 answers ENOSYS, so the C library falls
      back to clone, whose flags a filter can read; any other clone (a process) is refused.
    - No executable memory that is not a file's: mmap of anonymous memory with PROT_EXEC, and any
      mprotect to PROT_EXEC, are refused, so code the program writes never runs (with the noexec /tmp
      and memfd refused, only the host's own libraries are executable).
    - Sockets only of the families a Python program needs, inside the empty network namespace."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        return None
    column = 0 if machine == "x86_64" else 1
    prog = [(_LD_W_ABS, 0, 0, 4), (_JEQ, 1, 0, _ARCHES[machine]), (_RET, 0, 0, _KILL_PROCESS), (_LD_W_ABS, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI's numbers alias the 64-bit ones plus this bit
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _EPERM)]
    for number in _NEWER_ALLOWED.values():
        prog += [(_JEQ, 0, 1, number), (_RET, 0, 0, _ALLOW)]
    prog += [(_JGE, 0, 1, _NEWEST_REVIEWED), (_RET, 0, 0, _ENOSYS)]
    for numbers in _DENIED.values():
        if numbers[column] is not None:
            prog += [(_JEQ, 0, 1, numbers[column]), (_RET, 0, 0, _EPERM)]
    prog += [(_JEQ, 0, 1, _CLONE3), (_RET, 0, 0, _ENOSYS)]
    prog += _when(_CLONE[machine], [(_LD_W_ABS, 0, 0, _ARG[0]), (_JSET, 1, 0, _CLONE_THREAD),
                                    (_RET, 0, 0, _EPERM), (_RET, 0, 0, _ALLOW)])
    for number in _SOCKETS[machine]:
        checks = [(_JEQ, len(_FAMILIES) - i, 0, family) for i, family in enumerate(_FAMILIES)]
        prog += _when(number, [(_LD_W_ABS, 0, 0, _ARG[0]), *checks, (_RET, 0, 0, _EAFNOSUPPORT), (_RET, 0, 0, _ALLOW)])
    prog += _when(_MMAP[machine], [(_LD_W_ABS, 0, 0, _ARG[2]), (_JSET, 0, 3, _PROT_EXEC), (_LD_W_ABS, 0, 0, _ARG[3]),
                                   (_JSET, 0, 1, _MAP_ANONYMOUS), (_RET, 0, 0, _EPERM), (_RET, 0, 0, _ALLOW)])
    for number in _MPROTECT[machine]:
        prog += _when(number, [(_LD_W_ABS, 0, 0, _ARG[2]), (_JSET, 0, 1, _PROT_EXEC), (_RET, 0, 0, _EPERM),
                               (_RET, 0, 0, _ALLOW)])
    prog += [(_RET, 0, 0, _ALLOW)]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in prog)


# ---- the sandbox command ----

def _interpreter_roots() -> list[str]:
    """The folders the interpreter needs (its prefix, the venv's, site-packages), none inside another."""
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots |= {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots |= {os.path.dirname(os.path.realpath(sys.executable))}
    roots = {r for r in roots if os.path.isdir(r) and not r.startswith("/usr/")}  # /usr is bound whole
    return sorted(r for r in roots if not any(r.startswith(other + os.sep) for other in roots))


def _system_binds() -> list[str]:
    """/usr read-only, and the merged-/usr symlinks (/bin, /lib, ...) as symlinks, or binds where real."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def _command(work: str, file_mb: int, seccomp_fd: int | None, as_root: bool, read_only: list[str]) -> list[str]:
    roots = _interpreter_roots() + [os.path.realpath(p) for p in read_only]
    # --as-pid-1: the interpreter is the namespace's first process (it cannot fork, so needs no reaper)
    bwrap = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
             "--as-pid-1",
             "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox", *_system_binds(),
             "--proc", "/proc", "--dev", "/dev", "--bind", f"{work}/tmp", "/tmp"]
    for i, root in enumerate(roots):  # after /tmp, so a folder under /tmp (a venv, a test's) shows through
        bwrap += ["--ro-bind", f"{work}/lib{i}", root]
    # the root and /dev are bwrap's own tmpfs: read-only, so only the capped, noexec /tmp takes writes
    bwrap += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    for key, value in {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
                       "OMP_NUM_THREADS": "1"}.items():
        bwrap += ["--setenv", key, value]
    if seccomp_fd is not None:
        bwrap += ["--seccomp", str(seccomp_fd)]
    bwrap += [sys.executable, "-I", "-c", _BOOTSTRAP, str(MAX_TASKS)]
    if as_root:  # the namespaces are set up with root's rights, then everything runs as host uid 65534
        drop = ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        outer = ["unshare", "--mount", "--propagation", "private"]
    else:  # an unprivileged user gets the same from a user namespace of its own
        drop, outer = [], ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    return [*outer, "sh", "-c", _SETUP, "hfstack-sandbox", work, f"{file_mb}m", str(MAX_FILES), *roots, "--",
            *drop, *bwrap]


def _limits(cpu_seconds: int, memory_mb: int, file_mb: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _missing_tools() -> str | None:
    needed = ["bwrap", "unshare", "sh"] + (["setpriv"] if os.geteuid() == 0 else [])
    missing = [name for name in needed if shutil.which(name) is None]
    if missing:
        hint = " (apt-get install bubblewrap)" if "bwrap" in missing else ""
        return f"{', '.join(missing)} not found{hint}"
    return None


@functools.cache
def unavailable_reason() -> str | None:
    """Why the Python tool is off on this machine, or None when the sandbox works. Checked once per
    process by running a trivial program in the real sandbox; a warning is printed when it is off."""
    reason = _missing_tools()
    if reason is None:
        trial = _run_sandboxed("print('ready')", 30, 512, 1, 1 << 16, [])
        output, note, exit_code, _ = trial
        if output.strip() != "ready":
            lines = [line for line in (output + note).strip().splitlines() if line.strip()]
            reason = f"the sandbox did not start ({lines[-1] if lines else f'exit code {exit_code}'})"
    if reason:
        print(f"[tools] the Python tool is off: {reason}", file=sys.stderr, flush=True)
    return reason


def run_python(code: str, timeout: float = 5.0, memory_mb: int = 512, file_mb: int = 16,
               max_output_chars: int = 4000, max_output_bytes: int = 1 << 20,
               read_only: tuple[str, ...] = ()) -> SandboxResult:
    """Run `code` in a fresh sandbox; never raises for what the code does. The output the model sees
    is cut to `max_output_chars`; past `max_output_bytes` the sandbox is killed. `file_mb` caps what
    the code may write to /tmp in all; `read_only` folders of the host are shown at the same paths."""
    reason = unavailable_reason()
    if reason:
        return SandboxResult(f"the Python tool is unavailable: {reason}", None)
    output, note, exit_code, timed_out = _run_sandboxed(code, timeout, memory_mb, file_mb, max_output_bytes,
                                                       list(read_only))
    if len(output) > max_output_chars:
        output = output[:max_output_chars] + f"\n... [{len(output) - max_output_chars} more characters]"
    return SandboxResult(_clean_traceback(output) + note, exit_code, timed_out)


def _run_sandboxed(code: str, timeout: float, memory_mb: int, file_mb: int, max_output_bytes: int,
                   read_only: list[str]) -> tuple[str, str, int | None, bool]:
    """(output, a note on why it was stopped, exit code, timed out)."""
    # only a mount point: in the sandbox's mount namespace a tmpfs covers it, so on the host it stays empty
    work = tempfile.mkdtemp(prefix="hfstack-tool-")
    os.chmod(work, 0o755)
    as_root = os.geteuid() == 0
    program = seccomp_program()
    read_end = None
    if program is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, program)  # a few hundred bytes: well within a pipe's buffer
        os.close(write_end)
    try:
        process = subprocess.Popen(
            _command(work, file_mb, read_end, as_root, read_only), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, pass_fds=() if read_end is None else (read_end,), start_new_session=True,
            preexec_fn=_limits(int(timeout) + 1, memory_mb, file_mb), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except OSError as e:
        os.rmdir(work)
        return "", f"[the sandbox failed to start: {e}]", None, False
    finally:
        if read_end is not None:
            os.close(read_end)
    try:
        threading.Thread(target=_feed, args=(process.stdin, code), daemon=True).start()
        output, over_time, over_size = _read_capped(process, timeout, max_output_bytes)
        process.wait()
    finally:
        if process.poll() is None:
            _kill(process)
        os.rmdir(work)  # empty on the host; rmdir (not rmtree) would refuse anything else
    note = ""
    if over_time:
        note = f"\n[killed: over the {timeout:g}s time limit]"
    elif over_size:
        note = f"\n[killed: more than {max_output_bytes} bytes of output]"
    else:
        signal_number = -process.returncode if process.returncode < 0 else process.returncode - 128
        if process.returncode < 0 or process.returncode > 128:  # bwrap reports a killed child as 128+N
            why = "a forbidden system call" if signal_number == signal.SIGSYS else "a resource limit was hit"
            note = f"\n[killed by signal {signal_number}: {why}]"
    exit_code = None if (over_time or over_size) else process.returncode
    return output.decode("utf-8", "replace"), note, exit_code, over_time


def _feed(stdin, code: str) -> None:
    try:
        stdin.write(code.encode("utf-8", "replace"))
        stdin.close()
    except OSError:  # the sandbox died before reading it all
        pass


def _read_capped(process: subprocess.Popen, timeout: float, cap: int) -> tuple[bytes, bool, bool]:
    """Read the output as it comes until EOF, the deadline or the byte cap; kill the sandbox at either
    limit. Returns (output, over_time, over_size)."""
    deadline, chunks, size = time.monotonic() + timeout, [], 0
    fd = process.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(process)
            return b"".join(chunks), True, False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks), False, False
        chunks.append(chunk[: cap - size])
        size += len(chunk)
        if size > cap:
            _kill(process)
            return b"".join(chunks), False, True


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL bwrap's process group; bwrap's child dies with it (--die-with-parent), and with the
    pid namespace's first process every process in the namespace dies too."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _clean_traceback(text: str) -> str:
    """Drop the bootstrap's frames, so the model sees only its own code in a traceback."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if 'File "<string>"' not in line and "exec(compile(_code" not in line)
