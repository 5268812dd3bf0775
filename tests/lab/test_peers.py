"""A gateway with several peers: three sites on one switch, each gateway a peer of the two others
(``mt6d-lab --topology three-sites``: streams A-B, A-C and B-C, so each host is in two streams
on its gateway and the two share the host's entries on the internal interface).

In order, each lab torn down before the next is built (the machine may have two cores): the
three-site demo in a lab of its own; a two-site lab with two hosts per site, where a reload adds
and removes a stream between hosts of two other streams (a host in two streams on each
gateway, one of them as the remote host); then one three-site lab for the remaining tests, its
supervisors started by the lab (which waits until every stream of every gateway is keyed:
mt6d_mp/lab/gateway.py) with a short rekey interval (3 s at 1 s rotations, as
tests/lab/test_rekey.py), so that the traffic crosses rotations and key phases.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp import lab as labmod
from mt6d_mp.core.addressing import mac_bytes
from mt6d_mp.lab import Lab, LabInfo, NamespaceInfo, StreamInfo
from mt6d_mp.lab.processes import write_private
from tests.lab.test_mt6d import capture, check_external_capture, datapath_report, frames, running
from tests.lab.test_ops import received

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

REPO = Path(__file__).resolve().parents[2]
ROTATION = 1.0
REKEY = ("crypto.regen_interval=3", "crypto.regen_window=0.5", "crypto.regen_limit=6")


# --- helpers --------------------------------------------------------------------------------------


def ctl(gw: NamespaceInfo, *args: str) -> tuple[int, Any]:
    """``mt6dctl -c CONFIG ARGS --json``: exit code and the reply (or the text of an error)."""
    r = subprocess.run([sys.executable, "-m", "mt6d_mp.ctl", "-c", gw.config or "", *args, "--json"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    try:
        return r.returncode, json.loads(r.stdout)
    except ValueError:
        return r.returncode, r.stdout + r.stderr


def status(gw: NamespaceInfo) -> dict[str, Any]:
    code, st = ctl(gw, "status")
    assert code in (0, 150) and isinstance(st, dict), st
    return st


def streams_at(gw: NamespaceInfo) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in status(gw)["streams"]}


def workers_at(gw: NamespaceInfo) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in status(gw)["workers"]}


def wait_worker(gw: NamespaceInfo, name: str, *, not_pid: int | None = None,
                timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        w = workers_at(gw).get(name)
        if w is not None and w["state"] == "running" and w["pid"] != not_pid:
            return w
        assert time.monotonic() < deadline, f"{gw.name}: worker {name} not running: {w}"
        time.sleep(0.1)


def ping(lab: Lab, ns: str, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(ns, ["ping", "-6", "-n", *args, address], check=False, timeout=120)


def ping_eventually(lab: Lab, ns: str, address: str, timeout: float = 30.0) -> None:
    """Until one ping comes back (a stream just set up keys first: nothing is sent before)."""
    deadline = time.monotonic() + timeout
    while ping(lab, ns, address, "-c", "1", "-W", "1").returncode != 0:
        assert time.monotonic() < deadline, f"no ping reply from {address} in {ns}"


class Pinger:
    """Pings ``address`` from ``ns`` in bursts of ten (every 0.1 s) back to back until stopped;
    every burst runs to its end, so no echo request is ever cut off in flight."""

    def __init__(self, lab: Lab, ns: str, address: str) -> None:
        self.lab, self.ns, self.address = lab, ns, address
        self.sent = self.got = self.bursts = 0
        self.lossy: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            r = ping(self.lab, self.ns, self.address, "-c", "10", "-i", "0.1", "-W", "2")
            try:
                sent, got = received(r.stdout)
            except AssertionError:  # no statistics: ping failed before sending
                sent, got = 10, 0
            self.sent, self.got, self.bursts = self.sent + sent, self.got + got, self.bursts + 1
            if got != sent:
                self.lossy.append(r.stdout + r.stderr)

    def wait_bursts(self, n: int) -> None:
        deadline = time.monotonic() + 60
        while self.bursts < n:
            assert self.thread.is_alive(), "the pinger stopped"
            assert time.monotonic() < deadline, f"{self.ns}: no ping burst ended"
            time.sleep(0.1)

    def stop(self) -> tuple[int, int]:
        self.stopping.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.sent, self.got


def internal_entries(lab: Lab, gw: NamespaceInfo) -> dict[str, set[str]]:
    """What the supervisor made on the gateway's internal interface: the remote hosts' addresses
    (its only global ones), the local hosts' permanent neighbour entries and /128 routes (netlink
    protocol 109)."""
    def rows(argv: list[str]) -> list[dict[str, Any]]:
        out = lab.exec(gw.name, ["ip", "-j", "-6", *argv]).stdout
        return list(json.loads(out or "[]"))

    addresses = {a["local"] for link in rows(["addr", "show", "dev", "int0"])
                 for a in link.get("addr_info", []) if a.get("scope") == "global"}
    neighbours = {n["dst"] for n in rows(["neigh", "show", "dev", "int0", "nud", "permanent"])}
    routes = {r["dst"] for r in rows(["route", "show", "dev", "int0", "proto", "109"])}
    return {"addresses": addresses, "neighbours": neighbours, "routes": routes}


def recorded_neighbours(gw: NamespaceInfo) -> list[tuple[str, str]]:
    """The neighbour entries the supervisor's state.json holds for crash recovery."""
    data = json.loads((Path(gw.runtime_dir or "") / "state.json").read_text())
    return [(dev, addr) for dev, addr in data["neighbours"]]


