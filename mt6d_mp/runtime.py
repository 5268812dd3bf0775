"""The runtime directory: the files through which a supervisor, mt6dctl and init scripts meet.

Flow: the supervisor makes the directory root-only and takes ``supervisor.lock`` (an exclusive
``flock``, held until the process ends: of two starts exactly one runs), writes
``supervisor.pid``, keeps ``state.json`` (what carries no owner tag: neighbour entries) for the
next start's crash recovery, and writes ``ready`` once every worker has bound its queue. The bus
binds ``control.sock`` and ``updates.sock`` there (:mod:`mt6d_mp.io.bus`). mt6dctl finds the
directory from the configuration, and reads the pid file to tell "not running" from "killed".
Teardown removes ``ready``, ``state.json`` (only when everything recorded is gone) and the pid
file, then drops the lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from mt6d_mp.core.config import SCHEMA
from mt6d_mp.errors import Mt6dError

log = logging.getLogger("mt6d.supervisor")

DEFAULT_CONFIG = "/etc/mt6d/mt6d.toml"
DEFAULT_RUNTIME_DIR: str = SCHEMA["runtime"]["dir"].default
PID_FILE = "supervisor.pid"
STATE_FILE = "state.json"
LOCK_FILE = "supervisor.lock"  # flock(2) held by the running supervisor
READY_FILE = "ready"


def read_pid(runtime_dir: Path) -> int | None:
    """The pid written in ``supervisor.pid``, alive or not; None without a readable one."""
    try:
        return int((runtime_dir / PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_supervisor(runtime_dir: Path) -> int | None:
    """The pid of a live supervisor (not this process) that wrote ``supervisor.pid``, if any."""
    pid = read_pid(runtime_dir)
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if pid == os.getpid() or b"supervisor" not in cmdline:
        return None  # a recycled pid: not a supervisor
    return pid


def stale_pid(runtime_dir: Path) -> int | None:
    """The pid in ``supervisor.pid`` if no such process exists (a killed supervisor's)."""
    pid = read_pid(runtime_dir)
    return None if pid is None or Path(f"/proc/{pid}").exists() else pid


def control_socket(runtime_dir: Path) -> Path:
    from mt6d_mp.io.bus import CONTROL  # zmq and msgpack: loaded only when the socket is used

    return runtime_dir / CONTROL


class RuntimeDir:
    """The supervisor's hold on its runtime directory (one per process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_fd: int | None = None  # the directory's lock, once we hold it

    @property
    def held(self) -> bool:
        return self.lock_fd is not None

    def acquire(self) -> None:
        """Create the directory root-only, take its lock (or refuse), write the pid file."""
        d = self.path
        log.info("action=create_runtime_dir path=%s mode=0700", d)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)  # sockets and state inside; only root may enter
        # One supervisor per runtime directory: its cleanup would be our leftovers, so a second
        # start would tear down a live gateway. An exclusive lock, held until this process ends
        # (the kernel drops it even on SIGKILL), decides atomically between two starts at once.
        fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = None
            for _ in range(20):  # the holder writes its pid just after it takes the lock
                other = running_supervisor(d)
                if other is not None:
                    break
                time.sleep(0.05)
            raise Mt6dError(f"a supervisor is already running with runtime directory {d}"
                            + (f" (pid {other})" if other is not None else "")) from None
        self.lock_fd = fd
        (d / READY_FILE).unlink(missing_ok=True)
        (d / PID_FILE).write_text(f"{os.getpid()}\n")

    def release(self, keep_state: bool) -> None:
        """Remove the pid file (and ``state.json`` unless kept for the next start), drop the lock."""
        if not keep_state:
            # Everything recorded is gone; a failed step keeps the record for the next start.
            (self.path / STATE_FILE).unlink(missing_ok=True)
        (self.path / PID_FILE).unlink(missing_ok=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # the next start may take the directory
            self.lock_fd = None

    def mark_ready(self, ready: bool = True) -> None:
        path = self.path / READY_FILE
        if ready:
            path.write_text(f"{os.getpid()}\n")
        else:
            path.unlink(missing_ok=True)

    def save_state(self, config_path: Path, neighbours: list[tuple[str, str]]) -> None:
        """Record what carries no owner tag (neighbour entries), atomically, for crash recovery."""
        path = self.path / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps({"pid": os.getpid(), "config": str(config_path),
                                   "neighbours": neighbours}, indent=1) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def load_state(self) -> dict[str, Any]:
        """What a run that died without tearing down recorded; {} when there is none.

        The file is ours, but a crash, a full disk or a hand can leave anything in it: whatever
        is not the shape :meth:`save_state` writes is logged and left out, never a crash (the
        start would then fail with the system half cleaned).
        """
        path = self.path / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("event=state_file_unreadable path=%s error=%s", path, e)
            return {}
        if not isinstance(data, dict):
            log.warning("event=state_file_unreadable path=%s error=not a JSON object", path)
            return {}
        listed = data.get("neighbours", [])
        neighbours = [(item[0], item[1]) for item in (listed if isinstance(listed, list) else [])
                      if isinstance(item, list) and len(item) == 2
                      and all(isinstance(x, str) for x in item)]
        if not isinstance(listed, list) or len(neighbours) != len(listed):
            log.warning("event=state_file_entries_ignored path=%s note=not [device, address] pairs",
                        path)
        return {**data, "neighbours": neighbours}
