"""Operations end to end: teardown, crash recovery, mt6dctl, the init scripts, logs.

One two-stream switched lab whose supervisors the tests start and stop themselves
(``start_supervisors=False``), so that the gateways' firewall, addresses, routes and neighbour
entries can be compared with what they were before any supervisor ran.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp import lab as labmod
from mt6d_mp.core.crypto import derive_direction_key
from mt6d_mp.lab import Lab, LabInfo, NamespaceInfo
from tests.lab.test_mt6d import capture, check_external_capture

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CTL = [sys.executable, "-m", "mt6d_mp.ctl"]
SUPERVISOR = REPO / "supervisor.py"


@pytest.fixture(scope="module")
def oplab() -> Iterator[tuple[Lab, LabInfo]]:
    prefix = "o" + secrets.token_hex(3)
    lab = Lab(prefix, "switched", rotation_time=1.0, streams=2, start_supervisors=False)
    try:
        info = lab.up()
        yield lab, info
    finally:
        lab.down(keep_files=False)
        stray = labmod.namespaces_with_prefix(prefix)
        for ns in stray:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        assert not stray, f"left behind: {stray}"


# --- helpers ------------------------------------------------------------------------------------


def gateways(info: LabInfo) -> tuple[NamespaceInfo, NamespaceInfo]:
    return info.gateway_a, info.gateway_b


def snapshot(lab: Lab, ns: str) -> dict[str, list[str]]:
    """What MT6D may change in a gateway: legacy firewall, addresses, routes, permanent neighbours
    and the pinned ones of the peer's hashed addresses (Netlink.pin_neighbours: protocol 109)."""
    def lines(argv: list[str]) -> list[str]:
        return sorted(line.strip() for line in lab.exec(ns, argv).stdout.splitlines() if line.strip())

    return {
        "firewall": lines(["ip6tables-legacy", "-S"]),
        "addresses": lines(["ip", "-6", "-o", "addr", "show"]),
        "routes": lines(["ip", "-6", "route", "show", "table", "all"]),
        "neighbours": lines(["ip", "-6", "neigh", "show", "nud", "permanent"]),
        "pinned": [line.split()[0] for line in lines(["ip", "-6", "-d", "neigh", "show", "nud", "all"])
                   if "proto 109" in line],
    }


def start_supervisor(lab: Lab, gw: NamespaceInfo, timeout: float = 60.0) -> int:
    assert gw.config and gw.runtime_dir and gw.supervisor_out
    ready = Path(gw.runtime_dir) / "ready"
    ready.unlink(missing_ok=True)
    pid = lab.spawn(gw.name, [sys.executable, str(SUPERVISOR), "--config", gw.config],
                    name=f"supervisor-{gw.name}", log_path=Path(gw.supervisor_out))
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert lab.alive(pid), (f"supervisor in {gw.name} exited; see {gw.supervisor_out}"
                                 + labmod.log_tail(gw.supervisor_out))
        assert time.monotonic() < deadline, (f"supervisor in {gw.name} not ready"
                                             + labmod.log_tail(gw.supervisor_out))
        time.sleep(0.05)
    return pid


def start_pair(lab: Lab, gws: tuple[NamespaceInfo, ...] | list[NamespaceInfo]) -> list[int]:
    """Start the supervisors of ``gws`` and wait until every stream is keyed on each (the first
    key exchange needs both: nothing is sent before it)."""
    from mt6d_mp.lab.gateway import wait_keyed

    pids = [start_supervisor(lab, gw) for gw in gws]
    deadline = time.monotonic() + 30
    for gw, pid in zip(gws, pids, strict=True):
        wait_keyed(lab.procs, gw, pid, deadline, 30)
    return pids


def ctl(gw: NamespaceInfo, *args: str, json_out: bool = False) -> tuple[int, Any]:
    assert gw.config
    argv = [*CTL, "-c", gw.config, *args, *(["--json"] if json_out else [])]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    return r.returncode, (json.loads(r.stdout) if json_out and r.stdout.strip()
                          else r.stdout + r.stderr)


