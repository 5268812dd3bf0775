"""Messages in chunks (PROTOCOL.md 1.6), TCP segmentation and checksum completion: pure logic."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from mt6d_mp.core.chunks import (
    CHUNK_HDR_LEN,
    MAX_CHUNKS,
    Reassembly,
    chunk_iov,
    chunk_segment_size,
    seal_message,
)
from mt6d_mp.core.crypto import (
    ALG_CHUNKED,
    CRYPT_AES_256_GCM,
    CRYPT_CHACHA20_POLY1305,
    Opener,
    Sealer,
)
from mt6d_mp.core.offload import complete_checksum, pseudo_header_sum, segment_tcp, transport_checksum_offset
from mt6d_mp.core.packet import Buffer, check_inner_plain, encapsulate, open_tunnel
from mt6d_mp.errors import PacketError

KEY = bytes(range(1, 33))
HOST_A, HOST_B = "2001:db8:a::10", "2001:db8:b::20"
HA = raw(IPv6(src="2001:db8:a::1234:5678:9abc:def0"))[8:24]
HB = raw(IPv6(src="2001:db8:b::fedc:ba98:7654:3210"))[8:24]
SPORT, DPORT = 40001, 50002
AAD = HA + HB + SPORT.to_bytes(2, "big") + DPORT.to_bytes(2, "big")
TUNNEL_MTU = 1452  # a 1500-byte link with AEAD


def super_packet(data_len: int, flags: str = "PA", seq: int = 1000) -> bytes:
    """A host's TSO super-packet: one TCP header (with timestamps) over ``data_len`` bytes."""
    pkt = IPv6(src=HOST_A, dst=HOST_B) / TCP(sport=5201, dport=40000, seq=seq, flags=flags,
                                             options=[("NOP", None), ("NOP", None),
                                                      ("Timestamp", (1, 2))])
    return raw(pkt / Raw(os.urandom(data_len)))


def datagrams(iov: list[Buffer]) -> list[bytes]:
    """What the receiver gets from one UDP GSO send: header + slice per datagram."""
    return [bytes(iov[i]) + bytes(iov[i + 1]) for i in range(0, len(iov), 2)]


@pytest.mark.parametrize("alg", [CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305])
def test_message_round_trip_in_any_order(alg: int) -> None:
    inner = super_packet(60000)
    segment = chunk_segment_size(TUNNEL_MTU)
    dstopts, message = seal_message(inner, HA, HB, SPORT, DPORT, Sealer(alg, KEY))
    iov = chunk_iov(message, segment)
    assert dstopts[4] == alg | ALG_CHUNKED
    grams = datagrams(iov)
    assert all(len(g) == segment for g in grams[:-1]) and 0 < len(grams[-1]) <= segment
    assert 40 + 16 + 8 + segment == TUNNEL_MTU + 48  # each datagram fills the link MTU exactly
    assert [g[:CHUNK_HDR_LEN] for g in grams] == [bytes((i, len(grams))) for i in range(len(grams))]
    random.Random(7).shuffle(grams)
    chunks = Reassembly()
    got = [chunks.add(dstopts, g) for g in grams]
    assert all(m is None for m in got[:-1])
    message = got[-1]
    assert message is not None and not chunks.partial
    opener = Opener(alg, KEY)
    plain = opener.open(AAD, dstopts, message, chunked=True)
    check_inner_plain(plain)
    assert plain == inner[:8] + inner[40:]
    with pytest.raises(PacketError, match="replay"):  # the message's counter is spent
        opener.open(AAD, dstopts, message, chunked=True)


