"""Batched drop verdicts on a real netfilter queue (workers.common.DropBatch).

In a fresh namespace, an ip6tables rule queues UDP datagrams sent to ::1 port 9; a bound
NetfilterQueue hands them to a callback that only records their ids in a DropBatch. The batch
verdicts must take every packet out of the kernel's queue (``/proc/net/netfilter/
nfnetlink_queue`` shows none waiting) and none may reach the listening socket.
"""

from __future__ import annotations

import socket
from collections import Counter

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
