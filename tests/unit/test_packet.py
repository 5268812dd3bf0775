"""Unit tests for mt6d_mp.core.packet. Golden bytes come from scapy, ciphertexts from cryptography's
AEADs with the nonce and associated data built by hand, never from our own encoder."""

from __future__ import annotations

import contextlib
import os
from ipaddress import IPv6Address

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Pad1,
    PadN,
    in6_chksum,
)
from scapy.packet import Raw

from mt6d_mp.core.crypto import (
    CRYPT_AES_256_GCM,
    CRYPT_CHACHA20_POLY1305,
    CRYPT_NONE,
    Opener,
    Sealer,
)
from mt6d_mp.core.packet import (
    TUNNEL_OVERHEAD_AEAD,
    TUNNEL_OVERHEAD_PLAIN,
    Buffer,
    decapsulate,
    decapsulate_pieces,
    encapsulate,
    icmpv6_checksum,
    open_payload,
    parse_tunnel,
    tunnel_mtu,
    tunnel_overhead,
    tunnel_pieces,
    udp_checksum,
    udp_header,
)
from mt6d_mp.errors import PacketError

AEADS: dict[int, type[AESGCM] | type[ChaCha20Poly1305]] = {
    CRYPT_AES_256_GCM: AESGCM,
    CRYPT_CHACHA20_POLY1305: ChaCha20Poly1305,
}
ALL_TYPES = [CRYPT_NONE, CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305]
KEY = bytes(range(1, 33))
HOST_A, HOST_B = "2001:db8:a::10", "2001:db8:b::20"
HASH_A, HASH_B = "2001:db8:a::1234:5678:9abc:def0", "2001:db8:b::fedc:ba98:7654:3210"
SPORT, DPORT = 40001, 50002


def a16(text: str) -> bytes:
    return raw(IPv6(src=text))[8:24]


HA, HB, TA, TB = a16(HASH_A), a16(HASH_B), a16(HOST_A), a16(HOST_B)


def inner_packet(size: int = 200, tc: int = 0x28, hlim: int = 61) -> bytes:
    pkt = IPv6(src=HOST_A, dst=HOST_B, tc=tc, fl=0x12345, hlim=hlim) / UDP(sport=1111, dport=2222)
    return raw(pkt / Raw(os.urandom(max(0, size - 48))))


def make_sealer(ct: int, lane: int = 0) -> Sealer | None:
    return None if ct == CRYPT_NONE else Sealer(ct, KEY, lane=lane)


def make_opener(ct: int) -> Opener | None:
    return None if ct == CRYPT_NONE else Opener(ct, KEY)


def scapy_checksum_ok(pkt: bytes) -> bool:
    parsed = IPv6(pkt)
    udp = parsed[UDP]
    stored = udp.chksum
    del udp.chksum
    return bool(IPv6(raw(parsed))[UDP].chksum == stored)


# --- golden vectors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("flow_label", [0, 0xABCDE])
def test_encapsulate_plain_matches_scapy(flow_label: int) -> None:
    inner = inner_packet(300)
    got = encapsulate(inner, HA, HB, SPORT, DPORT, None, flow_label=flow_label)
    want = (
        IPv6(src=HASH_A, dst=HASH_B, tc=0x28, fl=flow_label, hlim=61)
        / UDP(sport=SPORT, dport=DPORT)
        / Raw(inner[:8] + inner[40:])
    )
    assert got == raw(want)
    assert len(got) == len(inner) + TUNNEL_OVERHEAD_PLAIN
    assert scapy_checksum_ok(got)


