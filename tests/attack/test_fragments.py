"""Fragments: item 4 (forged fragment trains at a hashed address) and item 5 (a host's own
fragments cross), switched topology.

Any ``-m socket`` rule loads IPv6 defragmentation, so the kernel reassembles fragments before
the firewall and the tunnel sockets see them: forged trains cost the gateway memory, and a
host's own fragmented packet reaches the queue whole and too big for the tunnel.
"""

from __future__ import annotations

import os
import secrets
import struct
import sys
import time
from collections.abc import Iterator

import pytest

from tests.attack.harness import (
    AttackLab,
    a16,
    attack_lab,
    drops,
    firewall_counters,
    l4_checksum,
    private_kb,
    routes,
    stream_worker,
    udp_sink,
)
from tests.lab.test_mt6d import datapath_report, ping, status

pytestmark = [pytest.mark.attack]

ROTATION = 2.0
TRAINS = 200  # plain forged tunnel datagrams
MESSAGES = 4  # and per route, forged messages of CHUNKS chunks each (never complete: count 64)
CHUNKS = 60
DATAGRAM = 60_000
FRAGMENT = 1400  # bytes of fragmentable part per fragment (a multiple of 8)
MAX_GROWTH_KB = 20 * 1024


@pytest.fixture(scope="module")
def al() -> Iterator[AttackLab]:
    yield from attack_lab("switched", ROTATION)


def fragment_train(src: str, dst: str, sport: int, dport: int, ident: int, size: int,
                   counter: bytes, chunk: tuple[int, int] | None = None) -> list[bytes]:
    """A tunnel-looking UDP datagram (destination options with the MT6D option and ``counter``,
    random "ciphertext", a correct UDP checksum) cut into IPv6 fragments of FRAGMENT bytes. With
    ``chunk`` = (index, count) it looks like a chunk of a message (alg 0x81, PROTOCOL.md 1.6)."""
    data = os.urandom(size)
    if chunk is not None:
        data = bytes(chunk) + data[2:]
    seg = struct.pack("!HHHH", sport, dport, 8 + size, 0) + data
    seg = seg[:6] + struct.pack("!H", l4_checksum(a16(src), a16(dst), 17, seg)) + seg[8:]
    alg = 0x81 if chunk is not None else 1
    dstopts = bytes([17, 1, 0x1E, 12, alg, 0]) + b"\0\0" + counter
    body = dstopts + seg
    out = []
    for off in range(0, len(body), FRAGMENT):
        piece = body[off : off + FRAGMENT]
        more = 1 if off + FRAGMENT < len(body) else 0
        frag = struct.pack("!BBHI", 60, 0, off | more, ident)
        payload = frag + piece
        out.append(struct.pack("!IHBB", 6 << 28, len(payload), 44, 64) + a16(src) + a16(dst) + payload)
    return out


