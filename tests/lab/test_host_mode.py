"""Host mode end to end (README, "Host mode"): MT6D on a protected host itself, talking to a
gateway-protected site (``host-gateway``) and to another host-mode host (``host-host``).

The same properties as gateway mode (tests/lab/test_mt6d.py, tests/lab/test_rekey.py), on real
programs across rotations of 1 s and a rekey every 3 s: ping both ways with no loss, an iperf3
TCP transfer each way with data in every interval, HTTP byte-identical, no true address of the
stream on either of the router's links (a host-mode host's MAC is on its own link by nature, no
other host's MAC anywhere), fail closed while host A's stream worker is stopped or killed (ping
fails, nothing with a true address leaves), a router's Packet Too Big translated for the host's
own stack, and nothing from the remote host's true address let in from outside.

Each topology is one lab (module-scoped, one at a time); the tests of a topology share it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp.core.addressing import mac_bytes
from mt6d_mp.io.bus import request
from mt6d_mp.lab import Lab, LabInfo
from mt6d_mp.lab.info import NamespaceInfo
from tests.attack.harness import echo_request, neighbor_solicitation, send_frames, tcp_syn, udp
from tests.lab.test_mt6d import ROUTES_SEEN, capture, frames, running
from tests.lab.test_ops import received

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

ROTATION = 1.0
REKEY = ("crypto.regen_interval=3", "crypto.regen_window=0.5", "crypto.regen_limit=6")


@pytest.fixture(scope="module", params=["host-gateway", "host-host"])
def hlab(request: pytest.FixtureRequest) -> Iterator[tuple[Lab, LabInfo]]:
    yield from running(Lab("h" + secrets.token_hex(3), request.param, rotation_time=ROTATION,
                           router_mtu=1400, settings=REKEY))


# --- helpers ------------------------------------------------------------------------------------


def status(end: NamespaceInfo) -> dict[str, Any]:
    reply = request(Path(end.runtime_dir or ""), b"status")
    assert isinstance(reply, dict), f"no status from {end.name}"
    return reply


def stream_worker(end: NamespaceInfo) -> dict[str, Any]:
    return dict(next(w for w in status(end)["workers"] if w["name"] != "icmp"))


def report(info: LabInfo) -> str:
    """Both ends' worker counters and drops: what a lost packet left."""
    lines = []
    for end in info.gateways:
        for w in status(end)["workers"]:
            lines.append(f"{end.role} {w['name']}: {w['counters']} drops={w['drops']}")
    return "\n".join(lines)


