"""Keep-warm: the stream worker's per-packet code run on a dummy packet while the link is idle.

After 0.1 s idle the per-packet Python path runs about ten times slower than back to back: its
code and data fell out of the CPU caches (results/wake/cold.py). So while a stream carried a
packet in the last 2 s, the worker's loop calls :func:`keep_warm` every ``keep_warm_ms`` when it
has nothing else to do, on the tunnel of the stream that carried the latest packet (a shard's
worker carries several: workers/stream.py). The flow of one run:

1. choose the route as a real packet would (on the real sockets: choosing it may lease a flow
   label on the transmit socket, which must never happen on a stand-in);
2. put keep-warm's stand-ins in place of the tunnel's sockets, keys, counters, drop batch, queue
   reader and sent-packet record (:meth:`KeepWarm.stand_ins`): a random key, so the stream's nonce
   counter, replay window, journal and counters are untouched, and sockets that send nothing;
3. a 64-byte echo request from the local host goes through the queue parser, ``on_message`` and
   ``outbound``; what ``outbound`` would have sent comes back through ``receive``, the opening
   and ``inbound``;
4. put everything back, also on error; a dummy that did not make the round trip turns
   keep-warm off (``keep_warm_failed``): a bug, not traffic.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, cast

from mt6d_mp.core import crypto
from mt6d_mp.core.chunks import Reassembly
from mt6d_mp.core.packet import aad_prefix
from mt6d_mp.io import sockets
from mt6d_mp.io.nfqueue import DropBatch, QueueReader, packet_message
from mt6d_mp.io.sentring import SentRing
from workers.path import RouteSocket

if TYPE_CHECKING:
    import socket

    from mt6d_mp.core.messages import RouteUpdate, StreamState
    from workers.path import RouteSocket as _RouteSocket


class Stream(Protocol):
    """What keep-warm runs on: one stream's tunnel (workers/tunnel.py), as far as it uses it."""

    name: str
    queue_num: int
    counters: Counter[str]
    state: StreamState | None
    reader: QueueReader | None
    warm: KeepWarm | None
    true_pair: bytes
    keep_warm_ms: int
    active_until: float

    def _route_now(self) -> RouteUpdate | None: ...
    def on_message(self, pkt_id: int, data: memoryview, info: int, indev: int, mac: bytes) -> None: ...
    def receive(self, rs: _RouteSocket) -> bool: ...


log = logging.getLogger(__name__)



class WarmSocket:
    """keep_warm's stand-in for every socket: hands out one loaded datagram, sends nothing.

    It keeps the tunnel packet ``outbound`` gave it (payload and options) so that the same
    packet can come back through ``receive``.
    """

    def __init__(self) -> None:
        self.data = b""
        self.ancillary: list[tuple[int, int, bytes]] = []
        self.source: tuple[str, int, int, int] | None = None
        self.loaded = False
        self.sent: tuple[bytes, bytes] | None = None

    def load(self, data: bytes, dstopts: bytes = b"",
             source: tuple[str, int] | None = None) -> None:
        self.data, self.loaded, self.sent = data, True, None
        self.ancillary = [sockets.dstopts_cmsg(dstopts)] if dstopts else []
        self.source = (*source, 0, 0) if source else None

    def _take(self, buf: Any) -> int:
        if not self.loaded:
            raise BlockingIOError
        self.loaded = False
        buf[: len(self.data)] = self.data
        return len(self.data)

    def recv_into(self, buf: Any, nbytes: int = 0, flags: int = 0) -> int:
        return self._take(buf)

    def recvmsg_into(self, buffers: Any, ancbufsize: int = 0,
                     flags: int = 0) -> tuple[int, list[tuple[int, int, bytes]], int, Any]:
        return self._take(buffers[0]), self.ancillary, 0, self.source

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        parts = list(buffers)
        if len(parts) == 2 and ancdata:  # outbound's (UDP header, payload) with its options
            dstopts = next((v for lvl, kind, v in ancdata if kind == sockets.DSTOPTS), b"")
            self.sent = (bytes(parts[1]), bytes(dstopts))
        return sum(len(p) for p in parts)

    def sendto(self, data: Any, address: Any = None) -> int:
        return len(data)

    def fileno(self) -> int:
        return -1


