"""Processes a lab starts, recorded so that another process can stop them, and the state file.

Flow: :meth:`ProcessTable.spawn` starts a command in a namespace (``ip netns exec``) in a
session of its own and records its PID and start time in ``state.json`` at once;
:meth:`ProcessTable.stop` and :meth:`ProcessTable.kill` end it by that PID (checked against the
start time, so a reused PID is never hit), SIGTERM first, then SIGKILL to its process group.
In order:

- file helpers (:func:`proc_stat`, :func:`write_private`, :func:`mkdir`);
- :class:`StateFile`: ``state.json``, edited under a lock and replaced atomically;
- :class:`ProcessTable`: spawn, look up, check and stop the recorded processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mt6d_mp.lab.info import LabError

log = logging.getLogger("mt6d_mp.lab")

TERM_TIMEOUT = 5.0


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, or None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def mkdir(path: Path, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


class StateFile:
    """``state.json``: read-modify-write under an exclusive lock, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name("state.lock")

    def load(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise LabError(f"{self.path}: not valid JSON: {e}") from e
        return data

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.load() or {}
            yield data
            tmp = self.path.with_name(f".state.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, self.path)


class ProcessTable:
    """The processes of lab ``prefix``: those this object started (``children``, reaped here)
    and those recorded in ``state`` by any process."""

    def __init__(self, prefix: str, state: StateFile) -> None:
        self.prefix = prefix
        self.state = state
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        name: str,
        log_path: Path | None = None,
    ) -> int:
        """Start a background process in ``ns``; its PID is recorded so that ``down`` kills it.

        It runs in a session of its own (its PID is its process group), so a terminal's Ctrl-C
        does not reach it and ``stop`` can clean up children it leaves behind.
        """
        cmd = ["ip", "netns", "exec", ns, *argv]
        log.info("[#] %s%s &", shlex.join(cmd), f" >{log_path} 2>&1" if log_path else "")
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab") if log_path else None  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out if out else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if out:
                out.close()
        self.children[proc.pid] = proc
        stat = proc_stat(proc.pid)
        with self.state.edit() as st:
            st.setdefault("pids", []).append(
                {
                    "name": name,
                    "pid": proc.pid,
                    "start": stat[1] if stat else None,
                    "ns": ns,
                    "argv": list(argv),
                    "log": str(log_path) if log_path else None,
                }
            )
        return proc.pid

    def pids(self) -> dict[str, int]:
        """Name to PID of every process recorded in the state file."""
        st = self.state.load() or {}
        return {p["name"]: p["pid"] for p in st.get("pids", [])}

    def record(self, pid: int) -> dict[str, Any] | None:
        st = self.state.load() or {}
        for p in st.get("pids", []):
            if p["pid"] == pid:
                rec: dict[str, Any] = p
                return rec
        return None

    def alive(self, pid: int, start: int | None = None) -> bool:
        child = self.children.get(pid)
        if child is not None:
            return child.poll() is None
        stat = proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return start is None or stat[1] == start

    def exit_code(self, pid: int) -> int | None:
        child = self.children.get(pid)
        return child.poll() if child is not None else None

    def stop(self, pid: int, timeout: float = TERM_TIMEOUT) -> None:
        """Stop a process this lab started (SIGTERM, then SIGKILL to its process group)."""
        rec = self.record(pid)
        start = rec.get("start") if rec else None
        if pid in self.children or rec is not None:
            self.kill(pid, start, timeout)
        else:
            raise LabError(f"pid {pid} was not started by lab {self.prefix}")
        with self.state.edit() as st:
            st["pids"] = [p for p in st.get("pids", []) if p["pid"] != pid]

    def kill(self, pid: int, start: int | None, timeout: float) -> None:
        if self.alive(pid, start):
            log.info("[#] kill -TERM %d", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive(pid, start) and time.monotonic() < deadline:
                time.sleep(0.02)
        # the process group is the recorded PID (start_new_session): remove what is left of it,
        # the process itself if it ignored SIGTERM, and children it did not stop
        if self.alive(pid, start) or self.group_exists(pid):
            log.info("[#] kill -KILL -%d", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2.0
            while self.alive(pid, start) and time.monotonic() < deadline:
                time.sleep(0.02)
        child = self.children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1.0)

    @staticmethod
    def group_exists(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        # only zombies left (our unreaped child) count as gone
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            rest = text[text.rindex(")") + 2 :].split()
            if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
                return True
        return False

