"""Start worker processes by forking a pre-loaded template process (a *zygote*), not by exec.

Why: a worker started with ``python -m workers.stream`` imports the interpreter's and the
libraries' code again, about 13-15 MB of private memory per worker, and takes a few hundred
milliseconds to do it. The supervisor imports the same libraries (and the worker modules) before
it opens any socket or starts any thread, then forks one idle *spawner* process. Each worker is
forked from the spawner: the imported code stays shared, copy-on-write, among the supervisor, the
spawner and every worker, and a worker (re)start costs a fork, not an interpreter start.
``gc.freeze()`` before the fork keeps the collector from writing to (and so un-sharing) the
pages of the imported objects.

The workers stay the supervisor's children, as with ``subprocess``: the supervisor marks itself a
*child subreaper* (``PR_SET_CHILD_SUBREAPER``), the spawner forks an intermediate process that
forks the worker and exits at once, and the kernel hands the orphaned worker to the supervisor.
So the supervisor waits for its workers' exits and reads their exit codes as before
(:class:`ForkedChild` has the part of ``Popen``'s interface it uses), a worker outlives a dead
spawner, and ``PR_SET_PDEATHSIG`` in the worker refers to the supervisor. The worker waits until
it has been handed over before it runs (``die_with_parent`` checks its parent is the supervisor).

Requests and replies travel on a ``SOCK_SEQPACKET`` socket pair, one JSON object each:
``{"argv": [python, "-m", module, args...], "cwd": dir}`` and ``{"pid": N}`` or
``{"error": text}``. The spawner exits when the supervisor's end closes (and is SIGKILLed by the
kernel if the supervisor dies). A spawner that is gone or does not answer is reported as
:class:`SpawnerError`; the supervisor then starts workers with ``subprocess`` (exec) instead.

A forked worker's ``/proc/PID/cmdline`` would be the supervisor's: the worker writes its own
arguments (``mt6d-worker workers.stream NAME --runtime-dir ...``, cut to the space the original command
line had) over it, as ``setproctitle`` does, and names its thread ``mt6d-NAME`` (``comm``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

log = logging.getLogger("mt6d.spawner")

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
REQUEST_TIMEOUT = 5.0  # seconds for the spawner to answer one request
HANDOVER_TIMEOUT = 5.0  # seconds for a new worker to become the supervisor's child
MAX_MESSAGE = 1 << 16


class SpawnerError(Exception):
    """The spawner is gone, did not answer, or could not fork."""


def _prctl(option: int, arg: int | bytes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, arg, 0, 0, 0))


class ForkedChild:
    """A worker the spawner forked, now our child: the part of ``subprocess.Popen`` we use."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"ForkedChild(pid={self.pid}, returncode={self.returncode})"

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not (or no longer) ours to wait for: count it as gone
                self.returncode = 255
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.005)
        return code

    def send_signal(self, sig: int) -> None:
        # Only while not yet reaped: until then the pid cannot have been reused.
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Spawner:
    """The supervisor's handle on its spawner process."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def start(cls, preload: list[str]) -> Spawner:
        """Import ``preload``, freeze the heap and fork the spawner.

        Call it while the process has one thread and no sockets or files it would not hand to
        every worker. Raises :class:`SpawnerError` if a module does not import or fork fails.
        """
        if threading_count() != 1:
            raise SpawnerError("the spawner must be forked while the process has one thread")
        try:
            for name in preload:
                importlib.import_module(name)
        except Exception as e:
            raise SpawnerError(f"cannot preload {name}: {e}") from e
        if _prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
            raise SpawnerError(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        gc.collect()
        gc.freeze()  # the objects imported so far stay out of every later collection
        supervisor = os.getpid()
        try:
            pid = os.fork()
        except OSError as e:
            ours.close()
            theirs.close()
            raise SpawnerError(f"fork: {e}") from e
        if pid == 0:  # the spawner
            code = 1
            try:
                ours.close()
                code = _serve(theirs, supervisor)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        ours.settimeout(REQUEST_TIMEOUT)
        return cls(pid, ours)

    def spawn(self, argv: list[str], cwd: str) -> ForkedChild:
        """Fork a worker that runs ``argv`` (``python -m MODULE ARGS...``) in ``cwd``."""
        try:
            self.sock.send(json.dumps({"argv": argv, "cwd": cwd}).encode())
            reply = self.sock.recv(MAX_MESSAGE)
        except OSError as e:  # includes the timeout
            raise SpawnerError(f"spawner pid {self.pid}: {e}") from e
        if not reply:
            raise SpawnerError(f"spawner pid {self.pid} has exited")
        answer = json.loads(reply)
        if "pid" not in answer:
            raise SpawnerError(f"spawner pid {self.pid}: {answer.get('error', answer)}")
        return ForkedChild(int(answer["pid"]), argv)

    def close(self) -> None:
        """Let the spawner exit (its end of the socket reads EOF) and reap it."""
        self.sock.close()
        with contextlib.suppress(ChildProcessError):
            deadline = time.monotonic() + 2.0
            while os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                time.sleep(0.005)


def threading_count() -> int:
    return len(os.listdir("/proc/self/task"))


# --- the spawner process ----------------------------------------------------------------------


def _serve(sock: socket.socket, supervisor: int) -> int:
    """The spawner's loop: one worker per request, until the supervisor's end closes."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:
        return 0
    _prctl(PR_SET_NAME, b"mt6d-spawner")
    for sig in (signal.SIGINT, signal.SIGHUP):  # the supervisor decides when workers stop
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    root = logging.getLogger()
    for h in list(root.handlers):  # the supervisor's log file stays the supervisor's
        root.removeHandler(h)
        h.close()
    while True:
        try:
            request = sock.recv(MAX_MESSAGE)
        except InterruptedError:
            continue
        if not request:
            return 0
        try:
            req = json.loads(request)
            argv, cwd = [str(a) for a in req["argv"]], str(req["cwd"])
            if len(argv) < 3 or argv[1] != "-m":
                raise ValueError(f"not python -m MODULE: {argv[:3]}")
            reply: dict[str, object] = {"pid": _fork_worker(sock, supervisor, argv, cwd)}
        except Exception as e:  # a bad request or a failed fork: say so, keep serving
            reply = {"error": f"{type(e).__name__}: {e}"}
        sock.send(json.dumps(reply).encode())


