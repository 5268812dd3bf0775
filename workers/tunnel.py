"""One stream's tunnel inside a stream worker: its keys, routes, sockets and counters.

A stream worker (workers/stream.py) reads one netfilter queue and carries every stream whose
profile names that queue (a shard). Each stream is one :class:`Tunnel`, built from the stage
files as wireguard-go's ``device/`` is:

* workers/outbound.py: a host's packet from the queue into the tunnel;
* workers/inbound.py: a tunnel packet from one of the stream's route sockets to the host;
* workers/keepwarm.py: both run on a dummy packet while the link is idle;
* this file: the stream's state from the bus (:meth:`Tunnel.rebuild`), one UDP socket per
  accepted route, the replay journals, the sent-packet record.

What the streams of a shard share lives in the worker and is handed to each tunnel once: the
queue's drop batch, the segmenting queue, the transmit and host sockets, the receive buffer
and the bus. Counters are the tunnel's own, so that the status reports per stream.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from mt6d_mp.core import crypto
from mt6d_mp.core.aqm import CoDel
from mt6d_mp.core.chunks import Reassembly
from mt6d_mp.core.messages import KeyxSend, RouteUpdate, StreamState
from mt6d_mp.core.packet import IPV6_HDR_LEN, UDP_HDR_LEN, aad_prefix
from mt6d_mp.io import sockets
from mt6d_mp.io.journal import ReplayJournal
from mt6d_mp.io.journal import fingerprint as journal_fingerprint
from mt6d_mp.io.sentring import SentRing, ring_path
from workers.inbound import Inbound
from workers.keepwarm import KeepWarm, keep_warm
from workers.outbound import Outbound
from workers.path import RouteSocket

if TYPE_CHECKING:
    from workers.stream import StreamWorker

log = logging.getLogger("workers.stream")

RECV_BUFFER = 65535


class Tunnel(Outbound, Inbound):
    def __init__(self, worker: StreamWorker, name: str) -> None:
        self.worker = worker
        self.name = name
        self.counters: Counter[str] = Counter()
        # What the shard's streams share (see the module docstring).
        self.queue_num = worker.queue_num
        self.runtime_dir: Path = worker.runtime_dir
        self.clock_offset = worker.clock_offset
        self.keep_warm_ms = worker.keep_warm_ms
        self.bus = worker.bus
        self.tx, self.host = worker.tx, worker.host
        self.drops, self.seg_drops = worker.drops, worker.seg_drops
        self.seg_queue = worker.seg_queue
        self.rx_buffers, self.rx_view = worker.rx_buffers, worker.rx_view
        self.reader = worker.reader
        self.drained = -1  # the worker's turn in which this tunnel's sockets were last drained
        self.state: StreamState | None = None
        self.sealer: crypto.Sealer | None = None
        self.openers: dict[int, crypto.Opener] = {}  # by key phase
        self.journals: dict[int, ReplayJournal] = {}  # by key phase, beside each opener
        self.routes: dict[tuple[int, int], RouteUpdate] = {}  # (key phase, epoch)
        self.keyx_tokens = 0.0
        self.keyx_refilled = 0.0
        # Queue management of the stream's route sockets (mt6d_mp.core.aqm): drops a bulk
        # message that waited too long, so that a transfer does not keep a standing queue.
        self.codel: CoDel | None = worker.new_codel()
        self.sockets: dict[tuple[bytes, int], RouteSocket] = {}  # (local hashed, port) -> socket
        self.socket_order: list[RouteSocket] = []  # oldest route first
        # The active route, precomputed for the hot path; recomputed at each epoch boundary.
        self.active: RouteUpdate | None = None
        self.active_until = 0.0
        self.tx_pktinfo: tuple[int, int, bytes] = (0, 0, b"")
        self.tx_addr: tuple[str, int, int, int] = ("::", 0, 0, 0)
        self.tx_aad = b""
        self.host_addr: tuple[str, int, int, int] = ("::", 0, 0, 0)
        self.local = b""
        self.remote = b""
        self.true_pair = b""  # local + remote: what an outbound packet carries at offset 8
        self.address_sum = 0  # int(remote) + int(local): their part of the pseudo-header sum
        self.leased_label = 0
        # Delivery of whole TCP super-packets to the host (see deliver_large): the host's MAC,
        # learned from its own packets in the queue, ours, and a packet socket on that link.
        self.host_mac = b""
        self.own_mac = b""
        self.link: socket.socket | None = None
        self.link_ifindex = 0
        # UDP payload per chunk, per route socket, once the kernel reported a narrower path.
        self.chunk_segments: dict[tuple[bytes, int], int] = {}
        self.warm: KeepWarm | None = None  # keep_warm's stand-ins, made on first use
        # The largest UDP payload that can arrive unfragmented on the external link. A bigger
        # datagram was reassembled from fragments (possible only if another rule set loads the
        # kernel's IPv6 defragmentation; ours drops fragments from outside): never ours.
        self.max_datagram = RECV_BUFFER
        # What this stream sent, for the ICMP worker to check the quotes of errors against
        # (mt6d_mp.core.sentlog). Without it no error about our packets reaches the host.
        self.sent: SentRing | None = None
        try:
            self.sent = SentRing(ring_path(self.runtime_dir, name))
        except OSError as e:
            self.counters["sent_ring_failed"] += 1
            log.warning("event=sent_ring_failed stream=%s error=%s note=errors about this "
                        "stream's packets will not reach the host", name, e)

    def internal_error(self) -> None:
        """Count a bug met while handling one packet; log the first with its traceback."""
        self.counters["drop_internal_error"] += 1
        if self.counters["drop_internal_error"] == 1:
            log.exception("event=internal_error stream=%s (logged once; counted after)", self.name)

    def _run_segments(self) -> None:
        self.worker.run_segments()

    # --- state from the bus -------------------------------------------------------------------

    def rebuild(self, st: StreamState, routes: list[RouteUpdate]) -> None:
        old = self.state
        self.state = st
        ctype = crypto.CRYPT_TYPES[st.crypt]
        keys = st.keys(st.send_phase)
        if keys is None:
            self.sealer = None  # no fresh key: nothing is sent (fail closed)
        elif (old is None or self.sealer is None or old.lane != st.lane or old.crypt != st.crypt
              or old.send_phase != st.send_phase or old.keys(st.send_phase) != keys):
            # A phase's key is new, or this start's lane is: the counter starts at 0 and no
            # (key, lane, counter) is ever used twice (docs/PROTOCOL.md 2).
            self.sealer = crypto.Sealer(ctype, keys.tx_key, lane=st.lane, phase=keys.phase)
        openers = {}
        for k in st.phases:
            opener = self.openers.get(k.phase)
            if (opener is None or old is None or old.crypt != st.crypt
                    or old.keys(k.phase) != k):
                opener = crypto.Opener(ctype, k.rx_key, phase=k.phase)
                self.open_journal(st, opener, k.phase, k.rx_key)
            openers[k.phase] = opener
        self.set_openers(openers)
        self.local, self.remote = st.local, st.remote
        self.true_pair = st.local + st.remote
        self.address_sum = int.from_bytes(st.remote, "big") + int.from_bytes(st.local, "big")
        try:
            self.max_datagram = self.worker.interface_mtu(st.external_ifindex) - IPV6_HDR_LEN - UDP_HDR_LEN
        except OSError:
            self.max_datagram = RECV_BUFFER
        self.host_addr = sockets.sockaddr(st.local)
        if st.host_mode:
            self.deliver_locally(st.internal_ifindex)
        self.routes = {(r.key_phase, r.epoch): r for r in routes}
        self.update_sockets()
        self.active_until = 0.0  # choose the active route again on the next packet

    def close(self) -> None:
        """The stream left the shard: its sockets, journals (and their files) and record go."""
        self.state = None
        self.sealer = None
        self.set_openers({})
        self.routes = {}
        self.update_sockets()
        self.active, self.active_until = None, 0.0
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.sent is not None:
            self.sent.close()
            self.sent = None

    def deliver_locally(self, loopback: int) -> None:
        """Host mode: the local host is this machine. Its packets come from OUTPUT (no MAC to
        learn), and the remote host's go to its own stack through a packet socket on the
        loopback interface, addressed to loopback's own MAC: loopback hands every frame it
        sends back to this machine's input path (``-i lo`` in the firewall), as if it had come
        from the remote host, and a checksum left to complete, or a TCP super-packet, is taken
        as a NIC driver hands it over (docs/KERNEL.md, "Host mode"). Without the socket the raw
        socket takes the same path, with the checksum completed here."""
        link = self.link_socket(loopback)
        self.host_mac = self.own_mac if link is not None else b""

    def set_openers(self, openers: dict[int, crypto.Opener]) -> None:
        """Keep these openers; close the journals of phases that went (their files too)."""
        for phase in [p for p in self.journals if p not in openers]:
            self.journals.pop(phase).close()
            (self.runtime_dir / f"replay-{self.name}-{phase}.bin").unlink(missing_ok=True)
        self.openers = openers

    def open_journal(self, st: StreamState, opener: crypto.Opener, phase: int, key: bytes) -> None:
        """Resume above what the journal of this key holds, then journal every accepted packet."""
        old = self.journals.pop(phase, None)
        if old is not None:
            old.close()
        if st.crypt == "none":
            return  # no authentication, no replay window
        path = self.runtime_dir / f"replay-{self.name}-{phase}.bin"
        try:
            journal = ReplayJournal(path, journal_fingerprint(key, phase))
        except OSError as e:
            self.counters["replay_journal_failed"] += 1
            log.warning("event=replay_journal_failed stream=%s path=%s error=%s note=a successor "
                        "will not know what this worker accepted", self.name, path, e)
            return
        for lane, top in journal.floors():
            opener.resume_above(lane, top)
        opener.on_commit = journal.record
        self.journals[phase] = journal

    def send_exchange(self, m: KeyxSend) -> None:
        """An exchange message the supervisor asked this stream to send, from its route's
        socket (connected to the peer's end) with the exchange's destination options."""
        rs = self.sockets.get((m.local_hashed, m.local_port))
        if rs is None:
            self.counters["keyx_send_no_route"] += 1
            return
        try:
            rs.sock.sendmsg([m.payload], [sockets.dstopts_cmsg(m.options)])
        except OSError as e:
            self.counters["keyx_send_" + sockets.errno_name(e.errno)] += 1
            return
        self.counters["keyx_sent"] += 1

    def update_sockets(self) -> None:
        """One bound UDP socket per accepted route; close those of routes no longer accepted."""
        wanted = {(r.local_hashed, r.local_port): r for r in self.routes.values() if r.state == "accepted"}
        for key in [k for k in self.sockets if k not in wanted]:
            self.chunk_segments.pop(key, None)
            rs = self.sockets.pop(key)
            self.worker.unwatch(rs.fd)
            rs.sock.close()
        for key, r in wanted.items():
            if key not in self.sockets:
                self.open_route_socket(r)
        self.socket_order = [self.sockets[k] for k in sorted(self.sockets, key=lambda k: wanted[k].epoch)]

    def open_route_socket(self, r: RouteUpdate) -> None:
        try:
            sock = sockets.route_socket(r.local_hashed, r.local_port, r.remote_hashed,
                                        r.remote_port, self.worker.receive_buffer,
                                        timestamps=self.codel is not None)
        except OSError as e:
            # The supervisor binds the address before it publishes the route, so this is a bug
            # or a race with an operator; the next update tries again.
            self.counters["route_socket_failed"] += 1
            log.warning("event=route_socket_failed stream=%s epoch=%d error=%s", self.name,
                        r.epoch, e)
            return
        aad = aad_prefix(r.remote_hashed, r.local_hashed, r.remote_port, r.local_port)
        rs = RouteSocket(sock, sockets.sockaddr(r.remote_hashed)[0], r.remote_port, aad,
                         Reassembly(), sock.fileno(), r.key_phase, r.local_hashed, r.local_port)
        self.sockets[(r.local_hashed, r.local_port)] = rs
        self.worker.watch(rs.fd, self.receive_all)

    def keep_warm(self) -> None:
        """The idle loop's call: one dummy packet each way (workers/keepwarm.py)."""
        keep_warm(self)