def ping(lab: Lab, ns: str, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(ns, ["ping", "-6", "-n", *args, address], check=False, timeout=180)


def router_links(lab: Lab, info: LabInfo, tmp_path: Path, name: str) -> ExitStack:
    """Captures of both of the router's links for the block: ``ga`` (host A's link) and ``gb``."""
    stack = ExitStack()
    rt = info.ns("router").name
    for iface in ("ga", "gb"):
        stack.enter_context(capture(lab, rt, iface, tmp_path / f"{name}-{iface}.pcap"))
    return stack


def check_link(info: LabInfo, path: Path) -> dict[str, Any]:
    """No true address of the stream anywhere in a frame of the router's link ``ga`` or ``gb``;
    no host MAC but that of a host-mode host on its own link; every UDP or options packet
    between known hashed routes of the epoch it was seen in. Returns counts."""
    link = path.stem.rsplit("-", 1)[1]  # ga: side a, gb: side b
    own = {"ga": info.host_a(), "gb": info.host_b()}[link]
    true = [ipaddress.IPv6Address(n.address).packed for n in info.namespaces if n.address]
    macs = [mac_bytes(n.mac) for n in info.namespaces
            if n.mac and not (n is own and info.host_mode(n))]
    expected = ROUTES_SEEN.get(path, {})
    summary: dict[str, Any] = {"frames": 0, "tunnel": 0, "epochs": set(), "phases": set()}
    for t, frame in frames(path):
        summary["frames"] += 1
        for addr in true:
            assert addr not in frame, f"true address {ipaddress.IPv6Address(addr)} on {link}"
        for mac in macs:
            assert mac not in frame, f"host MAC {mac.hex(':')} on {link}"
        ip = frame[14:]
        if frame[12:14] != b"\x86\xdd" or len(ip) < 40 or ip[6] not in (17, 60):
            continue
        route = expected.get((ip[8:24], ip[24:40]))
        assert route is not None, (
            f"outer pair {ipaddress.IPv6Address(ip[8:24])} -> {ipaddress.IPv6Address(ip[24:40])} "
            f"on {link} is not a hashed route the ends installed")
        assert abs(route[1] - t // ROTATION) <= 1, (route, t)
        summary["tunnel"] += 1
        summary["epochs"].add(route[1])
        if ip[6] == 60 and len(ip) > 46 and ip[42] == 0x1E:
            summary["phases"].add(ip[45])
    return summary


# --- the tests ------------------------------------------------------------------------------------


def test_the_host_protects_itself_with_a_route_and_rules_of_its_own_first(
    hlab: tuple[Lab, LabInfo],
) -> None:
    """Host A's supervisor routes host B's true address out of eth0 with A's true address as
    source and the tunnel MTU, binds nothing of host B's, and queues A's packets to B from
    OUTPUT (rules.py, the host-mode drawing)."""
    lab, info = hlab
    a, b = info.host_a(), info.host_b()
    routes = lab.exec(a.name, ["ip", "-6", "route", "show", "proto", "109"]).stdout
    assert f"{b.address} dev eth0" in routes and f"src {a.address}" in routes, routes
    assert "mtu 1452" in routes, routes
    addrs = lab.exec(a.name, ["ip", "-6", "addr", "show"]).stdout
    assert b.address not in addrs, addrs
    rules = lab.exec(a.name, ["ip6tables-legacy", "-S"]).stdout
    assert "-A OUTPUT -m comment --comment \"mt6d:jump\" -j MT6D-OUTPUT" in rules, rules
    assert (f"-A MT6D-OUTPUT -s {a.address}/128 -d {b.address}/128 -m comment --comment "
            f'"mt6d:stream:{info.streams[0].name}" -j NFQUEUE --queue-num 2') in rules, rules
    assert "NFQUEUE --queue-num 1" in rules and "--queue-bypass" not in rules
    # the host takes its router advertisements itself: the ICMP worker gets none
    assert not [line for line in rules.splitlines() if "--icmpv6-type 134 " in line
                and "NFQUEUE" in line], rules
    # A kill switch of the host's own (README, "Host mode") sees none of the stream's packets
    # while MT6D runs: its queue rule comes first.
    kill_switch = ["OUTPUT", "-d", b.address or "", "-j", "DROP"]
    lab.exec(a.name, ["ip6tables-legacy", "-A", *kill_switch])
    try:
        r = ping(lab, a.name, b.address or "", "-c", "5", "-i", "0.2")
        assert received(r.stdout) == (5, 5), r.stdout + report(info)
    finally:
        lab.exec(a.name, ["ip6tables-legacy", "-D", *kill_switch])


def test_a_router_packet_too_big_reaches_the_hosts_own_stack(hlab: tuple[Lab, LabInfo]) -> None:
    """A 1448-byte packet fits host A's route to host B (1452) but its tunnel packet (1496) does
    not fit the router's 1400-byte link toward B: the router's Packet Too Big about the tunnel
    packet is translated by host A's ICMP worker and handed to host A's own stack, which tells
    ping (and lowers its path MTU to host B: so this runs before any bulk traffic, whose first
    big packets would have taught the host the same)."""
    lab, info = hlab
    a, b = info.host_a(), info.host_b()
    r = ping(lab, a.name, b.address or "", "-c", "2", "-s", "1400", "-M", "do", "-W", "1")
    out = r.stdout + r.stderr
    assert "Packet too big" in out and "mtu=1352" in out, out + report(info)  # 1400 - 48
    assert "From 2001:db8:a::1 " in out, out  # the router, as it would be without MT6D
    r = ping(lab, a.name, b.address or "", "-c", "3", "-s", "1300", "-i", "0.2")
    assert received(r.stdout) == (3, 3), r.stdout + report(info)
    time.sleep(1.2)
    icmp = next(w for w in status(info.gateway("a"))["workers"] if w["name"] == "icmp")
    assert icmp["counters"].get("error_2_translated", 0) >= 1, icmp


TCP_RATE = "300M"  # iperf3 -b: well under what the tunnel carries here (about 2 Gbit/s)


def test_ping_and_tcp_both_ways_across_rotations_and_rekeys(
    hlab: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    """Ping every 0.1 s both ways and iperf3 TCP one way then the other, across rotations every
    second and rekeys every 3 s: no ping lost, data in every TCP interval, no true address on
    either link, the big TCP packets carried whole (messages in chunks, handed to the host's
    stack whole through loopback: never cut into segments in Python).

    The TCP transfer is paced (TCP_RATE): unpaced, it fills whichever queue on this 2-core
    machine is the bottleneck (both MT6D ends, the router and the rest of the suite share the
    cores), and a ping dropped there by congestion, with no MT6D drop counted, says nothing of
    rotations or rekeys, which this test is about. Loss under saturation is measured by
    mt6d-bench's load rows."""
    lab, info = hlab
    a, b = info.host_a(), info.host_b()
    assert a.address and b.address
    end_a = info.gateway("a")
    before = status(end_a)["streams"][0]["keyx"].get("rekeys", 0)
    server = lab.spawn(b.name, ["iperf3", "-s", "-B", b.address], name="iperf3-server")
    try:
        lab.wait_listening(server, 5201, what="iperf3")
        with router_links(lab, info, tmp_path, "traffic"):
            pingers = [subprocess.Popen(["ip", "netns", "exec", src.name, "ping", "-6", "-n", "-c",
                                         "200", "-i", "0.1", dst.address or ""],
                                        stdout=subprocess.PIPE, text=True)
                       for src, dst in ((a, b), (b, a))]
            tcp = [lab.exec(a.name, ["iperf3", "-c", b.address, "-t", "8", "-i", "0.5", "-J",
                                     "-b", TCP_RATE, *reverse], check=False, timeout=120)
                   for reverse in ((), ("-R",))]
            outs = [p.communicate(timeout=120)[0] for p in pingers]
    finally:
        lab.stop(server)
    for out in outs:
        sent, got = received(out)
        assert sent == got == 200, out + report(info)
    for r in tcp:
        assert r.returncode == 0, r.stdout + r.stderr
        intervals = [i["sum"]["bytes"] for i in json.loads(r.stdout)["intervals"]]
        assert len(intervals) >= 15 and min(intervals) > 0, f"a TCP stall: {intervals}"
    rekeys = status(end_a)["streams"][0]["keyx"].get("rekeys", 0) - before
    assert rekeys >= 3, f"only {rekeys} rekeys during the traffic"
    seen = {link: check_link(info, tmp_path / f"traffic-{link}.pcap") for link in ("ga", "gb")}
    assert seen["ga"]["tunnel"] >= 2 * 2 * 200 and len(seen["ga"]["epochs"]) >= 10, seen
    assert len(seen["ga"]["phases"]) >= 3, seen  # the rekeys' new phases on the wire
    time.sleep(1.2)  # a counter report
    counters = stream_worker(end_a)["counters"]
    assert counters.get("messages_sent", 0) > 0 and counters.get("messages_received", 0) > 0, counters
    assert counters.get("host_link_frames", 0) > 0, counters  # delivered through loopback
    assert "segmented_for_host" not in counters, counters
    # The router's 1400-byte link toward B: each new route's first chunks fill the 1500-byte
    # link, the router answers Packet Too Big, the kernel keeps that hashed address's path MTU
    # (PROTOCOL.md 1.6), and a single packet of the host's that the path cannot carry is refused
    # by the kernel (EMSGSIZE; TCP sends it again). A gateway in the routed lab counts the same.
    # Nothing else is dropped.
    drops = {k: n for k, n in counters.items() if k.startswith("drop_")}
    assert set(drops) <= {"drop_send_emsgsize"}, drops


def test_http_download_to_the_host_is_byte_identical(
    hlab: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    lab, info = hlab
    a, b = info.host_a(), info.host_b()
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(20_000_000)
    (www / "blob").write_bytes(data)
    tmp_path.chmod(0o755)
    www.chmod(0o755)
    server = lab.start_http_server(b.name, www, b.address or "", 8080)
    try:
        out = tmp_path / "got"
        r = lab.exec(a.name, ["curl", "-sS", "--fail", "-o", str(out),
                              f"http://[{b.address}]:8080/blob"], check=False, timeout=300)
        assert r.returncode == 0, r.stderr + report(info)
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    finally:
        lab.stop(server)


def test_fail_closed_while_the_hosts_stream_worker_is_stopped_or_killed(
    hlab: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    """No bypass: while host A's stream worker does not read its queue, host A's packets to host
    B wait in the kernel (stopped) or are dropped (killed), and nothing with a true address
    leaves; once the supervisor has restarted the worker, traffic flows again."""
    lab, info = hlab
    a, b = info.host_a(), info.host_b()
    end_a = info.gateway("a")
    pid = stream_worker(end_a)["pid"]
    with router_links(lab, info, tmp_path, "stopped"):
        os.kill(pid, signal.SIGSTOP)
        try:
            r = ping(lab, a.name, b.address or "", "-c", "5", "-i", "0.2", "-W", "1")
            back = ping(lab, b.name, a.address or "", "-c", "3", "-i", "0.2", "-W", "1")
        finally:
            os.kill(pid, signal.SIGCONT)
    assert received(r.stdout)[1] == 0, r.stdout
    assert received(back.stdout)[1] == 0, back.stdout
    for link in ("ga", "gb"):
        check_link(info, tmp_path / f"stopped-{link}.pcap")
    with router_links(lab, info, tmp_path, "killed"):
        os.kill(pid, signal.SIGKILL)  # the supervisor restarts it at once: replies may come
        ping(lab, a.name, b.address or "", "-c", "3", "-i", "0.2", "-W", "1")
    for link in ("ga", "gb"):
        check_link(info, tmp_path / f"killed-{link}.pcap")
    deadline = time.monotonic() + 20
    while True:
        w = stream_worker(end_a)
        if w["state"] == "running" and w["pid"] != pid:
            break
        assert time.monotonic() < deadline, f"worker not restarted: {w}"
        time.sleep(0.2)
    r = ping(lab, a.name, b.address or "", "-c", "10", "-i", "0.2")
    assert received(r.stdout) == (10, 10), r.stdout + report(info)


def test_nothing_from_the_remote_true_address_gets_in_from_outside(
    hlab: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    """An attacker on host A's link (the router's port) sends host A an echo request, a TCP SYN,
    a UDP datagram and a neighbour solicitation, each "from" host B's true address: host A
    answers none of them (the firewall drops them, counted as true_address), and nothing with
    a true address leaves host A."""
    lab, info = hlab
    a, b = info.host_a(), info.host_b()
    assert a.address and b.address and a.mac
    router = info.ns("router")
    port = router.iface("ga")
    before = status(info.gateway("a"))["firewall_drops"].get("true_address", 0)
    packets = [echo_request(b.address, a.address, 77, b"probe"),
               tcp_syn(b.address, a.address, 40000, 22, 1),
               udp(b.address, a.address, 40000, 9, b"probe"),
               neighbor_solicitation(b.address, a.address, a.address, port.mac)]
    frames_ = [mac_bytes(a.mac) + mac_bytes(port.mac) + b"\x86\xdd" + p for p in packets]
    with capture(lab, router.name, "ga", tmp_path / "inject-ga.pcap") as pcap:
        send_frames(lab, router.name, "ga", frames_, rounds=3, gap=0.1)
        time.sleep(0.5)
    answers = [f for _, f in frames(pcap) if f[6:12] == mac_bytes(a.mac)
               and f[12:14] == b"\x86\xdd" and f[14 + 24:14 + 40] == ipaddress.IPv6Address(
                   b.address).packed]
    assert not answers, f"host A answered {len(answers)} frames to host B's true address"
    after = status(info.gateway("a"))["firewall_drops"].get("true_address", 0)
    assert after - before >= 3 * len(packets), (before, after)
