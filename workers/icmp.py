"""ICMP worker: one process for the ICMPv6 that MT6D must handle itself (thesis 3.2.3).

The firewall queues only what needs handling (neighbour discovery and the rest are RETURNed
before the queue, see mt6d_mp.io.firewall):

* Router advertisement arriving on the external interface: accepted for the gateway, and a
  copy rewritten for the hosts (MTU option lowered by the tunnel overhead, source link-layer
  option replaced by the internal MAC, source = the gateway's internal link-local address) is
  sent to all-nodes on the internal interface.
* Router solicitation from a host on the internal interface: dropped, so the host's MAC never
  leaves, and regenerated on the external interface from the gateway's own link-local address
  and external MAC.
* ICMPv6 error (types 1-4) arriving on the external interface about a tunnel packet we sent:
  translated back into the error the host would have received about its own packet (true
  addresses, decrypted quote, Packet Too Big's MTU lowered) and sent to the host, but only if
  the quote matches a packet the stream's worker recorded as sent (mt6d_mp.core.sentlog): a
  quote cannot be authenticated, and a forged one would otherwise put words in the host's
  mouth. Errors that quote no route of ours are not MT6D's and pass untouched.

* Neighbour solicitation for one of our hashed addresses, on the external interface: answered
  with a Neighbor Advertisement from that address and the external MAC. The hashed addresses
  are local routes, not addresses of the interface (docs/KERNEL.md, "Hashed addresses as local
  routes"), so the kernel answers none of them; the solicitations are read from a packet
  socket (the IP layer drops those to solicited-node groups nothing joined), at most
  ``ND_RATE`` answers a second.

In host mode (MT6D on the protected host itself: no internal interface, no ``--internal-*``
arguments) the host's own stack takes its router advertisements and sends its own
solicitations, the firewall queues neither, and the translated errors go to the host's own
stack: the raw socket's packet to the local true address takes the loopback path.

Usage (the supervisor starts it, with the interfaces' indexes, MACs and link-local addresses
looked up by itself): ``python -m workers.icmp --runtime-dir DIR --name icmp --queue N
--internal-index I --internal-mac M --internal-ll A --external-index ... --overhead BYTES``.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from collections import Counter
from typing import Any

from mt6d_mp.core import crypto
from mt6d_mp.core.icmp import (
    ICMP6_ERROR_TYPES,
    ICMP6_PACKET_TOO_BIG,
    ND_ROUTER_ADVERT,
    ND_ROUTER_SOLICIT,
    SentCheck,
    neighbor_advertisement,
    neighbor_solicitation_target,
    parse_icmpv6,
    rewrite_router_advertisement,
    router_solicitation,
    translate_icmp_error,
)
from mt6d_mp.core.messages import StreamState
from mt6d_mp.errors import PacketError
from mt6d_mp.io import sockets
from mt6d_mp.io.nfqueue import Packet
from mt6d_mp.io.sentring import SentReader, ring_path
from workers.common import Worker, main

ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")
DST = slice(24, 40)
ND_RATE = 2000.0  # neighbour advertisements a second (a burst of as many): a thousand streams
# need one a rotation each, from each peer
ND_BATCH = 64  # solicitations read at once before the loop looks at the rest
# Solicitations for addresses not (yet) ours, kept ... (a thousand streams' peer asks for a
# thousand new addresses a rotation, some before this worker has their routes)
ND_PENDING = 4096
ND_PENDING_FOR = 2.0  # ... this many seconds, in case a new route makes them ours

log = logging.getLogger(__name__)

Lookup = tuple[bytes, bytes, crypto.PrefixDecryptor | None, SentCheck]


class IcmpWorker(Worker):
    shard_only = False  # errors and solicitations concern every stream's routes

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.int_index: int = args.internal_index
        self.ext_index: int = args.external_index
        self.int_mac = bytes.fromhex(args.internal_mac)
        self.ext_mac = bytes.fromhex(args.external_mac)
        # Link-local addresses may be missing when the supervisor starts (an interface still
        # coming up); then RAs and RSs are counted as dropped rather than sent from ::.
        self.int_ll = bytes.fromhex(args.internal_ll) if args.internal_ll else None
        self.ext_ll = bytes.fromhex(args.external_ll) if args.external_ll else None
        self.overhead: int = args.overhead
        self.host = sockets.host_socket()
        self.lookup_table: dict[tuple[bytes, bytes], Lookup] = {}
        # per stream: its entries of lookup_table and its routes' hashed addresses (rebuild)
        self.entries: dict[str, tuple[dict[tuple[bytes, bytes], Lookup], list[bytes]]] = {}
        self.decryptors: dict[str, tuple[Any, dict[int, crypto.PrefixDecryptor | None]]] = {}
        self.sent: dict[str, SentReader] = {}  # per stream: what its worker sent
        # The hosts solicit routers at ff02::2. A gateway without IPv6 forwarding (as it should
        # run: see the README) is not a router and would not listen there, so the kernel would
        # drop the solicitations before our queue; this membership, held while the worker runs,
        # lets them in.
        self.all_routers: socket.socket | None = None
        try:
            if self.int_index:  # none in host mode: the host solicits routers itself
                self.all_routers = sockets.join_group(ALL_ROUTERS, self.int_index)
        except OSError as e:
            self.counters["all_routers_join_failed"] += 1
            log.warning("event=all_routers_join_failed ifindex=%d error=%s", self.int_index, e)
        self.hashed: Counter[bytes] = Counter()  # every installed route's local hashed address
        # Solicitations for targets that were not ours when they came: target -> (solicitor,
        # time). A peer sends on a new key phase's route as soon as it committed, and its
        # router (or the peer) may solicit the address before this worker has the route from
        # the bus; answered when the route arrives, the sender does not wait a second for its
        # retransmission (docs/KERNEL.md, "Hashed addresses as local routes").
        self.nd_pending: dict[bytes, tuple[bytes, float]] = {}
        self.nd_tokens, self.nd_refilled = ND_RATE, 0.0
        self.solicitations: socket.socket | None = None
        try:
            self.solicitations = sockets.solicitation_socket(self.ext_index)
            self.watch(self.solicitations.fileno(), self.answer_solicitations)
        except OSError as e:  # then peers cannot reach the hashed addresses: say so loudly
            self.counters["solicitation_socket_failed"] += 1
            log.error("event=solicitation_socket_failed ifindex=%d error=%s note=no neighbour "
                      "advertisement for hashed addresses", self.ext_index, e)

    def rebuild(self) -> None:
        """Map each route's (hashed source, hashed destination) to the stream's true addresses.

        Errors arrive about packets we sent, so the quote is decrypted with the sending key.
        Expired routes are kept: an error can arrive a little after its route stopped. Only the
        streams the updates touched are redone (a rotation of a thousand streams comes as a
        message per shard, and each used to redo every stream).
        """
        replica = self.bus.replica
        touched = replica.take_touched()
        if touched is None:  # a snapshot: everything
            touched = set(replica.streams) | set(self.entries)
        for name in touched:
            old_entries, old_hashed = self.entries.pop(name, ({}, []))
            for key, entry in old_entries.items():
                if self.lookup_table.get(key) is entry:
                    del self.lookup_table[key]
            for h in old_hashed:
                self.hashed[h] -= 1
                if self.hashed[h] <= 0:
                    del self.hashed[h]
            st = replica.streams.get(name)
            if st is None:
                self.decryptors.pop(name, None)
                reader = self.sent.pop(name, None)
                if reader is not None:
                    reader.close()
                continue
            decryptors = self.stream_decryptors(st)
            if name not in self.sent:
                self.sent[name] = SentReader(ring_path(self.runtime_dir, name))
            was_sent = self.sent[name].was_sent
            entries: dict[tuple[bytes, bytes], Lookup] = {}
            hashed = []
            for r in replica.routes_of(name):
                hashed.append(r.local_hashed)
                self.hashed[r.local_hashed] += 1
                # Routes of the bootstrap phase carry no data: no error about them is a host's.
                if r.key_phase in decryptors:
                    entries[(r.local_hashed, r.remote_hashed)] = (
                        st.local, st.remote, decryptors[r.key_phase], was_sent)
            self.entries[name] = (entries, hashed)
            self.lookup_table.update(entries)
        if self.nd_pending:
            now = time.monotonic()
            for target, (src, when) in list(self.nd_pending.items()):
                if target in self.hashed and now - when <= ND_PENDING_FOR:
                    self.counters["nd_answered_late"] += 1
                    self.advertise(target, src, now)
                if target in self.hashed or now - when > ND_PENDING_FOR:
                    del self.nd_pending[target]

    def stream_decryptors(self, st: StreamState) -> dict[int, crypto.PrefixDecryptor | None]:
        """One decryptor per key phase of the stream (None without encryption): the quote is
        of a packet sealed with the tx key of the phase of the route it travelled on. Made
        again only when the stream's keys change."""
        made = self.decryptors.get(st.name)
        if made is None or made[0] != (st.crypt, st.phases):
            ctype = crypto.CRYPT_TYPES[st.crypt]
            made = self.decryptors[st.name] = ((st.crypt, st.phases), {
                k.phase: None if ctype == crypto.CRYPT_NONE
                else crypto.Sealer(ctype, k.tx_key, phase=k.phase) for k in st.phases})
        return made[1]

    def answer_solicitations(self) -> None:
        """Neighbour solicitations from the external link: those for our hashed addresses get
        an advertisement (at most ND_RATE a second); the kernel takes care of the others."""
        sock = self.solicitations
        assert sock is not None
        for _ in range(ND_BATCH):
            try:
                packet = sock.recv(2048)
            except BlockingIOError:
                return
            except OSError as e:
                self.counters["drop_nd_recv_" + sockets.errno_name(e.errno)] += 1
                return
            try:
                src, target = neighbor_solicitation_target(packet)
            except PacketError as e:
                self.counters["drop_nd_" + e.reason] += 1
                continue
            now = time.monotonic()
            if target not in self.hashed:
                # One of the gateway's own addresses (the kernel answers), or a route of ours
                # that the bus has not brought yet: kept a moment (see __init__).
                if len(self.nd_pending) >= ND_PENDING and target not in self.nd_pending:
                    self.nd_pending.pop(next(iter(self.nd_pending)))
                    self.counters["nd_pending_evicted"] += 1
                self.nd_pending[target] = (src, now)
                continue
            self.advertise(target, src, now)

    def advertise(self, target: bytes, solicitor: bytes, now: float) -> None:
        """A Neighbor Advertisement for our hashed address ``target`` (at most ND_RATE a second)."""
        self.nd_tokens = min(ND_RATE, self.nd_tokens + (now - self.nd_refilled) * ND_RATE)
        self.nd_refilled = now
        if self.nd_tokens < 1:
            self.counters["drop_nd_rate"] += 1
            return
        self.nd_tokens -= 1
        na, dst = neighbor_advertisement(target, solicitor, self.ext_mac)
        scope = self.ext_index if dst[0] == 0xFF or dst[:2] == b"\xfe\x80" else 0
        self._send(na, dst, scope, "nd_answered")

    def _lookup(self, src16: bytes, dst16: bytes) -> Lookup | None:
        return self.lookup_table.get((bytes(src16), bytes(dst16)))

    def on_packet(self, pkt: Packet) -> None:
        verdict_accept = True
        try:
            data = pkt.get_payload()
            itype, _code, _off = parse_icmpv6(data)
            indev = pkt.indev
            if itype == ND_ROUTER_ADVERT and indev == self.ext_index and self.int_index:
                if self.int_ll is None:
                    self.counters["drop_ra_no_link_local"] += 1
                else:
                    ra = rewrite_router_advertisement(data, self.overhead, self.int_mac, self.int_ll)
                    self._send(ra, ALL_NODES, self.int_index, "ra_rewritten")
            elif itype == ND_ROUTER_SOLICIT and indev == self.int_index and self.int_index:
                verdict_accept = False  # the host's own solicitation never leaves
                if self.ext_ll is None:
                    self.counters["drop_rs_no_link_local"] += 1
                else:
                    rs = router_solicitation(self.ext_ll, self.ext_mac)
                    self._send(rs, ALL_ROUTERS, self.ext_index, "rs_regenerated")
            elif itype in ICMP6_ERROR_TYPES and indev == self.ext_index:
                try:
                    error = translate_icmp_error(data, self._lookup)
                except PacketError as e:
                    if e.reason != "unknown_route":
                        raise
                    self.counters["passed_foreign_error"] += 1
                else:
                    verdict_accept = False
                    self._send(error, error[DST], 0, f"error_{itype}_translated")
            else:
                self.counters["passed"] += 1
        except PacketError as e:
            if e.reason == "chunk_quote" and itype == ICMP6_PACKET_TOO_BIG:
                # About a chunk of a message (PROTOCOL.md 1.6): no host packet to tell, but the
                # kernel takes the path MTU from it, and the stream worker cuts chunks to that.
                self.counters["chunk_ptb_passed"] += 1
            else:
                verdict_accept = False  # about our tunnel but unusable: nothing reaches a host
                self.counters["drop_" + e.reason] += 1
        finally:
            if verdict_accept:
                pkt.accept()
            else:
                pkt.drop()

    def _send(self, packet: bytes, dst16: bytes, scope: int, what: str) -> None:
        try:
            self.host.sendto(packet, sockets.sockaddr(dst16, scope))
        except OSError as e:
            self.counters[f"drop_send_{what}_" + sockets.errno_name(e.errno)] += 1
            return
        self.counters[what] += 1


def _arguments(p: argparse.ArgumentParser) -> None:
    for side in ("internal", "external"):
        host_mode = " (none in host mode)" if side == "internal" else ""
        p.add_argument(f"--{side}-index", required=side == "external", type=int, default=0,
                       help=f"{side} ifindex{host_mode}")
        p.add_argument(f"--{side}-mac", required=side == "external", default="",
                       help=f"{side} MAC, 12 hex digits")
        p.add_argument(f"--{side}-ll", default="", help=f"{side} link-local address, 32 hex digits")
    p.add_argument("--overhead", required=True, type=int, help="tunnel overhead in bytes")


if __name__ == "__main__":
    sys.exit(main(IcmpWorker, __doc__ or "icmp worker", extra=_arguments))
