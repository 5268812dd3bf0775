"""Replays, forgeries and floods of tunnel packets (item 8), switched topology.

The attacker sees every tunnel packet (tc mirred, harness.py) and sends what it likes to the
gateways' hashed addresses: a captured packet again (in its epoch, after a restart of the
receiving worker, after its route rotated away), the captured packet with one byte changed in
each region, and a flood of garbage and well-formed forgeries while the hosts ping. Host B must
see each datagram exactly once, no forgery, and the ping must lose nothing. Throughout, no frame
a gateway sends shows a true address or a host MAC.
"""

from __future__ import annotations

import os
import secrets
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attack.harness import (
    AttackLab,
    Pkt,
    a16,
    assert_no_leaks,
    attack_lab,
    ctl,
    drops,
    fix_udp_checksum,
    host_send_udp,
    l4_checksum,
    packets,
    route_state,
    routes,
    sniff,
    stream_worker,
    tunnel_packets,
    udp_sink,
    wait_for,
    wait_worker_state,
)
from tests.lab.test_mt6d import datapath_report, status

pytestmark = [pytest.mark.attack]

ROTATION = 2.0
# Routes stay accepted for 8 s (4 rotations): long enough to stop and start a worker and still
# send to the route the captured packet came on.
SETTINGS = ["rotation.route_lifetime=8"]
ALIVE = ("active", "accepted")


@pytest.fixture(scope="module")
def al() -> Iterator[AttackLab]:
    yield from attack_lab("switched", ROTATION, settings=SETTINGS)


def capture_datagram(al: AttackLab, tmp_path: Path, marker: bytes, port: int) -> Pkt:
    """Host A sends ``marker`` to host B's ``port``; the one tunnel packet that carried it."""
    s = al.info.streams[0]
    with sniff(al.lab, al.attacker.ns, "eth0", tmp_path / f"capture-{port}.pcap", "ip6") as pcap:
        host_send_udp(al.lab, s.host_a_ns, s.host_b_address, port, marker)
    size = 16 + 8 + (8 + 8 + len(marker)) + 16  # dstopts, UDP, sealed inner header + UDP + data, tag
    found = [p for p in tunnel_packets(al, packets(pcap), "gateway-a")
             if struct.unpack_from("!H", p.ip, 4)[0] == size]
    assert len(found) == 1, f"expected the one tunnel packet carrying host A's datagram, found {len(found)}"
    return found[0]


def test_replays_of_a_tunnel_packet_are_delivered_once(al: AttackLab, tmp_path: Path) -> None:
    s = al.info.streams[0]
    marker = b"REPLAY-" + secrets.token_hex(8).encode() + b"!"
    name_b = stream_worker(al, "gateway-b")["name"]
    with (al.watch(tmp_path / "ext.pcap") as ext,
          udp_sink(al.lab, s.host_b_ns, s.host_b_address, 7777) as sink):
        tunnel = capture_datagram(al, tmp_path, marker, 7777)
        assert wait_for(lambda: sink.count(marker) == 1, 3), "the original datagram did not reach host B"
        local = tunnel.dst

        al.send("gateway-b", [tunnel.ip])
        time.sleep(0.7)
        assert sink.count(marker) == 1, (
            f"a replay in the packet's own epoch reached host B ({sink.count(marker)} copies)")

        old = stream_worker(al, "gateway-b")["pid"]
        ctl(al, "gateway-b", "restart", name_b)
        wait_worker_state(al, "gateway-b", name_b, "running", not_pid=old)
        state = route_state(al, "gateway-b", local)
        assert state in ALIVE, f"test setup: the route expired ({state}) before the restart replay"
        al.send("gateway-b", [tunnel.ip])
        time.sleep(0.7)
        assert sink.count(marker) == 1, (
            f"a replay after `mt6dctl restart {name_b}` reached host B ({sink.count(marker)} copies)")

        assert wait_for(lambda: route_state(al, "gateway-b", local) not in ALIVE, 30, 0.2), \
            "the route never rotated away"
        al.send("gateway-b", [tunnel.ip])
        time.sleep(0.7)
        assert sink.count(marker) == 1, (
            f"a replay after the route rotated away reached host B ({sink.count(marker)} copies)")
        counters = stream_worker(al, "gateway-b")["counters"]
    assert_no_leaks(al, packets(ext))
    print("gateway B's worker after the replays:", counters)


def _flip(ip: bytes, offset: int, fix: bool = True) -> bytes:
    b = bytearray(ip)
    b[offset] ^= 0x01
    return fix_udp_checksum(bytes(b)) if fix else bytes(b)


def forgeries(ip: bytes) -> list[tuple[str, bytes]]:
    """The captured packet with one byte changed in each region it has (the UDP checksum fixed
    up afterwards where the change would otherwise make the kernel drop it first)."""
    n = len(ip)
    out = [
        ("outer source", _flip(ip, 23)),
        ("outer destination", _flip(ip, 39)),
        ("dstopts next header", _flip(ip, 40, fix=False)),
        ("dstopts option type", _flip(ip, 42)),
        ("dstopts alg", _flip(ip, 44)),
        ("dstopts key phase", _flip(ip, 45)),
        ("dstopts lane", _flip(ip, 47)),
        ("dstopts counter", _flip(ip, 55)),
        ("UDP source port", _flip(ip, 57)),
        ("UDP destination port", _flip(ip, 59)),
        ("UDP length", _flip(ip, 61, fix=False)),
        ("UDP checksum", _flip(ip, 63, fix=False)),
        ("ciphertext, inner header", _flip(ip, 64)),
        ("ciphertext, inner payload", _flip(ip, 64 + 20)),
        ("tag, first byte", _flip(ip, n - 16)),
        ("tag, last byte", _flip(ip, n - 1)),
    ]
    # Cut short by one byte, lengths made consistent: a truncated tag.
    short = bytearray(ip[:-1])
    struct.pack_into("!H", short, 4, len(short) - 40)
    struct.pack_into("!H", short, 60, len(short) - 56)
    out.append(("tag truncated", fix_udp_checksum(bytes(short))))
    return out


