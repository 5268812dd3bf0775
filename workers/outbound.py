"""Outbound: a host's packet from the stream's queue into the tunnel.

The flow of one packet (:meth:`Outbound.on_message`):

1. it must be the local host's packet to the remote host (the rules queue nothing else; the host's
   MAC is learned here, from the internal interface);
2. a GSO packet that is not TCP goes to the segmenting queue, where the kernel cuts it, and its
   pieces come back one by one (:meth:`on_segment`); a TCP super-packet is sealed once and sent as
   a message in chunks with one UDP GSO sendmsg (:meth:`outbound_large`, PROTOCOL.md 1.6);
3. a single packet (:meth:`outbound`): neighbour discovery is dropped; too big for the tunnel, a
   fragment is cut smaller and anything else gets Packet Too Big; otherwise it is sealed and sent
   on the active route from its hashed source address, and recorded for the ICMP worker's check
   of errors (mt6d_mp.core.sentlog);
4. the original always gets the verdict drop, in a batch: it never leaves as it is (fail closed).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time

from mt6d_mp.core import crypto
from mt6d_mp.core.addressing import flow_label
from mt6d_mp.core.chunks import CHUNK_HEADERS_LEN, chunk_iov, chunk_segment_size, seal_message
from mt6d_mp.core.epochs import epoch_at
from mt6d_mp.core.icmp import packet_too_big
from mt6d_mp.core.messages import RouteUpdate
from mt6d_mp.core.offload import (
    IPPROTO_TCP,
    TCP_MIN_HDR,
    segment_tcp,
    tcp_header_len,
)
from mt6d_mp.core.packet import (
    IPPROTO_ICMPV6,
    IPV6_HDR_LEN,
    IPV6_MIN_MTU,
    ND_FIRST,
    ND_LAST,
    UDP_HDR,
    Buffer,
    aad_prefix,
    outer_traffic_class,
    split_fragment,
    tunnel_overhead,
    tunnel_pieces,
    udp_header,
)
from mt6d_mp.errors import PacketError
from mt6d_mp.io import sockets
from mt6d_mp.io.nfqueue import (
    NFQA_SKB_GSO,
    TRUNCATED_COPY,
    requeue_message,
)
from workers.path import RouteSocket, StreamPath

log = logging.getLogger("workers.stream")

ADDRESSES = 8  # offset of the source address; the destination follows it
# Hot-path constants as module globals (plain ints and tuples; see mt6d_mp.io.sockets).
HOPLIMIT_CMSG, TCLASS_CMSG = sockets.HOPLIMIT_CMSG, sockets.TCLASS_CMSG
LEVEL_IPV6, DSTOPTS = sockets.LEVEL_IPV6, sockets.DSTOPTS
CRYPT_NONE = crypto.CRYPT_NONE


class Outbound(StreamPath):
    def _select_active(self, now: float) -> None:
        st = self.state
        assert st is not None
        epoch = epoch_at(now, st.rotation_time)
        # Only the sending phase's route: none while the stream has no fresh key (fail closed).
        self.active = route = self.routes.get((st.send_phase, epoch))
        self.active_until = (epoch + 1) * st.rotation_time
        if route is not None:
            self.tx_pktinfo = sockets.pktinfo_cmsg(route.local_hashed, st.external_ifindex)
            self.tx_addr = sockets.sockaddr(route.remote_hashed, flow_label=self.label_for(route))
            # The route's associated data prefix, made once per route rather than per packet.
            self.tx_aad = aad_prefix(route.local_hashed, route.remote_hashed, route.local_port,
                                     route.remote_port)

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
        now = time.time() + self.clock_offset
        if now >= self.active_until:
            self._select_active(now)
        return self.active

    def current_route(self) -> RouteUpdate | None:
        route = self._route_now()
        if route is None:
            st = self.state
            self.counters["drop_no_key" if st is not None and st.send_phase < 0
                          else "drop_no_route"] += 1
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
        # The route choice (_route_now, inlined: one call fewer per packet).
        if time.time() + self.clock_offset >= self.active_until:
            self._select_active(time.time() + self.clock_offset)
        route = self.active
        if route is None:
            self.counters["drop_no_key" if st.send_phase < 0 else "drop_no_route"] += 1
            return
        sealer = self.sealer
        if sealer is None or sealer.crypt_type == CRYPT_NONE:
            dstopts, udp, payload = tunnel_pieces(
                data, route.local_hashed, route.remote_hashed, route.local_port, route.remote_port,
                sealer)
        else:
            # tunnel_pieces for a sealed packet, inlined (the same checks, the same bytes): an
            # IPv6 packet whose payload length matches, sealed without its addresses.
            n = len(data)
            if n < IPV6_HDR_LEN or data[0] >> 4 != 6:
                raise PacketError("bad_inner", "not an IPv6 packet")
            if ((data[4] << 8) | data[5]) != n - IPV6_HDR_LEN:
                raise PacketError("bad_inner", "payload length does not match")
            mv = memoryview(data)
            dstopts, payload = sealer.seal(b"".join((mv[:8], mv[IPV6_HDR_LEN:])), self.tx_aad)
            udp = UDP_HDR.pack(route.local_port, route.remote_port, 8 + len(payload), 0)
        cmsg = [self.tx_pktinfo, HOPLIMIT_CMSG[data[7]],
                TCLASS_CMSG[(((data[0] & 0x0F) << 4) | (data[1] >> 4)) & 0xFC]]  # outer_traffic_class
        if dstopts:
            cmsg.append((LEVEL_IPV6, DSTOPTS, dstopts))
        if self.sent is not None:
            # Recorded before it leaves: a router's error about it can reach the ICMP worker
            # before sendmsg returns here (seen under load: the host never got the Packet Too
            # Big, and the router's rate limit kept the next one back).
            self.sent.add(dstopts, payload)
        try:
            self.tx.sendmsg((udp, payload), cmsg, 0, self.tx_addr)
        except OSError as e:
            self.counters["drop_send_" + sockets.errno_name(e.errno)] += 1
            if e.errno == errno.EMSGSIZE:
                self.too_big_for_path(data, route)
            return
        self.counters["tunnelled_packets"] += 1
        self.counters["tunnelled_bytes"] += len(data)

    def too_big_for_path(self, data: Buffer, route: RouteUpdate) -> None:
        """The kernel knows a narrower path to the peer than the link: tell the host, as a router would.

        The path MTU comes from a Packet Too Big about a chunk of a message, which the ICMP
        worker passes to the kernel (PROTOCOL.md 1.6); the route's connected socket reports it.
        """
        st = self.state
        # The kernel's current knowledge: the route socket's own reading could be older than
        # the refusal (sockets.fresh_path_mtu), and then the host would never be told.
        path_mtu = sockets.fresh_path_mtu(route.remote_hashed, route.remote_port)
        if not path_mtu:
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
        codel, reader = self.worker.queue_codel, self.reader
        if codel is not None and reader is not None:
            # A bulk transfer's queue can stand here too, when this worker is the slower end:
            # the same queue management as at the receiving socket (mt6d_mp.core.aqm), on the
            # super-packet's wait in the netfilter queue. The host's TCP sees the loss.
            queued = reader.queued_at()
            if queued is not None and not codel.admit(time.time() - queued, time.monotonic()):
                self.counters["aqm_dropped_queued"] += 1
                return
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

