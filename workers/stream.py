"""Stream worker: one process per stream queue (thesis 3.2.4, figure 3.7).

* Outbound, from the stream's netfilter queue: packets from the local host's true address to the
  remote host's (the supervisor bound the remote address on the internal interface, so the
  packet is local and hits INPUT). Too big for the tunnel -> ICMPv6 Packet Too Big back to the
  host. Otherwise strip the addresses, seal, send on the active route from its hashed source
  address. The original always gets the verdict drop: it must never leave as it is (fail closed).
* Inbound, on one UDP socket per accepted route, bound to the route's hashed address and port:
  authenticate and decrypt, drop replays, restore the true addresses and send the packet to the
  host. Receiving on sockets instead of the queue saves the netlink copy, the verdict and the
  header walk for every inbound packet (the kernel has checked the headers and the UDP checksum);
  see results/ for the measurements. The firewall accepts a route's packets only while its
  socket exists, so with no worker they are dropped without an answer. Each accepted counter is
  journaled (mt6d_mp.io.journal) before the packet is delivered, so a restarted worker refuses
  replays of everything its predecessor took, up to the last packet.

Malformed and unauthenticated packets are counted by reason and never answered.

Usage (the supervisor starts it): ``python -m workers.stream --runtime-dir DIR --name STREAM
--queue N``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import socket
import sys
import time
from typing import NamedTuple

from netfilterqueue import Packet

from mt6d_mp.core import crypto
from mt6d_mp.core.addressing import flow_label
from mt6d_mp.core.icmp import packet_too_big
from mt6d_mp.core.messages import RouteUpdate, StreamState
from mt6d_mp.core.packet import Buffer, open_payload, tunnel_pieces
from mt6d_mp.core.routes import epoch_at
from mt6d_mp.errors import PacketError
from mt6d_mp.io import sockets
from mt6d_mp.io.journal import ReplayJournal
from mt6d_mp.io.journal import fingerprint as journal_fingerprint
from workers.common import Worker, main

log = logging.getLogger(__name__)

ADDRESSES = 8  # offset of the source address; the destination follows it
RECV_BATCH = 64  # datagrams read from one socket before the loop looks at the others
RECV_BUFFER = 65535
ANC_BUFFER = socket.CMSG_SPACE(64)  # room for one destination options header
SO_RCVBUFFORCE = 33  # missing from Python 3.11's socket module
RECEIVE_BUFFER = 4 * 1024 * 1024
# Plain ints: the socket module's constants are enums, and enum arithmetic per packet showed up
# as 3 % of a busy worker's time.
TRUNCATED = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)
LEVEL_IPV6 = int(socket.IPPROTO_IPV6)
DSTOPTS = int(socket.IPV6_DSTOPTS)


class RouteSocket(NamedTuple):
    """A bound UDP socket for one accepted route, with what checks its datagrams."""

    sock: socket.socket
    remote: str  # the peer's hashed address as the socket module reports sources
    remote_port: int
    aad: bytes  # outer source, destination and ports: the AEAD's associated data prefix


def initial_counter() -> int:
    """Where a new Sealer's counter starts: microseconds since the Unix epoch.

    The counter is the AEAD nonce, so it must never repeat under one key, also when a worker is
    restarted with the same key. Starting from the current time in microseconds guarantees it
    as long as a worker sends fewer than one packet per microsecond on average (a Python worker
    manages well under a tenth of that) and the clock does not step back.
    """
    return time.time_ns() // 1000


class StreamWorker(Worker):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.tx = sockets.tunnel_socket()
        self.host = sockets.host_socket()
        self.state: StreamState | None = None
        self.sealer: crypto.Sealer | None = None
        self.opener: crypto.Opener | None = None
        self.routes: dict[int, RouteUpdate] = {}
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
        self.journal: ReplayJournal | None = None
        self.leased_label = 0

    def rebuild(self) -> None:
        st = self.bus.replica.streams.get(self.name)
        old = self.state
        self.state = st
        if st is None:
            self.sealer = self.opener = None
            self.routes = {}
            self.update_sockets()
            self.active, self.active_until = None, 0.0
            return
        ctype = crypto.CRYPT_TYPES[st.crypt]
        if (old is None or old.tx_key != st.tx_key or old.key_phase != st.key_phase
                or old.crypt != st.crypt or self.sealer is None):
            self.sealer = crypto.Sealer(ctype, st.tx_key, phase=st.key_phase,
                                        counter=initial_counter())
        if (old is None or old.rx_key != st.rx_key or old.key_phase != st.key_phase
                or old.crypt != st.crypt or self.opener is None):
            # A new key starts a new replay window; the same key keeps its window.
            self.opener = crypto.Opener(ctype, st.rx_key, phase=st.key_phase)
            self.open_journal(st)
        self.local, self.remote = st.local, st.remote
        self.true_pair = st.local + st.remote
        self.host_addr = sockets.sockaddr(st.local)
        self.routes = {r.epoch: r for r in self.bus.replica.routes.values() if r.stream == self.name}
        self.update_sockets()
        self.active_until = 0.0  # choose the active route again on the next packet

    def open_journal(self, st: StreamState) -> None:
        """Resume above what the journal of this key holds, then journal every accepted packet."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self.opener is None or st.crypt == "none":
            return  # no authentication, no replay window
        path = self.runtime_dir / f"replay-{self.name}.bin"
        try:
            self.journal = ReplayJournal(path, journal_fingerprint(st.rx_key, st.key_phase))
        except OSError as e:
            self.counters["replay_journal_failed"] += 1
            log.warning("event=replay_journal_failed worker=%s path=%s error=%s note=a successor "
                        "will not know what this worker accepted", self.name, path, e)
            return
        for lane, top in self.journal.floors():
            self.opener.resume_above(lane, top)
        self.opener.on_commit = self.journal.record

    def update_sockets(self) -> None:
        """One bound UDP socket per accepted route; close those of routes no longer accepted."""
        wanted = {(r.local, r.local_port): r for r in self.routes.values() if r.state == "accepted"}
        for key in [k for k in self.sockets if k not in wanted]:
            rs = self.sockets.pop(key)
            self.unwatch(rs.sock.fileno())
            rs.sock.close()
        for key, r in wanted.items():
            if key not in self.sockets:
                self.open_route_socket(r)
        self.socket_order = [self.sockets[k] for k in sorted(self.sockets, key=lambda k: wanted[k].epoch)]

    def open_route_socket(self, r: RouteUpdate) -> None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            # The kernel hands over the destination options header (RFC 3542 section 4).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVDSTOPTS, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((sockets.sockaddr(r.local)[0], r.local_port))
            sock.setblocking(False)
        except OSError as e:
            # The supervisor binds the address before it publishes the route, so this is a bug
            # or a race with an operator; the next update tries again.
            sock.close()
            self.counters["route_socket_failed"] += 1
            log.warning("event=route_socket_failed worker=%s epoch=%d error=%s", self.name,
                        r.epoch, e)
            return
        aad = r.remote + r.local + r.remote_port.to_bytes(2, "big") + r.local_port.to_bytes(2, "big")
        rs = RouteSocket(sock, sockets.sockaddr(r.remote)[0], r.remote_port, aad)
        self.sockets[(r.local, r.local_port)] = rs
        self.watch(sock.fileno(), self.receive_all)

    def _select_active(self, now: float) -> None:
        st = self.state
        assert st is not None
        epoch = epoch_at(now, st.rotation_time)
        self.active = route = self.routes.get(epoch)
        self.active_until = (epoch + 1) * st.rotation_time
        if route is not None:
            self.tx_pktinfo = sockets.pktinfo_cmsg(route.local, st.external_ifindex)
            self.tx_addr = sockets.sockaddr(route.remote, flow_label=self.label_for(route))

    def label_for(self, route: RouteUpdate) -> int:
        """The route's flow label when the switch is on (leased once per route), else 0."""
        st = self.state
        if st is None or not st.flow_label:
            return 0
        label = flow_label(route.local, route.remote)
        if label != self.leased_label:
            try:
                sockets.lease_flow_label(self.tx, route.remote, label)
            except OSError as e:
                self.counters["flow_label_lease_failed"] += 1
                log.warning("event=flow_label_lease_failed worker=%s error=%s", self.name, e)
                return 0
            if self.leased_label:
                with contextlib.suppress(OSError):
                    sockets.release_flow_label(self.tx, self.leased_label)
            self.leased_label = label
        return label

    def on_packet(self, pkt: Packet) -> None:
        """A packet from the queue: the local host's packet to the remote host, or nothing else."""
        try:
            data = pkt.get_payload()
            if self.state is None:
                self.counters["drop_no_stream"] += 1
            elif data.startswith(self.true_pair, ADDRESSES):
                self.outbound(data)
            else:  # the rules queue nothing else; count it rather than trust that
                self.counters["drop_not_stream"] += 1
        except PacketError as e:
            self.counters["drop_" + e.reason] += 1
        finally:
            self.drops.add(pkt.id)  # the original never leaves: dropped in the next batch

    def outbound(self, data: bytes) -> None:
        st = self.state
        assert st is not None
        if len(data) > st.tunnel_mtu:
            self._send_host(packet_too_big(data, st.tunnel_mtu, self.remote), "ptb")
            self.counters["ptb_sent"] += 1
            return
        now = time.time()
        if now >= self.active_until:
            self._select_active(now)
        route = self.active
        if route is None:
            self.counters["drop_no_route"] += 1
            return
        dstopts, udp, payload = tunnel_pieces(
            data, route.local, route.remote, route.local_port, route.remote_port, self.sealer
        )
        hop = sockets.HOPLIMIT_CMSG[st.hop_limit or data[7]]
        cmsg = [self.tx_pktinfo, hop, sockets.dstopts_cmsg(dstopts)] if dstopts else [
            self.tx_pktinfo, hop]
        try:
            self.tx.sendmsg((udp, payload), cmsg, 0, self.tx_addr)
        except OSError as e:
            self.counters["drop_send_" + (errno.errorcode.get(e.errno or 0, "error").lower())] += 1
            return
        self.counters["tunnelled_packets"] += 1
        self.counters["tunnelled_bytes"] += len(data)

    def receive_all(self) -> None:
        """Drain the route sockets oldest route first, so that a rotation does not reorder.

        Around a rotation the peer's last packets on the old route and its first ones on the
        new route wait on two sockets; taking the old socket's first keeps the order in which
        they were sent (a reordered TCP stream answers with duplicate ACKs and retransmits).
        """
        for rs in self.socket_order:
            if self.receive(rs):
                return  # more waits on an older route: newer ones must wait their turn

    def receive(self, rs: RouteSocket) -> bool:
        """Datagrams waiting on one route's socket, each to the host; True if a batch was full."""
        recvmsg = rs.sock.recvmsg
        for _ in range(RECV_BATCH):
            try:
                data, ancillary, flags, source = recvmsg(RECV_BUFFER, ANC_BUFFER)
            except BlockingIOError:
                return False
            except OSError as e:
                self.counters["drop_recv_" + errno.errorcode.get(e.errno or 0, "error").lower()] += 1
                return False
            try:
                if source[0] != rs.remote or source[1] != rs.remote_port:
                    raise PacketError("unknown_route", "source")
                if flags & TRUNCATED:
                    raise PacketError("truncated", "datagram or options")
                dstopts = None
                for level, kind, value in ancillary:
                    if level == LEVEL_IPV6 and kind == DSTOPTS:
                        dstopts = value
                self.inbound(open_payload(self.opener, rs.aad, dstopts, data))
            except PacketError as e:
                self.counters["drop_" + e.reason] += 1
        return True

    def inbound(self, plain: Buffer) -> None:
        mv = memoryview(plain)
        try:
            self.host.sendmsg((mv[:8], self.remote, self.local, mv[8:]), (), 0, self.host_addr)
        except OSError as e:
            self.counters["drop_send_" + (errno.errorcode.get(e.errno or 0, "error").lower())] += 1
            return
        self.counters["extracted_packets"] += 1
        self.counters["extracted_bytes"] += len(plain) + 32

    def _send_host(self, packet: bytes, what: str) -> None:
        try:
            self.host.sendto(packet, self.host_addr)
        except OSError as e:
            self.counters[f"drop_send_{what}_" + errno.errorcode.get(e.errno or 0, "err").lower()] += 1


if __name__ == "__main__":
    sys.exit(main(StreamWorker, __doc__ or "stream worker"))
