"""Stream worker: one process per stream queue (thesis 3.2.4, figure 3.7).

* Outbound, from the stream's netfilter queue: packets from the local host's true address to the
  remote host's (the supervisor bound the remote address on the internal interface, so the
  packet is local and hits INPUT). Too big for the tunnel -> ICMPv6 Packet Too Big back to the
  host. Otherwise strip the addresses, seal, send on the active route from its hashed source
  address. The original always gets the verdict drop: it must never leave as it is (fail closed).
  The queue is read with mt6d_mp.io.nfqueue, which takes a host's TCP super-packets (TSO, up to
  64 KB) whole: each is sealed once and sent as a message in chunks with one UDP GSO sendmsg
  (docs/PROTOCOL.md 1.6), and the receiving worker hands it to its host whole, as GSO, through
  a packet socket. Per 64 KB that is one queue read, seal, send, open and delivery instead of
  some 45 (the receiver still reads one datagram per chunk).
* Inbound, on one UDP socket per accepted route, bound to the route's hashed address and port:
  authenticate and decrypt, drop replays, restore the true addresses and send the packet to the
  host. Receiving on sockets instead of the queue saves the netlink copy, the verdict and the
  header walk for every inbound packet (the kernel has checked the headers and the UDP checksum);
  see results/ for the measurements. With no worker the kernel's Port Unreachable for them is
  dropped by the firewall, so a dead worker's peer gets no answer. Each accepted counter is
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
import os
import socket
import sys
import time
from typing import NamedTuple

from mt6d_mp.core import crypto
from mt6d_mp.core.addressing import flow_label
from mt6d_mp.core.chunks import CHUNK_HEADERS_LEN, Reassembly, chunk_iov, chunk_segment_size, seal_message
from mt6d_mp.core.epochs import epoch_at
from mt6d_mp.core.icmp import packet_too_big
from mt6d_mp.core.messages import RouteUpdate, StreamState
from mt6d_mp.core.offload import (
    IPPROTO_TCP,
    TCP_MIN_HDR,
    complete_checksum,
    pseudo_header_sum,
    segment_tcp,
    tcp_header_len,
    transport_checksum_offset,
)
from mt6d_mp.core.packet import (
    INNER_KEEP,
    IPPROTO_ICMPV6,
    IPV6_HDR_LEN,
    IPV6_MIN_MTU,
    ND_FIRST,
    ND_LAST,
    STRIPPED,
    UDP_HDR_LEN,
    Buffer,
    aad_prefix,
    check_inner_plain,
    open_payload,
    outer_traffic_class,
    restore_inner,
    split_fragment,
    tunnel_overhead,
    tunnel_pieces,
    udp_header,
)
from mt6d_mp.core.queues import segment_queue
from mt6d_mp.errors import PacketError
from mt6d_mp.io import sockets
from mt6d_mp.io.journal import ReplayJournal
from mt6d_mp.io.journal import fingerprint as journal_fingerprint
from mt6d_mp.io.nfqueue import (
    NFQA_SKB_GSO,
    TRUNCATED_COPY,
    BoundQueue,
    DropBatch,
    QueueReader,
    requeue_message,
)
from mt6d_mp.io.sentring import SentRing, ring_path
from workers.common import Worker, main
from workers.keepwarm import KeepWarm, keep_warm

log = logging.getLogger(__name__)

ADDRESSES = 8  # offset of the source address; the destination follows it
RECV_BATCH = 64  # datagrams read from one socket before the loop looks at the others
RECV_BUFFER = 65535
ANC_BUFFER = socket.CMSG_SPACE(64)  # room for one destination options header
# Hot-path constants as module globals (plain ints; see mt6d_mp.io.sockets).
TRUNCATED, LEVEL_IPV6, DSTOPTS = sockets.TRUNCATED, sockets.LEVEL_IPV6, sockets.DSTOPTS
# The virtio-net header of a single packet to the host, by where its checksum field is in the
# packet without addresses (transport_checksum_offset): TCP, UDP.
VNET_CSUM = {INNER_KEEP + sockets.TCP_CSUM_OFF: sockets.VNET_CSUM_TCP,
             INNER_KEEP + sockets.UDP_CSUM_OFF: sockets.VNET_CSUM_UDP}


class RouteSocket(NamedTuple):
    """A bound UDP socket for one accepted route, with what checks its datagrams."""

    sock: socket.socket
    remote: str  # the peer's hashed address as the socket module reports sources
    remote_port: int
    aad: bytes  # outer source, destination and ports: the AEAD's associated data prefix
    chunks: Reassembly  # messages in chunks not yet complete
    fd: int = -1  # the socket's descriptor, as the poller reports it


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
        try:
            self.max_datagram = sockets.interface_mtu(st.external_ifindex) - IPV6_HDR_LEN - UDP_HDR_LEN
        except OSError:
            self.max_datagram = RECV_BUFFER
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
                         Reassembly(), sock.fileno())
        self.sockets[(r.local_hashed, r.local_port)] = rs
        self.watch(rs.fd, self.receive_all)

    def _select_active(self, now: float) -> None:
        st = self.state
        assert st is not None
        epoch = epoch_at(now, st.rotation_time)
        self.active = route = self.routes.get(epoch)
        self.active_until = (epoch + 1) * st.rotation_time
        if route is not None:
            self.tx_pktinfo = sockets.pktinfo_cmsg(route.local_hashed, st.external_ifindex)
            self.tx_addr = sockets.sockaddr(route.remote_hashed, flow_label=self.label_for(route))

    def label_for(self, route: RouteUpdate) -> int:
        """The route's flow label when the switch is on (leased once per route), else 0."""
        st = self.state
        if st is None or not st.flow_label:
            return 0
        label = flow_label(route.local_hashed, route.remote_hashed)
        if label != self.leased_label:
            try:
                sockets.lease_flow_label(self.tx, route.remote_hashed, label)
            except OSError as e:
                self.counters["flow_label_lease_failed"] += 1
                log.warning("event=flow_label_lease_failed worker=%s error=%s", self.name, e)
                return 0
            if self.leased_label:
                with contextlib.suppress(OSError):
                    sockets.release_flow_label(self.tx, self.leased_label)
            self.leased_label = label
        return label

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

    def _run_segments(self) -> None:
        assert self.seg_reader is not None
        self.seg_reader.read(self.on_segment)
        self.seg_drops.flush()

    def on_message(self, pkt_id: int, data: memoryview, info: int, indev: int, mac: bytes) -> None:
        """A packet from the queue: the local host's packet to the remote host, or nothing else.

        ``data`` is only valid during the call. GSO packets (a host's TCP super-packets) arrive
        whole: they go as one message in chunks (outbound_large).
        """
        moved = False
        try:
            st = self.state
            if st is None:
                self.counters["drop_no_stream"] += 1
            elif data[ADDRESSES:40] == self.true_pair:
                if mac and indev == st.internal_ifindex:
                    self.host_mac = mac
                if info & (NFQA_SKB_GSO | TRUNCATED_COPY):
                    if info & NFQA_SKB_GSO and data[6] != IPPROTO_TCP:
                        moved = self.to_segmenting_queue(pkt_id)
                    else:
                        self.outbound_large(data, info)
                else:
                    # A checksum the host left to its NIC (NFQA_SKB_CSUMNOTREADY) travels as it
                    # is: the receiving gateway completes it (inbound).
                    self.outbound(data)
            else:  # the rules queue nothing else; count it rather than trust that
                self.counters["drop_not_stream"] += 1
        except PacketError as e:
            self.counters["drop_" + e.reason] += 1
        except Exception:  # never let one packet kill the worker; count it, the drop follows
            self.internal_error()
        finally:
            if not moved:  # the original never leaves: dropped in the next batch
                self.drops.add(pkt_id)

    def to_segmenting_queue(self, pkt_id: int) -> bool:
        """A GSO packet that is not plain TCP (a host's UDP GSO, or TCP behind extension
        headers): the queue message does not say where to cut it (gso_size), so it goes to the
        segmenting queue, where the kernel cuts it into packets that come back one by one
        (on_segment). True if it went: it has its verdict, and the drop batch must leave it
        out (a batch that finds none of its ids queued is refused with ENOENT).

        The kernel handles the verdict inside the write: the pieces wait in the segmenting
        queue when it returns. They are sent at once, before the packets queued after this one,
        so that a flow's datagrams keep their order."""
        try:
            os.write(self.drops.fd, requeue_message(self.queue_num, pkt_id, self.seg_queue))
        except OSError as e:  # it stays queued; the batch drop takes it
            self.counters["drop_requeue_" + sockets.errno_name(e.errno)] += 1
            return False
        self.counters["gso_requeued"] += 1
        self._run_segments()
        return True

    def on_segment(self, pkt_id: int, data: memoryview, info: int, indev: int, mac: bytes) -> None:
        """A packet from the segmenting queue: one piece of a GSO packet the kernel cut.

        The same checks as on_message, kept as a separate copy so that on_message, the hot
        path, stays one flat function with no extra call per packet."""
        try:
            if self.state is None:
                self.counters["drop_no_stream"] += 1
            elif data[ADDRESSES:40] != self.true_pair:
                self.counters["drop_not_stream"] += 1
            elif info & (NFQA_SKB_GSO | TRUNCATED_COPY):  # the kernel cuts GSO packets here
                self.counters["drop_segment_not_cut"] += 1
            else:
                self.counters["gso_segments"] += 1
                self.outbound(data)
        except PacketError as e:
            self.counters["drop_" + e.reason] += 1
        except Exception:
            self.internal_error()
        finally:
            self.seg_drops.add(pkt_id)

    def _route_now(self) -> RouteUpdate | None:
        """The route to send on now, chosen again once the current choice ran out."""
        now = time.time()
        if now >= self.active_until:
            self._select_active(now)
        return self.active

    def current_route(self) -> RouteUpdate | None:
        route = self._route_now()
        if route is None:
            self.counters["drop_no_route"] += 1
        return route

    def outbound(self, data: Buffer) -> None:
        st = self.state
        assert st is not None
        if data[6] == IPPROTO_ICMPV6 and len(data) > 40 and ND_FIRST <= data[40] <= ND_LAST:
            # The rules send neighbour discovery elsewhere; this is the second line.
            self.counters["drop_neighbour_discovery"] += 1
            return
        if len(data) > st.tunnel_mtu:
            pieces = split_fragment(data, st.tunnel_mtu)
            if pieces is not None:  # a host's fragment, cut smaller rather than lost
                self.counters["fragments_split"] += 1
                for piece in pieces:
                    self.outbound(piece)
                return
            self._send_host(packet_too_big(bytes(data), st.tunnel_mtu, self.remote), "ptb")
            self.counters["ptb_sent"] += 1
            return
        route = self.current_route()
        if route is None:
            return
        dstopts, udp, payload = tunnel_pieces(
            data, route.local_hashed, route.remote_hashed, route.local_port, route.remote_port, self.sealer
        )
        hop = sockets.HOPLIMIT_CMSG[data[7]]
        tclass = sockets.TCLASS_CMSG[outer_traffic_class(data)]
        cmsg = [self.tx_pktinfo, hop, tclass, sockets.dstopts_cmsg(dstopts)] if dstopts else [
            self.tx_pktinfo, hop, tclass]
        try:
            self.tx.sendmsg((udp, payload), cmsg, 0, self.tx_addr)
        except OSError as e:
            self.counters["drop_send_" + sockets.errno_name(e.errno)] += 1
            if e.errno == errno.EMSGSIZE:
                self.too_big_for_path(data, route)
            return
        if self.sent is not None:
            self.sent.add(dstopts, payload)
        self.counters["tunnelled_packets"] += 1
        self.counters["tunnelled_bytes"] += len(data)

    def too_big_for_path(self, data: Buffer, route: RouteUpdate) -> None:
        """The kernel knows a narrower path to the peer than the link: tell the host, as a router would.

        The path MTU comes from a Packet Too Big about a chunk of a message, which the ICMP
        worker passes to the kernel (PROTOCOL.md 1.6); the route's connected socket reports it.
        """
        st = self.state
        rs = self.sockets.get((route.local_hashed, route.local_port))
        path_mtu = sockets.path_mtu(rs.sock) if rs is not None else 0
        if st is None or not path_mtu:
            return
        inner_mtu = max(path_mtu - tunnel_overhead(crypto.CRYPT_TYPES[st.crypt]), IPV6_MIN_MTU)
        if len(data) > inner_mtu:
            self._send_host(packet_too_big(bytes(data), inner_mtu, self.remote), "ptb")
            self.counters["ptb_sent_path_mtu"] += 1

    def outbound_large(self, data: memoryview, info: int) -> None:
        """A GSO packet: sealed once and sent as chunks in one UDP GSO sendmsg (PROTOCOL.md 1.6).

        Without encryption there is no option to mark chunks with, so the packet is cut into
        TCP segments that each fit the tunnel, as a NIC would, and each goes as usual.
        """
        st = self.state
        assert st is not None
        if info & TRUNCATED_COPY:
            raise PacketError("queue_truncated", "the queue copied only part of the packet")
        sealer = self.sealer
        if sealer is None or sealer.crypt_type == crypto.CRYPT_NONE:
            doff = tcp_header_len(data, IPV6_HDR_LEN) if len(data) > 52 else TCP_MIN_HDR
            for segment in segment_tcp(data, st.tunnel_mtu - IPV6_HDR_LEN - doff):
                self.outbound(segment)
            return
        if data[6] != IPPROTO_TCP:
            raise PacketError("gso_not_tcp", f"next header {data[6]}")
        route = self.current_route()
        if route is None:
            return
        dstopts, message = seal_message(data, route.local_hashed, route.remote_hashed, route.local_port,
                                        route.remote_port, sealer)
        key = (route.local_hashed, route.local_port)
        rs = self.sockets.get(key)
        if rs is None or self.tx_addr[2]:  # a flow label is leased on the raw socket only
            iov = chunk_iov(message, self.chunk_segments.get(key, chunk_segment_size(st.tunnel_mtu)))
            cmsg = [self.tx_pktinfo, sockets.HOPLIMIT_CMSG[data[7]],
                    sockets.TCLASS_CMSG[outer_traffic_class(data)], sockets.dstopts_cmsg(dstopts)]
            try:
                for i in range(0, len(iov), 2):
                    size = len(iov[i]) + len(iov[i + 1])
                    self.tx.sendmsg((udp_header(route.local_port, route.remote_port, size),
                                     iov[i], iov[i + 1]), cmsg, 0, self.tx_addr)
            except OSError as e:
                self.counters["drop_send_" + sockets.errno_name(e.errno)] += 1
                return
        else:
            iov = self.send_chunks(rs, key, message, dstopts, data[7],
                                   outer_traffic_class(data))
            if not iov:
                return
        self.counters["tunnelled_packets"] += 1
        self.counters["tunnelled_bytes"] += len(data)
        self.counters["messages_sent"] += 1
        self.counters["chunks_sent"] += len(iov) // 2

    def send_chunks(self, rs: RouteSocket, key: tuple[bytes, int], message: bytes,
                    dstopts: bytes, hop_limit: int, tclass: int) -> list[Buffer]:
        """All chunks in one UDP GSO sendmsg on the route's socket; the iovec sent, or [] if none.

        Chunks fill the link MTU the gateways assume, unless the kernel learned a narrower path
        to the peer (Packet Too Big about a chunk, which the ICMP worker lets through to the
        kernel): the kernel then refuses the send, and the same message is cut to the path MTU
        and sent again; later messages on the route use that size at once.
        """
        st = self.state
        assert st is not None
        try:
            sockets.set_message_options(rs.sock, dstopts, hop_limit, tclass)
        except OSError as e:
            self.counters["drop_send_" + sockets.errno_name(e.errno)] += 1
            return []
        for attempt in (1, 2, 3):
            segment = self.chunk_segments.get(key, chunk_segment_size(st.tunnel_mtu))
            iov = chunk_iov(message, segment)
            try:
                rs.sock.sendmsg(iov, [sockets.udp_gso_cmsg(segment)])
                return iov
            except OSError as e:
                if attempt == 3 or e.errno not in (errno.EMSGSIZE, errno.EINVAL):
                    self.counters["drop_send_" + sockets.errno_name(e.errno)] += 1
                    return []
                path_mtu = sockets.path_mtu(rs.sock)
                narrower = path_mtu - CHUNK_HEADERS_LEN
                if 0 < narrower < segment:
                    self.chunk_segments[key] = narrower
                    self.counters["chunk_path_mtu_lowered"] += 1
                    log.info("event=chunk_path_mtu worker=%s path_mtu=%d segment=%d",
                             self.name, path_mtu, narrower)
                else:
                    # The size fits: this was a Packet Too Big that the connected socket reports
                    # once as an error (sk_err), about chunks already sent. Send again.
                    self.counters["route_socket_error_"
                                  + sockets.errno_name(e.errno)] += 1
        return []  # pragma: no cover - the loop returns

    def receive_all(self) -> None:
        """Drain the route sockets that the poller found readable, oldest route first, so that
        a rotation does not reorder.

        Around a rotation the peer's last packets on the old route and its first ones on the
        new route wait on two sockets; taking the old socket's first keeps the order in which
        they were sent (a reordered TCP stream answers with duplicate ACKs and retransmits).
        A socket that was not readable when the poller looked waits for the next turn: the path
        is first in, first out, so it cannot hold a datagram sent before one that waits on a
        newer route. Not reading it saves a system call that finds nothing (with three routes
        open, a lone datagram took four reads, three of them EAGAIN; now two).
        """
        ready = self.ready_fds
        for rs in self.socket_order:
            if rs.fd in ready and self.receive(rs):
                return  # more waits on an older route: newer ones must wait their turn
        self.ready_fds = ()  # all drained: this turn's calls for other route sockets have nothing to do

    def receive(self, rs: RouteSocket) -> bool:
        """Datagrams waiting on one route's socket, each to the host; True if a batch was full.

        Read into one preallocated buffer: a fresh 64 KB bytes object per datagram, shrunk to
        its size, left the allocator's heap fragmented (USS grew by megabytes under bulk load).
        """
        recvmsg_into, buffers, view = rs.sock.recvmsg_into, self.rx_buffers, self.rx_view
        for _ in range(RECV_BATCH):
            try:
                n, ancillary, flags, source = recvmsg_into(buffers, ANC_BUFFER)
            except BlockingIOError:
                return False
            except OSError as e:
                if e.errno == errno.EMSGSIZE:
                    # A Packet Too Big about our chunks, reported once on the connected socket
                    # (sk_err); nothing was lost, the datagrams still wait.
                    self.counters["route_socket_error_emsgsize"] += 1
                    continue
                self.counters["drop_recv_" + sockets.errno_name(e.errno)] += 1
                return False
            try:
                if source[0] != rs.remote or source[1] != rs.remote_port:
                    raise PacketError("unknown_route", "source")
                if flags & TRUNCATED:
                    raise PacketError("truncated", "datagram or options")
                if n > self.max_datagram:
                    raise PacketError("reassembled", f"{n} bytes: larger than the link carries")
                dstopts = None
                for level, kind, value in ancillary:
                    if level == LEVEL_IPV6 and kind == DSTOPTS:
                        dstopts = value
                if dstopts is not None and len(dstopts) > 4 and dstopts[4] & crypto.ALG_CHUNKED:
                    self.receive_chunk(rs, dstopts, bytes(view[:n]))  # kept until complete
                else:
                    self.inbound(open_payload(self.opener, rs.aad, dstopts, view[:n]))
            except PacketError as e:
                self.counters["drop_" + e.reason] += 1
            except Exception:  # never let one datagram kill the worker; count it and go on
                self.internal_error()
        return True

    def receive_chunk(self, rs: RouteSocket, dstopts: bytes, data: bytes) -> None:
        """One chunk of a message; the message is opened and delivered once complete."""
        chunks = rs.chunks
        message = chunks.add(dstopts, data)
        if chunks.evicted:
            self.counters["drop_chunks_evicted"] += chunks.evicted
            chunks.evicted = 0
        if message is None:
            return
        if self.opener is None or len(dstopts) != crypto.DSTOPTS_LEN:
            raise PacketError("bad_option", "a message needs the standard options header")
        plain = self.opener.open(rs.aad, dstopts, message, crypto.ENC_OPT_OFFSET, chunked=True)
        check_inner_plain(plain)
        self.counters["messages_received"] += 1
        self.deliver_large(plain)

    def deliver_large(self, plain: bytes) -> None:
        """A TCP super-packet to the host: whole, as GSO, through a packet socket; else in segments.

        A packet socket with a virtio-net header (PACKET_VNET_HDR) hands the kernel the packet as
        GSO with its checksum to complete, as a NIC driver would: the host's TCP takes 64 KB in
        one pass and the link's segmentation (in hardware, or none on a veth) is the kernel's.
        That needs the host's MAC, learned from its packets in our queue; until then, or if the
        socket cannot be had, the packet is cut into segments here and sent on the raw socket.
        """
        st = self.state
        assert st is not None
        if len(plain) < 8 + 20 or plain[6] != IPPROTO_TCP:
            raise PacketError("gso_not_tcp", "a message must carry TCP")
        doff = tcp_header_len(plain, INNER_KEEP)
        mss = st.tunnel_mtu - IPV6_HDR_LEN - doff
        if len(plain) + STRIPPED <= st.tunnel_mtu:
            self.inbound(plain)
            return
        link = self.link_socket(st.internal_ifindex) if self.host_mac else None
        if link is not None:
            self.to_link(link, plain, sockets.vnet_tcp_gso(doff, mss), INNER_KEEP + sockets.TCP_CSUM_OFF)
            return
        self.counters["segmented_for_host"] += 1
        for segment in segment_tcp(restore_inner(plain, self.remote, self.local), mss):
            try:
                self.host.sendto(segment, self.host_addr)
            except OSError as e:
                self.counters["drop_send_" + sockets.errno_name(e.errno)] += 1
                return
        self.counters["extracted_packets"] += 1
        self.counters["extracted_bytes"] += len(plain) + STRIPPED

    def link_socket(self, ifindex: int) -> socket.socket | None:
        """A packet socket on the internal link that takes a virtio-net header (never reads)."""
        if self.link is not None and self.link_ifindex == ifindex:
            return self.link
        if self.link is not None:
            self.link.close()
            self.link = None
        try:
            sock, self.own_mac = sockets.link_socket(ifindex)
        except OSError as e:
            self.counters["link_socket_failed"] += 1
            if self.counters["link_socket_failed"] == 1:
                log.warning("event=link_socket_failed worker=%s ifindex=%d error=%s", self.name,
                            ifindex, e)
            return None
        self.link, self.link_ifindex = sock, ifindex
        return sock

    def inbound(self, plain: Buffer) -> None:
        """A packet to the host, its true addresses restored.

        Through the packet socket once the host's MAC is known: the frame goes straight to the
        internal link, and a TCP or UDP checksum that the sending host left to its NIC (and the
        sending gateway left as it was) is marked for the kernel to complete, as a NIC driver
        would. Until then on the raw socket, which sends the packet as given: the checksum is
        completed here.
        """
        st = self.state
        if plain[6] == IPPROTO_ICMPV6 and len(plain) > 8 and ND_FIRST <= plain[8] <= ND_LAST:
            # Even from the authenticated peer: a host's neighbour cache is its link's business.
            self.counters["drop_neighbour_discovery"] += 1
            return
        off = transport_checksum_offset(plain)
        link = self.link_socket(st.internal_ifindex) if self.host_mac and st is not None else None
        if link is not None:
            self.to_link(link, plain, VNET_CSUM[off] if off >= 0 else sockets.VNET_PLAIN, off)
            return
        try:
            if off >= 0:
                self.host.sendto(complete_checksum(restore_inner(plain, self.remote, self.local)),
                                 self.host_addr)
            else:
                mv = memoryview(plain)
                self.host.sendmsg((mv[:8], self.remote, self.local, mv[8:]), (), 0, self.host_addr)
        except (OSError, PacketError) as e:
            reason = e.reason if isinstance(e, PacketError) else sockets.errno_name(e.errno)
            self.counters["drop_send_" + reason] += 1
            return
        self.counters["extracted_packets"] += 1
        self.counters["extracted_bytes"] += len(plain) + STRIPPED

    def to_link(self, link: socket.socket, plain: Buffer, vnet: bytes, csum_off: int) -> None:
        """One frame to the host: virtio-net header, Ethernet header, the packet with its true
        addresses; the checksum field at ``csum_off`` (if >= 0) holds the pseudo-header sum that
        the kernel completes from."""
        mv = memoryview(plain)
        eth = self.host_mac + self.own_mac + sockets.ETH_P_IPV6
        iov: tuple[Buffer, ...]
        if csum_off >= 0:
            field = pseudo_header_sum(self.remote, self.local, len(plain) - 8, plain[6]).to_bytes(2, "big")
            iov = (vnet, eth, mv[:8], self.remote, self.local, mv[8:csum_off], field, mv[csum_off + 2:])
        else:
            iov = (vnet, eth, mv[:8], self.remote, self.local, mv[8:])
        try:
            link.sendmsg(iov)
        except OSError as e:
            self.counters["drop_send_link_" + sockets.errno_name(e.errno)] += 1
            return
        self.counters["extracted_packets"] += 1
        self.counters["extracted_bytes"] += len(plain) + STRIPPED
        self.counters["host_link_frames"] += 1

    def _send_host(self, packet: bytes, what: str) -> None:
        try:
            self.host.sendto(packet, self.host_addr)
        except OSError as e:
            self.counters[f"drop_send_{what}_" + sockets.errno_name(e.errno)] += 1


if __name__ == "__main__":
    sys.exit(main(StreamWorker, __doc__ or "stream worker"))
