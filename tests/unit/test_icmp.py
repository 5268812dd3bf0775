"""Unit tests for mt6d_mp.core.icmp, with expected packets built and checked by scapy."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
)
from scapy.packet import Packet, Raw

from mt6d_mp.core.crypto import (
    CRYPT_AES_256_GCM,
    CRYPT_CHACHA20_POLY1305,
    CRYPT_NONE,
    Opener,
    PrefixDecryptor,
    Sealer,
)
from mt6d_mp.core.icmp import (
    RouteLookup,
    SentCheck,
    neighbor_advertisement,
    neighbor_solicitation_target,
    packet_too_big,
    parse_icmpv6,
    rewrite_router_advertisement,
    router_solicitation,
    translate_icmp_error,
)
from mt6d_mp.core.packet import Buffer, encapsulate, parse_tunnel, tunnel_overhead
from mt6d_mp.core.sentlog import SENT_PREFIX, sent_record
from mt6d_mp.errors import PacketError

KEY = bytes(range(7, 39))
HOST_A, HOST_B = "2001:db8:a::10", "2001:db8:b::20"
HASH_A, HASH_B = "2001:db8:a::1234:5678:9abc:def0", "2001:db8:b::fedc:ba98:7654:3210"
ROUTER, GW = "2001:db8:ffff::1", "2001:db8:a::1"
MAC = bytes.fromhex("020000aabbcc")
ALL_TYPES = [CRYPT_NONE, CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305]


def a16(text: str) -> bytes:
    return raw(IPv6(src=text))[8:24]


HA, HB, TA, TB = a16(HASH_A), a16(HASH_B), a16(HOST_A), a16(HOST_B)


def checksum_ok(pkt: bytes, layer: type[Packet]) -> bool:
    parsed = IPv6(pkt)
    stored = parsed[layer].cksum
    del parsed[layer].cksum
    return bool(IPv6(raw(parsed))[layer].cksum == stored)


def host_packet(size: int) -> bytes:
    pkt = IPv6(src=HOST_A, dst=HOST_B, hlim=33, tc=0x10) / UDP(sport=1234, dport=5678)
    return raw(pkt / Raw(os.urandom(size - 48)))


# --- Packet Too Big --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [100, 1232, 1500])
def test_packet_too_big_matches_scapy(size: int) -> None:
    original = host_packet(size)
    got = packet_too_big(original, 1452, a16(GW))
    want = IPv6(src=GW, dst=HOST_A, hlim=64) / ICMPv6PacketTooBig(mtu=1452) / Raw(original[:1232])
    assert got == raw(want)
    assert len(got) <= 1280


def test_packet_too_big_refusals() -> None:
    err_pkt = raw(IPv6(src=HOST_A, dst=HOST_B) / ICMPv6DestUnreach() / Raw(bytes(60)))
    with pytest.raises(PacketError, match="no_error"):
        packet_too_big(err_pkt, 1400, a16(GW))
    mcast = raw(IPv6(src="ff02::1", dst=HOST_B) / UDP() / Raw(bytes(10)))
    with pytest.raises(PacketError, match="no_error"):
        packet_too_big(mcast, 1400, a16(GW))
    echo = raw(IPv6(src=HOST_A, dst="ff02::1") / ICMPv6EchoRequest())
    assert parse_icmpv6(packet_too_big(echo, 1400, a16(GW)))[:2] == (2, 0)


# --- Router Solicitation / Advertisement -----------------------------------------------------------------
def test_router_solicitation_matches_scapy() -> None:
    got = router_solicitation(a16(GW), MAC)
    want = (
        IPv6(src=GW, dst="ff02::2", hlim=255)
        / ICMPv6ND_RS()
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:aa:bb:cc")
    )
    assert got == raw(want)
    got = router_solicitation(bytes(16), MAC)
    assert got == raw(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS())


def _ra(mtu: int | None, src: str = "fe80::1", lladdr: str = "02:11:22:33:44:55") -> Packet:
    ra = IPv6(src=src, dst="ff02::1", hlim=255) / ICMPv6ND_RA(chlim=64, routerlifetime=1800)
    ra = ra / ICMPv6NDOptSrcLLAddr(lladdr=lladdr)
    if mtu is not None:
        ra = ra / ICMPv6NDOptMTU(mtu=mtu)
    return ra / ICMPv6NDOptPrefixInfo(prefix="2001:db8:a::", prefixlen=64)


@pytest.mark.parametrize("ct", ALL_TYPES)
def test_rewrite_router_advertisement(ct: int) -> None:
    overhead = tunnel_overhead(ct)
    got = rewrite_router_advertisement(raw(_ra(1500)), overhead, MAC)
    assert got == raw(_ra(1500 - overhead, lladdr="02:00:00:aa:bb:cc"))
    got = rewrite_router_advertisement(raw(_ra(1500)) + b"\x00" * 4, overhead, MAC, a16("fe80::9"))
    assert got == raw(_ra(1500 - overhead, src="fe80::9", lladdr="02:00:00:aa:bb:cc"))
    assert got[7] == 255
    # No MTU option: none is added.
    got = rewrite_router_advertisement(raw(_ra(None)), overhead, MAC)
    assert got == raw(_ra(None, lladdr="02:00:00:aa:bb:cc"))
    # Never below the IPv6 minimum MTU.
    got = rewrite_router_advertisement(raw(_ra(1300)), 48, MAC)
    assert IPv6(got)[ICMPv6NDOptMTU].mtu == 1280


def test_rewrite_router_advertisement_rejects() -> None:
    good = bytearray(raw(_ra(1500)))
    bad_csum = bytearray(good)
    bad_csum[-1] ^= 1
    hop = bytearray(good)
    hop[7] = 64
    zero_opt = bytearray(good)
    zero_opt[40 + 16 + 1] = 0  # first option's length
    cases = {
        "bad_checksum": bytes(bad_csum),
        "bad_ra": bytes(hop),
        "not_ra": raw(IPv6() / ICMPv6ND_RS()),
        "truncated": bytes(good[:-3]),
    }
    for reason, pkt in cases.items():
        with pytest.raises(PacketError) as err:
            rewrite_router_advertisement(pkt, 16, MAC)
        assert err.value.reason == reason
    with pytest.raises(PacketError):
        rewrite_router_advertisement(bytes(zero_opt), 16, MAC)


# --- error translation -----------------------------------------------------------------------------------
def _route(ct: int) -> tuple[Sealer | None, PrefixDecryptor | None]:
    if ct == CRYPT_NONE:
        return None, None
    return Sealer(ct, KEY), Opener(ct, KEY)  # same key: the direction the quoted packet travelled


def _lookup(decryptor: PrefixDecryptor | None, *sent: bytes) -> RouteLookup:
    """The route HA -> HB, whose worker sent the tunnel packets ``sent`` (and nothing else)."""
    records = set()
    for tunnel in sent:
        view = parse_tunnel(tunnel)
        payload = tunnel[view.payload_offset : view.payload_end]
        records.add(sent_record(view.dstopts or b"", payload[:SENT_PREFIX]))

    def was_sent(dstopts: bytes, prefix: Buffer) -> bool:
        return sent_record(dstopts, prefix) in records

    def lookup(src: bytes, dst: bytes) -> tuple[bytes, bytes, PrefixDecryptor | None, SentCheck] | None:
        return (TA, TB, decryptor, was_sent) if (src, dst) == (HA, HB) else None

    return lookup


def quoted(inner: bytes) -> bytes:
    """What a translated error quotes of the host's packet: the part the worker recorded."""
    return inner[: 32 + SENT_PREFIX]


