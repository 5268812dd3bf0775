"""Host mode's delivery in the stream worker (workers/stream.py ``deliver_locally``): the remote
host's packets go to this machine's own stack as frames on loopback, addressed to loopback's MAC,
with a checksum left to complete marked as such; without a packet socket, the raw socket."""

from __future__ import annotations

import socket
from collections import Counter
from types import SimpleNamespace
from typing import Any

from scapy.compat import raw
from scapy.layers.inet6 import UDP, IPv6

from mt6d_mp.core.offload import pseudo_header_sum
from mt6d_mp.io import sockets
from workers.tunnel import Tunnel

A, B = "2001:db8:a::a1", "2001:db8:b::b1"
A16, B16 = socket.inet_pton(socket.AF_INET6, A), socket.inet_pton(socket.AF_INET6, B)
LO_MAC = bytes(6)


class Link:
    """A packet socket stand-in: keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendmsg(self, iov: Any) -> int:
        self.sent.append(b"".join(bytes(p) for p in iov))
        return len(self.sent[-1])


def worker(link: Link | None) -> Any:
    w = SimpleNamespace(state=SimpleNamespace(internal_ifindex=1, host_mode=True),
                        counters=Counter(), host_mac=b"", own_mac=b"", local=A16, remote=B16,
                        link=None, link_ifindex=0,
                        address_sum=int.from_bytes(B16, "big") + int.from_bytes(A16, "big"))

    def link_socket(ifindex: int) -> Link | None:
        assert ifindex == 1  # loopback, as the supervisor published it
        w.own_mac = LO_MAC if link is not None else b""
        w.link, w.link_ifindex = link, ifindex  # kept, as Tunnel.link_socket keeps it
        return link

    w.link_socket = link_socket
    w.to_link = lambda *a: Tunnel.to_link(w, *a)  # type: ignore[arg-type]
    return w


def test_the_remote_hosts_packets_go_to_loopback_with_the_checksum_to_complete() -> None:
    link = Link()
    w = worker(link)
    Tunnel.deliver_locally(w, 1)  # type: ignore[arg-type]
    assert w.host_mac == LO_MAC  # the frames go to loopback's own MAC: the host's input path
    # A UDP datagram whose sender left the checksum to its NIC: the field holds the
    # pseudo-header sum of the true addresses, as a NIC driver would hand it over.
    packet = bytearray(raw(IPv6(src=B, dst=A) / UDP(sport=4000, dport=9, chksum=0) / (b"x" * 20)))
    Tunnel.inbound(w, bytes(packet[:8] + packet[40:]))  # type: ignore[arg-type]
    (frame,) = link.sent
    vnet, eth, ip = frame[:10], frame[10:24], frame[24:]
    assert vnet == sockets.VNET_CSUM_UDP
    assert eth == LO_MAC + LO_MAC + b"\x86\xdd"
    assert ip[8:24] == B16 and ip[24:40] == A16  # from the remote true address, to ours
    assert int.from_bytes(ip[46:48], "big") == pseudo_header_sum(B16, A16, 28, 17)
    assert w.counters["host_link_frames"] == 1
    Tunnel.inbound(w, bytes(packet[:8] + packet[40:]))  # type: ignore[arg-type]  # kept socket
    assert link.sent[1] == frame and w.counters["host_link_frames"] == 2


def test_without_a_packet_socket_the_raw_socket_delivers() -> None:
    w = worker(None)
    Tunnel.deliver_locally(w, 1)  # type: ignore[arg-type]
    assert w.host_mac == b""  # inbound() then takes the raw socket (checksum completed)
