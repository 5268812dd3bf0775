"""Batched drop verdicts on a real netfilter queue (mt6d_mp.io.nfqueue.DropBatch).

In a fresh namespace, an ip6tables rule queues UDP datagrams sent to ::1 port 9; a bound
NetfilterQueue hands them to a callback that only records their ids in a DropBatch. The batch
verdicts must take every packet out of the kernel's queue (``/proc/net/netfilter/
nfnetlink_queue`` shows none waiting) and none may reach the listening socket.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable

import pytest

from tests import nsutil

pytestmark = pytest.mark.netns

QUEUE = 7
PORT = 9


def _waiting(queue: int) -> int:
    """Packets the kernel holds for ``queue`` (field 3 of nfnetlink_queue)."""
    with open("/proc/net/netfilter/nfnetlink_queue") as f:
        for line in f:
            fields = line.split()
            if int(fields[0]) == queue:
                return int(fields[2])
    raise AssertionError(f"queue {queue} not bound")


def _run(count: int, flush_at_end: bool) -> tuple[int, int, int, int]:
    from netfilterqueue import NetfilterQueue

    from mt6d_mp.io.nfqueue import BATCH_MAX, DropBatch

    nsutil.run(["ip", "link", "set", "lo", "up"])
    nsutil.run(["ip6tables-legacy", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", str(PORT),
                "-j", "NFQUEUE", "--queue-num", str(QUEUE)])
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind(("::1", PORT))
    rx.setblocking(False)
    counters: Counter[str] = Counter()
    nfq = NetfilterQueue()
    ids: list[int] = []
    drops = DropBatch(-1, QUEUE, counters)

    def callback(pkt: object) -> None:
        ids.append(pkt.id)  # type: ignore[attr-defined]
        drops.add(pkt.id)  # type: ignore[attr-defined]

    nfq.bind(QUEUE, callback)
    try:
        drops.fd = nfq.get_fd()
        tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        for i in range(count):
            tx.sendto(i.to_bytes(4, "big"), ("::1", PORT))
        while len(ids) < count:
            nfq.run(block=False)
        if flush_at_end:
            drops.flush()
        waiting = _waiting(QUEUE)
        delivered = 0
        try:
            while rx.recv(64):
                delivered += 1
        except BlockingIOError:
            pass
        assert len(set(ids)) == count and BATCH_MAX == 64
        return waiting, delivered, counters["verdict_batches"], drops.waiting
    finally:
        nfq.unbind()


def test_batched_drops_empty_the_queue_and_deliver_nothing(netns: str) -> None:
    waiting, delivered, batches, left = nsutil.call_in(netns, _run, 150, True)
    assert (waiting, delivered, left) == (0, 0, 0)
    assert batches == 3  # at 64 and 128 packets, and the rest once the queue was drained


def test_without_the_final_batch_the_kernel_still_holds_the_rest(netns: str) -> None:
    """The control: what the last flush is for (and proof the check above can fail)."""
    waiting, delivered, batches, left = nsutil.call_in(netns, _run, 150, False)
    assert (waiting, delivered, batches, left) == (150 - 128, 0, 2, 22)


# --- QueueReader: whole GSO packets (mt6d_mp.io.nfqueue) ----------------------------------------------
TCP_PORT = 5001


def _read_tcp_messages(sender_ns: str, gso: bool, stamps: bool = False) -> list[tuple[int, int]]:
    """(length, skb info) of every data-carrying TCP packet queued while a peer sends 1 MB;
    with ``stamps``, a route socket with receive timestamps is open meanwhile (as a stream
    worker with queue management has), and each entry is (length, seconds the packet had
    whether its time lies between the start of the transfer and the moment it was read, or None
    if it came without a time).

    Runs in the receiving namespace: the handshake passes (only packets longer than 200 bytes
    are queued), the data is dropped in batches, so the sender keeps retransmitting.
    """
    import subprocess
    import time

    from netfilterqueue import NetfilterQueue

    from mt6d_mp.io.nfqueue import DropBatch, QueueReader

    nsutil.run(["ip6tables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", str(TCP_PORT),
                "-m", "length", "--length", "200:65535", "-j", "NFQUEUE", "--queue-num", str(QUEUE)])
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("fd00:7::2", TCP_PORT))
    listener.listen()
    counters: Counter[str] = Counter()
    nfq = NetfilterQueue()
    nfq.bind(QUEUE, lambda pkt: None)
    seen: list[tuple[int, int]] = []
    stamped = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    if stamps:
        from mt6d_mp.io.sockets import SO_TIMESTAMPNS
        stamped.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    started = time.time()
    sender = subprocess.Popen(
        ["ip", "netns", "exec", sender_ns, "python3", "-c",
         f"import socket; s = socket.create_connection(('fd00:7::2', {TCP_PORT})); "
         "s.sendall(bytes(1 << 20))"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        drops = DropBatch(nfq.get_fd(), QUEUE, counters)
        reader = QueueReader(nfq.get_fd(), QUEUE, counters)
        reader.configure(gso)

        def handle(pkt_id: int, payload: memoryview, info: int, indev: int, mac: bytes) -> None:
            queued = reader.queued_at()
            seen.append((len(payload), started <= queued <= time.time() if queued is not None
                         else None) if stamps else (len(payload), info))
            drops.add(pkt_id)

        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(seen) < 40:
            reader.read(handle)
            drops.flush()
            time.sleep(0.01)
        reader.close()
        return seen
    finally:
        sender.kill()
        sender.wait()
        nfq.unbind()
        listener.close()
        stamped.close()


def _two_namespaces(make: Callable[[str], str]) -> tuple[str, str]:
    host, gateway = make("h"), make("g")
    nsutil.veth(host, "vh", gateway, "vg")
    nsutil.run_in(host, ["ip", "addr", "add", "fd00:7::1/64", "dev", "vh", "nodad"])
    nsutil.run_in(gateway, ["ip", "addr", "add", "fd00:7::2/64", "dev", "vg", "nodad"])
    return host, gateway


def test_the_reader_gets_a_hosts_tcp_super_packets_whole(netns_factory: Callable[[str], str]) -> None:
    from mt6d_mp.io.nfqueue import NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO

    host, gateway = _two_namespaces(netns_factory)
    seen = nsutil.call_in(gateway, _read_tcp_messages, host, True)
    assert seen, "no TCP data was queued"
    big = [(n, info) for n, info in seen if n > 1500]
    assert big, f"no packet above the MTU: {seen[:10]}"
    assert all(info & NFQA_SKB_GSO and info & NFQA_SKB_CSUMNOTREADY for _, info in big)


def test_without_the_gso_flag_the_kernel_segments_before_queueing(
    netns_factory: Callable[[str], str],
) -> None:
    """The control: the same traffic, queue flag off, never shows a packet above the MTU."""
    host, gateway = _two_namespaces(netns_factory)
    seen = nsutil.call_in(gateway, _read_tcp_messages, host, False)
    assert seen, "no TCP data was queued"
    assert max(n for n, _ in seen) <= 1500


def test_with_receive_timestamps_on_each_queued_packet_carries_its_time(
    netns_factory: Callable[[str], str],
) -> None:
    """While a socket with SO_TIMESTAMPNS is open (a stream worker's route socket with queue
    management), the kernel stamps every packet it receives and hands the time to the queue's
    reader (NFQA_TIMESTAMP): the sending worker's queue management reads the wait from it."""
    host, gateway = _two_namespaces(netns_factory)
    seen = nsutil.call_in(gateway, _read_tcp_messages, host, True, True)
    assert seen, "no TCP data was queued"
    in_order = [w for _, w in seen]
    assert None not in in_order, seen[:10]
    assert all(in_order), seen[:10]  # on time.time()'s clock: after the start, before the read