def _wrap(tunnel: bytes, icmp: Packet) -> bytes:
    """A router's error about ``tunnel``, cut to 1280 bytes as RFC 4443 2.4(c) requires."""
    return raw(IPv6(src=ROUTER, dst=HASH_A, hlim=50) / icmp / Raw(tunnel[:1232]))


@pytest.mark.parametrize("ct", ALL_TYPES)
@pytest.mark.parametrize("size", [60, 1400])
def test_translate_packet_too_big(ct: int, size: int) -> None:
    sealer, decryptor = _route(ct)
    inner = host_packet(size)
    tunnel = encapsulate(inner, HA, HB, 40000, 50000, sealer)
    error = _wrap(tunnel, ICMPv6PacketTooBig(mtu=1400))
    got = translate_icmp_error(error, _lookup(decryptor, tunnel))
    assert len(got) <= 1280
    parsed = IPv6(got)
    assert (parsed.src, parsed.dst, parsed.hlim) == (ROUTER, HOST_A, 64)
    assert parsed[ICMPv6PacketTooBig].mtu == 1400 - tunnel_overhead(ct)
    assert checksum_ok(got, ICMPv6PacketTooBig)
    assert got[48:] == quoted(inner)


@pytest.mark.parametrize("ct", ALL_TYPES)
def test_translate_time_exceeded_and_unreachable(ct: int) -> None:
    sealer, decryptor = _route(ct)
    inner = host_packet(700)
    tunnel = encapsulate(inner, HA, HB, 40000, 50000, sealer)
    for layer, cls in (
        (ICMPv6TimeExceeded(code=0), ICMPv6TimeExceeded),
        (ICMPv6DestUnreach(code=3), ICMPv6DestUnreach),
    ):
        got = translate_icmp_error(_wrap(tunnel, layer), _lookup(decryptor, tunnel))
        parsed = IPv6(got)
        assert parsed[cls].code == layer.code
        assert got[48:] == quoted(inner)
        assert checksum_ok(got, cls)


