"""A small packet through a stream's real send and receive code (workers/outbound.py,
workers/inbound.py), with stand-in sockets: the inlined send path must put on the wire exactly
what tunnel_pieces makes, sealed per packet, and the receive path must open each once."""

from __future__ import annotations

import os
import struct
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from mt6d_mp.core import crypto
from mt6d_mp.core.chunks import Reassembly
from mt6d_mp.core.messages import PhaseKeys, RouteUpdate, StreamState
from mt6d_mp.core.packet import aad_prefix, tunnel_pieces
from mt6d_mp.core.sentlog import RECORD_LEN, SENT_PREFIX, sent_record, sent_slot
from mt6d_mp.io import sockets
from mt6d_mp.io.nfqueue import DropBatch
from workers.keepwarm import WarmSocket
from workers.path import RouteSocket
from workers.tunnel import RECV_BUFFER, Tunnel

A = bytes.fromhex("20010db8000a000000000000000000a1")
B = bytes.fromhex("20010db8000b000000000000000000b1")
HA, HB = bytes.fromhex("20010db8ffff00000000000000000001"), bytes.fromhex("20010db8ffff00000000000000000002")
KEY = os.urandom(32)


class Tx:
    """The transmit socket: keeps every sendmsg's arguments."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def sendmsg(self, *args: Any) -> int:
        self.sent.append(args)
        return 0


class Link:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def sendmsg(self, iov: Any) -> int:
        self.frames.append(b"".join(bytes(p) for p in iov))
        return 0


def udp_packet(size: int, hop_limit: int = 61, tclass: int = 0xB9) -> bytes:
    first = (6 << 28) | (tclass << 20)
    return (struct.pack("!IHBB", first, 8 + size, 17, hop_limit) + A + B
            + struct.pack("!HHHH", 5001, 5201, 8 + size, 0) + os.urandom(size))


def tunnel(tmp_path: Path, send_phase: int = 1) -> Any:
    worker = SimpleNamespace(queue_num=0, runtime_dir=tmp_path, clock_offset=0.0, keep_warm_ms=0,
                             queue_codel=None, new_codel=lambda: None,
                             bus=None, tx=Tx(), host=WarmSocket(), seg_queue=1, counters=Counter(),
                             rx_buffers=[bytearray(RECV_BUFFER)], reader=None,
                             interface_mtu=lambda ifindex: 1500)
    worker.rx_view = memoryview(worker.rx_buffers[0])
    worker.drops = DropBatch(-1, 0, worker.counters)
    worker.seg_drops = DropBatch(-1, 1, worker.counters)
    t = Tunnel(cast(Any, worker), "s")
    epoch = int(time.time() // 3600)
    route = RouteUpdate("s", epoch, "pending", HA, 4000, HB, 4001, 1)
    st = StreamState("s", 0, A, B, "aes-256-gcm", (PhaseKeys(1, KEY, KEY),), send_phase, 0, 1, 1,
                     1452, 3600.0)
    t.rebuild(st, [route])
    t.host_mac, t.own_mac, t.link, t.link_ifindex = b"\x02" * 6, b"\x04" * 6, Link(), 1
    return t


def test_each_small_packet_is_sealed_on_its_own_exactly_as_tunnel_pieces_seals_it(tmp_path: Path) -> None:
    t = tunnel(tmp_path)
    packets = [udp_packet(200) for _ in range(3)]
    for i, p in enumerate(packets):
        t.on_message(i, memoryview(p), 0, 0, b"")
    assert t.counters["tunnelled_packets"] == 3
    assert t.drops.waiting == 3  # every original dropped (fail closed)
    reference = crypto.Sealer(crypto.CRYPT_AES_256_GCM, KEY, phase=1)
    counters = set()
    for p, (iov, cmsg, _flags, address) in zip(packets, t.tx.sent, strict=True):
        dstopts, udp, payload = tunnel_pieces(p, HA, HB, 4000, 4001, reference)
        assert (bytes(iov[0]), bytes(iov[1])) == (udp, payload)
        assert cmsg == [sockets.pktinfo_cmsg(HA, 1), sockets.HOPLIMIT_CMSG[61],
                        sockets.TCLASS_CMSG[0xB8], sockets.dstopts_cmsg(dstopts)]  # ECN cleared
        assert address[0] == "2001:db8:ffff::2"
        counters.add(dstopts)
        at = sent_slot(dstopts) * RECORD_LEN  # recorded for the ICMP worker's check
        assert t.sent._mm[at : at + RECORD_LEN] == sent_record(dstopts, payload[:SENT_PREFIX])
    assert len(counters) == 3  # a nonce per datagram


def test_what_was_sent_opens_once_and_a_replay_is_counted(tmp_path: Path) -> None:
    t = tunnel(tmp_path)
    p = udp_packet(200)
    t.on_message(1, memoryview(p), 0, 0, b"")
    (iov, cmsg, _, _), = t.tx.sent
    rsock = WarmSocket()
    source = sockets.sockaddr(HA)[0]
    rs = RouteSocket(cast(Any, rsock), source, 4000, aad_prefix(HA, HB, 4000, 4001), Reassembly(),
                     phase=1)
    for _ in range(2):
        rsock.load(bytes(iov[1]), cmsg[-1][2], (source, 4000))
        t.receive(rs)
    (frame,) = t.link.frames
    inner = frame[10 + 14:]
    assert inner[8:24] == B and inner[24:40] == A  # the true addresses, as seen from this end
    assert inner[48:] == p[48:]  # the UDP payload, unchanged
    assert t.counters["drop_replay"] == 1


def test_a_bad_inner_packet_or_no_key_sends_nothing_and_still_drops(tmp_path: Path) -> None:
    t = tunnel(tmp_path)
    p = bytearray(udp_packet(200))
    p[5] ^= 1  # payload length no longer matches
    t.on_message(1, memoryview(bytes(p)), 0, 0, b"")
    assert t.counters["drop_bad_inner"] == 1
    (tmp_path / "other").mkdir()
    nokey = tunnel(tmp_path / "other", send_phase=-1)
    nokey.on_message(2, memoryview(udp_packet(200)), 0, 0, b"")
    assert nokey.counters["drop_no_key"] == 1
    assert t.tx.sent == [] and nokey.tx.sent == []
    assert t.drops.waiting == 1 and nokey.drops.waiting == 1


class Stamped:
    """A queue reader whose packet waited ``waited`` seconds in the queue (NFQA_TIMESTAMP)."""

    def __init__(self, waited: float) -> None:
        self.waited = waited

    def queued_at(self) -> float:
        return time.time() - self.waited


def tcp_super_packet(size: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 5001, 5201, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    return struct.pack("!IHBB", 6 << 28, len(tcp) + size, 6, 64) + A + B + tcp + os.urandom(size)


def test_the_senders_queue_management_drops_a_bulk_packet_that_waited_too_long(tmp_path: Path) -> None:
    """CoDel on the netfilter queue (workers/outbound.py, outbound_large): a TCP super-packet
    that waited longer than the target, after an interval of such waits, is dropped and counted
    instead of sealed and sent; one that did not wait goes. Small packets never meet it."""
    from mt6d_mp.core.aqm import CoDel

    t = tunnel(tmp_path)
    t.worker.queue_codel = CoDel(0.001, 0.01)
    big = memoryview(tcp_super_packet(20000))
    t.reader = Stamped(0.0)
    t.outbound_large(big, 0)
    assert t.counters["messages_sent"] == 1 and "aqm_dropped_queued" not in t.counters
    t.reader = Stamped(0.05)  # a standing queue: 50 ms against 1 ms
    t.outbound_large(big, 0)  # the wait's first look starts the interval
    time.sleep(0.02)  # past the interval
    t.outbound_large(big, 0)
    assert t.counters["aqm_dropped_queued"] == 1 and t.counters["messages_sent"] == 2, t.counters
    t.outbound(memoryview(udp_packet(200)))  # a single packet: never dropped here
    assert t.counters["tunnelled_packets"] == 3 and t.counters["aqm_dropped_queued"] == 1
    t.reader = Stamped(0.0)  # the queue drained: the dropping stops
    t.outbound_large(big, 0)
    assert t.counters["messages_sent"] == 3 and t.counters["aqm_dropped_queued"] == 1
