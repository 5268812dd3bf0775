"""Batched drop verdicts on a real netfilter queue (workers.common.DropBatch).

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

    from workers.common import BATCH_MAX, DropBatch

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


def _read_tcp_messages(sender_ns: str, gso: bool) -> list[tuple[int, int]]:
    """(length, skb info) of every data-carrying TCP packet queued while a peer sends 1 MB.

    Runs in the receiving namespace: the handshake passes (only packets longer than 200 bytes
    are queued), the data is dropped in batches, so the sender keeps retransmitting.
    """
    import subprocess
    import time

    from netfilterqueue import NetfilterQueue

    from mt6d_mp.io.nfqueue import QueueReader
    from workers.common import DropBatch

    nsutil.run(["ip6tables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", str(TCP_PORT),
                "-m", "length", "--length", "200:65535", "-j", "NFQUEUE", "--queue-num", str(QUEUE)])
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("fd00:7::2", TCP_PORT))
    listener.listen()
    counters: Counter[str] = Counter()
    nfq = NetfilterQueue()
    nfq.bind(QUEUE, lambda pkt: None)
    seen: list[tuple[int, int]] = []
    sender = subprocess.Popen(
        ["ip", "netns", "exec", sender_ns, "python3", "-c",
         f"import socket; s = socket.create_connection(('fd00:7::2', {TCP_PORT})); "
         "s.sendall(bytes(1 << 20))"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        drops = DropBatch(nfq.get_fd(), QUEUE, counters)
        reader = QueueReader(nfq.get_fd(), QUEUE, counters)
        reader.configure(gso)

        def handle(pkt_id: int, payload: memoryview, info: int, indev: int, mac: bytes) -> None:
            seen.append((len(payload), info))
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
