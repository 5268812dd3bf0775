"""Forged ICMPv6 errors about tunnel packets (item 6), routed topology: the attacker is the
router between the sites, the natural source of such errors.

Gateway A turns a router's error about one of its tunnel packets into an error about host A's
own packet (docs/PROTOCOL.md section 3). The quoted ciphertext is decrypted without
authentication, so an attacker who flips ciphertext bits in a captured packet makes the gateway
tell host A about a packet host A never sent. A quote that changed must not reach host A; the
same error quoting the captured packet unmodified must (the positive control).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mt6d_mp import lab as labmod
from tests.attack.harness import (
    ICMP_ERRORS,
    AttackLab,
    Pkt,
    a16,
    a_str,
    attack_lab,
    host_send_udp,
    icmp6,
    packets,
    sniff,
)

pytestmark = [pytest.mark.attack]

ROTATION = 2.0
ROUTER = labmod.ROUTER_B  # "the router could not deliver it to gateway B"
UDP_PAYLOAD = 64  # offset of the UDP payload (ciphertext) in an encrypted tunnel packet


@pytest.fixture(scope="module")
def al() -> Iterator[AttackLab]:
    yield from attack_lab("routed", ROTATION)


def captured_tunnel_packet(al: AttackLab, tmp_path: Path, marker: bytes) -> Pkt:
    """A tunnel packet gateway A sent to gateway B carrying host A's UDP datagram to host B."""
    s = al.info.streams[0]
    with sniff(al.lab, al.attacker.ns, al.attacker.ports["gateway-a"][0], tmp_path / "tunnel.pcap",
               "ip6 and not icmp6") as pcap:
        host_send_udp(al.lab, s.host_a_ns, s.host_b_address, 9, marker)
    gw_a = al.gw_macs["gateway-a"]
    tunnel = [p for p in packets(pcap) if p.src_mac == gw_a and p.ip[6] == 60 and p.nh == 17]
    assert tunnel, "no tunnel packet from gateway A captured while host A sent UDP to host B"
    return tunnel[-1]


def forge_errors(tunnel: bytes) -> list[bytes]:
    """Destination Unreachable (address unreachable, and administratively prohibited) and Time
    Exceeded from the router to the tunnel packet's source, quoting ``tunnel``."""
    src = a_str(tunnel[8:24])
    return [icmp6(ROUTER, src, typ, code, b"\0\0\0\0" + tunnel)
            for typ, code in ((1, 3), (1, 1), (3, 0))]


def errors_at_host_a(pcap: Path) -> list[Pkt]:
    return [p for p in packets(pcap) if p.icmp_type in ICMP_ERRORS]


def test_errors_quoting_a_tampered_tunnel_packet_do_not_reach_host_a(al: AttackLab, tmp_path: Path) -> None:
    """Ciphertext bytes 8-23 of the captured packet's UDP payload flipped (host A's UDP header and
    data in the decrypted quote change): host A receives no ICMPv6 error."""
    s = al.info.streams[0]
    tunnel = captured_tunnel_packet(al, tmp_path, b"TAMPER-" + b"t" * 24)
    tampered = bytearray(tunnel.ip)
    for i in range(UDP_PAYLOAD + 8, UDP_PAYLOAD + 24):
        tampered[i] ^= 0xFF
    with sniff(al.lab, s.host_a_ns, "eth0", tmp_path / "ha.pcap", "icmp6") as ha:
        al.send("gateway-a", forge_errors(bytes(tampered)))
        time.sleep(1.0)
    got = [p.describe() + f" quoting {p.l4[8 + 40 : 8 + 48].hex()}" for p in errors_at_host_a(ha)]
    assert not got, (f"gateway A translated errors quoting a tampered tunnel packet (ciphertext "
                     f"flipped) and told host A about a packet it never sent: {got}")


def test_errors_quoting_a_real_tunnel_packet_reach_host_a_translated(al: AttackLab, tmp_path: Path) -> None:
    """Positive control (passes before and after the fix): the same errors quoting the captured
    packet unmodified reach host A, from the router's address (not a hashed one), quoting host
    A's own packet with its true addresses."""
    s = al.info.streams[0]
    marker = b"CONTROL-" + b"c" * 23
    tunnel = captured_tunnel_packet(al, tmp_path, marker)
    with sniff(al.lab, s.host_a_ns, "eth0", tmp_path / "ha.pcap", "icmp6") as ha:
        al.send("gateway-a", forge_errors(tunnel.ip))
        time.sleep(1.0)
    got = errors_at_host_a(ha)
    kinds = sorted((p.l4[0], p.l4[1]) for p in got)
    assert kinds == [(1, 1), (1, 3), (3, 0)], (
        f"expected the three errors translated for host A, got {[p.describe() for p in got]}")
    for p in got:
        quote = p.l4[8:]
        assert p.src == ROUTER, f"translated error not from the router's address: {p.describe()}"
        assert quote[8:24] == a16(s.host_a_address) and quote[24:40] == a16(s.host_b_address), (
            "the translated error does not quote host A's packet with the true addresses: "
            f"{quote[:48].hex()}")
        assert marker in quote, "the translated quote lacks host A's datagram"
        assert struct.unpack_from("!H", quote, 42)[0] == 9, "quoted UDP destination port"