@pytest.mark.parametrize("alg", [CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305])
def test_encapsulate_aead_matches_scapy_and_reference_aead(alg: int) -> None:
    inner = inner_packet(1400)
    sealer = Sealer(alg, KEY, lane=3)
    sealer.seal(b"skip", bytes(36))  # counter now 1
    got = encapsulate(inner, HA, HB, SPORT, DPORT, sealer)
    optdata = bytes([alg, 0, 0, 3]) + (1).to_bytes(8, "big")
    dstopts = bytes([17, 1, 0x1E, 12]) + optdata
    aad = HA + HB + SPORT.to_bytes(2, "big") + DPORT.to_bytes(2, "big") + dstopts
    nonce = b"\x00\x00\x00\x03" + (1).to_bytes(8, "big")
    ct = AEADS[alg](KEY).encrypt(nonce, inner[:8] + inner[40:], aad)
    want = (
        IPv6(src=HASH_A, dst=HASH_B, tc=0x28, hlim=61)
        / IPv6ExtHdrDestOpt(nh=17, options=[HBHOptUnknown(otype=0x1E, optdata=optdata)])
        / UDP(sport=SPORT, dport=DPORT)
        / Raw(ct)
    )
    assert got == raw(want)
    assert len(got) == len(inner) + TUNNEL_OVERHEAD_AEAD
    assert scapy_checksum_ok(got)


@pytest.mark.parametrize("ct", ALL_TYPES)
def test_tunnel_pieces_match_encapsulate(ct: int) -> None:
    inner = inner_packet(500)
    dstopts, udp_hdr, payload = tunnel_pieces(inner, HA, HB, SPORT, DPORT, make_sealer(ct))
    full = encapsulate(inner, HA, HB, SPORT, DPORT, make_sealer(ct))
    body = full[40:]
    assert body[: len(dstopts)] == dstopts
    assert udp_hdr[6:] == b"\x00\x00"
    assert udp_hdr[:6] == body[len(dstopts) : len(dstopts) + 6]
    assert payload == body[len(dstopts) + 8 :]
    assert udp_header(1, 2, 3) == raw(UDP(sport=1, dport=2, len=11, chksum=0))


def test_overheads() -> None:
    assert tunnel_overhead(CRYPT_NONE) == 16 and tunnel_overhead(CRYPT_AES_256_GCM) == 48
    assert tunnel_mtu(1500, CRYPT_CHACHA20_POLY1305) == 1452
    assert tunnel_mtu(1500, CRYPT_NONE) == 1484


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=8, max_size=300), st.binary(min_size=32, max_size=32))
def test_checksums_match_scapy(data: bytes, addrs: bytes) -> None:
    src, dst = addrs[:16], addrs[16:]
    seg = bytearray(data)
    seg[6:8] = os.urandom(2)  # our functions ignore whatever is in the checksum field
    ip = IPv6(src=str(IPv6Address(src)), dst=str(IPv6Address(dst)))
    udp_zeroed = bytes(seg[:6]) + b"\x00\x00" + bytes(seg[8:])
    assert udp_checksum(src, dst, bytes(seg)) == (in6_chksum(17, ip, udp_zeroed) or 0xFFFF)  # type: ignore[no-untyped-call]
    icmp = bytes(seg[:2]) + b"\x00\x00" + bytes(seg[4:])
    assert icmpv6_checksum(src, dst, bytes(seg)) == in6_chksum(58, ip, icmp)  # type: ignore[no-untyped-call]


# --- parsing scapy-built packets -------------------------------------------------------------------------
def test_parse_plain_and_trailing_bytes() -> None:
    pkt = raw(IPv6(src=HASH_A, dst=HASH_B, tc=7, fl=99, hlim=3) / UDP(sport=5, dport=6) / Raw(b"x" * 9))
    v = parse_tunnel(pkt + b"\x00" * 6)  # Ethernet padding is ignored
    assert (v.src, v.dst, v.sport, v.dport) == (HA, HB, 5, 6)
    assert (v.hop_limit, v.traffic_class, v.flow_label) == (3, 7, 99)
    assert (v.udp_offset, v.payload_offset, v.payload_end, v.udp_length) == (40, 48, 57, 17)
    assert v.dstopts is None and v.enc_offset == -1 and v.keyx is None