def status(gw: NamespaceInfo) -> dict[str, Any]:
    code, st = ctl(gw, "status", json_out=True)
    assert code in (0, 150), st
    assert isinstance(st, dict)
    return st


def wait_worker(gw: NamespaceInfo, name: str, *, not_pid: int | None = None,
                timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        w = {w["name"]: w for w in status(gw)["workers"]}.get(name)
        if w is not None and w["state"] == "running" and w["pid"] != not_pid:
            return w
        assert time.monotonic() < deadline, f"worker {name} not running: {w}"
        time.sleep(0.1)


def ping_ok(lab: Lab, ns: str, address: str, count: int = 5) -> str:
    r = lab.exec(ns, ["ping", "-6", "-n", "-c", str(count), "-i", "0.2", "-W", "2", address],
                 check=False, timeout=120)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
    return r.stdout


def ping_eventually(lab: Lab, ns: str, address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while lab.exec(ns, ["ping", "-6", "-n", "-c", "1", "-W", "1", address],
                   check=False).returncode != 0:
        assert time.monotonic() < deadline, f"no ping reply from {address}"


def first_stream_carries_pings(lab: Lab, info: LabInfo) -> None:
    """Once a just-started gateway answers, five pings at 0.2 s all come back."""
    s = info.streams[0]
    ping_eventually(lab, s.host_a_ns, s.host_b_address)
    ping_ok(lab, s.host_a_ns, s.host_b_address)


def stop_all(lab: Lab, pids: list[int]) -> None:
    for pid in pids:
        lab.stop(pid, timeout=30)


def worker_pids(gw: NamespaceInfo) -> list[int]:
    return [w["pid"] for w in status(gw)["workers"] if w["pid"]]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def received(ping_output: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", ping_output)
    assert m, ping_output
    return int(m.group(1)), int(m.group(2))


# --- teardown and crash recovery ----------------------------------------------------------------


def test_sigterm_leaves_every_gateway_as_before(oplab: tuple[Lab, LabInfo], tmp_path: Path) -> None:
    lab, info = oplab
    before = {gw.name: snapshot(lab, gw.name) for gw in gateways(info)}
    pids = start_pair(lab, gateways(info))
    s = info.streams[0]
    try:
        ping_ok(lab, s.host_a_ns, s.host_b_address)
        during = snapshot(lab, info.ga)
        assert during["firewall"] != before[info.ga]["firewall"]
        assert during["neighbours"] != before[info.ga]["neighbours"]
    finally:
        stop_all(lab, pids)  # SIGTERM
    for gw in gateways(info):
        assert snapshot(lab, gw.name) == before[gw.name], gw.name
        assert not (Path(gw.runtime_dir or "") / "state.json").exists()
    # Stopped, the gateway routes nothing: host A still has host B's address in its neighbour
    # cache (the gateway's MAC), yet neither the packet nor a solicitation for host B's address
    # may appear outside (the lab's gateways run without IPv6 forwarding, as the README says).
    with capture(lab, info.capture_ns, info.capture_if, tmp_path / "stopped.pcap") as pcap:
        r = lab.exec(s.host_a_ns, ["ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "1",
                                   s.host_b_address], check=False)
    assert r.returncode != 0, r.stdout
    frames = pcap.read_bytes()
    for true in (s.host_a_address, s.host_b_address):
        assert ipaddress.IPv6Address(true).packed not in frames, f"{true} seen outside"


def test_sigkill_supervisor_workers_exit_and_next_start_cleans_up(
    oplab: tuple[Lab, LabInfo]
) -> None:
    lab, info = oplab
    ga, gb = gateways(info)
    before = snapshot(lab, ga.name)
    pid_b = start_supervisor(lab, gb)
    pid_a = start_supervisor(lab, ga)
    pids = [pid_b]
    try:
        workers = worker_pids(ga)
        assert len(workers) == 3
        os.kill(pid_a, signal.SIGKILL)
        deadline = time.monotonic() + 30  # PR_SET_PDEATHSIG: SIGTERM to every worker
        while any(alive(p) for p in workers):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.05)
        lab.stop(pid_a)  # reap it; it is already dead
        left = snapshot(lab, ga.name)
        assert left["firewall"] != before["firewall"], "a killed supervisor leaves its rules"
        assert left["neighbours"] != before["neighbours"]
        assert left["pinned"] and not before["pinned"], "the peer's hashed addresses are pinned"
        state = json.loads((Path(ga.runtime_dir or "") / "state.json").read_text())
        assert state["neighbours"], state
        code, out = ctl(ga, "status")
        assert code == 1, out  # LSB: dead, pid file exists
        code, out = ctl(ga, "routes")
        assert code == 7 and "not running" in out, out
        pids.append(start_supervisor(lab, ga))
        log_text = Path(ga.supervisor_out or "").read_text()
        assert "event=leftover_removed what=neighbour " in log_text
        assert "event=leftover_removed what=neighbours " in log_text  # the pinned ones
        assert "event=leftover_removed what=firewall" in log_text
        first_stream_carries_pings(lab, info)
    finally:
        stop_all(lab, pids)
    assert snapshot(lab, ga.name) == before


def test_two_starts_at_once_one_runs_and_the_refused_one_touches_nothing(
    oplab: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    """Of two supervisors started together in one gateway exactly one runs (the runtime
    directory's lock decides); the other, and a third started later, exit 1 without removing
    anything of the running one's (its ready file included: status and init scripts read it)."""
    lab, info = oplab
    ga, gb = gateways(info)
    before = snapshot(lab, ga.name)
    ready = Path(ga.runtime_dir or "") / "ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, str(SUPERVISOR), "--config", ga.config or ""]
    logs = [tmp_path / f"start{i}.out" for i in range(3)]
    pids = [lab.spawn(ga.name, argv, name=f"race-{i}", log_path=logs[i]) for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        while sum(lab.alive(p) for p in pids) > 1 or not ready.exists():
            assert any(lab.alive(p) for p in pids), [x.read_text() for x in logs[:2]]
            assert time.monotonic() < deadline, [x.read_text() for x in logs[:2]]
            time.sleep(0.05)
        (winner,) = [p for p in pids if lab.alive(p)]
        (loser,) = [i for i, p in enumerate(pids) if p != winner]
        assert lab.exit_code(pids[loser]) == 1
        assert f"already running with runtime directory {ga.runtime_dir} (pid {winner})" in (
            logs[loser].read_text())
        # A third start while it runs: refused the same way, the ready file left in place.
        third = lab.spawn(ga.name, argv, name="race-2", log_path=logs[2])
        pids.append(third)
        deadline = time.monotonic() + 60
        while lab.alive(third):
            assert time.monotonic() < deadline, logs[2].read_text()
            time.sleep(0.05)
        assert lab.exit_code(third) == 1 and "already running" in logs[2].read_text()
        assert ready.exists() and status(ga)["pid"] == winner
        pids.append(start_supervisor(lab, gb))
        first_stream_carries_pings(lab, info)
    finally:
        stop_all(lab, pids)
    assert snapshot(lab, ga.name) == before


def test_sigkill_stream_worker_under_traffic(oplab: tuple[Lab, LabInfo], tmp_path: Path) -> None:
    lab, info = oplab
    ga, gb = gateways(info)
    pids = start_pair(lab, (gb, ga))
    try:
        s = info.streams[0]
        old = wait_worker(ga, s.name)["pid"]
        with capture(lab, info.capture_ns, info.capture_if, tmp_path / "kill.pcap") as pcap:
            ping = subprocess.Popen(
                ["ip", "netns", "exec", s.host_a_ns, "ping", "-6", "-n", "-c", "200", "-i", "0.05",
                 "-W", "1", s.host_b_address], stdout=subprocess.PIPE, text=True)
            time.sleep(2)
            os.kill(old, signal.SIGKILL)
            new = wait_worker(ga, s.name, not_pid=old)
            out = ping.communicate(timeout=120)[0]
        sent, got = received(out)
        print(f"\nSIGKILL of worker {s.name} under ping -i 0.05: {sent - got} of {sent} echo "
              f"requests lost; restarted as pid {new['pid']} ({new['reason']})")
        assert got > 0
        summary = check_external_capture(info, pcap)  # no true address, no host MAC on the wire
        assert summary["tunnel"] > 0
        ping_ok(lab, s.host_a_ns, s.host_b_address)  # the stream resumed
        st = {w["name"]: w for w in status(ga)["workers"]}[s.name]
        assert st["spawns"] >= 2 and st["exits"][-1] == -signal.SIGKILL
    finally:
        stop_all(lab, pids)


# --- mt6dctl ------------------------------------------------------------------------------------


def test_mt6dctl_commands(oplab: tuple[Lab, LabInfo]) -> None:
    lab, info = oplab
    ga, gb = gateways(info)
    code, out = ctl(ga, "status")
    assert code == 3 and "not running" in out, out
    code, out = ctl(ga, "reload")
    assert code == 7, out
    pids = start_pair(lab, (gb, ga))
    try:
        s1, s2 = info.streams
        ping_ok(lab, s1.host_a_ns, s1.host_b_address)
        time.sleep(1.5)  # counters arrive every second
        code, st = ctl(ga, "status", json_out=True)
        assert code == 0, st
        assert {w["name"] for w in st["workers"]} == {s1.name, s2.name, "icmp"}
        w1 = next(w for w in st["workers"] if w["name"] == s1.name)
        assert w1["state"] == "running" and w1["pid"] and w1["queue"] == s1.queue
        assert w1["packets_out"] >= 5 and w1["packets_in"] >= 5 and isinstance(w1["drops"], dict)
        assert w1["kernel_queue"] is not None and w1["uptime"] > 0
        assert all(s["active"] and s["next_rotation_in"] <= 1.0 for s in st["streams"])
        code, text = ctl(ga, "status")
        assert code == 0 and s1.name in text and "running" in text, text
        # The live view, in a terminal (tmux), while a ping runs: rates, route and key per stream.
        session = f"mt6d-top-{info.prefix}"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "30",
                        shlex.join([*CTL, "-c", ga.config or "", "top", "--interval", "2"])],
                       check=True, cwd=REPO)
        try:
            pinger = lab.spawn(s1.host_a_ns, ["ping", "-6", "-n", "-i", "0.1", s1.host_b_address],
                               name="top-ping")
            time.sleep(5)  # two frames, each over a worker's counter report (every second)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True, check=True).stdout
            lab.stop(pinger)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
        row = next((x for x in screen.splitlines() if x.startswith(s1.name + " ")), "")
        assert "PKT/s OUT" in screen and "running" in row and " phase " in row, screen
        assert row.split()[2] != "0" and " p" in row, row  # packets per second out, route

        code, routes = ctl(ga, "routes", json_out=True)
        assert code == 0
        states = [r["state"] for r in routes["streams"][0]["routes"]]
        assert states.count("active") == 1 and "accepted" in states
        code, rh = ctl(ga, "rehash", json_out=True)
        assert code == 0 and rh["firewall_diff"] == [] and rh["published"] > 0, rh

        old = wait_worker(ga, s2.name)["pid"]
        code, out = ctl(ga, "stop", s2.name)
        assert code == 0 and "stopped" in out, out
        code, st = ctl(ga, "status", json_out=True)
        assert code == 150, st  # degraded
        code, out = ctl(ga, "start", s2.name)
        assert code == 0 and "running" in out, out
        code, res = ctl(ga, "restart", "all", json_out=True)
        assert code == 0 and all(w["state"] == "running" for w in res["workers"].values()), res
        assert res["workers"][s2.name]["pid"] != old
        code, out = ctl(ga, "stop", "nosuchworker")
        assert code == 1 and "no worker or stream nosuchworker" in out, out
        code, out = ctl(ga, "bogus")
        assert code == 2
        ping_ok(lab, s2.host_a_ns, s2.host_b_address)
    finally:
        stop_all(lab, pids)


def test_reload_removes_and_adds_a_stream_while_another_keeps_its_traffic(
    oplab: tuple[Lab, LabInfo]
) -> None:
    lab, info = oplab
    ga, gb = gateways(info)
    s1, s2 = info.streams
    profiles = {gw.name: Path(gw.dir or "") / "profiles" for gw in (ga, gb)}
    original = {n: p.read_text() for n, p in profiles.items()}
    main_a = Path(ga.config or "")
    main_text = main_a.read_text()
    pids = start_pair(lab, (gb, ga))
    try:
        ping_ok(lab, s2.host_a_ns, s2.host_b_address)
        keep = subprocess.Popen(["ip", "netns", "exec", s1.host_a_ns, "ping", "-6", "-n", "-c", "60",
                                 "-i", "0.1", "-W", "2", s1.host_b_address],
                                stdout=subprocess.PIPE, text=True)
        w1 = wait_worker(ga, s1.name)["pid"]
        for gw in (ga, gb):  # remove stream 2's line on both sides
            p = profiles[gw.name]
            p.write_text("".join(line for line in original[gw.name].splitlines(keepends=True)
                                 if f" {s2.queue} @" not in line))
            code, res = ctl(gw, "reload", json_out=True)
            assert code == 0 and len(res["removed"]) == 1 and res["added"] == [], res
        names = {w["name"] for w in status(ga)["workers"]}
        assert s2.name not in names and s1.name in names
        assert s2.name not in " ".join(snapshot(lab, ga.name)["firewall"])
        r = lab.exec(s2.host_a_ns, ["ping", "-6", "-n", "-c", "2", "-W", "1", s2.host_b_address],
                     check=False)
        assert r.returncode != 0, "a removed stream carries no traffic"
        for gw in (ga, gb):  # and back
            profiles[gw.name].write_text(original[gw.name])
            code, res = ctl(gw, "reload", json_out=True)
            assert code == 0 and len(res["added"]) == 1 and res["removed"] == [], res
        wait_worker(ga, s2.name)
        ping_eventually(lab, s2.host_a_ns, s2.host_b_address)
        ping_ok(lab, s2.host_a_ns, s2.host_b_address)
        out = keep.communicate(timeout=120)[0]
        sent, got = received(out)
        assert got == sent, f"stream 1 lost packets during the reloads: {out}"
        assert wait_worker(ga, s1.name)["pid"] == w1, "stream 1's worker was not touched"

        # An invalid configuration is refused (6) and the running one kept.
        profiles[ga.name].write_text(original[ga.name] + "host-a nosuchhost 9 @keys/x.key\n")
        code, out = ctl(ga, "reload")
        assert code == 6 and "nosuchhost" in out, out
        profiles[ga.name].write_text(original[ga.name])
        # A change to anything but streams needs a restart (1); nothing is applied.
        main_a.write_text(main_text.replace("route_lifetime = 1.0", "route_lifetime = 2.0"))
        code, out = ctl(ga, "reload")
        assert code == 1 and "route_lifetime" in out, out
        main_a.write_text(main_text)
        # SIGHUP is a reload too.
        profiles[ga.name].write_text("".join(
            line for line in original[ga.name].splitlines(keepends=True)
            if f" {s2.queue} @" not in line))
        sup_a = status(ga)["pid"]
        os.kill(sup_a, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while s2.name in {w["name"] for w in status(ga)["workers"]}:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        ping_ok(lab, s1.host_a_ns, s1.host_b_address)
    finally:
        for name, p in profiles.items():
            p.write_text(original[name])
        main_a.write_text(main_text)
        stop_all(lab, pids)


def test_doctor_in_a_gateway(oplab: tuple[Lab, LabInfo]) -> None:
    lab, info = oplab
    ga = info.gateway_a
    r = lab.exec(ga.name, [*CTL, "-c", ga.config or "", "doctor", "--json"], check=False)
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 0, r.stdout
    for name in ("root", "config", "ip6tables", "nfqueue", "interface internal",
                 "interface external", "runtime dir"):
        assert checks[name]["result"] == "ok", checks[name]
    assert checks["clock"]["result"] in ("ok", "WARN")
    assert checks["forwarding"]["result"] == "ok", checks["forwarding"]  # the lab turns it off
    # Outside the gateway namespace the interfaces are missing: a failed check, exit 1.
    r = subprocess.run([*CTL, "-c", ga.config or "", "doctor"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 1 and "FAIL interface internal" in r.stdout, r.stdout


# --- init scripts -------------------------------------------------------------------------------


def test_sysv_init_script(oplab: tuple[Lab, LabInfo], tmp_path: Path) -> None:
    lab, info = oplab
    ga = info.gateway_a
    before = snapshot(lab, ga.name)
    env = {**os.environ, "MT6D_CONFIG": ga.config or "", "MT6D_NETNS": ga.name,
           "MT6D_SUPERVISOR": str(VENV_BIN / "mt6d-supervisor"), "MT6D_CTL": " ".join(CTL),
           "MT6D_PIDFILE": str(tmp_path / "mt6d.pid"), "MT6D_OUTPUT": str(tmp_path / "mt6d.out"),
           "MT6D_START_TIMEOUT": "60"}

    def init(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "init" / "mt6d"), action], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=180)

    assert init("status").returncode == 3
    pid = None
    try:
        r = init("start")
        assert r.returncode == 0, r.stdout + r.stderr + (tmp_path / "mt6d.out").read_text()
        pid = int((tmp_path / "mt6d.pid").read_text())
        assert b"supervisor" in Path(f"/proc/{pid}/cmdline").read_bytes()
        r = init("status")
        assert r.returncode == 0 and "running" in r.stdout, r.stdout
        r = init("reload")
        assert r.returncode == 0 and "reloaded" in r.stdout, r.stdout + r.stderr
        r = init("force-reload")
        assert r.returncode == 0, r.stdout + r.stderr
        r = init("stop")
        assert r.returncode == 0, r.stdout + r.stderr
        assert not alive(pid)
        r = init("status")
        assert r.returncode == 3, r.stdout
    finally:
        if pid is not None and alive(pid):  # started by this test, through the script
            os.kill(pid, signal.SIGKILL)
    assert snapshot(lab, ga.name) == before
    bad = {**env, "MT6D_CONFIG": str(tmp_path / "missing.toml")}
    r = subprocess.run([str(REPO / "init" / "mt6d"), "start"], env=bad, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 6, r.stdout + r.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = (REPO / "init" / "mt6d.service").read_text().replace("/opt/mt6d/bin/", f"{VENV_BIN}/")
    path = tmp_path / "mt6d.service"
    path.write_text(unit)
    r = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    for line in ("ExecStartPre=", "--check-config", "ExecReload=", "mt6dctl", "reload",
                 "Restart=on-failure", "CAP_NET_ADMIN CAP_NET_RAW", "RuntimeDirectory=mt6d"):
        assert line in unit


# --- logs ---------------------------------------------------------------------------------------


def test_no_key_is_ever_logged(oplab: tuple[Lab, LabInfo]) -> None:
    """Runs after the others in this module: every log they produced is searched."""
    _lab, info = oplab
    needles = []
    for s in info.streams:
        secret = bytes.fromhex((Path(info.gateway_a.dir or "") / s.key_file).read_text().strip())
        # the direction keys too, both directions of every stream
        la = ipaddress.IPv6Address(s.host_a_address).packed
        lb = ipaddress.IPv6Address(s.host_b_address).packed
        needles += [secret, derive_direction_key(secret, la, lb), derive_direction_key(secret, lb, la)]
    texts = []
    for p in Path(info.lab_dir).rglob("*"):
        if p.is_file() and (p.suffix in (".log", ".out") or p.name.endswith(".log")):
            texts.append((p, p.read_text(errors="replace")))
    assert texts, "no logs found"
    assert any("event=worker_state" in t for _, t in texts)
    for p, t in texts:
        low = t.lower()
        for key in needles:
            for form in (key.hex(), key[:16].hex()):
                assert form not in low, f"key material in {p}"
        # key=value lines with the process name and pid on every line written by our logging
        for line in t.splitlines():
            if " proc=" in line:
                assert re.search(r" proc=\S+ pid=\d+ ", line), line


def test_prometheus_metrics_when_configured(oplab: tuple[Lab, LabInfo]) -> None:
    """Off by default; with [metrics] listen set, GET /metrics shows the workers' counters."""
    lab, info = oplab
    gw_a, gw_b = gateways(info)
    assert gw_a.config
    config = Path(gw_a.config)
    original = config.read_text()
    config.write_text(original + '\n[metrics]\nlisten = "[::1]:9469"\n')
    pids = []
    try:
        pids = start_pair(lab, (gw_a, gw_b))
        s = info.streams[0]
        ping_ok(lab, s.host_a_ns, s.host_b_address, count=5)
        deadline = time.monotonic() + 10
        while True:
            r = lab.exec(gw_a.name, ["curl", "-sS", "http://[::1]:9469/metrics"], check=False)
            sample = f'mt6d_worker_packets_total{{worker="{s.name}",direction="out"}} '
            found = [x for x in r.stdout.splitlines() if x.startswith(sample)]
            if found and float(found[0].split()[-1]) >= 5:
                break
            assert time.monotonic() < deadline, r.stdout + r.stderr
            time.sleep(0.3)
        assert "# TYPE mt6d_worker_up gauge" in r.stdout
        assert f'mt6d_worker_up{{worker="{s.name}"}} 1' in r.stdout
        key = Path(gw_a.dir or "", s.key_file).read_text().strip()
        assert key not in r.stdout and s.host_a_address not in r.stdout
        r = lab.exec(gw_a.name, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                 "http://[::1]:9469/other"], check=False)
        assert r.stdout == "404"
        # Off by default: gateway B's config has no [metrics] section and listens nowhere.
        r = lab.exec(gw_b.name, ["curl", "-sS", "http://[::1]:9469/metrics"], check=False)
        assert r.returncode != 0
    finally:
        stop_all(lab, pids)
        config.write_text(original)


def test_flow_label_switch_puts_the_routes_label_on_tunnel_packets(
    oplab: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    from mt6d_mp.core.addressing import flow_label
    from tests.lab.test_mt6d import frames

    lab, info = oplab
    configs = [Path(gw.config or "") for gw in gateways(info)]
    originals = [c.read_text() for c in configs]
    for c, text in zip(configs, originals, strict=True):
        c.write_text(text + "\n[switches]\nflow_label = true\n")
    pids = []
    try:
        pids = start_pair(lab, gateways(info))
        s = info.streams[0]
        with capture(lab, info.capture_ns, info.capture_if, tmp_path / "fl.pcap") as pcap:
            ping_ok(lab, s.host_a_ns, s.host_b_address, count=10)
        tunnel = 0
        for _, frame in frames(pcap):
            ip = frame[14:]
            if frame[12:14] == b"\x86\xdd" and ip[6] in (17, 60) and ip[42] != 0x3E:
                # (0x3E: a key exchange message, sent from the route's UDP socket with the
                # kernel's own label: docs/PROTOCOL.md 5.2)
                label = int.from_bytes(ip[1:4], "big") & 0xFFFFF
                assert label == flow_label(ip[8:24], ip[24:40]) != 0
                tunnel += 1
        assert tunnel >= 20
        check_external_capture(info, pcap)
        # Keep-warm ran across route boundaries and never chose a route (which leases the
        # label on the transmit socket) while its stand-in socket was in place.
        time.sleep(1.5)
        for gw in gateways(info):
            for w in status(gw)["workers"]:
                c = w["counters"]
                if w["name"] != "icmp" and c.get("tunnelled_packets"):  # the pinged stream
                    assert c.get("keep_warm_runs", 0) > 0 and "keep_warm_failed" not in c, c
    finally:
        stop_all(lab, pids)
        for c, text in zip(configs, originals, strict=True):
            c.write_text(text)
