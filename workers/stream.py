"""Stream worker: one process per stream queue (thesis 3.2.4, figure 3.7), carrying every
stream whose profile names that queue (a shard).

The process reads the queue and its segmenting queue (mt6d_mp.io.nfqueue, with a host's TCP
super-packets whole) and hands each packet to its stream's :class:`~workers.tunnel.Tunnel` by
the packet's true addresses; each tunnel's route sockets are watched by the same loop. State
comes from the bus (``rebuild``): a tunnel per stream of this queue, rebuilt only when its state
or routes changed. With one stream the queue's packets go straight to its tunnel.

Malformed and unauthenticated packets are counted by reason and never answered.

Usage (the supervisor starts it): ``python -m workers.stream --runtime-dir DIR --name WORKER
--queue N``.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
from collections.abc import Callable
from typing import Any

from mt6d_mp.core.queues import segment_queue
from mt6d_mp.io import sockets
from mt6d_mp.io.nfqueue import (
    BoundQueue,
    DropBatch,
    QueueReader,
)
from workers.common import Worker, main
from workers.tunnel import RECV_BUFFER, Tunnel

log = logging.getLogger(__name__)

ADDRESSES = slice(8, 40)  # a packet's source and destination addresses

Handler = Callable[[int, memoryview, int, int, bytes], None]


def raise_fd_limit() -> None:
    """A shard of many streams holds a UDP socket per accepted route of each (six or so a
    stream): take the hard limit of open files rather than the soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class StreamWorker(Worker):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        raise_fd_limit()
        self.tx = sockets.tunnel_socket()
        self.host = sockets.host_socket()
        rx_buffer = bytearray(RECV_BUFFER)
        self.rx_buffers = [rx_buffer]
        self.rx_view = memoryview(rx_buffer)
        self.reader: QueueReader | None = None
        # The segmenting queue (mt6d_mp.core.queues): bound without the GSO flag, so the kernel
        # cuts what arrives there (a host's UDP GSO packets) into datagrams.
        self.seg_queue = segment_queue(self.queue_num)
        self.seg_bound: BoundQueue | None = None
        self.seg_reader: QueueReader | None = None
        self.seg_drops = DropBatch(-1, self.seg_queue, self.counters)
        self.tunnels: dict[str, Tunnel] = {}  # by stream name
        self.by_pair: dict[bytes, Tunnel] = {}  # by true addresses, local then remote
        self.only: Tunnel | None = None  # the one tunnel, when the shard has one stream
        self.last: Tunnel | None = None  # the tunnel of the latest packet (keep-warm runs it)
        self._mtu: tuple[int, int, int] = (-1, -1, 0)  # (ifindex, loop turn, MTU)

    def interface_mtu(self, ifindex: int) -> int:
        """The interface's MTU, asked of the kernel once per turn of the loop at most (a
        rotation rebuilds every tunnel of the shard in one turn)."""
        if self._mtu[:2] != (ifindex, self.turn):
            self._mtu = (ifindex, self.turn, sockets.interface_mtu(ifindex))
        return self._mtu[2]

    # --- state from the bus -------------------------------------------------------------------

    def rebuild(self) -> None:
        replica = self.bus.replica
        touched = replica.take_touched()
        mine = {n: st for n, st in replica.streams.items() if st.queue == self.queue_num}
        for name in [n for n in self.tunnels if n not in mine]:
            self.tunnels.pop(name).close()
        changed = set(mine) if touched is None else touched & set(mine)
        for name in changed:
            t = self.tunnels.get(name)
            if t is None:
                t = self.tunnels[name] = Tunnel(self, name)
            t.rebuild(mine[name], replica.routes_of(name))
        self.by_pair = {t.true_pair: t for t in self.tunnels.values()}
        self.only = next(iter(self.tunnels.values())) if len(self.tunnels) == 1 else None
        if self.last is not None and self.last.state is None:
            self.last = None
        for m in replica.outbox:
            t = self.tunnels.get(m.stream)
            if t is not None:
                t.send_exchange(m)
        replica.outbox.clear()

    # --- the queues ---------------------------------------------------------------------------

    def on_bound(self) -> None:
        """Read the queue ourselves, with GSO packets queued whole (mt6d_mp.io.nfqueue), and
        bind the segmenting queue, read the same way but with GSO packets cut by the kernel."""
        self.reader = QueueReader(self.drops.fd, self.queue_num, self.counters)
        self.reader.configure(gso=True)
        for t in self.tunnels.values():
            t.reader = self.reader
        self.seg_bound = BoundQueue(self.seg_queue, self._callback)
        self.seg_drops.fd = self.seg_bound.fd
        self.seg_reader = QueueReader(self.seg_drops.fd, self.seg_queue, self.counters)
        self.seg_reader.configure(gso=False)
        self.watch(self.seg_drops.fd, self.run_segments)

    def on_stop(self) -> None:
        if self.seg_bound is not None:
            self.seg_bound.unbind()
            self.seg_bound = None

    def read_queue(self) -> None:
        assert self.reader is not None
        only = self.only
        self.reader.read(only.on_message if only is not None else self.dispatch)
        self.drops.flush()

    def run_segments(self) -> None:
        assert self.seg_reader is not None
        only = self.only
        self.seg_reader.read(only.on_segment if only is not None else self.dispatch_segment)
        self.seg_drops.flush()

    def dispatch(self, pkt_id: int, data: memoryview, info: int, indev: int, mac: bytes) -> None:
        """A queued packet to the tunnel of its addresses (several streams in this queue)."""
        t = self.by_pair.get(bytes(data[ADDRESSES]))
        if t is None:  # the rules queue nothing else; count it rather than trust that
            self.counters["drop_not_stream"] += 1
            self.drops.add(pkt_id)
            return
        self.last = t
        t.on_message(pkt_id, data, info, indev, mac)

    def dispatch_segment(self, pkt_id: int, data: memoryview, info: int, indev: int,
                         mac: bytes) -> None:
        t = self.by_pair.get(bytes(data[ADDRESSES]))
        if t is None:
            self.counters["drop_not_stream"] += 1
            self.seg_drops.add(pkt_id)
            return
        t.on_segment(pkt_id, data, info, indev, mac)

    # --- the loop's other calls ---------------------------------------------------------------

    def keep_warm(self) -> None:
        """Keep-warm runs the stream that carried the latest packet (workers/keepwarm.py)."""
        t = self.only or self.last
        if t is not None and t.keep_warm_ms:
            t.keep_warm()

    def stats(self) -> dict[str, Any]:
        """The worker's own counters, and each stream's under ``streams``."""
        out: dict[str, Any] = dict(self.counters)
        out["streams"] = {n: dict(t.counters) for n, t in self.tunnels.items()}
        return out


if __name__ == "__main__":
    sys.exit(main(StreamWorker, __doc__ or "stream worker"))
