"""Run untrusted Python (a model's code completion and its tests) in a confined subprocess.

A separate interpreter (``python -I -B``: no user site, no PYTHON* variables, no bytecode writes)
runs the program in a fresh temporary directory that is its cwd, ``HOME`` and ``TMPDIR``, in a new
session that is killed whole at the wall-clock timeout. Before the program's first line the child
confines itself, layer by layer (each layer that the machine lacks is skipped, and reported in
:attr:`Result.layers`):

- ``netns``: a new, empty network namespace (``unshare(CLONE_NEWNET)``; as a non-root user inside
  a new user namespace): no interface but a down loopback, so no address is reachable.
- ``landlock``: a Landlock domain (Linux ≥ 5.13): files may be created, written, truncated,
  renamed or removed only beneath the temporary directory (plus writes to ``/dev/null``), no
  program may be executed, and on Landlock ABI ≥ 4 no TCP port may be bound or connected to
  (ABI ≥ 6: no signal to, or abstract socket of, a process outside the sandbox).
- ``rlimits``: address space (``RLIMIT_AS``), CPU seconds, the largest file written
  (``RLIMIT_FSIZE``), no core dumps, no new processes or threads (``RLIMIT_NPROC`` 0, for non-root).
- ``audit``: a PEP 578 audit hook, which Python cannot remove, refusing writes outside the
  temporary directory, socket creation, subprocesses, ``fork``/``exec``/``kill`` and ``ctypes``:
  the portable layer, and the one that words the failure.

A pass is an exit status of 0 *and* the completion line that the runner writes to a private pipe
after the program returns, so a program that ends the interpreter early (``os._exit(0)``) fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

DONE = b"dlm-sandbox-done\n"


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0  # wall-clock seconds for the whole child, interpreter start included
    cpu_seconds: int = 5
    memory_bytes: int = 1 << 30  # address space; a Python start needs ~30 MB of it
    file_bytes: int = 1 << 20  # the largest file the program may write


@dataclass(frozen=True)
class Result:
    passed: bool
    reason: str  # "passed", "timed out", "failed: <the exception's last line>", ...
    layers: tuple[str, ...] = field(default=())  # the confinement layers that were in force


# The child's own code, run by ``python -I -B -c``: argv = [-c, STATUS_FD, CPU, MEMORY, FSIZE]. It reads the
# program, confines itself (everything that needs one thread or ctypes first), then runs it.
RUNNER = r'''
import os, sys
status = int(sys.argv[1])
cpu, mem, fsize = (int(a) for a in sys.argv[2:5])
src = open("program.py", encoding="utf-8").read()
here = os.path.realpath(os.getcwd())
layers = []

def _confine():
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    # netns: before any thread exists (unshare needs a single-threaded caller)
    CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWNET) == 0:
        layers.append("netns")
    elif libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        try:  # keep our own ids inside the new user namespace, so the files we create stay ours
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
        except OSError:
            pass
        layers.append("netns")
    # landlock: writes only beneath here, no execve, no TCP (syscalls 444-446 on every architecture)
    sc = libc.syscall
    sc.restype = ctypes.c_long
    abi = sc(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi >= 1:
        EXECUTE, WRITE_FILE = 1 << 0, 1 << 1
        writes = sum(1 << b for b in (4, 5, 6, 7, 8, 9, 10, 11, 12))  # remove dir/file, make char..sym
        if abi >= 2:
            writes |= 1 << 13  # refer (rename and link across directories)
        if abi >= 3:
            writes |= 1 << 14  # truncate
        handled = EXECUTE | WRITE_FILE | writes
        attr = struct.pack("Q", handled)
        if abi >= 4:
            attr += struct.pack("Q", 0b11)  # bind and connect TCP: handled, never allowed
        if abi >= 6:
            attr += struct.pack("Q", 0b11)  # scope: abstract unix sockets and signals
        buf = ctypes.create_string_buffer(attr, len(attr))
        ruleset = sc(444, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
        ok = ruleset >= 0
        allow_here = WRITE_FILE | writes
        for path, access in ((here, allow_here), ("/dev/null", WRITE_FILE)):
            if not ok:
                break
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
            ok = sc(445, ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint32(0)) == 0
            os.close(fd)
        if ok and libc.prctl(38, 1, 0, 0, 0) == 0 and sc(446, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0:
            layers.append(f"landlock-abi{abi}")
        if ruleset >= 0:
            os.close(ruleset)

_confine()
del _confine

import resource
for lim, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(lim, (value, value))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
if os.getuid() != 0:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
layers.append("rlimits")

def _guard():
    import os.path, sys
    O_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    refused = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "os.forkpty", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill",
               "socket.__new__", "socket.socketpair", "socket.connect", "socket.bind", "socket.sendto",
               "socket.getaddrinfo", "webbrowser.open")
    # event: (index of the path argument, index of its dir_fd argument or None)
    paths = {"os.remove": (0, 1), "os.rmdir": (0, 1), "os.mkdir": (0, 2), "os.chmod": (0, 2),
             "os.chown": (0, 3), "os.truncate": (0, None), "os.utime": (0, 3), "os.setxattr": (0, None),
             "os.removexattr": (0, None), "shutil.rmtree": (0, 1), "os.symlink": (1, 2)}
    here_sep = here.rstrip("/") + "/"

    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True  # an open descriptor: its opening was checked
        path = os.fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = os.path.realpath(path)
        return real == here or real.startswith(here_sep)

    def hook(event, args):
        if event.startswith("ctypes.") or event in refused:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & O_WRITE
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
        elif event in paths:
            i, d = paths[event]
            if not inside(args[i], args[d] if d is not None else None):
                raise PermissionError(f"sandbox: {event} on {args[i]!r} outside the sandbox directory is not allowed")
        elif event in ("os.rename", "os.link"):  # (src, dst, src_dir_fd, dst_dir_fd); a link's source too
            for p, d in ((args[0], args[2]), (args[1], args[3])):
                if not inside(p, d):
                    raise PermissionError(f"sandbox: {event} on {p!r} outside the sandbox directory is not allowed")

    sys.addaudithook(hook)
    for name in ("mkfifo", "mknod"):  # no audit event: refuse them by name
        def refuse(*a, _n=name, **k):
            raise PermissionError(f"sandbox: os.{_n} is not allowed")
        setattr(os, name, refuse)

_guard()
del _guard
layers.append("audit")
os.write(status, (" ".join(layers) + "\n").encode())

code = compile(src, "program.py", "exec")
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as exc:
    sys.stderr.write(f"SystemExit: the program exited ({exc.code!r}) before finishing\n")
    os._exit(3)
except BaseException as exc:
    sys.stderr.write(f"{type(exc).__name__}: {exc}"[:2000] + "\n")
    os._exit(1)
os.write(status, b"dlm-sandbox-done\n")
os._exit(0)
'''


def run_python(source: str, limits: Limits = Limits()) -> Result:
    """Run ``source`` as a script in a confined child (see the module doc); passed = it ran to its end."""
    tmp = tempfile.mkdtemp(prefix="dlm-sandbox-")
    try:
        with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as fh:
            fh.write(source)
        err_path = os.path.join(tmp, ".stderr")
        env = {"HOME": tmp, "TMPDIR": tmp, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        r, w = os.pipe()
        try:
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-c", RUNNER, str(w), str(limits.cpu_seconds),
                     str(limits.memory_bytes), str(limits.file_bytes)],
                    cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    pass_fds=(w,), start_new_session=True, close_fds=True)
            os.close(w)
            w = -1
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            status = _read_all(r)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        lines = status.decode(errors="replace").splitlines()
        layers = tuple(lines[0].split()) if lines and lines[0] != DONE.decode().strip() else ()
        if timed_out:
            return Result(False, "timed out", layers)
        if proc.returncode == 0 and status.endswith(DONE):
            return Result(True, "passed", layers)
        if proc.returncode == 0:
            return Result(False, "failed: the program ended the interpreter before finishing", layers)
        return Result(False, _reason(proc.returncode, err_path), layers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _read_all(fd: int) -> bytes:
    """What the child wrote to its status pipe, without waiting for a writer that outlived it."""
    os.set_blocking(fd, False)
    out = b""
    while len(out) < 4096:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _reason(code: int, err_path: str) -> str:
    try:
        with open(err_path, "rb") as fh:
            tail = fh.read()[-4000:].decode(errors="replace").strip().splitlines()
    except OSError:
        tail = []
    if code < 0:
        sig = -code
        what = {signal.SIGXCPU: "CPU time limit", signal.SIGKILL: "killed (CPU or memory limit)",
                signal.SIGXFSZ: "file size limit", signal.SIGSEGV: "segmentation fault"}.get(sig, f"signal {sig}")
        return f"failed: {what}"
    return f"failed: {tail[-1]}" if tail else f"failed: exit status {code}"