def test_translate_mtu_clamped_and_pointer_mapped() -> None:
    sealer, decryptor = _route(CRYPT_AES_256_GCM)
    inner = host_packet(300)
    tunnel = encapsulate(inner, HA, HB, 40000, 50000, sealer)
    got = translate_icmp_error(_wrap(tunnel, ICMPv6PacketTooBig(mtu=1300)), _lookup(decryptor, tunnel))
    assert IPv6(got)[ICMPv6PacketTooBig].mtu == 1280
    # Pointer at the outer hop limit -> inner hop limit; at payload byte 8 -> inner byte 40.
    for ptr, want in ((7, 7), (24, 24), (64 + 3, 3), (64 + 8, 40), (64 + 20, 52)):
        got = translate_icmp_error(_wrap(tunnel, ICMPv6ParamProblem(ptr=ptr)), _lookup(decryptor, tunnel))
        assert IPv6(got)[ICMPv6ParamProblem].ptr == want
    for ptr in (40, 63):
        with pytest.raises(PacketError, match="tunnel_problem"):
            translate_icmp_error(_wrap(tunnel, ICMPv6ParamProblem(ptr=ptr)), _lookup(decryptor, tunnel))


def test_translate_rejects() -> None:
    sealer, decryptor = _route(CRYPT_CHACHA20_POLY1305)
    tunnel = encapsulate(host_packet(200), HA, HB, 40000, 50000, sealer)
    with pytest.raises(PacketError, match="unknown_route"):
        translate_icmp_error(_wrap(tunnel, ICMPv6TimeExceeded()), lambda s, d: None)
    with pytest.raises(PacketError, match="alg_mismatch"):
        translate_icmp_error(_wrap(tunnel, ICMPv6TimeExceeded()), _lookup(None, tunnel))
    echo = raw(IPv6(src=ROUTER, dst=HASH_A) / ICMPv6EchoRequest())
    with pytest.raises(PacketError, match="not_icmp_error"):
        translate_icmp_error(echo, _lookup(decryptor, tunnel))
    elsewhere = raw(IPv6(src=ROUTER, dst=HASH_B) / ICMPv6TimeExceeded() / Raw(tunnel))
    with pytest.raises(PacketError, match="quote_mismatch"):
        translate_icmp_error(elsewhere, _lookup(decryptor, tunnel))
    bad = bytearray(_wrap(tunnel, ICMPv6TimeExceeded()))
    bad[-1] ^= 1
    with pytest.raises(PacketError, match="bad_checksum"):
        translate_icmp_error(bytes(bad), _lookup(decryptor, tunnel))


# --- robustness ------------------------------------------------------------------------------------------
_S, _D = _route(CRYPT_AES_256_GCM)
_TUNNEL = encapsulate(host_packet(300), HA, HB, 40000, 50000, _S)
SEEDS = [
    _wrap(_TUNNEL, ICMPv6PacketTooBig(mtu=1400)),
    _wrap(encapsulate(host_packet(100), HA, HB, 1, 2, None), ICMPv6TimeExceeded()),
    raw(_ra(1500)),
]