class KeepWarm:
    """What keep_warm runs with: its own keys, counters, drop batch, queue reader and socket."""

    def __init__(self, crypt: str, true_pair: bytes, queue: int) -> None:
        ctype, key = crypto.CRYPT_TYPES[crypt], os.urandom(32)
        self.crypt, self.true_pair = crypt, true_pair
        self.sealer, self.opener = crypto.Sealer(ctype, key), crypto.Opener(ctype, key)
        self.counters: Counter[str] = Counter()
        self.sock = WarmSocket()
        self.reader = QueueReader(-1, queue, self.counters, sock=self.sock)
        self.drops = DropBatch(-1, queue, self.counters)
        self.chunks = Reassembly()
        self.sent = SentRing(None)
        # A 64-byte echo request from the local host to the remote one, as the queue hands it.
        packet = (bytes.fromhex("60000000") + struct.pack("!HBB", 64, 58, 64) + true_pair
                  + b"\x80\x00" + bytes(62))
        self.message = packet_message(queue, 1, packet)

    def stand_ins(self, worker: Stream, phase: int) -> dict[str, Any]:
        """The worker's attributes that a run replaces, each with keep-warm's own (one place);
        ``phase`` is the key phase of the route the run uses."""
        assert worker.state is not None
        return {"tx": self.sock, "host": self.sock, "link": self.sock,
                "link_ifindex": worker.state.internal_ifindex, "sealer": self.sealer,
                "openers": {phase: self.opener}, "counters": self.counters, "drops": self.drops,
                "reader": self.reader, "active_until": math.inf,  # no route choice in a run
                "sent": self.sent}


@contextmanager
def standing_in(worker: Stream, values: dict[str, Any]) -> Iterator[None]:
    """Set the worker's attributes named in ``values`` for the block, and put them back."""
    saved = {name: getattr(worker, name) for name in values}
    for name, value in values.items():
        setattr(worker, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(worker, name, value)


def keep_warm(worker: Stream) -> None:
    """Run one packet each way through the worker's real per-packet code, with nothing sent."""
    st = worker.state
    if st is None or worker.reader is None:
        return
    route = worker._route_now()  # on the real sockets (step 1)
    if route is None:
        return
    w = worker.warm
    if w is None or w.crypt != st.crypt or w.true_pair != worker.true_pair:
        w = worker.warm = KeepWarm(st.crypt, worker.true_pair, worker.queue_num)
    delivered = w.counters["extracted_packets"]
    with standing_in(worker, w.stand_ins(worker, route.key_phase)):
        w.sock.load(w.message)
        w.reader.read(worker.on_message)  # -> outbound -> w.sock.sendmsg, kept
        w.drops.waiting = 0
        if w.sock.sent is not None:
            payload, dstopts = w.sock.sent
            source = sockets.sockaddr(route.local_hashed)[0]
            w.sock.load(payload, dstopts, (source, route.local_port))
            aad = aad_prefix(route.local_hashed, route.remote_hashed, route.local_port, route.remote_port)
            # receive() uses only recvmsg_into of its socket, which the stand-in has.
            stand_in = cast("socket.socket", w.sock)
            worker.receive(RouteSocket(stand_in, source, route.local_port, aad, w.chunks,
                                       phase=route.key_phase))
    if w.counters["extracted_packets"] == delivered or any(k.startswith("drop_") for k in w.counters):
        # The next real packet chooses its route again on the real sockets, in case the failed
        # run left the choice half made.
        worker.counters["keep_warm_failed"] += 1
        worker.keep_warm_ms = 0
        worker.active_until = 0.0
        log.warning("event=keep_warm_failed worker=%s counters=%s note=keep-warm off",
                    worker.name, dict(w.counters))
