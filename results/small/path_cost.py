"""The Python cost of one small packet through a stream worker's send and receive paths.

Builds a real ``Tunnel`` (workers/tunnel.py) with keep-warm's stand-in sockets (nothing is
sent; no kernel time), and times, back to back, a 200-byte UDP packet from the queue's parser
through ``on_message`` and ``outbound`` (gateway A's work), and the sealed datagram through
``receive``, opening and ``inbound`` (gateway B's). Prints microseconds per packet, the best of
``--rounds`` rounds.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python results/small/path_cost.py``.
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from mt6d_mp.core.chunks import Reassembly
from mt6d_mp.core.messages import PhaseKeys, RouteUpdate, StreamState
from mt6d_mp.core.packet import aad_prefix
from mt6d_mp.io import sockets
from mt6d_mp.io.nfqueue import DropBatch, QueueReader, packet_message
from workers.keepwarm import WarmSocket
from workers.path import RouteSocket
from workers.tunnel import RECV_BUFFER, Tunnel

A = bytes.fromhex("20010db8000a000000000000000000a1")
B = bytes.fromhex("20010db8000b000000000000000000b1")
HA, HB = bytes(15) + b"\x01", bytes(15) + b"\x02"


def udp_packet(src: bytes, dst: bytes, size: int) -> bytes:
    payload = bytes(size)
    return (bytes.fromhex("60000000") + struct.pack("!HBB", 8 + size, 17, 64) + src + dst
            + struct.pack("!HHHH", 5001, 5201, 8 + size, 0) + payload)


class Tx:
    """The transmit socket: keeps the last sendmsg's arguments, sends nothing."""

    last: tuple[Any, ...] = ()

    def sendmsg(self, *args: Any) -> int:
        self.last = args
        return 0


class Link:
    """The packet socket to the host: sends nothing."""

    def sendmsg(self, *args: Any) -> int:
        return 0


def tunnel(runtime: Path, key: bytes) -> tuple[Any, RouteUpdate]:
    worker = SimpleNamespace(queue_num=0, runtime_dir=runtime, clock_offset=0.0, keep_warm_ms=0,
                             bus=None, tx=Tx(), host=WarmSocket(), seg_queue=1,
                             counters=Counter(), rx_buffers=[bytearray(RECV_BUFFER)], reader=None)
    worker.rx_view = memoryview(worker.rx_buffers[0])
    worker.drops = DropBatch(-1, 0, worker.counters)
    worker.seg_drops = DropBatch(-1, 1, worker.counters)
    worker.drops.flush = lambda: None  # type: ignore[method-assign]
    t = Tunnel(cast(Any, worker), "s")
    epoch = int(time.time() // 3600)
    route = RouteUpdate("s", epoch, "pending", HA, 4000, HB, 4001, 1)
    st = StreamState("s", 0, A, B, "aes-256-gcm", (PhaseKeys(1, key, key),), 1, 0, 1, 1, 1452,
                     3600.0)
    t.rebuild(st, [route])
    # The host's MAC is known (learned from its first queued packet): delivery by packet socket.
    t.host_mac, t.own_mac, t.link, t.link_ifindex = b"\x02" * 6, b"\x04" * 6, Link(), 1
    return t, route


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=200, help="UDP payload bytes of the inner packet")
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t, _ = tunnel(Path(d), os.urandom(32))
        inner = udp_packet(A, B, a.size)
        message = packet_message(0, 1, inner)
        qsock = WarmSocket()
        reader = QueueReader(-1, 0, t.counters, sock=qsock)
        out_best = in_best = float("inf")
        for _ in range(a.rounds):
            sealed: list[tuple[bytes, bytes]] = []
            t0 = time.perf_counter()
            for _ in range(a.count):
                qsock.load(message)
                reader.read(t.on_message)
                sealed.append(t.tx.last)
            t1 = time.perf_counter()
            out_best = min(out_best, (t1 - t0) / a.count * 1e6)
            rsock = WarmSocket()
            source = sockets.sockaddr(HB)[0]
            aad = aad_prefix(HA, HB, 4000, 4001)  # as sealed: we open our own
            rs = RouteSocket(cast(Any, rsock), source, 4001, aad, Reassembly(), phase=1)
            t0 = time.perf_counter()
            for iov, cmsg, _, _ in sealed:
                rsock.load(iov[1], cmsg[-1][2], (source, 4001))
                t.receive(rs)
            t1 = time.perf_counter()
            in_best = min(in_best, (t1 - t0) / a.count * 1e6)
        c = t.counters
        assert c["tunnelled_packets"] == c["extracted_packets"] == a.rounds * a.count, dict(c)
        assert not any(k.startswith("drop_") for k in c), dict(c)
        print(f"{a.size} B: out (queue message -> sealed sendmsg) {out_best:.2f} us, "
              f"in (recvmsg -> host sendmsg) {in_best:.2f} us per packet (best of {a.rounds})")


if __name__ == "__main__":
    main()
