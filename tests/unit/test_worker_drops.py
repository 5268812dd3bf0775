"""What a stream worker refuses on its own, whatever the firewall let through: neighbour
discovery either way, and datagrams larger than the external link carries (reassembled)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_Redirect, IPv6

from workers.tunnel import Tunnel

A, B = "2001:db8:100::a1", "2001:db8:100::b1"
ND = [ICMPv6ND_NS(tgt=B), ICMPv6ND_NA(tgt=A), ICMPv6ND_Redirect(tgt=A, dst=B)]


def stripped(packet: bytes) -> bytes:
    """The inner packet as the tunnel carries it: bytes 0-7, then everything after the addresses."""
    return packet[:8] + packet[40:]


@pytest.mark.parametrize("nd", ND, ids=lambda p: p.name)
def test_neighbour_discovery_neither_enters_nor_leaves_the_tunnel(nd: Any) -> None:
    packet = raw(IPv6(src=A, dst=B, hlim=255) / nd)
    w = SimpleNamespace(state=SimpleNamespace(tunnel_mtu=1452), counters=Counter())
    Tunnel.outbound(w, packet)  # type: ignore[arg-type]  # returns before any socket
    Tunnel.inbound(w, stripped(packet))  # type: ignore[arg-type]
    assert w.counters == Counter(drop_neighbour_discovery=2)


def test_an_echo_request_is_not_taken_for_neighbour_discovery() -> None:
    packet = raw(IPv6(src=A, dst=B) / ICMPv6EchoRequest())
    w = SimpleNamespace(state=SimpleNamespace(tunnel_mtu=1452), counters=Counter())
    with pytest.raises(AttributeError):  # got past the check, to the route choice
        Tunnel.outbound(w, packet)  # type: ignore[arg-type]
    assert w.counters["drop_neighbour_discovery"] == 0


class OneDatagram:
    """A route socket holding one datagram of ``n`` bytes from the route's peer."""

    def __init__(self, n: int) -> None:
        self.n = n

    def recvmsg_into(self, buffers: Any, ancbufsize: int = 0) -> tuple[int, list[Any], int, Any]:
        if self.n < 0:
            raise BlockingIOError
        n, self.n = self.n, -1
        return n, [], 0, ("2001:db8:100::1", 4000, 0, 0)


def test_a_datagram_larger_than_the_link_carries_is_dropped_unread() -> None:
    """Only a datagram reassembled from fragments can be larger than the external link's MTU
    allows; it is counted and never opened, whatever it holds."""
    buf = bytearray(65535)
    opened: list[int] = []
    w = SimpleNamespace(rx_buffers=[buf], rx_view=memoryview(buf), max_datagram=1452,
                        counters=Counter(), openers={}, inbound=opened.append)
    rs = SimpleNamespace(sock=OneDatagram(30000), remote="2001:db8:100::1", remote_port=4000,
                         phase=1)
    assert Tunnel.receive(w, rs) is False  # type: ignore[arg-type]
    assert w.counters == Counter(drop_reassembled=1)
    assert opened == []
