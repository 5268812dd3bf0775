"""The worker pool (mt6d_mp.pool) driving real processes through the lifecycle state machine."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from mt6d_mp.core.lifecycle import State
from mt6d_mp.pool import UnknownWorker, WorkerOptions, WorkerPool

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_spawn_ready_control_and_stop(tmp_path: Path) -> None:
    pool = WorkerPool(WorkerOptions(tmp_path, "info", ""), keep_up=lambda: True)
    w = pool.add("w1", 5, SLEEPER)
    try:
        pool.supervise()
        assert w.lc.state is State.STARTING and w.pid is not None
        pool.ready.add("w1")
        pool.supervise()
        assert w.lc.state is State.RUNNING and pool.all_running()
        with pytest.raises(UnknownWorker, match="no worker nope"):
            pool.control("stop", ["nope"])
        reply = pool.control("stop", ["all"])
        assert reply == {"workers": {"w1": {"state": "stopping", "pid": w.pid}}}
        deadline = time.monotonic() + 5
        while w.proc is not None and time.monotonic() < deadline:
            pool.supervise()
            time.sleep(0.02)
        assert w.lc.state is State.STOPPED and "w1" not in pool.ready
        row, = pool.status({"w1": {"pid": 1, "drop_replay": 2, "tunnelled_packets": 3}}, 0)
        assert row["drops"] == {"replay": 2} and row["packets_out"] == 3 and "pid" not in row["counters"]
    finally:
        pool.stop_all()
    assert w.proc is None


def test_no_spawn_while_stopping_and_argv(tmp_path: Path) -> None:
    pool = WorkerPool(WorkerOptions(tmp_path, "debug", "/tmp/x.log", keep_warm_ms=7),
                      keep_up=lambda: False)
    pool.add_stream("a-b", 3)
    pool.supervise()
    assert pool.workers["a-b"].proc is None
    argv = pool.workers["a-b"].argv
    assert argv[1:3] == ["-m", "workers.stream"] and argv[-2:] == ["--keep-warm-ms", "7"]
    assert argv[argv.index("--runtime-dir") + 1] == str(tmp_path)
