"""An attacker without the key injects packets that name the hosts' true addresses.

Items 1, 2 and 7 of the attack brief, on both topologies (see harness.py for where the attacker
sits): packets sent to a gateway's ext0 with a host's true address must neither be tunnelled to
the other host nor answered; packets a host sends with a spoofed source must not make the
gateway answer from a true address onto the external link; neighbour discovery never crosses the
tunnel.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attack.harness import (
    NA,
    NS,
    AttackLab,
    assert_no_leaks,
    attack_lab,
    echo_request,
    from_gateways,
    leaks,
    mac_bytes,
    neighbor_solicitation,
    neighbour_mac,
    packets,
    send_frames,
    sniff,
    tcp_syn,
    udp,
)
from tests.lab.test_mt6d import assert_no_loss, ping

pytestmark = [pytest.mark.attack]

ROTATION = 1.0


@pytest.fixture(scope="module", params=["switched", "routed"])
def al(request: pytest.FixtureRequest) -> Iterator[AttackLab]:
    yield from attack_lab(request.param, ROTATION)


def _probes(src: str, dst: str, marker: bytes, seq: int) -> list[bytes]:
    """An echo request and a UDP datagram carrying ``marker``, and a TCP SYN with sequence ``seq``."""
    return [
        echo_request(src, dst, 0x6D6D, marker),
        udp(src, dst, 40404, 9999, marker),
        tcp_syn(src, dst, 40405, 22, seq),
    ]


def solicited_node(address: str) -> str:
    return str(ipaddress.IPv6Address(ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13]
                                     + ipaddress.IPv6Address(address).packed[13:]))


def solicited_node_frame(src_mac: str, ip: bytes) -> bytes:
    return b"\x33\x33" + ip[36:40] + mac_bytes(src_mac) + b"\x86\xdd" + ip


def test_injected_packets_with_true_addresses_do_not_reach_host_b(al: AttackLab, tmp_path: Path) -> None:
    """Item 1: frames to gateway A's ext0, source host A's true address, destination host B's."""
    s = al.info.streams[0]
    a, b = s.host_a_address, s.host_b_address
    marker = b"INJECT-" + secrets.token_hex(8).encode()
    seq = secrets.randbelow(2**32)
    attacker_mac = al.attacker.ports["gateway-a"][1]
    # Host B knows host A's address first (a real packet), so a poisoned entry would show.
    assert_no_loss(ping(al.lab, s.host_a_ns, b, "-c", "1", "-W", "3"), al.info)
    before = neighbour_mac(al.lab, s.host_b_ns, a)
    probes = [
        *_probes(a, b, marker, seq),
        neighbor_solicitation(a, b, target=b, lladdr=attacker_mac),  # B would learn A = attacker
        neighbor_solicitation(a, b, target=a, lladdr=attacker_mac),
    ]
    with sniff(al.lab, s.host_b_ns, "eth0", tmp_path / "hb.pcap") as hb:
        al.send("gateway-a", probes, rounds=3, gap=0.2)
        time.sleep(1.0)
    arrived = []
    for p in packets(hb):
        if p.src != a:
            continue
        if marker in p.l4:
            arrived.append(p.describe() + " (marker)")
        elif p.nh == 6 and len(p.l4) >= 8 and int.from_bytes(p.l4[4:8], "big") == seq:
            arrived.append(p.describe() + " (the forged SYN)")
        elif p.icmp_type == NS and attacker_mac.replace(":", "") in p.l4.hex():
            arrived.append(p.describe() + " (forged NS naming the attacker's MAC)")
    assert not arrived, (f"packets injected on the external link with host A's true address as "
                         f"source were tunnelled to host B: {arrived}")
    after = neighbour_mac(al.lab, s.host_b_ns, a)
    assert after not in al.attacker.macs, (
        f"host B's neighbour entry for host A ({a}) now points at the attacker's MAC {after} "
        f"(was {before})")