SEG_QUEUE = QUEUE + 32768  # mt6d_mp.core.queues.segment_queue(QUEUE)
UDP_PORT = 5555


def _requeue_udp_gso(sender_ns: str) -> tuple[list[int], int, list[tuple[int, int]]]:
    """A host's UDP GSO packets (4 x 1000-byte datagrams each) queued whole on QUEUE and moved
    with an NF_QUEUE verdict to SEG_QUEUE: first while nothing reads SEG_QUEUE, then bound
    without the GSO flag. Returns the queued GSO packets' lengths, how many datagrams reached
    the socket while SEG_QUEUE had no reader, and (length, info) of what SEG_QUEUE got."""
    import os
    import subprocess
    import time

    from netfilterqueue import NetfilterQueue

    from mt6d_mp.io.nfqueue import NFQA_SKB_GSO, DropBatch, QueueReader, requeue_message

    nsutil.run(["ip6tables-legacy", "-A", "INPUT", "-p", "udp", "--dport", str(UDP_PORT),
                "-j", "NFQUEUE", "--queue-num", str(QUEUE)])
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind(("fd00:7::2", UDP_PORT))
    rx.setblocking(False)
    counters: Counter[str] = Counter()
    nfq, seg = NetfilterQueue(), NetfilterQueue()
    nfq.bind(QUEUE, lambda pkt: None)
    reader = QueueReader(nfq.get_fd(), QUEUE, counters)
    reader.configure(True)
    queued: list[int] = []

    def requeue(pkt_id: int, payload: memoryview, info: int, indev: int, mac: bytes) -> None:
        assert info & NFQA_SKB_GSO, (len(payload), info)
        queued.append(len(payload))
        os.write(nfq.get_fd(), requeue_message(QUEUE, pkt_id, SEG_QUEUE))

    def send(count: int) -> None:
        subprocess.run(
            ["ip", "netns", "exec", sender_ns, "python3", "-c",
             "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
             "s.setsockopt(socket.SOL_UDP, 103, 1000); "
             f"[s.sendto(bytes(4000), ('fd00:7::2', {UDP_PORT})) for _ in range({count})]"],
            check=True)

    def pump(until: Callable[[], bool], also: Callable[[], None] = lambda: None) -> None:
        deadline = time.monotonic() + 5
        while not until() and time.monotonic() < deadline:
            reader.read(requeue)
            also()
            time.sleep(0.01)

    def received() -> int:
        n = 0
        while True:
            try:
                rx.recv(65535)
            except BlockingIOError:
                return n
            n += 1

    try:
        send(3)
        pump(lambda: len(queued) >= 3)
        time.sleep(0.3)
        unbound = received()
        seg.bind(SEG_QUEUE, lambda pkt: None)
        seg_reader = QueueReader(seg.get_fd(), SEG_QUEUE, counters)
        seg_reader.configure(False)
        drops = DropBatch(seg.get_fd(), SEG_QUEUE, counters)
        cut: list[tuple[int, int]] = []

        def take(pkt_id: int, payload: memoryview, info: int, indev: int, mac: bytes) -> None:
            cut.append((len(payload), info))
            drops.add(pkt_id)

        def read_cut() -> None:
            seg_reader.read(take)
            drops.flush()

        send(3)
        pump(lambda: len(cut) >= 12, read_cut)
        time.sleep(0.3)
        read_cut()
        assert received() == 0, "a segment passed although it was dropped"
        return queued, unbound, cut
    finally:
        seg.unbind()
        nfq.unbind()
        rx.close()


def test_a_requeued_udp_gso_packet_is_dropped_without_a_reader_and_cut_with_one(
    netns_factory: Callable[[str], str],
) -> None:
    """What the stream worker's segmenting queue relies on (workers/stream.py,
    to_segmenting_queue): NF_QUEUE to a queue nobody reads drops (fail closed, no bypass);
    to a queue bound without the GSO flag, the kernel cuts the packet into its datagrams."""
    from mt6d_mp.io.nfqueue import NFQA_SKB_GSO

    host, gateway = _two_namespaces(netns_factory)
    queued, unbound, cut = nsutil.call_in(gateway, _requeue_udp_gso, host)
    assert queued == [40 + 8 + 4000] * 6, queued  # whole: IPv6 + UDP header + 4 datagrams
    assert unbound == 0, "a requeued packet got through while the segmenting queue had no reader"
    assert [n for n, _ in cut] == [40 + 8 + 1000] * 12, cut
    assert not any(info & NFQA_SKB_GSO for _, info in cut), cut