def test_forged_fields_of_a_tunnel_packet_are_not_delivered(al: AttackLab, tmp_path: Path) -> None:
    """A tunnel packet that host B never got (gateway B's worker was stopped while it crossed):
    every one-byte forgery of it is refused, and the packet itself is still accepted afterwards
    (so the forgeries were tested against a fresh counter and did not use it up)."""
    s = al.info.streams[0]
    marker = b"FORGE-" + secrets.token_hex(8).encode() + b"?"
    w = stream_worker(al, "gateway-b")
    name_b = w["name"]
    with (al.watch(tmp_path / "ext.pcap") as ext,
          udp_sink(al.lab, s.host_b_ns, s.host_b_address, 7778) as sink):
        ctl(al, "gateway-b", "stop", name_b)
        try:
            wait_worker_state(al, "gateway-b", name_b, "stopped")
            tunnel = capture_datagram(al, tmp_path, marker, 7778)
        finally:
            ctl(al, "gateway-b", "start", name_b)
        wait_worker_state(al, "gateway-b", name_b, "running", not_pid=w["pid"])
        time.sleep(0.3)  # its route sockets are bound
        assert sink.count(marker) == 0, "the packet reached host B while gateway B's worker was stopped"
        delivered = []
        for label, forged in forgeries(tunnel.ip):
            state = route_state(al, "gateway-b", tunnel.dst)
            assert state in ALIVE, f"test setup: the route expired ({state}) before the '{label}' forgery"
            al.send("gateway-b", [forged])
            if wait_for(lambda: bool(sink.received()), 0.3, 0.05):
                delivered.append((label, sink.received()))
                break
        assert not delivered, f"a forged tunnel packet reached host B: {delivered}"
        state = route_state(al, "gateway-b", tunnel.dst)
        assert state in ALIVE, f"test setup: the route expired ({state}) before the positive control"
        al.send("gateway-b", [tunnel.ip])
        assert wait_for(lambda: sink.count(marker) == 1, 2), (
            f"positive control: the unmodified packet was not delivered after the forgeries "
            f"(received {sink.received()})\n{datapath_report(al.info)}")
    assert_no_leaks(al, packets(ext))


def _flood(al: AttackLab, gateway: str) -> list[bytes]:
    """Garbage UDP and well-formed forgeries (MT6D option, random ciphertext, also as chunks)
    from the peer's hashed address to each accepted route of ``gateway``."""
    out = []
    for r in routes(al, gateway):
        if r["state"] not in ALIVE:
            continue
        src, dst = a16(r["remote"]), a16(r["local"])
        for i in range(150):
            for kind in ("garbage", "forgery", "chunk"):
                data = os.urandom(20 + secrets.randbelow(1300))
                if kind == "chunk":
                    data = bytes([i % 4, 4]) + data
                seg = struct.pack("!HHHH", r["remote_port"], r["local_port"], 8 + len(data), 0) + data
                seg = seg[:6] + struct.pack("!H", l4_checksum(src, dst, 17, seg)) + seg[8:]
                if kind == "garbage":
                    payload, nh = seg, 17
                else:
                    alg = 0x81 if kind == "chunk" else 1
                    payload, nh = bytes([17, 1, 0x1E, 12, alg, 0, 0, 0]) + os.urandom(8) + seg, 60
                out.append(struct.pack("!IHBB", 6 << 28, len(payload), nh, 64) + src + dst + payload)
    return out


def _pids(al: AttackLab) -> dict[str, int]:
    out = {}
    for gateway in ("gateway-a", "gateway-b"):
        st = status(al.info, gateway)
        out[f"{gateway} supervisor"] = st["pid"]
        for w in st["workers"]:
            out[f"{gateway} {w['name']}"] = w["pid"]
    return out


def test_a_flood_of_forgeries_loses_no_ping(al: AttackLab, tmp_path: Path) -> None:
    s = al.info.streams[0]
    pids = _pids(al)
    before = {g: drops(stream_worker(al, g)) for g in ("gateway-a", "gateway-b")}
    with al.watch(tmp_path / "ext.pcap", snaplen=200) as ext:
        ping = subprocess.Popen(["ip", "netns", "exec", s.host_a_ns, "ping", "-6", "-n", "-c", "80", "-i",
                                 "0.05", "-W", "5", s.host_b_address], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(0.3)
            sent = 0
            for _ in range(2):
                for gateway in ("gateway-b", "gateway-a"):
                    sent += al.send(gateway, _flood(al, gateway))
            out, _ = ping.communicate(timeout=60)
        finally:
            if ping.poll() is None:
                ping.kill()
                ping.wait()
    assert ping.returncode == 0 and " 0% packet loss" in out, (
        f"ping lost packets while the attacker sent {sent} forged packets:\n{out}\n"
        f"{datapath_report(al.info)}")
    time.sleep(1.5)  # the workers have reported their counters since
    assert _pids(al) == pids, f"a process died or restarted under the flood: {pids} -> {_pids(al)}"
    for gateway in ("gateway-a", "gateway-b"):
        after = drops(stream_worker(al, gateway))
        grew = {k: v - before[gateway].get(k, 0) for k, v in after.items() if v > before[gateway].get(k, 0)}
        assert grew, f"{gateway}: no drop counter grew under the flood ({after})"
        print(f"{gateway} drops grew: {grew}")
    assert_no_leaks(al, packets(ext))
