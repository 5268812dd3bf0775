"""The spawner (mt6d_mp/io/spawner.py) with real processes: forked workers become the caller's
children, run the module's ``run(argv)``, report exit codes, and a dead spawner is reported.

Each case runs in a fresh interpreter (the spawner must be forked while the process has one
thread, and pytest's process may have more) with ``tests.spawn_target`` as the worker module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def drive(body: str, tmp: Path) -> dict[str, Any]:
    """Run ``body`` after starting a spawner as ``sp``; it leaves its findings in ``result``."""
    script = textwrap.dedent("""
        import json, os, signal, sys, time
        sys.path.insert(0, {root!r})
        from mt6d_mp.io.spawner import Spawner, SpawnerError
        sp = Spawner.start(["tests.spawn_target"])
        py = sys.executable
        tmp = {tmp!r}
        result = {{"me": os.getpid(), "spawner": sp.pid}}
    """).format(root=str(ROOT), tmp=str(tmp)) + textwrap.dedent(body) + textwrap.dedent("""
        sp.close()
        print(json.dumps(result))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def test_a_forked_worker_is_our_child_runs_the_module_and_reports_its_exit_code(tmp_path: Path) -> None:
    res = drive("""
        child = sp.spawn([py, "-m", "tests.spawn_target", "--name", "alpha", "--out", tmp + "/a.json"], tmp)
        result["code"] = child.wait(20)
        result["pid"] = child.pid
        result["seen"] = json.load(open(tmp + "/a.json"))
        c2 = sp.spawn([py, "-m", "tests.spawn_target", "--out", tmp + "/b.json", "--exit", "3"], tmp)
        result["code2"] = c2.wait(20)
    """, tmp_path)
    seen = res["seen"]
    assert res["code"] == 7 and res["code2"] == 3
    assert seen["pid"] == res["pid"] != res["spawner"]
    assert seen["ppid"] == res["me"], "handed over to the caller before running"
    assert seen["cwd"] == str(tmp_path) and seen["argv0"] == "tests.spawn_target"
    assert seen["comm"] == "mt6d-alpha"
    assert seen["cmdline"][:5] == ["mt6d-worker", "tests.spawn_target", "alpha", "--name", "alpha"]
    assert seen["sigterm_default"] and seen["stdin"] == "/dev/null"


def test_terminate_and_a_signal_exit_code_as_popen_reports_it(tmp_path: Path) -> None:
    res = drive("""
        child = sp.spawn([py, "-m", "tests.spawn_target", "--out", tmp + "/a.json", "--sleep", "30"], tmp)
        while not os.path.exists(tmp + "/a.json"):
            time.sleep(0.01)
        result["running"] = child.poll()
        child.terminate()
        result["code"] = child.wait(20)
        child.kill()  # already reaped: no signal to a pid that may be reused
    """, tmp_path)
    assert res["running"] is None
    assert res["code"] == -15


def test_bad_requests_are_refused_and_the_spawner_keeps_serving(tmp_path: Path) -> None:
    res = drive("""
        errors = []
        for argv in (["python", "script.py"], [py, "-m", "no.such.module_x", "--out", tmp + "/x"]):
            try:
                c = sp.spawn(argv, tmp)
                errors.append(("spawned", c.wait(20)))
            except SpawnerError as e:
                errors.append(("refused", str(e)))
        result["errors"] = errors
        c = sp.spawn([py, "-m", "tests.spawn_target", "--out", tmp + "/a.json"], tmp)
        result["code"] = c.wait(20)
    """, tmp_path)
    (kind1, msg1), (kind2, code2) = res["errors"]
    assert kind1 == "refused" and "python -m MODULE" in msg1
    assert kind2 == "spawned" and code2 == 1  # the import fails in the worker: exit 1, traceback
    assert res["code"] == 7


def test_a_dead_spawner_is_reported_not_waited_for(tmp_path: Path) -> None:
    res = drive("""
        os.kill(sp.pid, signal.SIGKILL)
        os.waitpid(sp.pid, 0)
        try:
            sp.spawn([py, "-m", "tests.spawn_target", "--out", tmp + "/a.json"], tmp)
            result["error"] = None
        except SpawnerError as e:
            result["error"] = str(e)
    """, tmp_path)
    assert res["error"] and "spawner" in res["error"]


def test_workers_outlive_the_spawner_and_stay_our_children(tmp_path: Path) -> None:
    res = drive("""
        child = sp.spawn([py, "-m", "tests.spawn_target", "--out", tmp + "/a.json", "--sleep", "1"], tmp)
        os.kill(sp.pid, signal.SIGKILL)
        os.waitpid(sp.pid, 0)
        result["code"] = child.wait(20)
    """, tmp_path)
    assert res["code"] == 7