def without_stream(profiles: str, s: StreamInfo) -> str:
    return "".join(line for line in profiles.splitlines(keepends=True)
                   if f" {s.queue} @" not in line)


# --- the demo, in a lab of its own ----------------------------------------------------------------


def test_the_three_site_demo_runs_end_to_end() -> None:
    """``mt6d-lab demo --topology three-sites``, as an operator runs it (a lab of its own, torn
    down at the end): pings and a download across each pair, every gateway link rotating."""
    prefix = "p" + secrets.token_hex(3)
    try:
        r = subprocess.run([sys.executable, "-m", "mt6d_mp.lab", "demo", "--topology", "three-sites",
                            "--prefix", prefix], capture_output=True, text=True, timeout=400, cwd=REPO)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    finally:
        stray = labmod.namespaces_with_prefix(prefix)
        for ns in stray:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    assert not stray, f"the demo left {stray}"
    assert r.stdout.count("20/20 replies") == 3 and r.stdout.count("sha256 matches") == 3, r.stdout
    links = next(line for line in r.stdout.splitlines() if "distinct pairs between gateways" in line)
    assert all(f"{link} " in links for link in ("A<->B", "A<->C", "B<->C")), links
    assert "== OK" in r.stdout, r.stdout


# --- a stream between the hosts of two streams (two sites, two hosts each) ------------------------


@pytest.fixture
def pairs() -> Iterator[tuple[Lab, LabInfo]]:
    yield from running(Lab("p" + secrets.token_hex(3), "switched", rotation_time=ROTATION, streams=2))


