"""What a stream's send and receive paths share: the route socket record and the stream's
state they read (set by Tunnel in workers/tunnel.py).

A stream is one class built from files, one per stage, as wireguard-go's ``device/`` is:
workers/outbound.py (host -> tunnel), workers/inbound.py (tunnel -> host) and workers/tunnel.py
(the stream's state from the bus, its sockets); workers/stream.py is the process that carries
the streams of one queue. This module holds what the first two read.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from mt6d_mp.core import crypto
from mt6d_mp.core.aqm import CoDel
from mt6d_mp.core.chunks import Reassembly
from mt6d_mp.core.messages import RouteUpdate, StreamState
from mt6d_mp.io import sockets
from mt6d_mp.io.bus import BusClient
from mt6d_mp.io.nfqueue import DropBatch, QueueReader
from mt6d_mp.io.sentring import SentRing

if TYPE_CHECKING:
    from workers.stream import StreamWorker


class RouteSocket(NamedTuple):
    """A bound UDP socket for one accepted route, with what checks its datagrams."""

    sock: socket.socket
    remote: str  # the peer's hashed address as the socket module reports sources
    remote_port: int
    aad: bytes  # outer source, destination and ports: the AEAD's associated data prefix
    chunks: Reassembly  # messages in chunks not yet complete
    fd: int = -1  # the socket's descriptor, as the poller reports it
    phase: int = 0  # the key phase whose secret hashed the route (its opener opens its packets)
    local: bytes = b""  # our hashed address and port: how the supervisor knows the route
    local_port: int = 0


class StreamPath:
    """The attributes both paths use."""

    # Declared here, set by Tunnel (workers/tunnel.py): what the send and receive paths use.
    worker: StreamWorker  # the process: what the shard's streams share
    drained: int
    name: str
    queue_num: int
    counters: Counter[str]
    drops: DropBatch
    state: StreamState | None
    bus: BusClient
    keyx_tokens: float
    keyx_refilled: float
    codel: CoDel | None
    sealer: crypto.Sealer | None
    openers: dict[int, crypto.Opener]  # by key phase
    routes: dict[tuple[int, int], RouteUpdate]  # (key phase, epoch)
    sockets: dict[tuple[bytes, int], RouteSocket]
    socket_order: list[RouteSocket]
    active: RouteUpdate | None
    active_until: float
    clock_offset: float
    tx: socket.socket
    host: socket.socket
    tx_pktinfo: tuple[int, int, bytes]
    tx_addr: tuple[str, int, int, int]
    tx_aad: bytes  # the active route's associated data prefix (packet.aad_prefix)
    host_addr: tuple[str, int, int, int]
    local: bytes
    remote: bytes
    true_pair: bytes
    address_sum: int  # the remote and local addresses' part of the pseudo-header sum
    leased_label: int
    rx_buffers: list[bytearray]
    rx_view: memoryview
    host_mac: bytes
    own_mac: bytes
    link: socket.socket | None
    link_ifindex: int
    chunk_segments: dict[tuple[bytes, int], int]
    sent: SentRing | None
    max_datagram: int
    seg_queue: int
    seg_drops: DropBatch
    reader: QueueReader | None

    # Tunnel's methods (workers/tunnel.py), declared without a body so that they do not shadow
    # Tunnel's in its method order.
    internal_error: Callable[[], None]
    _run_segments: Callable[[], None]

    def _send_host(self, packet: bytes, what: str) -> None:
        """A packet of the gateway's own (Packet Too Big) to the local host, on the raw socket."""
        try:
            self.host.sendto(packet, self.host_addr)
        except OSError as e:
            self.counters[f"drop_send_{what}_" + sockets.errno_name(e.errno)] += 1