def _fork_worker(sock: socket.socket, supervisor: int, argv: list[str], cwd: str) -> int:
    """Fork an intermediate that forks the worker and exits; return the worker's pid."""
    r, w = os.pipe()
    try:
        middle = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if middle == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become_worker(sock, supervisor, argv, cwd)  # does not return
            os.write(w, pid.to_bytes(4, "little"))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 4)
    finally:
        os.close(r)
        os.waitpid(middle, 0)  # once it is reaped, the worker belongs to the supervisor
    if len(data) != 4:
        raise OSError("the intermediate process could not fork the worker")
    return int.from_bytes(data, "little")


def _become_worker(sock: socket.socket, supervisor: int, argv: list[str], cwd: str) -> None:
    code = 1
    try:
        sock.close()
        module, args = argv[2], argv[3:]
        name = args[args.index("--name") + 1] if "--name" in args else module
        _prctl(PR_SET_NAME, f"mt6d-{name}".encode()[:15])
        set_title(["mt6d-worker", module, name, *args])  # the name first: the space may be short
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(cwd)
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        deadline = time.monotonic() + HANDOVER_TIMEOUT
        while os.getppid() != supervisor:  # the intermediate has not exited yet
            if time.monotonic() > deadline:
                os._exit(0)  # the supervisor is gone: nobody would supervise us
            time.sleep(0.0005)
        code = _run(module, args)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run(module: str, args: list[str]) -> int:
    """What ``python -m MODULE ARGS`` would do with the module's ``run(argv)``."""
    sys.argv = [module, *args]
    try:
        code = importlib.import_module(module).run(args)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return int(code or 0)


def set_title(words: list[str]) -> None:
    """Write ``words`` over this process's original command line (``/proc/PID/cmdline``).

    NUL-separated, as the kernel laid out the original arguments, so ``ps`` and ``pgrep -f``
    read them as arguments. The space is what the original command line had: a longer title is
    cut, and the rest is NUL-filled (the kernel then shows the area as it is).
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5) 48, 49)
    except (OSError, IndexError, ValueError):
        return
    size = end - start
    if size <= 1:
        return
    raw = "\0".join(words).encode()[: size - 1]
    ctypes.memmove(start, raw + bytes(size - len(raw)), size)