def test_parse_options_padding_keyx_and_skippable_unknown() -> None:
    opts = [
        Pad1(),
        HBHOptUnknown(otype=0x1D, optdata=b"zz"),  # unknown, action 00: skip
        HBHOptUnknown(otype=0x3E, optdata=b"key-exchange"),
        PadN(optdata=b"\x00\x00"),
        HBHOptUnknown(otype=0x1E, optdata=bytes([1, 2]) + (7).to_bytes(2, "big") + (9).to_bytes(8, "big")),
    ]
    pkt = raw(
        IPv6(src=HASH_A, dst=HASH_B)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt(options=opts)
        / UDP(sport=5, dport=6)
        / Raw(b"payload")
    )
    v = parse_tunnel(pkt)
    assert v.keyx == b"key-exchange"
    assert (v.alg, v.key_phase, v.lane, v.counter) == (1, 2, 7, 9)
    assert v.dstopts is not None and v.dstopts[v.enc_offset] == 0x1E
    assert pkt[v.payload_offset : v.payload_end] == b"payload"


@pytest.mark.parametrize(
    ("layers", "reason"),
    [
        (IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x5E, optdata=b"a")]), "unknown_option"),
        (IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x9E, optdata=b"a")]), "unknown_option"),
        (IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0xDE, optdata=b"a")]), "unknown_option"),
        (IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=b"a")]), "bad_option"),
        (IPv6ExtHdrFragment(), "fragment"),
        (
            IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=bytes(12))]) / IPv6ExtHdrRouting(),
            "bad_option",
        ),
        (IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop(), "bad_ext_header"),
    ],
)
def test_parse_rejects(layers: object, reason: str) -> None:
    pkt = raw(IPv6(src=HASH_A, dst=HASH_B) / layers / UDP() / Raw(b"abc"))
    with pytest.raises(PacketError) as err:
        parse_tunnel(pkt)
    assert err.value.reason == reason


def test_parse_rejects_malformed_basics() -> None:
    good = raw(IPv6(src=HASH_A, dst=HASH_B) / UDP(sport=1, dport=2) / Raw(b"abcdef"))
    cases = {
        "truncated": [good[:39], good[:-1]],
        "bad_version": [b"\x40" + good[1:]],
        "no_udp": [raw(IPv6() / TCP()), raw(IPv6() / ICMPv6EchoRequest())],
        "bad_udp_length": [good[:44] + b"\x00\x0d" + good[46:], good[:44] + b"\x00\x07" + good[46:]],
    }
    for reason, packets in cases.items():
        for pkt in packets:
            with pytest.raises(PacketError) as err:
                parse_tunnel(pkt)
            assert err.value.reason == reason, (reason, pkt.hex())


# --- decapsulation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ct", ALL_TYPES)
def test_round_trip(ct: int) -> None:
    sealer, opener = make_sealer(ct), make_opener(ct)
    for size in (48, 49, 1280, 1400):
        inner = inner_packet(size, tc=0xB8, hlim=7)
        outer = encapsulate(inner, HA, HB, SPORT, DPORT, sealer)
        v = parse_tunnel(outer)
        assert (v.hop_limit, v.traffic_class, v.alg) == (7, 0xB8, ct)
        pieces = decapsulate_pieces(outer, make_opener(ct), TA, TB)
        assert b"".join(pieces) == inner
        assert decapsulate(outer, opener, TA, TB) == inner
        assert scapy_checksum_ok(outer)


def test_downgrade_and_mismatch_rejected() -> None:
    inner = inner_packet()
    plain = encapsulate(inner, HA, HB, SPORT, DPORT, None)
    with pytest.raises(PacketError, match="not_encrypted"):
        decapsulate(plain, Opener(CRYPT_AES_256_GCM, KEY), TA, TB)
    enc = encapsulate(inner, HA, HB, SPORT, DPORT, Sealer(CRYPT_AES_256_GCM, KEY))
    with pytest.raises(PacketError, match="alg_mismatch"):
        decapsulate(enc, None, TA, TB)
    with pytest.raises(PacketError, match="alg_mismatch"):
        decapsulate(enc, Opener(CRYPT_CHACHA20_POLY1305, KEY), TA, TB)


