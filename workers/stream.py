"""Stream worker: one process per stream queue (thesis 3.2.4, figure 3.7).

The class is built from one file per stage, as wireguard-go's ``device/`` is:

* workers/outbound.py: a host's packet from the stream's netfilter queue into the tunnel
  (sealed, on the active route from its hashed source address; the original always dropped);
* workers/inbound.py: a tunnel packet from a route's UDP socket to the host (authenticated,
  replay-checked, journaled, the true addresses restored);
* workers/keepwarm.py: both run on a dummy packet while the link is idle;
* this file: the process. It takes the stream's state and routes from the bus (``rebuild``),
  keeps one UDP socket per accepted route, binds the queue and the segmenting queue, and reads
  them (mt6d_mp.io.nfqueue, with a host's TCP super-packets whole).

Malformed and unauthenticated packets are counted by reason and never answered.

Usage (the supervisor starts it): ``python -m workers.stream --runtime-dir DIR --name STREAM
--queue N``.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from mt6d_mp.core import crypto
from mt6d_mp.core.chunks import Reassembly
from mt6d_mp.core.messages import RouteUpdate, StreamState
from mt6d_mp.core.packet import (
    IPV6_HDR_LEN,
    UDP_HDR_LEN,
    aad_prefix,
)
from mt6d_mp.core.queues import segment_queue
from mt6d_mp.io import sockets
from mt6d_mp.io.journal import ReplayJournal
from mt6d_mp.io.journal import fingerprint as journal_fingerprint
from mt6d_mp.io.nfqueue import (
    BoundQueue,
    DropBatch,
    QueueReader,
)
from mt6d_mp.io.sentring import SentRing, ring_path
from workers.common import Worker, main
from workers.inbound import Inbound
from workers.keepwarm import KeepWarm, keep_warm
from workers.outbound import Outbound
from workers.path import RouteSocket

log = logging.getLogger(__name__)

RECV_BUFFER = 65535


class StreamWorker(Outbound, Inbound, Worker):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.tx = sockets.tunnel_socket()
        self.host = sockets.host_socket()
        self.state: StreamState | None = None
        self.sealer: crypto.Sealer | None = None
        self.openers: dict[int, crypto.Opener] = {}  # by key phase
        self.journals: dict[int, ReplayJournal] = {}  # by key phase, beside each opener
        self.routes: dict[tuple[int, int], RouteUpdate] = {}  # (key phase, epoch)
        self.keyx_tokens = 0.0
        self.keyx_refilled = 0.0
        self.sockets: dict[tuple[bytes, int], RouteSocket] = {}  # (local hashed, port) -> socket
        self.socket_order: list[RouteSocket] = []  # oldest route first
        # The active route, precomputed for the hot path; recomputed at each epoch boundary.
        self.active: RouteUpdate | None = None
        self.active_until = 0.0
        self.tx_pktinfo: tuple[int, int, bytes] = (0, 0, b"")
        self.tx_addr: tuple[str, int, int, int] = ("::", 0, 0, 0)
        self.host_addr: tuple[str, int, int, int] = ("::", 0, 0, 0)
        self.local = b""
        self.remote = b""
        self.true_pair = b""  # local + remote: what an outbound packet carries at offset 8
        self.leased_label = 0
        self.reader: QueueReader | None = None
        rx_buffer = bytearray(RECV_BUFFER)
        self.rx_buffers = [rx_buffer]
        self.rx_view = memoryview(rx_buffer)
        # Delivery of whole TCP super-packets to the host (see deliver_large): the host's MAC,
        # learned from its own packets in the queue, ours, and a packet socket on that link.
        self.host_mac = b""
        self.own_mac = b""
        self.link: socket.socket | None = None
        self.link_ifindex = 0
        # UDP payload per chunk, per route socket, once the kernel reported a narrower path.
        self.chunk_segments: dict[tuple[bytes, int], int] = {}
        self.warm: KeepWarm | None = None  # keep_warm's stand-ins, made on first use
        # What this worker sent, for the ICMP worker to check the quotes of errors against
        # (mt6d_mp.core.sentlog). Without it no error about our packets reaches the host.
        self.sent: SentRing | None = None
        try:
            self.sent = SentRing(ring_path(self.runtime_dir, self.name))
        except OSError as e:
            self.counters["sent_ring_failed"] += 1
            log.warning("event=sent_ring_failed worker=%s error=%s note=errors about this "
                        "stream's packets will not reach the host", self.name, e)
        # The largest UDP payload that can arrive unfragmented on the external link. A bigger
        # datagram was reassembled from fragments (possible only if another rule set loads the
        # kernel's IPv6 defragmentation; ours drops fragments from outside): never ours.
        self.max_datagram = RECV_BUFFER
        # The segmenting queue (mt6d_mp.core.queues): bound without the GSO flag, so the kernel
        # cuts what arrives there (a host's UDP GSO packets) into datagrams.
        self.seg_queue = segment_queue(self.queue_num)
        self.seg_bound: BoundQueue | None = None
        self.seg_reader: QueueReader | None = None
        self.seg_drops = DropBatch(-1, self.seg_queue, self.counters)

    def rebuild(self) -> None:
        st = self.bus.replica.streams.get(self.name)
        old = self.state
        self.state = st
        if st is None:
            self.sealer = None
            self.set_openers({})
            self.routes = {}
            self.update_sockets()
            self.active, self.active_until = None, 0.0
            return
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
        try:
            self.max_datagram = sockets.interface_mtu(st.external_ifindex) - IPV6_HDR_LEN - UDP_HDR_LEN
        except OSError:
            self.max_datagram = RECV_BUFFER
        self.host_addr = sockets.sockaddr(st.local)
        if st.host_mode:
            self.deliver_locally(st.internal_ifindex)
        self.routes = {(r.key_phase, r.epoch): r for r in self.bus.replica.routes.values()
                       if r.stream == self.name}
        self.update_sockets()
        self.active_until = 0.0  # choose the active route again on the next packet
        self.send_outbox()

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
            log.warning("event=replay_journal_failed worker=%s path=%s error=%s note=a successor "
                        "will not know what this worker accepted", self.name, path, e)
            return
        for lane, top in journal.floors():
            opener.resume_above(lane, top)
        opener.on_commit = journal.record
        self.journals[phase] = journal

    def send_outbox(self) -> None:
        """Exchange messages the supervisor asked this worker to send, each from its route's
        socket (connected to the peer's end) with the exchange's destination options."""
        outbox = self.bus.replica.outbox
        for m in outbox:
            if m.stream != self.name:
                continue
            rs = self.sockets.get((m.local_hashed, m.local_port))
            if rs is None:
                self.counters["keyx_send_no_route"] += 1
                continue
            try:
                rs.sock.sendmsg([m.payload], [sockets.dstopts_cmsg(m.options)])
            except OSError as e:
                self.counters["keyx_send_" + sockets.errno_name(e.errno)] += 1
                continue
            self.counters["keyx_sent"] += 1
        outbox.clear()

    def update_sockets(self) -> None:
        """One bound UDP socket per accepted route; close those of routes no longer accepted."""
        wanted = {(r.local_hashed, r.local_port): r for r in self.routes.values() if r.state == "accepted"}
        for key in [k for k in self.sockets if k not in wanted]:
            self.chunk_segments.pop(key, None)
            rs = self.sockets.pop(key)
            self.unwatch(rs.fd)
            rs.sock.close()
        for key, r in wanted.items():
            if key not in self.sockets:
                self.open_route_socket(r)
        self.socket_order = [self.sockets[k] for k in sorted(self.sockets, key=lambda k: wanted[k].epoch)]

    def open_route_socket(self, r: RouteUpdate) -> None:
        try:
            sock = sockets.route_socket(r.local_hashed, r.local_port, r.remote_hashed, r.remote_port)
        except OSError as e:
            # The supervisor binds the address before it publishes the route, so this is a bug
            # or a race with an operator; the next update tries again.
            self.counters["route_socket_failed"] += 1
            log.warning("event=route_socket_failed worker=%s epoch=%d error=%s", self.name,
                        r.epoch, e)
            return
        aad = aad_prefix(r.remote_hashed, r.local_hashed, r.remote_port, r.local_port)
        rs = RouteSocket(sock, sockets.sockaddr(r.remote_hashed)[0], r.remote_port, aad,
                         Reassembly(), sock.fileno(), r.key_phase, r.local_hashed, r.local_port)
        self.sockets[(r.local_hashed, r.local_port)] = rs
        self.watch(rs.fd, self.receive_all)

    def keep_warm(self) -> None:
        """The idle loop's call: one dummy packet each way (workers/keepwarm.py)."""
        keep_warm(self)

    def on_bound(self) -> None:
        """Read the queue ourselves, with GSO packets queued whole (mt6d_mp.io.nfqueue), and
        bind the segmenting queue, read the same way but with GSO packets cut by the kernel."""
        self.reader = QueueReader(self.drops.fd, self.queue_num, self.counters)
        self.reader.configure(gso=True)
        self.seg_bound = BoundQueue(self.seg_queue, self._callback)
        self.seg_drops.fd = self.seg_bound.fd
        self.seg_reader = QueueReader(self.seg_drops.fd, self.seg_queue, self.counters)
        self.seg_reader.configure(gso=False)
        self.watch(self.seg_drops.fd, self._run_segments)

    def on_stop(self) -> None:
        if self.seg_bound is not None:
            self.seg_bound.unbind()
            self.seg_bound = None

    def read_queue(self) -> None:
        assert self.reader is not None
        self.reader.read(self.on_message)
        self.drops.flush()



if __name__ == "__main__":
    sys.exit(main(StreamWorker, __doc__ or "stream worker"))
