"""The runtime directory (mt6d_mp.runtime): one lock holder, the pid file as both sides read it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mt6d_mp import runtime
from mt6d_mp.errors import Mt6dError


def test_a_second_holder_is_refused_and_release_frees_the_directory(tmp_path: Path) -> None:
    d = tmp_path / "run"
    first = runtime.RuntimeDir(d)
    first.acquire()
    assert first.held and oct(d.stat().st_mode & 0o777) == "0o700"
    assert runtime.read_pid(d) == os.getpid()
    with pytest.raises(Mt6dError, match="already running"):
        runtime.RuntimeDir(d).acquire()  # flock is per open file: refused in this process too
    first.save_state(tmp_path / "mt6d.toml", [("eth1", "fd00::1")])
    assert json.loads((d / runtime.STATE_FILE).read_text())["neighbours"] == [["eth1", "fd00::1"]]
    first.release(keep_state=True)
    assert not first.held and not (d / runtime.PID_FILE).exists()
    assert runtime.RuntimeDir(d).load_state()["neighbours"] == [("eth1", "fd00::1")]
    second = runtime.RuntimeDir(d)
    second.acquire()
    second.release(keep_state=False)
    assert not (d / runtime.STATE_FILE).exists()


def test_pid_file_readers(tmp_path: Path) -> None:
    assert runtime.read_pid(tmp_path) is None and runtime.stale_pid(tmp_path) is None
    (tmp_path / runtime.PID_FILE).write_text("999999999\n")
    assert runtime.stale_pid(tmp_path) == 999999999
    assert runtime.running_supervisor(tmp_path) is None
    (tmp_path / runtime.PID_FILE).write_text(f"{os.getpid()}\n")
    assert runtime.stale_pid(tmp_path) is None
    assert runtime.running_supervisor(tmp_path) is None  # this process is not another supervisor
    (tmp_path / runtime.PID_FILE).write_text("garbage\n")
    assert runtime.read_pid(tmp_path) is None


@pytest.mark.parametrize(("text", "neighbours"), [
    ("[1, 2]", None),  # valid JSON, not an object
    ('{"neighbours": 5}', []),
    ('{"neighbours": [["a"], ["int0", "fd00::1"], [1, 2], "x"]}', [("int0", "fd00::1")]),
    ("{not json", None),
])
def test_a_damaged_state_file_is_read_as_far_as_it_makes_sense(
    tmp_path: Path, text: str, neighbours: list[tuple[str, str]] | None,
) -> None:
    """A crash or a hand can leave anything in state.json: the next start must not crash on it."""
    d = tmp_path / "run"
    d.mkdir()
    (d / runtime.STATE_FILE).write_text(text)
    state = runtime.RuntimeDir(d).load_state()
    assert state.get("neighbours") == neighbours