def test_chunk_flag_is_authenticated_both_ways() -> None:
    """A message cannot be opened as a packet, nor a packet as a message, nor a chunk quoted."""
    inner = super_packet(3000)
    dstopts, message = seal_message(inner, HA, HB, SPORT, DPORT, Sealer(CRYPT_AES_256_GCM, KEY))
    with pytest.raises(PacketError, match="chunk_mismatch"):
        Opener(CRYPT_AES_256_GCM, KEY).open(AAD, dstopts, message)
    cleared = bytearray(dstopts)
    cleared[4] &= ~ALG_CHUNKED
    with pytest.raises(PacketError, match="auth_failed"):  # the flag is associated data
        Opener(CRYPT_AES_256_GCM, KEY).open(AAD, bytes(cleared), message)
    with pytest.raises(PacketError, match="chunk_quote"):
        Opener(CRYPT_AES_256_GCM, KEY).decrypt_unauthenticated_prefix(dstopts, message[:100])
    small = encapsulate(super_packet(100), HA, HB, SPORT, DPORT, Sealer(CRYPT_AES_256_GCM, KEY))
    with pytest.raises(PacketError, match="chunk_mismatch"):
        Opener(CRYPT_AES_256_GCM, KEY).open(AAD, small[40:56], small[64:], chunked=True)
    open_tunnel(small, Opener(CRYPT_AES_256_GCM, KEY))  # and as a packet it opens


def test_a_tampered_chunk_fails_authentication() -> None:
    inner = super_packet(5000)
    dstopts, message = seal_message(inner, HA, HB, SPORT, DPORT, Sealer(CRYPT_AES_256_GCM, KEY))
    grams = datagrams(chunk_iov(message, chunk_segment_size(TUNNEL_MTU)))
    grams[1] = grams[1][:50] + bytes([grams[1][50] ^ 1]) + grams[1][51:]
    chunks = Reassembly()
    message = [chunks.add(dstopts, g) for g in grams][-1]
    assert message is not None
    with pytest.raises(PacketError, match="auth_failed"):
        Opener(CRYPT_AES_256_GCM, KEY).open(AAD, dstopts, message, chunked=True)


def test_reassembly_refuses_bad_chunks_and_evicts_the_oldest() -> None:
    chunks = Reassembly(limit=2)
    opts = [bytes([i]) * 16 for i in range(3)]
    with pytest.raises(PacketError, match="bad_chunk"):
        chunks.add(opts[0], b"\x00\x02")  # no data
    with pytest.raises(PacketError, match="bad_chunk"):
        chunks.add(opts[0], b"\x02\x02x")  # index beyond the count
    with pytest.raises(PacketError, match="bad_chunk"):
        chunks.add(opts[0], b"\x00\x01x")  # a message has at least two chunks
    with pytest.raises(PacketError, match="bad_chunk"):
        chunks.add(opts[0], bytes((0, MAX_CHUNKS + 1)) + b"x")
    assert chunks.add(opts[0], b"\x00\x02a") is None
    with pytest.raises(PacketError, match="chunk_duplicate"):
        chunks.add(opts[0], b"\x00\x02a")
    with pytest.raises(PacketError, match="bad_chunk"):
        chunks.add(opts[0], b"\x01\x03b")  # another count under the same options
    assert chunks.add(opts[1], b"\x00\x02c") is None
    assert chunks.add(opts[2], b"\x00\x02d") is None  # a third message: the oldest goes
    assert chunks.evicted == 1 and list(chunks.partial) == [opts[1], opts[2]]
    assert chunks.add(opts[0], b"\x01\x02b") is None  # its first half is gone
    assert chunks.add(opts[2], b"\x01\x02e") == b"de"


def test_chunk_iov_refuses_what_does_not_need_or_fit_chunks() -> None:
    with pytest.raises(PacketError, match="chunk_count"):
        chunk_iov(bytes(1000), 1436)
    with pytest.raises(PacketError, match="chunk_count"):
        chunk_iov(bytes(65000), 600)
    with pytest.raises(PacketError, match="chunk_count"):
        chunk_iov(bytes(65000), 2)


def test_a_message_cut_again_smaller_opens_the_same() -> None:
    """What a sender does when the path turns out narrower: same message, smaller chunks."""
    dstopts, message = seal_message(super_packet(20000), HA, HB, SPORT, DPORT,
                                    Sealer(CRYPT_AES_256_GCM, KEY))
    for segment in (1436, 1336):
        chunks = Reassembly()
        got = [chunks.add(dstopts, g) for g in datagrams(chunk_iov(message, segment))]
        assert got[-1] == message