def _fix_icmp_checksum(data: bytearray) -> None:
    """Recompute the checksum (if the packet is parseable) so that fuzzing reaches the deeper code."""
    from mt6d_mp.core.packet import icmpv6_checksum

    with contextlib.suppress(PacketError):
        _, _, off = parse_icmpv6(bytes(data))
        end = 40 + int.from_bytes(data[4:6], "big")
        csum = icmpv6_checksum(data[8:24], data[24:40], data[off:end])
        data[off + 2 : off + 4] = csum.to_bytes(2, "big")


def _try_all(data: bytes) -> None:
    for fn in (
        lambda: translate_icmp_error(data, _lookup(_D, _TUNNEL)),
        lambda: translate_icmp_error(data, _lookup(None, _TUNNEL)),
        lambda: rewrite_router_advertisement(data, 48, MAC),
        lambda: parse_icmpv6(data),
        lambda: packet_too_big(data, 1280, a16(GW)),
    ):
        with contextlib.suppress(PacketError):
            fn()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _try_all(data)
    _try_all(b"\x60" + data)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 140), st.integers(0, 255)), max_size=4),
    st.integers(0, 400),
    st.booleans(),
)
def test_fuzz_mutated(base: bytes, edits: list[tuple[int, int]], cut: int, fix: bool) -> None:
    data = bytearray(base)
    for pos, val in edits:
        if pos < len(data):
            data[pos] = val
    if fix:
        _fix_icmp_checksum(data)
    _try_all(bytes(data))
    _try_all(bytes(data[:cut]))


def test_errors_from_the_peer_endpoint_never_show_its_hashed_address() -> None:
    """The peer gateway's own stack answering about the tunnel datagram (seen in the lab when a
    route's address was bound before its guard): Port Unreachable is dropped, others come from
    the remote host's true address."""
    sealer, decryptor = _route(CRYPT_AES_256_GCM)
    inner = host_packet(300)
    tunnel = encapsulate(inner, HA, HB, 40000, 50000, sealer)

    def from_peer(icmp: Packet) -> bytes:
        return raw(IPv6(src=HASH_B, dst=HASH_A) / icmp / Raw(tunnel[:1232]))

    for code in (0, 1, 3, 4):
        with pytest.raises(PacketError, match="peer_unreachable"):
            translate_icmp_error(from_peer(ICMPv6DestUnreach(code=code)), _lookup(decryptor, tunnel))
    got = translate_icmp_error(from_peer(ICMPv6TimeExceeded()), _lookup(decryptor, tunnel))
    parsed = IPv6(got)
    assert (parsed.src, parsed.dst) == (HOST_B, HOST_A)
    assert got[48:] == quoted(inner)
    assert checksum_ok(got, ICMPv6TimeExceeded)


# --- quotes that were never sent ---------------------------------------------------------------------------
@pytest.mark.parametrize("ct", ALL_TYPES)
def test_a_forged_quote_is_not_translated(ct: int) -> None:
    """The quote is cut before the tag, so a flipped ciphertext bit would flip the host's packet
    as the gateway decrypts it (a stream cipher): only quotes of packets the worker recorded
    are translated, whatever the attacker changed in them."""
    sealer, decryptor = _route(ct)
    inner = host_packet(300)
    tunnel = encapsulate(inner, HA, HB, 40000, 50000, sealer)
    lookup = _lookup(decryptor, tunnel)
    assert translate_icmp_error(_wrap(tunnel, ICMPv6TimeExceeded()), lookup)  # the genuine quote
    payload_offset = parse_tunnel(tunnel).payload_offset
    for at in (payload_offset, payload_offset + 9, payload_offset + SENT_PREFIX - 1):
        forged = bytearray(tunnel)
        forged[at] ^= 0x04
        with pytest.raises(PacketError, match="quote_not_sent"):
            translate_icmp_error(_wrap(bytes(forged), ICMPv6TimeExceeded()), lookup)
    other = encapsulate(host_packet(300), HA, HB, 40000, 50000, sealer)  # sealed, never sent
    with pytest.raises(PacketError, match="quote_not_sent"):
        translate_icmp_error(_wrap(other, ICMPv6DestUnreach(code=3)), lookup)
    with pytest.raises(PacketError, match="quote_short"):
        translate_icmp_error(_wrap(tunnel[: payload_offset + 20], ICMPv6TimeExceeded()), lookup)


