"""Hashed addresses must not talk: item 3 of the attack brief, on both topologies.

A hashed address is only worth something while nobody but the peer can tell it belongs to the
gateway. It gives itself away when it answers an echo to ff02::1, when the kernel sources an
ICMPv6 error about somebody else's packet from it, and when the gateway announces its
solicited-node group (the address's low 24 bits) in an MLD report as it binds the address.
"""

from __future__ import annotations

import ipaddress
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attack.harness import (
    ECHO_REPLY,
    ICMP_ERRORS,
    MLD_REPORT_V1,
    MLD_REPORT_V2,
    AttackLab,
    Pkt,
    a_str,
    assert_no_leaks,
    attack_lab,
    bound_hashed,
    echo_request,
    from_gateways,
    mac_bytes,
    packets,
    udp,
)

pytestmark = [pytest.mark.attack]

ROTATION = 1.0
UNROUTABLE = "2001:db8:dead::1"


@pytest.fixture(scope="module", params=["switched", "routed"])
def al(request: pytest.FixtureRequest) -> Iterator[AttackLab]:
    yield from attack_lab(request.param, ROTATION)


def _not_link_local(address: str) -> bool:
    return not ipaddress.IPv6Address(address).is_link_local


def test_echo_to_all_nodes_gets_no_reply_from_a_hashed_address(al: AttackLab, tmp_path: Path) -> None:
    """Item 3(a): an echo request to ff02::1 from the attacker's global address, on every link the
    gateways are on: no echo reply from any address but a link-local one."""
    req = echo_request(al.attacker.address, "ff02::1", 0x3A3A, b"all-nodes")
    with al.watch(tmp_path / "ext.pcap") as ext:
        for role in ("gateway-a", "gateway-b"):
            _, mac = al.attacker.ports[role]
            frame = b"\x33\x33\x00\x00\x00\x01" + mac_bytes(mac) + b"\x86\xdd" + req
            al.send_frames(role, [frame], rounds=2, gap=0.2)
        time.sleep(1.0)
    pkts = packets(ext)
    replies = sorted({p.describe() for p in from_gateways(al, pkts)
                      if p.icmp_type == ECHO_REPLY and _not_link_local(p.src)})
    assert not replies, f"a gateway answered an echo to ff02::1 from a routable (hashed) address: {replies}"
    assert_no_leaks(al, pkts)


def test_unroutable_packets_get_no_error_from_a_hashed_address(al: AttackLab, tmp_path: Path) -> None:
    """Item 3(b): packets to an unroutable destination (UDP, echo, and UDP with hop limit 1) sent
    to each gateway's ext0 MAC: no ICMPv6 error from a hashed or true address comes back."""
    me = al.attacker.address
    probes = [
        udp(me, UNROUTABLE, 5555, 7, b"where"),
        echo_request(me, UNROUTABLE, 0x3B3B, b"where"),
        udp(me, UNROUTABLE, 5555, 7, b"expire", hlim=1),
        udp(me, "2001:db8:100::dead", 5555, 7, b"on-link"),  # the switched /64, nobody there
    ]
    with al.watch(tmp_path / "ext.pcap") as ext:
        for role in ("gateway-a", "gateway-b"):
            al.send(role, probes)
        time.sleep(1.5)
    pkts = packets(ext)
    errors = sorted({p.describe() for p in from_gateways(al, pkts)
                     if p.icmp_type in ICMP_ERRORS and _not_link_local(p.src)})
    assert not errors, ("a gateway sent ICMPv6 errors about strangers' packets from a routable address: "
                        f"{errors}")
    assert_no_leaks(al, pkts)


def _mld_groups(p: Pkt) -> list[str]:
    """Multicast addresses an MLD report names (v1: its one group; v2: every record's)."""
    if p.nh != 58 or not p.l4:
        return []
    if p.l4[0] == MLD_REPORT_V1 and len(p.l4) >= 24:
        return [a_str(p.l4[8:24])]
    if p.l4[0] != MLD_REPORT_V2 or len(p.l4) < 8:
        return []
    (count,) = struct.unpack_from("!H", p.l4, 6)
    out, off = [], 8
    for _ in range(count):
        if off + 20 > len(p.l4):
            break
        aux, nsrc = p.l4[off + 1], struct.unpack_from("!H", p.l4, off + 2)[0]
        out.append(a_str(p.l4[off + 4 : off + 20]))
        off += 20 + 16 * nsrc + 4 * aux
    return out


def test_mld_reports_do_not_name_hashed_addresses(al: AttackLab, tmp_path: Path) -> None:
    """Item 3(c): for about three rotations, no MLD report from either gateway names a
    solicited-node group ff02::1:ffXX:XXXX whose low 24 bits are those of a hashed address the
    gateways bound in that window (sampled from ``ip -6 addr`` in the gateways meanwhile)."""
    bound: dict[str, set[str]] = {"gateway-a": set(), "gateway-b": set()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for role, seen in bound.items():
                seen |= bound_hashed(al, role)
            stop.wait(0.15)

    sampler = threading.Thread(target=sample, daemon=True)
    with al.watch(tmp_path / "ext.pcap") as ext:
        sampler.start()
        try:
            time.sleep(3.2 * ROTATION)
        finally:
            stop.set()
            sampler.join(timeout=10)
    hashed = {a for seen in bound.values() for a in seen}
    assert len(hashed) >= 4, f"the gateways bound too few hashed addresses in the window: {hashed}"
    low24 = {ipaddress.IPv6Address(a).packed[13:]: a for a in hashed}
    named = set()
    for p in from_gateways(al, packets(ext)):
        for group in _mld_groups(p):
            g = ipaddress.IPv6Address(group).packed
            if g[:13] == ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13] and g[13:] in low24:
                named.add(f"{p.src_mac} reported {group} = solicited-node group of {low24[g[13:]]}")
    assert not named, (f"{len(named)} MLD report group(s) give away hashed addresses "
                       f"(of {len(hashed)} bound in the window): {sorted(named)[:6]}")