def test_a_stream_added_between_hosts_of_two_streams_works_and_its_removal_leaves_them_theirs(
    pairs: tuple[Lab, LabInfo]
) -> None:
    """Streams A1-B1 and A2-B2 carry pings both ways while a reload adds A1-B2 (on gateway A it
    shares host A1 with A1-B1 and host B2 with A2-B2; on gateway B the other way round) and
    another removes it: nothing lost, their workers untouched; A1-B2 carries traffic both ways
    while it exists; every host's entries stay while a stream uses them; the firewall is what
    the supervisor installed (mt6dctl rehash compares)."""
    lab, info = pairs
    ga, gb = info.gateway_a, info.gateway_b
    s1, s2 = info.streams
    a1, a2, b1, b2 = info.host_a(1), info.host_a(2), info.host_b(1), info.host_b(2)
    assert a1.address and a2.address and b1.address and b2.address
    key = "keys/host-a-host-b2.key"
    lines = {ga.name: f"host-a host-b2 9 @{key}\n", gb.name: f"host-b2 host-a 9 @{key}\n"}
    added = {ga.name: "host-a-host-b2", gb.name: "host-b2-host-a"}
    profiles = {gw.name: Path(gw.dir or "") / "profiles" for gw in (ga, gb)}
    original = {name: p.read_text() for name, p in profiles.items()}
    pids = {(gw.name, name): wait_worker(gw, name)["pid"]
            for gw, names in ((ga, (s1.name, s2.name)), (gb, (s1.reverse_name, s2.reverse_name)))
            for name in names}
    secret = os.urandom(64).hex() + "\n"
    pingers: list[Pinger] = []
    try:
        pingers = [Pinger(lab, x.name, y.address or "")
                   for x, y in ((a1, b1), (b1, a1), (a2, b2), (b2, a2))]
        for p in pingers:
            p.wait_bursts(1)
        for gw in (ga, gb):
            write_private(Path(gw.dir or "") / key, secret)
            profiles[gw.name].write_text(original[gw.name] + lines[gw.name])
            code, res = ctl(gw, "reload")
            assert code == 0 and res["added"] == [added[gw.name]] and res["removed"] == [], res
        for gw in (ga, gb):
            wait_worker(gw, added[gw.name])
        ping_eventually(lab, a1.name, b2.address)
        for x, y in ((a1, b2), (b2, a1)):
            assert received(ping(lab, x.name, y.address or "", "-c", "5", "-i", "0.2").stdout) == (5, 5)
        for gw, local, remote in ((ga, (a1, a2), (b1, b2)), (gb, (b1, b2), (a1, a2))):
            entries = internal_entries(lab, gw)
            assert entries["neighbours"] == entries["routes"] == {h.address for h in local}, entries
            assert entries["addresses"] == {h.address for h in remote}, entries
        for gw in (ga, gb):  # and away again
            profiles[gw.name].write_text(original[gw.name])
            code, res = ctl(gw, "reload")
            assert code == 0 and res["removed"] == [added[gw.name]] and res["added"] == [], res
        for gw, local, remote in ((ga, (a1, a2), (b1, b2)), (gb, (b1, b2), (a1, a2))):
            entries = internal_entries(lab, gw)
            assert entries["neighbours"] == entries["routes"] == {h.address for h in local}, entries
            assert entries["addresses"] == {h.address for h in remote}, entries
            assert sorted(recorded_neighbours(gw)) == sorted(("int0", h.address) for h in local)
            code, res = ctl(gw, "rehash")
            assert code == 0 and res["firewall_diff"] == [], res
        r = ping(lab, a1.name, b2.address, "-c", "2", "-W", "1")
        assert r.returncode != 0, "a removed stream carries nothing"
        for p in pingers:
            p.wait_bursts(p.bursts + 2)
        for p in pingers:
            sent, got = p.stop()
            assert sent == got, (f"{p.ns} -> {p.address} lost {sent - got} of {sent}:\n"
                                 + "".join(p.lossy) + datapath_report(info))
        for (gw_name, name), pid in pids.items():
            assert wait_worker(info.namespace(gw_name), name)["pid"] == pid, "its worker untouched"
    finally:
        for p in pingers:
            p.stop()
        for name, path in profiles.items():
            if path.read_text() != original[name]:
                path.write_text(original[name])
                ctl(info.namespace(name), "reload")
            (Path(info.namespace(name).dir or "") / key).unlink(missing_ok=True)


# --- three sites: one lab for these tests ---------------------------------------------------------


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[Lab, LabInfo]]:
    yield from running(Lab("p" + secrets.token_hex(3), "three-sites", rotation_time=ROTATION, settings=REKEY))