def test_plain_checksum_verified() -> None:
    outer = bytearray(encapsulate(inner_packet(), HA, HB, SPORT, DPORT, None))
    outer[100] ^= 0x40
    with pytest.raises(PacketError, match="bad_checksum"):
        decapsulate(bytes(outer), None, TA, TB)


def test_bad_inner_rejected() -> None:
    # Inner payload length that does not match: refused by the encoder...
    inner = bytearray(inner_packet())
    inner[5] ^= 1
    with pytest.raises(PacketError, match="bad_inner"):
        encapsulate(bytes(inner), HA, HB, SPORT, DPORT, None)
    # ... and by the decoder, on a well-formed tunnel packet built by scapy.
    pkt = raw(IPv6(src=HASH_A, dst=HASH_B) / UDP(sport=1, dport=2) / Raw(bytes(inner[:8]) + bytes(10)))
    with pytest.raises(PacketError, match="bad_inner"):
        decapsulate(pkt, None, TA, TB)


@pytest.mark.parametrize("alg", [CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305])
def test_tamper_every_authenticated_byte(alg: int) -> None:
    inner = inner_packet(120)
    outer = encapsulate(inner, HA, HB, SPORT, DPORT, Sealer(alg, KEY))
    # Outer addresses 8-39, UDP ports 56-59, lane and counter 46-55, ciphertext and tag 64-.
    auth_bytes = [*range(8, 40), *range(46, 60), *range(64, len(outer))]
    opener = Opener(alg, KEY)
    for i in auth_bytes:
        bad = bytearray(outer)
        bad[i] ^= 0x01
        with pytest.raises(PacketError) as err:
            decapsulate(bytes(bad), opener, TA, TB)
        assert err.value.reason == "auth_failed", i
    # Other dstopts bytes are refused by the parser or the opener, never accepted.
    for i in range(40, 46):
        bad = bytearray(outer)
        bad[i] ^= 0x01
        with pytest.raises(PacketError):
            decapsulate(bytes(bad), opener, TA, TB)
    assert decapsulate(outer, opener, TA, TB) == inner  # failures consumed nothing
    with pytest.raises(PacketError, match="replay"):
        decapsulate(outer, opener, TA, TB)


def test_out_of_order_within_window() -> None:
    sealer, opener = Sealer(CRYPT_AES_256_GCM, KEY), Opener(CRYPT_AES_256_GCM, KEY)
    packets = [encapsulate(inner_packet(60), HA, HB, 1, 2, sealer) for _ in range(5)]
    for i in (4, 0, 2, 1, 3):
        decapsulate(packets[i], opener, TA, TB)
    for p in packets:
        with pytest.raises(PacketError, match="replay"):
            decapsulate(p, opener, TA, TB)


# --- robustness ------------------------------------------------------------------------------------------
def _valid_packets() -> list[bytes]:
    out = []
    for ct in ALL_TYPES:
        out.append(encapsulate(inner_packet(80), HA, HB, SPORT, DPORT, make_sealer(ct)))
    return out


VALID = _valid_packets()


