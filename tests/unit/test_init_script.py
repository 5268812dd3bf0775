"""init/mt6d's process handling, with stand-in supervisor and control commands (no network).

The supervisor the script starts reaches its final image through several execs (sh, ip netns
exec, the venv's python). While a process is inside execve, /proc/PID/cmdline reads empty for a
moment; the script once took that for "not our supervisor", said "failed to start" and left the
supervisor running without a pid file (CI, test_ops). The stand-in here execs itself many times
before it is ready, so that the script's checks land inside those windows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the init script refuses to run unless root")

REPO = Path(__file__).resolve().parents[2]

# Execs itself (through env, another exec) EXECS times, then marks itself ready and waits.
FAKE_SUPERVISOR = """#!/bin/sh
[ "$3" = --check-config ] && exit 0
n=${FAKE_N:-0}
[ "$n" = 0 ] && echo $$ >"$STARTED"
if [ "$n" -lt "$EXECS" ]; then FAKE_N=$((n + 1)) exec env env env env env env env env "$0" "$@"; fi
echo $$ >"$READY"
trap 'rm -f "$READY"; exit 0' TERM
while :; do sleep 0.05; done
"""
FAKE_CTL = """#!/bin/sh
# status: 0 once the stand-in supervisor is ready
test -e "$READY"
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def kill_stand_in(env: dict[str, str]) -> None:
    """This test's own stand-in supervisor, if a failed check left it running."""
    started = Path(env["STARTED"])
    if started.exists():
        pid = int(started.read_text())
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        started.unlink()
    Path(env["READY"]).unlink(missing_ok=True)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    sup = tmp_path / "fake-supervisor"
    ctl = tmp_path / "fake-ctl"
    sup.write_text(FAKE_SUPERVISOR)
    ctl.write_text(FAKE_CTL)
    sup.chmod(0o755)
    ctl.chmod(0o755)
    values = {**os.environ, "MT6D_CONFIG": str(tmp_path / "mt6d.toml"), "MT6D_NETNS": "",
            "MT6D_SUPERVISOR": str(sup), "MT6D_CTL": str(ctl),
            "MT6D_PIDFILE": str(tmp_path / "mt6d.pid"), "MT6D_OUTPUT": str(tmp_path / "out"),
            "MT6D_START_TIMEOUT": "60", "MT6D_STOP_TIMEOUT": "10",
            "READY": str(tmp_path / "ready"), "STARTED": str(tmp_path / "started"), "EXECS": "200"}
    yield values
    kill_stand_in(values)


def init(env: dict[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "init" / "mt6d"), action], env=env, capture_output=True,
                          text=True, timeout=120)


def test_start_waits_through_the_supervisors_execs_and_stop_stops_it(env: dict[str, str]) -> None:
    pidfile = Path(env["MT6D_PIDFILE"])
    for _ in range(5):
        r = init(env, "start")
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        try:
            assert r.returncode == 0 and "started" in r.stdout, r.stdout + r.stderr
            assert pid is not None and Path(env["READY"]).read_text().strip() == str(pid)
            r = init(env, "status")
            assert r.returncode == 0 and f"running (pid {pid})" in r.stdout, r.stdout
            r = init(env, "stop")
            assert r.returncode == 0 and "stopped" in r.stdout, r.stdout + r.stderr
            assert not alive(pid) and not pidfile.exists()
        finally:
            kill_stand_in(env)


def test_a_start_that_never_gets_ready_stops_what_it_started(env: dict[str, str],
                                                             tmp_path: Path) -> None:
    env = {**env, "MT6D_START_TIMEOUT": "1", "EXECS": "0",
           "MT6D_CTL": "false"}  # status never answers
    r = init(env, "start")
    assert r.returncode == 1 and "not ready after 1s" in r.stdout, r.stdout + r.stderr
    assert not Path(env["MT6D_PIDFILE"]).exists()
    deadline = time.monotonic() + 10
    while Path(env["READY"]).exists():  # removed by the stand-in's TERM trap
        assert time.monotonic() < deadline, "the supervisor started by a failed start still runs"
        time.sleep(0.05)


def test_a_supervisor_that_exits_at_once_is_a_failed_start(env: dict[str, str]) -> None:
    sup = Path(env["MT6D_SUPERVISOR"])
    sup.write_text('#!/bin/sh\n[ "$3" = --check-config ] && exit 0\necho "boom" >&2\nexit 1\n')
    r = init(env, "start")
    assert r.returncode == 1 and "failed to start" in r.stdout, r.stdout + r.stderr
    assert not Path(env["MT6D_PIDFILE"]).exists()
    assert "boom" in Path(env["MT6D_OUTPUT"]).read_text()