def test_true_addresses_answer_the_attacker_nothing(al: AttackLab, tmp_path: Path) -> None:
    """Item 2: echo, SYN and UDP from the attacker's own address to either host's true address,
    sent to either gateway's ext0, and neighbour solicitations for them (unicast and multicast):
    no answer but neighbour discovery, and no frame from a gateway with a true address."""
    s = al.info.streams[0]
    me = al.attacker.address
    marker = b"ASK-" + secrets.token_hex(6).encode()
    trues = (s.host_b_address, s.host_a_address)
    with al.watch(tmp_path / "ext.pcap") as ext:
        for role in ("gateway-a", "gateway-b"):
            _, my_mac = al.attacker.ports[role]
            al.send(role, [p for dst in trues for p in _probes(me, dst, marker, 1234)])
            # Neighbour solicitations for the true addresses, unicast and to the solicited-node
            # group: an advertisement would say which gateway holds them.
            al.send(role, [neighbor_solicitation(me, dst, target=dst, lladdr=my_mac) for dst in trues])
            al.send_frames(role, [solicited_node_frame(my_mac, neighbor_solicitation(
                me, solicited_node(dst), target=dst, lladdr=my_mac)) for dst in trues])
        time.sleep(1.5)
    pkts = packets(ext)
    answers = sorted({p.describe() for p in from_gateways(al, pkts)
                      if p.dst == me and p.icmp_type not in (NS, NA)})
    assert not answers, f"the gateways answered the attacker's probes of the true addresses: {answers}"
    assert_no_leaks(al, pkts, "probes of the true addresses from the external link")


SPOOFED = ("2001:db8:ffff::1",)


def test_spoofed_sources_from_host_a_make_no_true_address_leave(al: AttackLab, tmp_path: Path) -> None:
    """Item 2, second half: host A sends to host B's true address from sources that are not its
    own (another network, the attacker's address): nothing with a true address leaves on the
    external link (no echo reply, RST or port unreachable from host B's address routed out)."""
    s = al.info.streams[0]
    host_a = al.info.host_a()
    assert host_a.mac is not None
    gw_int = al.gw_int_mac("gateway-a")
    marker = b"SPOOF-" + secrets.token_hex(6).encode()
    frames = [bytes.fromhex(gw_int.replace(":", "")) + bytes.fromhex(host_a.mac.replace(":", ""))
              + b"\x86\xdd" + p
              for src in (*SPOOFED, al.attacker.address)
              for p in _probes(src, s.host_b_address, marker, 4321)]
    with al.watch(tmp_path / "ext.pcap") as ext:
        send_frames(al.lab, s.host_a_ns, "eth0", frames)
        time.sleep(1.5)
    found = leaks(al, packets(ext))
    assert not found, (f"host A's packets with spoofed sources made a gateway send true addresses "
                       f"onto the external link: {found[:4]}")


def test_neighbour_discovery_does_not_cross_the_tunnel(al: AttackLab, tmp_path: Path) -> None:
    """Item 7: a unicast Neighbor Solicitation from host A to host B's true address (hop limit
    255, source link-layer option) must not arrive at host B (nor its answer at host A)."""
    s = al.info.streams[0]
    host_a = al.info.host_a()
    assert host_a.mac is not None
    gw_int = al.gw_int_mac("gateway-a")
    ns_frame = (bytes.fromhex(gw_int.replace(":", "")) + bytes.fromhex(host_a.mac.replace(":", ""))
                + b"\x86\xdd"
                + neighbor_solicitation(s.host_a_address, s.host_b_address, target=s.host_b_address,
                                        lladdr=host_a.mac))
    with sniff(al.lab, s.host_b_ns, "eth0", tmp_path / "hb.pcap", "icmp6") as hb:
        send_frames(al.lab, s.host_a_ns, "eth0", [ns_frame], rounds=3, gap=0.2)
        time.sleep(1.0)
    crossed = [p.describe() for p in packets(hb)
               if p.src == s.host_a_address and p.icmp_type is not None and 133 <= p.icmp_type <= 137]
    assert not crossed, f"neighbour discovery from host A crossed the tunnel to host B: {crossed}"


