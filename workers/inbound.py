"""Inbound: a tunnel packet from a route's UDP socket to the host.

The flow (:meth:`Inbound.receive_all`, called when the poller finds route sockets readable):

1. the route sockets are drained oldest route first, so that a rotation does not reorder;
2. each datagram must come from the route's peer and fit the external link unfragmented
   (a larger one was reassembled from fragments: dropped unread);
3. a chunk waits for the rest of its message (:meth:`receive_chunk`); a single packet is opened:
   authenticated, decrypted, its counter checked against the replay window and journaled;
4. delivery (:meth:`inbound`, :meth:`deliver_large`): neighbour discovery is dropped; the true
   addresses are restored and the packet goes to the host through a packet socket once the
   host's MAC is known (a checksum the sender left to its NIC is completed by the kernel, as a
   NIC driver would), before that through the raw socket; a TCP super-packet goes whole, as GSO.
"""

from __future__ import annotations

import errno
import logging
import socket
import time

from mt6d_mp.core import crypto
from mt6d_mp.core.crypto import OPT_KEYX
from mt6d_mp.core.offload import (
    IPPROTO_TCP,
    complete_checksum,
    segment_tcp,
    tcp_header_len,
    transport_checksum_offset,
)
from mt6d_mp.core.packet import (
    INNER_KEEP,
    IPPROTO_ICMPV6,
    IPV6_HDR_LEN,
    ND_FIRST,
    ND_LAST,
    STRIPPED,
    Buffer,
    check_inner_plain,
    open_payload,
    restore_inner,
)
from mt6d_mp.errors import PacketError
from mt6d_mp.io import sockets
from workers.path import RouteSocket, StreamPath

log = logging.getLogger("workers.stream")

KEYX_RATE = 20.0  # exchange messages per second passed to the supervisor (an exchange needs 3)
KEYX_BURST = 20.0
RECV_BATCH = 64  # datagrams read from one socket before the loop looks at the others
# Room for one destination options header and a receive timestamp (SO_TIMESTAMPNS).
ANC_BUFFER = socket.CMSG_SPACE(64) + socket.CMSG_SPACE(sockets.TIMESTAMP.size)
# Hot-path constants as module globals (plain ints; see mt6d_mp.io.sockets).
TRUNCATED, LEVEL_IPV6, DSTOPTS = sockets.TRUNCATED, sockets.LEVEL_IPV6, sockets.DSTOPTS
LEVEL_SOCKET, SO_TIMESTAMPNS = sockets.LEVEL_SOCKET, sockets.SO_TIMESTAMPNS
# The virtio-net header of a single packet to the host, by where its checksum field is in the
# packet without addresses (transport_checksum_offset): TCP, UDP.
VNET_CSUM = {INNER_KEEP + sockets.TCP_CSUM_OFF: sockets.VNET_CSUM_TCP,
             INNER_KEEP + sockets.UDP_CSUM_OFF: sockets.VNET_CSUM_UDP}


class Inbound(StreamPath):
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
        worker = self.worker
        if self.drained == worker.turn:
            return  # drained already in this turn, from the call for another of its sockets
        ready = worker.ready_fds
        for rs in self.socket_order:
            if rs.fd in ready and self.receive(rs):
                return  # more waits on an older route: newer ones must wait their turn
        self.drained = worker.turn  # this turn's calls for its other sockets have nothing to do

    def receive(self, rs: RouteSocket) -> bool:
        """Datagrams waiting on one route's socket, each to the host; True if a batch was full.

        Read into one preallocated buffer: a fresh 64 KB bytes object per datagram, shrunk to
        its size, left the allocator's heap fragmented (USS grew by megabytes under bulk load).
        """
        recvmsg_into, buffers, view = rs.sock.recvmsg_into, self.rx_buffers, self.rx_view
        opener = self.openers.get(rs.phase)  # none on the bootstrap phase's routes: no data there
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
                dstopts = stamp = None
                for level, kind, value in ancillary:
                    if level == LEVEL_IPV6 and kind == DSTOPTS:
                        dstopts = value
                    elif level == LEVEL_SOCKET and kind == SO_TIMESTAMPNS:
                        stamp = value
                if dstopts is not None and len(dstopts) > 4 and dstopts[2] == OPT_KEYX:
                    self.keyx_received(rs, dstopts, bytes(view[:n]))
                elif opener is None:
                    raise PacketError("key_phase", f"data on phase {rs.phase}, which has no keys")
                elif dstopts is not None and len(dstopts) > 4 and dstopts[4] & crypto.ALG_CHUNKED:
                    self.receive_chunk(rs, opener, dstopts, bytes(view[:n]), stamp)  # kept until complete
                else:
                    self.inbound(open_payload(opener, rs.aad, dstopts, view[:n]))
            except PacketError as e:
                self.counters["drop_" + e.reason] += 1
            except Exception:  # never let one datagram kill the worker; count it and go on
                self.internal_error()
        return True

    def keyx_received(self, rs: RouteSocket, dstopts: bytes, data: bytes) -> None:
        """A key exchange message: to the supervisor, which checks and answers it (the worker
        only carries it). At most KEYX_BURST at once and KEYX_RATE a second: a flood of forged
        ones costs the supervisor no more than that."""
        now = time.monotonic()
        self.keyx_tokens = min(KEYX_BURST, self.keyx_tokens + (now - self.keyx_refilled) * KEYX_RATE)
        self.keyx_refilled = now
        if self.keyx_tokens < 1:
            raise PacketError("keyx_rate", "more exchange messages than an exchange needs")
        self.keyx_tokens -= 1
        self.counters["keyx_forwarded"] += 1
        self.bus.send(b"keyx", self.name.encode(), rs.local, rs.local_port.to_bytes(2, "big"),
                      dstopts, data)

    def receive_chunk(self, rs: RouteSocket, opener: crypto.Opener, dstopts: bytes,
                      data: bytes, stamp: bytes | None = None) -> None:
        """One chunk of a message; the message is opened and delivered once complete, unless
        the queue management drops it (``stamp``: the kernel's receive time of the chunk)."""
        chunks = rs.chunks
        message = chunks.add(dstopts, data)
        if chunks.evicted:
            self.counters["drop_chunks_evicted"] += chunks.evicted
            chunks.evicted = 0
        if message is None:
            return
        codel = self.codel
        if codel is not None and stamp is not None and len(stamp) >= 16:
            # How long the last chunk waited in the socket: the queue's wait now. Dropped
            # before it is opened, which a loaded worker has no time to spare for; a forged
            # message costs nothing more here than a real one (mt6d_mp.core.aqm).
            sec, nsec = sockets.TIMESTAMP.unpack_from(stamp)
            if not codel.admit(time.time() - sec - nsec * 1e-9, time.monotonic()):
                self.counters["aqm_dropped_messages"] += 1
                return
        if len(dstopts) != crypto.DSTOPTS_LEN:
            raise PacketError("bad_option", "a message needs the standard options header")
        plain = opener.open(rs.aad, dstopts, message, crypto.ENC_OPT_OFFSET, chunked=True)
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
        link = self.link
        if link is None or st is None or self.link_ifindex != st.internal_ifindex or not self.host_mac:
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
            # pseudo_header_sum, with the addresses' part summed once per stream (rebuild).
            field = ((self.address_sum + len(plain) - 8 + plain[6]) % 0xFFFF or 0xFFFF).to_bytes(2, "big")
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