def test_forged_fragment_trains_cost_the_worker_nothing(al: AttackLab) -> None:
    """Item 4: forged 60 KB UDP datagrams in 1400-byte fragments, from the peer's hashed address
    to the local hashed address and port of gateway B's two newest accepted routes: 200 that look
    like single tunnel packets and, per route, 4 x 60 that look like chunks of messages (which the
    worker would keep, 8 incomplete messages per route, if it ever saw a 60 KB chunk). The stream
    worker's private memory grows by less than 20 MB, no pid changes, and a counter says what was
    dropped (an ip6tables rule whose comment contains "frag", or a drop_* counter of the worker)."""
    accepted = [r for r in routes(al, "gateway-b") if r["state"] in ("accepted", "active")][:2]
    w0 = stream_worker(al, "gateway-b")
    sup0 = status(al.info, "gateway-b")["pid"]
    mem0 = private_kb(w0["pid"])
    fw0 = firewall_counters(al, "gateway-b", "frag")
    base = secrets.randbelow(2**31)
    trains: list[list[bytes]] = []
    for i in range(TRAINS):
        r = accepted[i % len(accepted)]
        trains.append(fragment_train(r["remote"], r["local"], r["remote_port"], r["local_port"],
                                     base + len(trains), DATAGRAM, secrets.token_bytes(8)))
    for r in accepted:
        for _ in range(MESSAGES):
            counter = secrets.token_bytes(8)
            for index in range(CHUNKS):
                trains.append(fragment_train(r["remote"], r["local"], r["remote_port"], r["local_port"],
                                             base + len(trains), DATAGRAM, counter, (index, 64)))
    frames = [f for t in trains for f in t]
    sent = al.send("gateway-b", frames)
    assert sent == len(frames)
    time.sleep(2.5)  # the worker has read what reached it and reported its counters
    w1 = stream_worker(al, "gateway-b")
    assert w1["pid"] == w0["pid"], f"the stream worker died or restarted under the flood: {w0['pid']} -> {w1}"
    assert status(al.info, "gateway-b")["pid"] == sup0, "the supervisor changed"
    mem1 = private_kb(w1["pid"])
    print(f"worker private memory {mem0} -> {mem1} kB, drops {drops(w1)}")
    fw1 = firewall_counters(al, "gateway-b", "frag")
    grew_fw = {rule: n - fw0.get(rule, 0) for rule, n in fw1.items() if n > fw0.get(rule, 0)}
    d0, d1 = drops(w0), drops(w1)
    grew_drops = {k: v - d0.get(k, 0) for k, v in d1.items() if v > d0.get(k, 0)}
    assert mem1 - mem0 < MAX_GROWTH_KB, (
        f"{len(trains)} forged fragment trains grew the stream worker's private memory by "
        f"{(mem1 - mem0) / 1024:.1f} MB ({mem0} -> {mem1} kB); drops grew {grew_drops}, "
        f"frag rules grew {grew_fw}")
    assert grew_fw or grew_drops, (
        f"nothing counted the {len(frames)} forged fragments: no rule with 'frag' in its comment "
        f"counted packets ({fw1 or 'no such rule'}) and no drop_* counter grew ({d1})")


UDP_BIG = 3000


@pytest.mark.parametrize("direction", ["a-to-b", "b-to-a"])
def test_a_hosts_own_fragments_cross(al: AttackLab, direction: str) -> None:
    """Item 5: ``ping -c 3 -s 2000`` loses nothing and one 3000-byte UDP datagram arrives whole,
    with the sender's path MTU cache flushed first (its first packets are fragmented at 1500)."""
    s = al.info.streams[0]
    src_ns, dst_ns, dst = ((s.host_a_ns, s.host_b_ns, s.host_b_address) if direction == "a-to-b"
                           else (s.host_b_ns, s.host_a_ns, s.host_a_address))
    al.lab.exec(src_ns, ["ip", "-6", "route", "flush", "cache"], check=False)
    r = ping(al.lab, src_ns, dst, "-c", "3", "-s", "2000", "-W", "2")
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, (
        f"ping -s 2000 ({direction}) lost packets:\n{r.stdout}{r.stderr}\n{datapath_report(al.info)}")
    al.lab.exec(src_ns, ["ip", "-6", "route", "flush", "cache"], check=False)
    marker = b"BIG-" + secrets.token_hex(6).encode()
    data = marker + os.urandom(UDP_BIG - len(marker))
    with udp_sink(al.lab, dst_ns, dst, 7001) as sink:
        al.lab.exec(src_ns, [sys.executable, "-c",
                             "import socket,sys; s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); "
                             "s.sendto(bytes.fromhex(sys.argv[2]),(sys.argv[1],7001))", dst, data.hex()])
        deadline = time.monotonic() + 3
        while not sink.count(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        got = [(n, head[:16]) for _, n, head in sink.received()]
    assert any(n == UDP_BIG and head.startswith(marker) for n, head in got), (
        f"a {UDP_BIG}-byte UDP datagram ({direction}) did not arrive whole; received {got}\n"
        f"{datapath_report(al.info)}")