def _scapy_recomputed(parsed: IPv6) -> int:
    again = parsed.copy()
    del again[TCP].chksum
    return int(IPv6(raw(again))[TCP].chksum)


@settings(max_examples=30, deadline=None)
@given(data_len=st.integers(0, 9000), mss=st.integers(200, 1500),
       seq=st.integers(0, 2**32 - 1), fin=st.booleans())
def test_segment_tcp_matches_what_tso_would_send(data_len: int, mss: int, seq: int, fin: bool) -> None:
    inner = super_packet(data_len, flags="FPAC" if fin else "PAC", seq=seq)
    segments = segment_tcp(inner, mss)
    payload = bytes(IPv6(inner)[TCP].payload)
    assert b"".join(bytes(IPv6(s)[TCP].payload) for s in segments) == payload
    assert len(segments) == max(1, -(-data_len // mss))
    offset = 0
    for i, s in enumerate(segments):
        p = IPv6(s)
        assert p.plen == len(s) - 40
        assert p[TCP].seq == (seq + offset) % 2**32
        assert p[TCP].options == IPv6(inner)[TCP].options
        last, first = i == len(segments) - 1, i == 0
        assert bool(p[TCP].flags.F) == (fin and last) and bool(p[TCP].flags.P) == last
        assert bool(p[TCP].flags.C) == first
        assert _scapy_recomputed(p) == p[TCP].chksum
        offset += len(p[TCP].payload)


def test_segment_tcp_refuses_what_is_not_tcp() -> None:
    udp = raw(IPv6(src=HOST_A, dst=HOST_B) / UDP(sport=1, dport=2) / Raw(b"x" * 3000))
    with pytest.raises(PacketError, match="gso_not_tcp"):
        segment_tcp(udp, 1000)
    with pytest.raises(PacketError, match="bad_inner"):
        segment_tcp(super_packet(100)[:50], 1000)


def partial(pkt: bytes, offset: int) -> bytes:
    """What a checksum-offloading host hands over: the field holds the pseudo-header sum."""
    out = bytearray(pkt)
    out[40 + offset : 42 + offset] = b"\x12\x34"  # whatever it holds is ignored
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 100, 1399])
def test_complete_checksum_matches_scapy(size: int) -> None:
    tcp = super_packet(size)
    assert complete_checksum(partial(tcp, 16)) == tcp
    udp = raw(IPv6(src=HOST_A, dst=HOST_B) / UDP(sport=1, dport=2) / Raw(os.urandom(size)))
    assert complete_checksum(partial(udp, 6)) == udp
    with pytest.raises(PacketError, match="csum_not_ready"):
        complete_checksum(raw(IPv6(src=HOST_A, dst=HOST_B, nh=59)))


def test_pseudo_header_sum_is_what_the_kernel_leaves_for_offload() -> None:
    """Completing a checksum from the pseudo-header sum gives the full checksum (RFC 1624)."""
    tcp = super_packet(500)
    tcp_len = len(tcp) - 40
    field = pseudo_header_sum(tcp[8:24], tcp[24:40], tcp_len)
    body = bytearray(tcp[40:])
    body[16:18] = field.to_bytes(2, "big")
    words = sum(int.from_bytes(body[i : i + 2].ljust(2, b"\0"), "big") for i in range(0, len(body), 2))
    while words > 0xFFFF:
        words = (words & 0xFFFF) + (words >> 16)
    assert (~words & 0xFFFF) == IPv6(tcp)[TCP].chksum


def test_transport_checksum_offset() -> None:
    tcp = super_packet(10)
    udp = raw(IPv6(src=HOST_A, dst=HOST_B) / UDP(sport=1, dport=2) / Raw(b"x"))
    icmp = raw(IPv6(src=HOST_A, dst=HOST_B, nh=58) / Raw(bytes(8)))
    strip = lambda p: p[:8] + p[40:]  # noqa: E731
    assert transport_checksum_offset(strip(tcp)) == 8 + 16
    assert transport_checksum_offset(strip(udp)) == 8 + 6
    assert transport_checksum_offset(strip(icmp)) == -1
    assert transport_checksum_offset(strip(tcp)[:20]) == -1  # too short for a TCP header