def test_each_gateway_keys_a_stream_to_each_of_its_peers_before_the_lab_is_up(
    peers: tuple[Lab, LabInfo]
) -> None:
    """The lab returns only once every stream of every gateway is keyed (nothing is sent before:
    docs/PROTOCOL.md 5); each gateway runs one worker per stream, on the stream's queue."""
    _lab, info = peers
    assert len(info.gateways) == 3 and len(info.streams) == 3
    for gw in info.gateways:
        want = {name: s.queue for s, name in info.streams_of(gw)}
        assert len(want) == 2, "a stream to each of the two other sites"
        rows = streams_at(gw)
        assert {n: r["queue"] for n, r in rows.items()} == want
        assert all(r["key_state"] == "keyed" for r in rows.values()), rows
        workers = workers_at(gw)
        for name, queue in want.items():
            assert workers[name]["state"] == "running" and workers[name]["queue"] == queue


def test_traffic_between_every_pair_at_once_across_rotations_and_rekeys_loses_nothing(
    peers: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    """Hosts A, B and C ping each other both ways at once, every 0.1 s for 15 s (15 rotations
    and several key phases of every stream): no ping lost. The capture of the switch shows no
    true address or host MAC, only hashed addresses of routes the gateways had installed, and
    tunnel packets both ways between every pair of gateways."""
    lab, info = peers
    count = 150
    ends = [(info.namespace(s.host_a_ns), info.namespace(s.host_b_ns)) for s in info.streams]
    before = {s.name: streams_at(info.stream_gateways(s)[0])[s.name]["keyx"].get("rekeys", 0)
              for s in info.streams}
    with capture(lab, info.capture_ns, info.capture_if, tmp_path / "peers.pcap") as pcap:
        procs = [
            subprocess.Popen(["ip", "netns", "exec", x.name, "ping", "-6", "-n", "-c", str(count),
                              "-i", "0.1", "-W", "2", y.address or ""],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for a, b in ends for x, y in ((a, b), (b, a))
        ]
        outs = [p.communicate(timeout=120)[0] for p in procs]
    for out in outs:
        assert received(out) == (count, count), out + datapath_report(info)
    for s in info.streams:
        rekeys = streams_at(info.stream_gateways(s)[0])[s.name]["keyx"].get("rekeys", 0)
        assert rekeys - before[s.name] >= 3, f"{s.name}: {rekeys - before[s.name]} rekeys"
    summary = check_external_capture(info, pcap)  # no true address, no host MAC, known routes
    assert len(summary["epochs"]) >= 10, "outer addresses changed at every rotation"
    assert len(summary["phases"]) >= 3, summary["phases"]
    gateway_of = {mac_bytes(gw.iface("ext0").mac): gw.role for gw in info.gateways}
    links: Counter[tuple[str, str]] = Counter()
    for _, frame in frames(pcap):
        ip = frame[14:]
        if frame[12:14] == b"\x86\xdd" and len(ip) > 46 and ip[6] == 60 and ip[42] == 0x1E:
            links[(gateway_of.get(frame[6:12], "?"), gateway_of.get(frame[0:6], "?"))] += 1
    roles = sorted(gateway_of.values())
    want = {(x, y) for x in roles for y in roles if x != y}
    assert set(links) == want, links
    # each direction: one ping's requests and the other ping's replies
    assert all(n >= 2 * count for n in links.values()), links


def test_reload_removing_one_of_two_streams_of_a_host_leaves_the_other_its_traffic(
    peers: tuple[Lab, LabInfo]
) -> None:
    """Stream A-C goes (its lines removed from gateways A's and C's profiles, mt6dctl reload)
    and comes back, while A-B and B-C, which share host A on gateway A and host C on gateway C,
    carry pings both ways without losing one, their workers untouched. Meanwhile host A's
    neighbour entry and /128 route stay on gateway A (and in its state.json, for crash
    recovery), host B's address too; host C's address goes. Then, with A-C removed from
    gateway A again, A-B's worker restarts and host B reaches host A at once: the restarted
    worker delivers to host A before it has seen a packet of host A, through the kernel's
    route and neighbour entry for host A."""
    lab, info = peers
    (ab,), (ac,), (bc,) = (info.streams_between(*p) for p in (("a", "b"), ("a", "c"), ("b", "c")))
    ga, gc = info.gateway("a"), info.gateway("c")
    ha, hb, hc = info.host("a"), info.host("b"), info.host("c")
    assert ha.address and hb.address and hc.address
    profiles = {gw.name: Path(gw.dir or "") / "profiles" for gw in (ga, gc)}
    original = {name: p.read_text() for name, p in profiles.items()}
    kept = {ga.name: ab.name_at(ha.name), gc.name: bc.name_at(hc.name)}  # host-a-host-b, host-c-host-b
    gone = {ga.name: ac.name_at(ha.name), gc.name: ac.name_at(hc.name)}
    pids = {gw.name: wait_worker(gw, kept[gw.name])["pid"] for gw in (ga, gc)}
    pingers: list[Pinger] = []
    try:
        pingers = [Pinger(lab, x.name, y.address or "")
                   for x, y in ((ha, hb), (hb, ha), (hc, hb), (hb, hc))]
        for p in pingers:
            p.wait_bursts(1)
        for gw in (ga, gc):
            profiles[gw.name].write_text(without_stream(original[gw.name], ac))
            code, res = ctl(gw, "reload")
            assert code == 0 and res["removed"] == [gone[gw.name]] and res["added"] == [], res
        for gw, local, remote, removed in ((ga, ha, hb, hc), (gc, hc, hb, ha)):
            assert gone[gw.name] not in workers_at(gw)
            entries = internal_entries(lab, gw)
            assert local.address in entries["neighbours"], entries
            assert local.address in entries["routes"], entries
            assert remote.address in entries["addresses"], entries
            assert removed.address not in entries["addresses"], entries
            assert recorded_neighbours(gw) == [("int0", local.address)]
        for p in pingers:  # the removal is behind a whole burst of each
            p.wait_bursts(p.bursts + 2)
        r = ping(lab, ha.name, hc.address, "-c", "2", "-W", "1")
        assert r.returncode != 0, "a removed stream carries nothing"
        for gw in (ga, gc):  # and back
            profiles[gw.name].write_text(original[gw.name])
            code, res = ctl(gw, "reload")
            assert code == 0 and res["added"] == [gone[gw.name]] and res["removed"] == [], res
        for gw in (ga, gc):
            wait_worker(gw, gone[gw.name])
        ping_eventually(lab, ha.name, hc.address)
        assert received(ping(lab, ha.name, hc.address, "-c", "5", "-i", "0.2").stdout) == (5, 5)
        for p in pingers:
            p.wait_bursts(p.bursts + 1)
        for p in pingers:
            sent, got = p.stop()
            assert sent == got and p.bursts >= 4, (
                f"{p.ns} -> {p.address} lost {sent - got} of {sent}:\n" + "".join(p.lossy)
                + datapath_report(info))
        for gw in (ga, gc):
            assert wait_worker(gw, kept[gw.name])["pid"] == pids[gw.name], "its worker untouched"

        # A-B's worker, restarted while A-C is gone from gateway A, delivers to host A first.
        profiles[ga.name].write_text(without_stream(original[ga.name], ac))
        code, res = ctl(ga, "reload")
        assert code == 0 and res["removed"] == [gone[ga.name]], res
        code, res = ctl(ga, "restart", kept[ga.name])
        assert code == 0, res
        wait_worker(ga, kept[ga.name], not_pid=pids[ga.name])
        ping_eventually(lab, hb.name, ha.address)
        assert received(ping(lab, hb.name, ha.address, "-c", "5", "-i", "0.2").stdout) == (5, 5)
    finally:
        for p in pingers:
            p.stop()
        for name, path in profiles.items():
            if path.read_text() != original[name]:
                path.write_text(original[name])
                ctl(info.namespace(name), "reload")
