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
        with pytest.raises(UnknownWorker, match="no worker or stream nope"):
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
    assert pool.add_stream("a-b", 3)
    pool.supervise()
    assert pool.workers["q3"].proc is None
    argv = pool.workers["q3"].argv
    assert argv[1:3] == ["-m", "workers.stream"] and argv[-2:] == ["--keep-warm-ms", "7"]
    assert argv[argv.index("--runtime-dir") + 1] == str(tmp_path)
    sized = WorkerPool(WorkerOptions(tmp_path, "info", "", receive_buffer_kb=256),
                       keep_up=lambda: False)
    sized.add_stream("a-b", 3)
    assert sized.workers["q3"].argv[-2:] == ["--receive-buffer-kb", "256"]
    from workers.common import parse_args
    assert parse_args("stream", sized.workers["q3"].argv[3:]).receive_buffer_kb == 256
    managed = WorkerPool(WorkerOptions(tmp_path, "info", "", queue_target_ms=2.5,
                                       queue_interval_ms=50), keep_up=lambda: False)
    managed.add_stream("a-b", 3)
    args = parse_args("stream", managed.workers["q3"].argv[3:])
    assert (args.queue_target_ms, args.queue_interval_ms) == (2.5, 50.0)
    assert parse_args("stream", sized.workers["q3"].argv[3:]).queue_target_ms == 0  # off


def test_streams_of_one_queue_share_a_worker_and_report_per_stream(tmp_path: Path) -> None:
    """A shard: one worker per queue, named after it; a stream's name stands for its worker in
    control commands; status has a row per stream, with the worker's own counters once."""
    pool = WorkerPool(WorkerOptions(tmp_path, "info", ""), keep_up=lambda: False)
    assert pool.add_stream("a-b", 10) and not pool.add_stream("a-c", 10)
    assert pool.add_stream("b-c", 11)
    assert set(pool.workers) == {"q10", "q11"} and pool.workers["q10"].streams == ["a-b", "a-c"]
    reply = pool.control("stop", ["a-c"])
    assert set(reply["workers"]) == {"a-b", "a-c"}  # the whole shard, keyed by its streams
    stats = {"q10": {"pid": 5, "drop_not_stream": 1,
                     "streams": {"a-b": {"tunnelled_packets": 4, "drop_replay": 2},
                                 "a-c": {"tunnelled_packets": 6}}},
             "q11": {"pid": 6, "streams": {"b-c": {"extracted_packets": 9}}}}
    rows = {r["name"]: r for r in pool.status(stats, 1)}
    assert set(rows) == {"a-b", "a-c", "b-c"}
    assert rows["a-b"]["worker"] == rows["a-c"]["worker"] == "q10"
    assert rows["a-b"]["drops"] == {"not_stream": 1, "replay": 2} and rows["a-c"]["drops"] == {}
    assert (rows["a-b"]["packets_out"], rows["a-c"]["packets_out"], rows["b-c"]["packets_in"]) == (4, 6, 9)
    pool.remove_stream("a-b")
    assert pool.workers["q10"].streams == ["a-c"]
    pool.remove_stream("a-c")
    assert set(pool.workers) == {"q11"}