def test_beyond_the_recorded_prefix_nothing_reaches_the_host() -> None:
    """Bytes after the recorded prefix are not checked, so they are not quoted to the host."""
    sealer, decryptor = _route(CRYPT_AES_256_GCM)
    inner = host_packet(600)
    tunnel = encapsulate(inner, HA, HB, 40000, 50000, sealer)
    forged = bytearray(tunnel)
    forged[parse_tunnel(tunnel).payload_offset + SENT_PREFIX + 5] ^= 0xFF
    got = translate_icmp_error(_wrap(bytes(forged), ICMPv6TimeExceeded()), _lookup(decryptor, tunnel))
    assert got[48:] == quoted(inner)


# --- neighbour discovery for the hashed addresses (workers/icmp.py answers it) -----------------


def solicitation(src: str, dst: str, target: str, hlim: int = 255, **kw: object) -> bytes:
    return raw(IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6ND_NS(tgt=target, **kw)
               / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01"))


def test_a_solicitation_for_a_hashed_address_gets_a_solicited_advertisement_from_it() -> None:
    ns = solicitation("fe80::1", "ff02::1:ffbc:def0", HASH_A)
    src, target = neighbor_solicitation_target(ns)
    assert (src, target) == (a16("fe80::1"), a16(HASH_A))
    packet, dst = neighbor_advertisement(target, src, MAC)
    na = IPv6(packet)
    assert dst == a16("fe80::1") and a16(na.src) == a16(HASH_A) and na.dst == "fe80::1"
    assert na.hlim == 255
    adv = na[ICMPv6ND_NA]
    assert (a16(adv.tgt), adv.S, adv.O, adv.R) == (a16(HASH_A), 1, 1, 0)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == "02:00:00:aa:bb:cc"
    checked = na.copy()
    del checked[ICMPv6ND_NA].cksum  # scapy computes the checksum afresh: the same
    assert raw(checked) == packet


def test_duplicate_address_detection_is_answered_to_all_nodes_unsolicited() -> None:
    ns = raw(IPv6(src="::", dst="ff02::1:ffbc:def0", hlim=255) / ICMPv6ND_NS(tgt=HASH_A))
    src, target = neighbor_solicitation_target(ns)
    packet, dst = neighbor_advertisement(target, src, MAC)
    na = IPv6(packet)
    assert dst == a16("ff02::1") and na.dst == "ff02::1" and na[ICMPv6ND_NA].S == 0 and na[ICMPv6ND_NA].O == 1


@pytest.mark.parametrize("bad, reason", [
    (solicitation("fe80::1", "ff02::1:ffbc:def0", HASH_A, hlim=254), "nd_hop_limit"),
    (solicitation("fe80::1", "ff02::1:ff00:1", "ff02::1"), "ns_multicast_target"),
    (raw(IPv6(src="::", dst=HASH_A, hlim=255) / ICMPv6ND_NS(tgt=HASH_A)), "ns_dad_not_solicited_node"),
    (raw(IPv6(src="fe80::1", dst=HASH_A, hlim=255) / ICMPv6EchoRequest(data=bytes(16))), "not_ns"),
    (solicitation("fe80::1", "ff02::1:ffbc:def0", HASH_A)[:60], "truncated"),
])
def test_solicitations_a_node_must_not_answer_are_refused(bad: bytes, reason: str) -> None:
    with pytest.raises(PacketError) as e:
        neighbor_solicitation_target(bad)
    assert e.value.reason == reason


def test_a_solicitation_with_a_wrong_checksum_is_refused() -> None:
    ns = bytearray(solicitation("fe80::1", "ff02::1:ffbc:def0", HASH_A))
    ns[42] ^= 1
    with pytest.raises(PacketError, match="checksum"):
        neighbor_solicitation_target(bytes(ns))
