"""Stream worker: one process per stream queue (thesis 3.2.4, figure 3.7).

The queue receives two kinds of packets, told apart by their addresses:

* outbound: from the local host's true address to the remote host's (the supervisor bound the
  remote address on the internal interface, so the packet is local and hits INPUT). Too big for
  the tunnel -> ICMPv6 Packet Too Big back to the host. Otherwise strip the addresses, seal,
  send on the active route from its hashed source address.
* inbound: a tunnel packet to one of our hashed addresses. Authenticate and decrypt, check it
  came on an accepted route, drop replays, restore the true addresses and send it to the host.

Either way the original is dropped: it must never leave as it is (fail closed). Malformed and
unauthenticated packets are counted by reason and never answered.

Usage (the supervisor starts it): ``python -m workers.stream --runtime-dir DIR --name STREAM
--queue N``.
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
from typing import Any

from netfilterqueue import Packet

from mt6d_mp.core import crypto
from mt6d_mp.core.icmp import packet_too_big
from mt6d_mp.core.messages import RouteUpdate, StreamState
from mt6d_mp.core.packet import open_tunnel, tunnel_pieces
from mt6d_mp.core.routes import epoch_at
from mt6d_mp.errors import PacketError
from mt6d_mp.io import sockets
from workers.common import Worker, main

SRC = slice(8, 24)
DST = slice(24, 40)


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
        self.accepted: set[tuple[bytes, bytes, int, int]] = set()
        # The active route, precomputed for the hot path; recomputed at each epoch boundary.
        self.active: RouteUpdate | None = None
        self.active_until = 0.0
        self.tx_pktinfo: tuple[int, int, bytes] = (0, 0, b"")
        self.tx_addr: tuple[str, int, int, int] = ("::", 0, 0, 0)
        self.host_addr: tuple[str, int, int, int] = ("::", 0, 0, 0)
        self.local = b""
        self.remote = b""
        self.replay_floor: list[tuple[int, int, int]] = []

    def rebuild(self) -> None:
        st = self.bus.replica.streams.get(self.name)
        old = self.state
        self.state = st
        if st is None:
            self.sealer = self.opener = None
            self.routes = {}
            self.accepted = set()
            self.active, self.active_until = None, 0.0
            return
        ctype = crypto.CRYPT_TYPES[st.crypt]
        if (old is None or old.tx_key != st.tx_key or old.key_phase != st.key_phase
                or old.crypt != st.crypt or self.sealer is None):
            self.sealer = crypto.Sealer(ctype, st.tx_key, phase=st.key_phase,
                                        counter=initial_counter())
        if (old is None or old.rx_key != st.rx_key or old.crypt != st.crypt
                or self.opener is None):
            self.opener = crypto.Opener(ctype, st.rx_key)  # keeps its replay window otherwise
            for phase, lane, top in self.replay_floor:
                if phase == st.key_phase:
                    self.opener.resume_above(lane, top)
        self.local, self.remote = st.local, st.remote
        self.host_addr = sockets.sockaddr(st.local)
        self.routes = {r.epoch: r for r in self.bus.replica.routes.values() if r.stream == self.name}
        self.accepted = {
            (r.remote, r.local, r.remote_port, r.local_port)
            for r in self.routes.values()
            if r.state == "accepted"
        }
        self.active_until = 0.0  # choose the active route again on the next packet

    def sync(self) -> None:
        """Take the snapshot, then the replay floor our predecessor left (see Opener.resume_above)."""
        super().sync()
        self.replay_floor = self.bus.replay_floor()
        if self.replay_floor:
            self.opener = None
            self.rebuild()

    def extra_stats(self) -> dict[str, Any]:
        if self.opener is None or self.state is None:
            return {}
        phase = self.state.key_phase
        return {"rx_tops": [[phase, lane, top] for lane, top in self.opener.tops() if top >= 0]}

    def _select_active(self, now: float) -> None:
        st = self.state
        assert st is not None
        epoch = epoch_at(now, st.rotation_time)
        self.active = route = self.routes.get(epoch)
        self.active_until = (epoch + 1) * st.rotation_time
        if route is not None:
            self.tx_pktinfo = sockets.pktinfo_cmsg(route.local, st.external_ifindex)
            self.tx_addr = sockets.sockaddr(route.remote)

    def on_packet(self, pkt: Packet) -> None:
        try:
            data = pkt.get_payload()
            if self.state is None:
                self.counters["drop_no_stream"] += 1
            elif data[SRC] == self.local and data[DST] == self.remote:
                self.outbound(data)
            else:
                self.inbound(data)
        except PacketError as e:
            self.counters["drop_" + e.reason] += 1
        finally:
            pkt.drop()

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

    def inbound(self, data: bytes) -> None:
        view, plain = open_tunnel(data, self.opener)
        if (view.src, view.dst, view.sport, view.dport) not in self.accepted:
            self.counters["drop_unknown_route"] += 1
            return
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