def _try_all(data: bytes) -> None:
    for fn in (
        lambda: parse_tunnel(data),
        lambda: parse_tunnel(data, allow_truncated=True),
        lambda: decapsulate(data, None, TA, TB),
        lambda: decapsulate(data, Opener(CRYPT_AES_256_GCM, KEY), TA, TB),
        lambda: decapsulate(data, Opener(CRYPT_CHACHA20_POLY1305, KEY), TA, TB),
    ):
        with contextlib.suppress(PacketError):
            fn()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _try_all(data)
    _try_all(b"\x60" + data)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 250),
)
def test_fuzz_mutated_packets(base: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(base)
    for pos, val in edits:
        if pos < len(data):
            data[pos] = val
    _try_all(bytes(data))
    _try_all(bytes(data[:cut]))


# --- docs/PROTOCOL.md worked examples --------------------------------------------------------------------
def _doc_examples() -> dict[str, bytes]:
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text()
    blocks = re.findall(r"```hex (\S+)\n(.*?)```", text, re.S)
    return {
        name: bytes.fromhex("".join(line[6:] for line in body.splitlines()).replace(" ", ""))
        for name, body in blocks
    }


def test_protocol_doc_examples() -> None:
    from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptMTU, ICMPv6NDOptSrcLLAddr, ICMPv6TimeExceeded

    from mt6d_mp.core.crypto import derive_direction_key
    from mt6d_mp.core.icmp import (
        packet_too_big,
        rewrite_router_advertisement,
        router_solicitation,
        translate_icmp_error,
    )

    doc = _doc_examples()
    ta, tb = a16("2001:db8:a::10"), a16("2001:db8:b::20")
    ha, hb = a16("2001:db8:a:0:1234:5678:9abc:def0"), a16("2001:db8:b:0:fedc:ba98:7654:3210")
    mac = bytes.fromhex("020000aabbcc")
    inner = raw(
        IPv6(src="2001:db8:a::10", dst="2001:db8:b::20", hlim=64)
        / ICMPv6EchoRequest(id=1, seq=1, data=b"mt6d")
    )
    assert doc["inner"] == inner
    key = derive_direction_key(bytes(range(64)), ta, tb)
    assert key.hex() == "c2d47f64eeaaad4b8573840049133536383865cb0039f9373a8413548e83f567"
    assert doc["plain"] == encapsulate(inner, ha, hb, 40000, 50000, None)
    aes = encapsulate(inner, ha, hb, 40000, 50000, Sealer(CRYPT_AES_256_GCM, key))
    assert doc["aes-256-gcm"] == aes
    chacha = encapsulate(inner, ha, hb, 40000, 50000, Sealer(CRYPT_CHACHA20_POLY1305, key))
    assert doc["chacha20-poly1305"] == chacha
    assert doc["ptb"] == packet_too_big(inner, 1452, a16("2001:db8:a::1"))
    assert doc["rs"] == router_solicitation(a16("fe80::1"), mac)
    ra = raw(
        IPv6(src="fe80::9", dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(chlim=64, routerlifetime=1800)
        / ICMPv6NDOptSrcLLAddr(lladdr="02:11:22:33:44:55")
        / ICMPv6NDOptMTU(mtu=1500)
    )
    assert doc["ra-in"] == ra
    assert doc["ra-out"] == rewrite_router_advertisement(ra, 48, mac)
    te = raw(
        IPv6(src="2001:db8:ffff::1", dst="2001:db8:a:0:1234:5678:9abc:def0", hlim=62)
        / ICMPv6TimeExceeded()
        / Raw(aes)
    )
    assert doc["te-in"] == te
    opener = Opener(CRYPT_AES_256_GCM, key)
    view = parse_tunnel(aes)  # the packet gateway A sent, as its worker recorded it

    def was_sent(dstopts: bytes, prefix: Buffer) -> bool:
        return (dstopts, bytes(prefix)) == (view.dstopts, aes[view.payload_offset :][:64])

    assert doc["te-out"] == translate_icmp_error(te, lambda s, d: (ta, tb, opener, was_sent))
    assert decapsulate(aes, opener, ta, tb) == inner


# --- receiving on a UDP socket: the kernel hands over the options header and the payload ----------
def _socket_view(alg: int) -> tuple[bytes, bytes | None, bytes, bytes]:
    """(inner, dstopts as IPV6_DSTOPTS would deliver it, UDP payload, associated data prefix)."""
    inner = inner_packet(300)
    pkt = encapsulate(inner, a16(HASH_A), a16(HASH_B), SPORT, DPORT,
                      Sealer(alg, KEY) if alg != CRYPT_NONE else None)
    v = parse_tunnel(pkt)
    aad = a16(HASH_A) + a16(HASH_B) + SPORT.to_bytes(2, "big") + DPORT.to_bytes(2, "big")
    return inner, v.dstopts, pkt[v.payload_offset:v.payload_end], aad


@pytest.mark.parametrize("alg", ALL_TYPES)
def test_open_payload_round_trip(alg: int) -> None:
    inner, dstopts, payload, aad = _socket_view(alg)
    opener = Opener(alg, KEY)
    plain = open_payload(opener, aad, dstopts, payload)
    assert bytes(plain) == inner[:8] + inner[40:]
    if alg != CRYPT_NONE:
        with pytest.raises(PacketError, match="replay"):
            open_payload(opener, aad, dstopts, payload)
        bad_aad = bytearray(aad)
        bad_aad[-1] ^= 1  # another port: the route's associated data no longer matches
        with pytest.raises(PacketError, match="auth_failed"):
            open_payload(Opener(alg, KEY), bytes(bad_aad), dstopts, payload)
        with pytest.raises(PacketError, match="not_encrypted"):
            open_payload(Opener(alg, KEY), aad, None, payload)
    else:
        with pytest.raises(PacketError, match="alg_mismatch"):
            open_payload(opener, aad, bytes(16), payload)


def test_open_payload_walks_a_longer_options_header() -> None:
    """A header with padding before the option is walked to find it; being associated data, it
    must still be exactly the header the sender sealed, so a rewritten one fails authentication."""
    _inner, dstopts, payload, aad = _socket_view(CRYPT_AES_256_GCM)
    assert dstopts is not None
    padded = raw(IPv6ExtHdrDestOpt(nh=17, options=[PadN(optdata=b"\x00" * 4),
                                                  HBHOptUnknown(otype=0x1E, optdata=dstopts[4:16])]))
    assert len(padded) == 24
    with pytest.raises(PacketError, match="auth_failed"):  # the header is associated data
        open_payload(Opener(CRYPT_AES_256_GCM, KEY), aad, padded, payload)
    with pytest.raises(PacketError, match="bad_ext_header"):
        open_payload(Opener(CRYPT_AES_256_GCM, KEY), aad, dstopts[:12], payload)
    no_option = raw(IPv6ExtHdrDestOpt(nh=17, options=[PadN(optdata=b"\x00" * 4)]))
    with pytest.raises(PacketError, match="not_encrypted"):
        open_payload(Opener(CRYPT_AES_256_GCM, KEY), aad, no_option, payload)


# --- a host's fragments, cut to the tunnel MTU ------------------------------------------------------------
def test_a_fragment_too_big_for_the_tunnel_is_cut_into_fragments_that_reassemble() -> None:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, defragment6, fragment6
    from scapy.packet import Raw

    from mt6d_mp.core.packet import split_fragment

    for ext in (False, True):
        base = IPv6(src=HOST_A, dst=HOST_B)
        if ext:
            base = base / IPv6ExtHdrDestOpt()
        datagram = base / IPv6ExtHdrFragment(id=0xABCD) / UDP(sport=5, dport=6) / Raw(bytes(range(256)) * 12)
        frags = [raw(f) for f in fragment6(datagram, 1500)]  # as the host sends them on its link
        assert max(len(f) for f in frags) > 1452
        pieces = []
        for f in frags:
            cut = split_fragment(f, 1452)
            assert cut is not None if len(f) > 1452 else cut is None
            pieces += cut or [f]
        assert max(len(p) for p in pieces) <= 1452
        assert all(IPv6(p)[IPv6ExtHdrFragment].id == 0xABCD for p in pieces)
        whole = defragment6([IPv6(p) for p in pieces])
        assert raw(whole[UDP]) == raw(datagram[UDP])


def test_only_fragments_are_cut() -> None:
    from scapy.layers.inet import UDP
    from scapy.packet import Raw

    from mt6d_mp.core.packet import split_fragment

    big = raw(IPv6(src=HOST_A, dst=HOST_B) / UDP() / Raw(bytes(1600)))
    assert split_fragment(big, 1452) is None
    with pytest.raises(PacketError, match="truncated"):
        split_fragment(big[:30], 1452)
