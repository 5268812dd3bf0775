"""The fuzz targets: for every parser of bytes from the network or a socket, its valid seed inputs
(built by the project's own encoders) and a check that feeds it one input.

Contract checked by every target: any byte string is parsed, or refused with the module's own
error type (PacketError for packet code, BusError on the bus, NetlinkError/SystemSetupError for
rtnetlink, Mt6dError for mt6dctl; the queue reader and the bus's socket loops count and go on).
Any other exception escaping is a bug. Where a result comes back, cheap invariants on it are
checked too (offsets inside the buffer, checksums that verify, state that stays bounded).

Each target is one function ``check(data: bytes) -> None``; targets that take several inputs get
them framed in ``data`` (tests/fuzz/mutate.py), so that every input can live in the corpus.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import zmq
from hypothesis import strategies as st

from mt6d_mp import commands, ctl
from mt6d_mp.core import keyx
from mt6d_mp.core.chunks import Reassembly, chunk_iov, chunk_segment_size, seal_message
from mt6d_mp.core.crypto import (
    CRYPT_AES_256_GCM,
    CRYPT_CHACHA20_POLY1305,
    CRYPT_NONE,
    DSTOPTS_LEN,
    OPT_KEYX,
    OPT_PADN,
    Opener,
    PrefixDecryptor,
    Sealer,
    derive_direction_key,
)
from mt6d_mp.core.icmp import (
    ICMP_ERROR_MAX,
    ICMP_HDR,
    ND_ROUTER_ADVERT,
    SentCheck,
    packet_too_big,
    parse_icmpv6,
    rewrite_router_advertisement,
    translate_icmp_error,
)
from mt6d_mp.core.messages import (
    BusError,
    KeyxSend,
    PhaseKeys,
    Replica,
    RouteUpdate,
    Snapshot,
    StreamState,
    Update,
)
from mt6d_mp.core.offload import IPPROTO_TCP, complete_checksum, segment_tcp, transport_checksum_offset
from mt6d_mp.core.packet import (
    IPPROTO_DSTOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    IPV6_HDR,
    IPV6_HDR_LEN,
    UDP_HDR,
    Buffer,
    aad_prefix,
    check_inner_plain,
    encapsulate,
    icmpv6_checksum,
    ipv6_payload_end,
    open_payload,
    open_tunnel,
    parse_tunnel,
    restore_inner,
    transport_checksum,
    udp_checksum,
    walk_extension_headers,
)
from mt6d_mp.core.phases import Policy, StreamKeys
from mt6d_mp.core.routes import StreamIdentity
from mt6d_mp.core.sentlog import SENT_PREFIX
from mt6d_mp.errors import Mt6dError, PacketError
from mt6d_mp.io import bus, netlink, nfqueue
from mt6d_mp.io.bus import BusClient, BusServer
from mt6d_mp.io.nlmsg import nla
from tests.fuzz.mutate import fields, frame, mutated, mutated_msgpack, mutated_parts, pack, unframe

# --- the addresses, keys and packets of docs/PROTOCOL.md section 4 --------------------------------------


def a16(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


TA, TB = a16("2001:db8:a::10"), a16("2001:db8:b::20")  # true addresses
HA, HB = a16("2001:db8:a:0:1234:5678:9abc:def0"), a16("2001:db8:b:0:fedc:ba98:7654:3210")  # hashed
ROUTER, GW = a16("2001:db8:ffff::1"), a16("2001:db8:a::1")
LL_ROUTER, LL_GW = a16("fe80::9"), a16("fe80::1")
ALL_NODES = a16("ff02::1")
SPORT, DPORT = 40000, 50000
AAD = aad_prefix(HA, HB, SPORT, DPORT)
KEY_AB = derive_direction_key(bytes(range(64)), TA, TB)
MAC = bytes.fromhex("020000aabbcc")
TUNNEL_MTU = 1452
ECHO = bytes.fromhex("6000 0000 000c 3a40 2001 0db8 000a 0000 0000 0000 0000 0010"
                     "2001 0db8 000b 0000 0000 0000 0000 0020 8000 8027 0001 0001 6d74 3664")


def sealer(crypt: int, counter: int = 0) -> Sealer:
    return Sealer(crypt, KEY_AB if crypt != CRYPT_NONE else b"", counter=counter)


def opener(crypt: int) -> Opener:
    return Opener(crypt, KEY_AB if crypt != CRYPT_NONE else b"")


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes, hlim: int = 64, tclass: int = 0) -> bytes:
    return IPV6_HDR.pack((6 << 28) | (tclass << 20), len(payload), nh, hlim, src, dst) + payload


def tcp_packet(data_len: int, flags: int = 0x18, seq: int = 1000, offload: bool = True) -> bytes:
    """A host's TCP packet with timestamps; ``offload``: the checksum left to the NIC (pseudo sum)."""
    options = b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2)
    hdr = struct.pack("!HHIIBBHHH", 5201, 40000, seq, 77, (20 + len(options)) // 4 << 4, flags,
                      512, 0, 0) + options
    pkt = ipv6(TA, TB, IPPROTO_TCP, hdr + bytes((i * 7) & 0xFF for i in range(data_len)))
    return pkt if offload else bytes(complete_checksum(pkt))


def udp_packet(data_len: int) -> bytes:
    payload = bytes(range(data_len % 256)) * (data_len // 256) + bytes(data_len % 256)
    return ipv6(TA, TB, IPPROTO_UDP, UDP_HDR.pack(1234, 5678, 8 + len(payload), 0) + payload)


def strip(inner: bytes) -> bytes:
    return inner[:8] + inner[40:]


def tunnel_raw(dstopts: bytes, payload: bytes, hbh: bytes = b"", src: bytes = HA,
               dst: bytes = HB) -> bytes:
    """A tunnel packet put together by hand (odd option layouts), with a correct UDP checksum."""
    udp = bytearray(UDP_HDR.pack(SPORT, DPORT, 8 + len(payload), 0) + payload)
    struct.pack_into("!H", udp, 6, udp_checksum(src, dst, udp))
    exts = hbh + dstopts
    first = 0 if hbh else IPPROTO_DSTOPTS if dstopts else IPPROTO_UDP
    return ipv6(src, dst, first, exts + bytes(udp))


def with_icmp_checksum(packet: bytes) -> bytes:
    """``packet`` with its ICMPv6 checksum made right, if it parses that far (else unchanged)."""
    try:
        _, _, off = parse_icmpv6(packet)
        end = ipv6_payload_end(packet)
    except PacketError:
        return packet
    out = bytearray(packet)
    struct.pack_into("!H", out, off + 2, icmpv6_checksum(out[8:24], out[24:40], out[off:end]))
    return bytes(out)


def icmp(src: bytes, dst: bytes, itype: int, code: int, field: int, body: bytes,
         hlim: int = 64) -> bytes:
    return with_icmp_checksum(ipv6(src, dst, IPPROTO_ICMPV6, ICMP_HDR.pack(itype, code, 0, field) + body,
                                   hlim))


def icmp_checksum_ok(packet: bytes) -> bool:
    _, _, off = parse_icmpv6(packet)
    end = ipv6_payload_end(packet)
    stored = int.from_bytes(packet[off + 2 : off + 4], "big")
    return stored == icmpv6_checksum(packet[8:24], packet[24:40], packet[off:end])


def transport_checksum_ok(packet: bytes) -> bool:
    nh = packet[6]
    off = 16 if nh == IPPROTO_TCP else 6
    segment = packet[IPV6_HDR_LEN:]
    stored = int.from_bytes(segment[off : off + 2], "big")
    if nh == IPPROTO_UDP:
        return stored == udp_checksum(packet[8:24], packet[24:40], segment)
    return stored == transport_checksum(packet[8:24], packet[24:40], nh, segment, off)


def mode_of(part: bytes) -> int:
    return part[0] if part else 0


# --- tunnel packets (core/packet.py) ----------------------------------------------------------------------


def tunnel_seeds() -> dict[str, bytes]:
    aes, chacha = sealer(CRYPT_AES_256_GCM), sealer(CRYPT_CHACHA20_POLY1305)
    seeds = {
        "plain-echo": encapsulate(ECHO, HA, HB, SPORT, DPORT, None),
        "aes-echo": encapsulate(ECHO, HA, HB, SPORT, DPORT, aes),
        "chacha-echo": encapsulate(ECHO, HA, HB, SPORT, DPORT, chacha),
        "aes-tcp": encapsulate(tcp_packet(200), HA, HB, SPORT, DPORT, aes, flow_label=0x12345),
        "plain-udp": encapsulate(udp_packet(300), HA, HB, SPORT, DPORT, None),
    }
    # The encryption option in a longer header, after PadN and with a key exchange option.
    dstopts, payload = sealer(CRYPT_AES_256_GCM, 5).seal(strip(ECHO), AAD)
    enc = dstopts[2:16]
    long_opts = bytes((IPPROTO_UDP, 2)) + bytes((OPT_PADN, 0)) + enc + bytes((OPT_KEYX, 4)) + b"keyx"
    seeds["aes-long-dstopts"] = tunnel_raw(long_opts, payload)
    hbh = bytes((IPPROTO_DSTOPTS, 0, OPT_PADN, 4, 0, 0, 0, 0))
    seeds["aes-hop-by-hop"] = tunnel_raw(dstopts, payload, hbh=hbh)
    msg_opts, message = seal_message(tcp_packet(3000), HA, HB, SPORT, DPORT, sealer(CRYPT_AES_256_GCM))
    first = chunk_iov(message, chunk_segment_size(TUNNEL_MTU))
    seeds["aes-chunk"] = tunnel_raw(msg_opts, bytes(first[0]) + bytes(first[1]))
    return seeds


def check_tunnel(data: bytes) -> None:
    """parse_tunnel (whole and quoted) and open_tunnel with each kind of opener."""
    for allow_truncated in (False, True):
        try:
            view = parse_tunnel(data, allow_truncated)
        except PacketError:
            continue
        assert IPV6_HDR_LEN <= view.udp_offset < view.payload_offset <= view.payload_end <= len(data)
        assert view.udp_length >= 8
        if view.enc_offset >= 0:
            assert view.dstopts is not None and view.enc_offset + 14 <= len(view.dstopts)
    for crypt in (CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305, CRYPT_NONE):
        with contextlib.suppress(PacketError):
            view, plain = open_tunnel(data, opener(crypt))
            check_inner_plain(plain)
    with contextlib.suppress(PacketError):
        open_tunnel(data, None)


def open_payload_seeds() -> dict[str, bytes]:
    seeds = {}
    for name, crypt in (("aes", CRYPT_AES_256_GCM), ("chacha", CRYPT_CHACHA20_POLY1305)):
        dstopts, payload = sealer(crypt).seal(strip(ECHO), AAD)
        seeds[f"{name}-echo"] = frame([bytes((crypt - 1,)), dstopts, payload])
        plain = strip(tcp_packet(100))
        seeds[f"{name}-resealed-tcp"] = frame([bytes((crypt - 1 | 8,)), dstopts, plain])
    dstopts, message = seal_message(tcp_packet(100), HA, HB, SPORT, DPORT, sealer(CRYPT_AES_256_GCM))
    seeds["aes-chunked-alone"] = frame([b"\x00", dstopts, message])
    seeds["plain-echo"] = frame([b"\x07", b"", strip(ECHO)])
    return seeds


def check_open_payload(data: bytes) -> None:
    """open_payload as a route socket's datagram meets it: options header (or none) and payload.

    Mode bits 0-1: the opener (AES-GCM, ChaCha20, an Opener of crypt none, no opener); bit 2:
    no options header; bit 3: seal the payload as plaintext first, so the fuzzed plaintext gets
    past the tag to check_inner_plain.
    """
    mode_part, dstopts_part, payload = fields(data, 3)
    mode = mode_of(mode_part)
    crypt = (CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305, CRYPT_NONE, None)[mode & 3]
    op = None if crypt is None else opener(crypt)
    dstopts: bytes | None = None if mode & 4 else dstopts_part
    if mode & 8 and crypt not in (None, CRYPT_NONE):
        assert crypt is not None
        dstopts, payload = sealer(crypt).seal(payload, AAD)
    try:
        plain = open_payload(op, AAD, dstopts, payload)
    except PacketError:
        return
    check_inner_plain(plain)  # what came back is a valid inner packet


def plain_seeds() -> dict[str, bytes]:
    return {
        "echo": strip(ECHO),
        "tcp-offload": strip(tcp_packet(100)),
        "tcp-complete": strip(tcp_packet(100, offload=False)),
        "udp": strip(udp_packet(40)),
        "udp-empty": strip(udp_packet(0)),
        "tcp-header-only": strip(tcp_packet(0)),
    }


def check_inner_plain_path(data: bytes) -> None:
    """What the receiving worker does to an opened payload: check_inner_plain, then
    transport_checksum_offset, restore_inner and complete_checksum."""
    with contextlib.suppress(PacketError):
        check_inner_plain(data)
    if len(data) < 8:  # every caller has checked the packet first (at least its 8 bytes)
        return
    off = transport_checksum_offset(data)
    assert off in (-1, 14, 24) and off + 2 <= len(data)
    inner = restore_inner(data, TB, TA)
    assert len(inner) == len(data) + 32 and inner[8:40] == TB + TA
    if off >= 0:
        try:
            done = complete_checksum(inner)
        except PacketError:
            return
        assert len(done) == len(inner) and transport_checksum_ok(bytes(done))


def payload_end_seeds() -> dict[str, bytes]:
    return {"echo": ECHO, "padded": ECHO + bytes(6), "tunnel": tunnel_seeds()["aes-echo"],
            "header-only": ECHO[:40]}


def check_payload_end(data: bytes) -> None:
    for allow_truncated in (False, True):
        try:
            end = ipv6_payload_end(data, allow_truncated)
        except PacketError:
            continue
        assert IPV6_HDR_LEN <= end <= len(data)


def ext_header_seeds() -> dict[str, bytes]:
    t = tunnel_seeds()
    return {name: frame([t[name], len(t[name]).to_bytes(2, "big")])
            for name in ("aes-echo", "aes-long-dstopts", "aes-hop-by-hop", "plain-echo")}


def check_ext_headers(data: bytes) -> None:
    """walk_extension_headers up to the payload end, and up to any end inside the buffer."""
    packet, end_part = fields(data, 2)
    if len(packet) < IPV6_HDR_LEN:
        return  # its callers check the fixed header first (ipv6_payload_end)
    ends = [max(IPV6_HDR_LEN, min(len(packet), int.from_bytes(end_part[:2], "big")))]
    with contextlib.suppress(PacketError):
        ends.append(ipv6_payload_end(packet, allow_truncated=True))
    for end in ends:
        try:
            proto, off, dst, enc, keyx = walk_extension_headers(packet, end)
        except PacketError:
            continue
        assert 0 <= proto <= 255 and IPV6_HDR_LEN <= off <= end
        assert dst < off and (enc < 0 or dst < enc < off) and (keyx < 0 or dst < keyx < off)


def segment_seeds() -> dict[str, bytes]:
    mss = (TUNNEL_MTU - 40 - 32).to_bytes(2, "big")
    return {
        "tso-3000": frame([tcp_packet(3000), mss]),
        "tso-fin": frame([tcp_packet(2000, flags=0x19), mss]),
        "tso-cwr": frame([tcp_packet(500, flags=0x98), (100).to_bytes(2, "big")]),
        "no-data": frame([tcp_packet(0), mss]),
        "udp": frame([udp_packet(100), mss]),
    }


def check_segment_tcp(data: bytes) -> None:
    inner, mss_part = fields(data, 2)
    mss = int.from_bytes(mss_part[:2], "big")
    try:
        segments = segment_tcp(inner, mss)
    except PacketError:
        return
    doff = (inner[52] >> 4) * 4
    total = 0
    for seg in segments:
        assert seg[40:44] == inner[40:44] and seg[48:52] == inner[48:52]  # ports and ack copied
        check_inner_plain(strip(seg))  # payload length right
        assert transport_checksum_ok(seg)
        total += len(seg) - 40 - doff
        assert len(seg) - 40 - doff <= mss
    assert total == len(inner) - 40 - doff


# --- messages in chunks -----------------------------------------------------------------------------------


def chunk_seeds() -> dict[str, bytes]:
    seeds = {}
    seg = chunk_segment_size(TUNNEL_MTU)

    def chunks(inner: bytes, s: Sealer, size: int = seg) -> list[bytes]:
        dstopts, message = seal_message(inner, HA, HB, SPORT, DPORT, s)
        iov = chunk_iov(message, size)
        return [bytes((len(dstopts),)) + dstopts + bytes(iov[i]) + bytes(iov[i + 1])
                for i in range(0, len(iov), 2)]

    s = sealer(CRYPT_AES_256_GCM)
    one = chunks(tcp_packet(4000), s)
    seeds["aes-in-order"] = frame([b"\x08", *one])
    seeds["aes-reversed"] = frame([b"\x08", *reversed(one)])
    two = chunks(tcp_packet(3000, seq=5000), s)
    seeds["aes-interleaved"] = frame([b"\x08", *(c for pair in zip(one, two, strict=False) for c in pair)])
    seeds["chacha-small-chunks"] = frame([b"\x02", *chunks(tcp_packet(1000), sealer(
        CRYPT_CHACHA20_POLY1305), 300)])
    seeds["aes-duplicate"] = frame([b"\x08", one[0], one[0], *one[1:]])
    return seeds


def check_reassembly(data: bytes) -> None:
    """Reassembly.add over a sequence of (options header, chunk datagram), as receive_chunk
    calls it; a complete message is opened as the worker opens it. The partial messages held
    never exceed the limit."""
    mode_part, *parts = unframe(data, 1)
    limit = 1 + (mode_of(mode_part) - 1) % 8 if mode_part else 8
    r = Reassembly(limit)
    op = opener(CRYPT_AES_256_GCM if mode_of(mode_part) != 2 else CRYPT_CHACHA20_POLY1305)
    for part in parts:
        n = part[0] if part else 0
        dstopts, payload = part[1 : 1 + n], part[1 + n :]
        try:
            message = r.add(dstopts, payload)
        except PacketError:
            message = None
        assert len(r.partial) <= limit
        assert all(2 <= len(p) <= 64 for p in r.partial.values())
        if message is not None and len(dstopts) == 16:
            with contextlib.suppress(PacketError):
                check_inner_plain(op.open(AAD, dstopts, message, 2, chunked=True))


# --- ICMPv6 (core/icmp.py) --------------------------------------------------------------------------------

RA_IN = bytes.fromhex("6000 0000 0020 3aff fe80 0000 0000 0000 0000 0000 0000 0009 ff02 0000 0000 0000"
                      "0000 0000 0000 0001 8600 c08f 4008 0708 0000 0000 0000 0000 0101 0211 2233 4455"
                      "0501 0000 0000 05dc")
RS = bytes.fromhex("6000 0000 0010 3aff fe80 0000 0000 0000 0000 0000 0000 0001 ff02 0000 0000 0000"
                   "0000 0000 0000 0002 8500 bdb6 0000 0000 0101 0200 00aa bbcc")


def router_advert(options: bytes) -> bytes:
    # cur hop limit, flags, router lifetime, reachable time, retrans timer, options
    body = struct.pack("!BBHII", 64, 0x08, 1800, 0, 0) + options
    return with_icmp_checksum(ipv6(LL_ROUTER, ALL_NODES, IPPROTO_ICMPV6,
                                   bytes((ND_ROUTER_ADVERT, 0, 0, 0)) + body, 255))


def ra_seeds() -> dict[str, bytes]:
    prefix = bytes((3, 4, 64, 0xC0)) + struct.pack("!III", 86400, 14400, 0) + a16("2001:db8:a::")
    return {
        "doc": frame([b"\x00", RA_IN]),
        "no-options": frame([b"\x01", router_advert(b"")]),
        "prefix-mtu-slla": frame([b"\x03", router_advert(prefix + bytes.fromhex("0501000000002328")
                                                         + bytes.fromhex("01010211223344 55"))]),
        "long-slla-unknown": frame([b"\x01", router_advert(bytes.fromhex("0102 0211 2233 4455 6677"
                                                                         "8899 aabb ccdd")
                                                           + bytes.fromhex("1f01000000000000"))]),
    }


def check_router_advert(data: bytes) -> None:
    """rewrite_router_advertisement; mode bit 0: make the ICMPv6 checksum right after mutating
    (else nearly everything stops there), bit 1: replace the source address."""
    mode_part, packet = fields(data, 2)
    mode = mode_of(mode_part)
    if mode & 1:
        packet = with_icmp_checksum(packet)
    try:
        out = rewrite_router_advertisement(packet, 48, MAC, LL_GW if mode & 2 else None)
    except PacketError:
        return
    assert len(out) == ipv6_payload_end(packet)
    assert parse_icmpv6(out)[0] == ND_ROUTER_ADVERT and icmp_checksum_ok(out)


def icmp_error_seeds() -> dict[str, bytes]:
    seeds = {}
    for cname, crypt, kind in (("aes", CRYPT_AES_256_GCM, 0), ("chacha", CRYPT_CHACHA20_POLY1305, 1),
                               ("plain", CRYPT_NONE, 5)):
        s = sealer(crypt, 9) if crypt != CRYPT_NONE else None
        tunnel = encapsulate(tcp_packet(1400), HA, HB, SPORT, DPORT, s)
        short = encapsulate(ECHO, HA, HB, SPORT, DPORT, s)
        for tname, itype, code, field, quote in (
            ("ptb", 2, 0, 1400, tunnel), ("time-exceeded", 3, 0, 0, short),
            ("unreachable", 1, 4, 0, short), ("param-problem", 4, 0, 70, tunnel),
        ):
            mode = bytes((kind | 8,))
            seeds[f"{cname}-{tname}"] = frame([mode, icmp(ROUTER, HA, itype, code, field, quote[:1232])])
        seeds[f"{cname}-from-peer"] = frame([bytes((kind | 8,)), icmp(HB, HA, 3, 0, 0, short)])
    seeds["cut-quote"] = frame([b"\x08", icmp(ROUTER, HA, 3, 0, 0, seeds_tunnel_quote()[:80])])
    msg_opts, message = seal_message(tcp_packet(3000), HA, HB, SPORT, DPORT, sealer(CRYPT_AES_256_GCM))
    iov = chunk_iov(message, chunk_segment_size(TUNNEL_MTU))
    chunk = tunnel_raw(msg_opts, bytes(iov[0]) + bytes(iov[1]))
    seeds["chunk-ptb"] = frame([b"\x08", icmp(ROUTER, HA, 2, 0, 1400, chunk[:1232])])
    seeds["doc-time-exceeded"] = frame([b"\x02", bytes.fromhex(
        "6000 0000 006c 3a3e 2001 0db8 ffff 0000 0000 0000 0000 0001 2001 0db8 000a 0000"
        "1234 5678 9abc def0 0300 f235 0000 0000 6000 0000 003c 3c40 2001 0db8 000a 0000"
        "1234 5678 9abc def0 2001 0db8 000b 0000 fedc ba98 7654 3210 1101 1e0c 0100 0000"
        "0000 0000 0000 0000 9c40 c350 002c 1eaf d12e fd5a fb4d b602 3050 dac6 2140 3db4"
        "545c e594 472f 6cb0 89d9 dcfc 39f7 2409 0f6f 359e")])
    return seeds


def seeds_tunnel_quote() -> bytes:
    return encapsulate(tcp_packet(200), HA, HB, SPORT, DPORT, sealer(CRYPT_AES_256_GCM, 3))


def check_icmp_error(data: bytes) -> None:
    """translate_icmp_error with a lookup that finds every route (mode bits 0-2: our Sealer for
    AES-GCM or ChaCha20, an Opener of either, a Sealer of crypt none, no decryptor) or none (6, 7).
    Bit 3: make the ICMPv6 checksum right after mutating."""
    mode_part, packet = fields(data, 2)
    mode = mode_of(mode_part)
    if mode & 8:
        packet = with_icmp_checksum(packet)
    kind = mode & 7
    decryptor: PrefixDecryptor | None = (
        sealer(CRYPT_AES_256_GCM), sealer(CRYPT_CHACHA20_POLY1305), opener(CRYPT_AES_256_GCM),
        opener(CRYPT_CHACHA20_POLY1305), sealer(CRYPT_NONE), None, None, None)[kind]

    def was_sent(dstopts: bytes, prefix: Buffer) -> bool:
        """Every quote counts as sent, so that mutated quotes reach the decryption; what the
        check is asked must be what a sent-packet record holds (mt6d_mp.core.sentlog)."""
        assert len(dstopts) in (0, DSTOPTS_LEN) and len(prefix) <= SENT_PREFIX
        return True

    def lookup(src: bytes, dst: bytes) -> tuple[bytes, bytes, PrefixDecryptor | None, SentCheck] | None:
        assert len(src) == 16 and len(dst) == 16
        return None if kind >= 6 else (TA, TB, decryptor, was_sent)

    try:
        out = translate_icmp_error(packet, lookup)
    except PacketError:
        return
    assert len(out) <= ICMP_ERROR_MAX and out[24:40] == TA
    assert parse_icmpv6(out)[0] == parse_icmpv6(packet)[0] and icmp_checksum_ok(out)


def icmpv6_seeds() -> dict[str, bytes]:
    return {"ra": RA_IN, "rs": RS, "echo": ECHO,
            "time-exceeded": unframe(icmp_error_seeds()["doc-time-exceeded"])[1],
            "with-hop-by-hop": ipv6(LL_GW, ALL_NODES, 0, bytes((IPPROTO_ICMPV6, 0, OPT_PADN, 4, 0, 0,
                                                                 0, 0)) + RS[40:], 1)}


def check_icmpv6(data: bytes) -> None:
    try:
        itype, code, off = parse_icmpv6(data)
    except PacketError:
        return
    assert 0 <= itype <= 255 and 0 <= code <= 255 and off + 4 <= ipv6_payload_end(data)


def ptb_seeds() -> dict[str, bytes]:
    return {"echo": ECHO, "tcp-1500": tcp_packet(1500 - 60), "udp": udp_packet(2000),
            "icmp-error": unframe(icmp_error_seeds()["doc-time-exceeded"])[1],
            "multicast-source": ALL_NODES.join((ECHO[:8], ECHO[24:]))}


def check_packet_too_big(data: bytes) -> None:
    try:
        out = packet_too_big(data, TUNNEL_MTU, GW)
    except PacketError:
        return
    assert len(out) <= ICMP_ERROR_MAX and out[24:40] == data[8:24]
    assert parse_icmpv6(out)[:2] == (2, 0) and icmp_checksum_ok(out)


# --- the netfilter queue (io/nfqueue.py) ------------------------------------------------------------------


def _nla(kind: int, value: bytes) -> bytes:
    return nla(kind, value)


def nfqueue_seeds() -> dict[str, bytes]:
    pm = nfqueue.packet_message
    with_mac = bytearray(pm(3, 7, ECHO, indev=2))
    extra = _nla(nfqueue.NFQA_HWADDR, struct.pack("!H2x", 6) + MAC + b"\0\0") + _nla(
        nfqueue.NFQA_CAP_LEN, struct.pack("!I", 9000))
    struct.pack_into("=I", with_mac, 0, len(with_mac) + len(extra))
    error = struct.pack("=IHHII", 36, nfqueue.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    return {
        "one": pm(3, 1, ECHO, indev=2),
        "gso": pm(3, 2, tcp_packet(3000), indev=2, info=nfqueue.NFQA_SKB_GSO | 1),
        "two": pm(3, 3, ECHO) + pm(3, 4, udp_packet(33)),
        "stamped": pm(3, 5, tcp_packet(3000), indev=2, info=nfqueue.NFQA_SKB_GSO | 1,
                      stamp=1765000000.25),
        "mac-caplen": bytes(with_mac) + extra,
        "error": error,
    }


class _QueueSocket:
    """recv_into that hands out one datagram, the rest of the buffer filled with ``fill``."""

    def __init__(self, data: bytes, fill: bytes) -> None:
        self.data: bytes | None = data
        self.fill = fill

    def recv_into(self, buf: bytearray, size: int, flags: int = 0) -> int:
        if self.data is None:
            raise BlockingIOError
        data, self.data = self.data, None
        n = min(len(data), size)
        buf[:n] = data[:n]
        buf[n:] = self.fill[n:]
        return len(data)


_FILLS = (bytes(nfqueue.RECV_BUFFER), b"\xff" * nfqueue.RECV_BUFFER)


def check_nfqueue(data: bytes) -> None:
    """QueueReader.read on one datagram: never raises, and what it hands to the worker depends on
    that datagram only (read twice, the buffer beyond it filled with 00 and with ff)."""
    results = []
    for fill in _FILLS:
        got: list[tuple[int, bytes, int, int, bytes, float | None]] = []
        counters: Counter[str] = Counter()
        reader = nfqueue.QueueReader(-1, 3, counters, sock=_QueueSocket(data, fill))

        def handle(pkt_id: int, payload: memoryview, info: int, indev: int, mac: bytes,
                   got: list[tuple[int, bytes, int, int, bytes, float | None]] = got,
                   reader: nfqueue.QueueReader = reader) -> None:
            got.append((pkt_id, bytes(payload), info, indev, mac, reader.queued_at()))

        done = reader.read(handle)
        assert done == len(got)
        results.append((got, counters))
    assert results[0] == results[1], "the parse read bytes beyond the datagram"


# --- rtnetlink replies (io/netlink.py) ----------------------------------------------------------------------

NLM_F_MULTI = 0x02


def _nl(cls: Any, kind: int, fields: dict[str, Any], attrs: list[tuple[str, Any]],
        flags: int = NLM_F_MULTI) -> bytes:
    msg = cls()
    msg["header"] = {"type": kind, "flags": flags, "sequence_number": 0, "pid": 0}
    msg.update(fields)
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def _link(index: int, name: str, flags: int = NLM_F_MULTI) -> bytes:
    return _nl(netlink.linkmsg, 16, {"family": 0, "ifi_type": 1, "index": index, "flags": 0,
                                     "change": 0},
               [("IFLA_IFNAME", name), ("IFLA_MTU", 1500), ("IFLA_ADDRESS", "02:00:00:aa:bb:cc")], flags)


def _addr(index: int, address: str, proto: int = netlink.PROTO_MT6D) -> bytes:
    return _nl(netlink.ifaddrmsg, netlink.RTM_NEWADDR,
               {"family": socket.AF_INET6, "prefixlen": 128, "flags": 0, "scope": 0, "index": index},
               [("IFA_ADDRESS", address), ("IFA_FLAGS", 0x280), ("IFA_PROTO", proto)])


def _route(index: int, address: str) -> bytes:
    return _nl(netlink.rtmsg, netlink.RTM_NEWROUTE,
               {"family": socket.AF_INET6, "dst_len": 128, "src_len": 0, "tos": 0, "table": 254,
                "proto": netlink.PROTO_MT6D, "scope": 0, "type": 1, "flags": 0},
               [("RTA_DST", address), ("RTA_OIF", index)])


def _done() -> bytes:
    return struct.pack("=IHHII", 20, netlink.NLMSG_DONE, NLM_F_MULTI, 0, 0) + struct.pack("=i", 0)


def _ack(code: int = 0, text: bytes = b"") -> bytes:
    body = struct.pack("=i", -code) + struct.pack("=IHHII", 32, 18, 5, 0, 0)
    flags = 0
    if text:
        attr = struct.pack("=HH", 4 + len(text), netlink.NLMSGERR_ATTR_MSG) + text
        body += attr + bytes(-len(attr) % 4)
        flags = netlink.NLM_F_ACK_TLVS
    return struct.pack("=IHHII", 16 + len(body), netlink.NLMSG_ERROR, flags, 0, 0) + body


def netlink_seeds() -> dict[str, bytes]:
    return {
        "link-dump": frame([b"\x00", _link(1, "lo") + _link(2, "ext0"), _done()]),
        "addr-dump": frame([b"\x01", _addr(2, "2001:db8::1") + _addr(3, "fe80::1", 0) + _done()]),
        "route-dump": frame([b"\x02", _route(2, "2001:db8:b::20") + _done()]),
        "ack": frame([b"\x03", _ack()]),
        "refused-ext-ack": frame([b"\x03", _ack(22, b"ipv6: Invalid prefix length\0")]),
        "link-get": frame([b"\x03", _link(2, "ext0", 0), _ack()]),
        "stale-then-done": frame([b"\x00", _link(1, "lo")[:8] + struct.pack("=I", 5) + _link(1, "lo")[12:]
                                  + _done()]),
    }


class _RtnlSocket:
    """Replays datagrams; a header's sequence number in them counts from the request's own (0 is
    the request's), so mutations reach the matching and the skipping paths alike."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.datagrams = datagrams
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recvmsg(self, size: int) -> tuple[bytes, list[Any], int, Any]:
        if not self.datagrams:
            raise TimeoutError
        seq = struct.unpack_from("=I", self.sent[-1], 8)[0]
        data = bytearray(self.datagrams.pop(0))
        off = 0
        while off + 16 <= len(data):
            length, _, _, rel = struct.unpack_from("=IHHI", data, off)
            struct.pack_into("=I", data, off + 8, (seq + rel) & 0xFFFFFFFF)
            if length < 16:
                break
            off += (length + 3) & ~3
        return bytes(data[:size]), [], socket.MSG_TRUNC if len(data) > size else 0, None


def check_netlink(data: bytes) -> None:
    """_Rtnl.request reading replayed replies: a dump of links, addresses or routes, or one link
    and the ack. Whatever the replies, the result is decoded messages or a NetlinkError."""
    mode_part, *datagrams = unframe(data, 1)
    cls, kind, flags = ((netlink.linkmsg, netlink.RTM_GETLINK, netlink.NLM_F_DUMP),
                        (netlink.ifaddrmsg, netlink.RTM_GETADDR, netlink.NLM_F_DUMP),
                        (netlink.rtmsg, netlink.RTM_GETROUTE, netlink.NLM_F_DUMP),
                        (netlink.linkmsg, netlink.RTM_GETLINK, 0))[mode_of(mode_part) % 4]
    rtnl = netlink._Rtnl.__new__(netlink._Rtnl)
    rtnl.sock, rtnl.seq = _RtnlSocket(datagrams), 0  # type: ignore[assignment]
    with contextlib.suppress(netlink.NetlinkError):
        replies = rtnl.request(cls(), kind, flags, reply=cls)
        assert all(isinstance(m, cls) for m in replies)


# --- the bus (core/messages.py, io/bus.py) and the control socket (ctl.py) --------------------------------

STREAM = StreamState(name="host-a-host-b", queue=2, local=TA, remote=TB, crypt="aes-256-gcm",
                     phases=(PhaseKeys(3, b"\x01" * 32, b"\x02" * 32),), send_phase=3, lane=1,
                     internal_ifindex=3, external_ifindex=4, tunnel_mtu=1452, rotation_time=2.0,
                     flow_label=True)
ROUTE = RouteUpdate("host-a-host-b", 881234, "accepted", HA, SPORT, HB, DPORT, 3)
KEYX_SEND = KeyxSend("host-a-host-b", HA, SPORT, b"\x11\x00\x3e\x04\x01\x01\x00\x00", b"x" * 65)


def wire_seeds() -> list[Any]:
    return [
        STREAM.to_wire(), ROUTE.to_wire(),
        Snapshot(9, (STREAM,), (ROUTE, ROUTE._replace(epoch=881235, state="expired"))).to_wire(),
        Update(10, STREAM).to_wire(), Update(11, ROUTE._replace(state="released")).to_wire(),
        Update(12, "host-a-host-b").to_wire(), KEYX_SEND.to_wire(),
        Update(13, KEYX_SEND).to_wire(),
    ]


def records_seeds() -> dict[str, bytes]:
    names = ("stream", "route", "snapshot", "update-stream", "update-route", "update-removed",
             "keyx-send", "update-keyx")
    return {name: pack(w) for name, w in zip(names, wire_seeds(), strict=True)}


def check_records(data: bytes) -> None:
    """bus.unpack, then from_wire of every record type; what parses survives a round trip."""
    try:
        obj = bus.unpack(data)
    except BusError:
        return
    for cls in (StreamState, RouteUpdate, KeyxSend, Snapshot, Update):
        try:
            record = cls.from_wire(obj)
        except BusError:
            continue
        assert cls.from_wire(bus.unpack(bus.pack(record.to_wire()))) == record


class _Socket:
    """A stand-in ZeroMQ socket: recv/recv_multipart hand out what was put in, then zmq.Again."""

    def __init__(self) -> None:
        self.inbox: list[Any] = []
        self.sent: list[list[bytes]] = []

    def recv(self, flags: int = 0) -> bytes:
        if not self.inbox:
            raise zmq.Again()
        data: bytes = self.inbox.pop(0)
        return data

    recv_multipart = recv

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        self.sent.append(list(frames))


class _SubSocket(_Socket):
    """A stand-in SUB socket: each message comes with its topic frame."""

    def recv_multipart(self, flags: int = 0) -> list[bytes]:  # type: ignore[override]
        return [b"\x00\x00", self.recv(flags)]


def update_messages() -> list[Any]:
    """What the SUB socket carries: arrays of updates (one, several, one with a gap inside)."""
    u = wire_seeds()
    return [[u[3]], [u[3], u[4], u[5]], [u[4], Update(30, ROUTE).to_wire(), u[7]]]


def bus_client_seeds() -> dict[str, bytes]:
    w = [pack(x) for x in wire_seeds()]
    m = [pack(x) for x in update_messages()]
    return {
        "snapshot-then-updates": frame([b"\x01\x00\x00", w[2], m[0], m[1]]),
        "update-gap": frame([b"\x01\x00", w[2], m[2]]),
        "updates-before-snapshot": frame([b"\x00\x01\x00", m[0], w[2], m[1]]),
        "error-reply": frame([b"\x01", pack({"error": "unknown command b'x'"})]),
    }


def bus_client_strategy() -> st.SearchStrategy[bytes]:
    """Sequences of (socket, message), the messages mutated as msgpack structures."""
    msg = mutated_msgpack([*wire_seeds(), *update_messages()])
    return st.lists(st.tuples(st.integers(0, 1), msg), max_size=5).map(
        lambda items: frame([bytes(c for c, _ in items), *(m for _, m in items)]))


def check_bus_client(data: bytes) -> None:
    """A worker's BusClient taking updates (SUB) and snapshot replies (DEALER): whatever arrives,
    poll_updates and poll_control count what is malformed and never raise."""
    channels, *messages = unframe(data, 1)
    client = BusClient.__new__(BusClient)
    client.name, client.replica, client.errors, client.snapshot_pending = "w1", Replica(), 0, False
    client.topic = b""
    sub, control = _SubSocket(), _Socket()
    client.sub, client.control = sub, control
    for i, message in enumerate(messages):
        if i < len(channels) and channels[i] & 1:
            control.inbox.append(message)
            client.poll_control()
        else:
            sub.inbox.append(message)
            client.poll_updates()
        r = client.replica
        assert all(isinstance(s, StreamState) for s in r.streams.values())
        assert all(isinstance(x, RouteUpdate) for x in r.routes.values())


class FakeSupervisor:
    """The Controlled interface as the supervisor answers it (control_workers refuses unknown
    names as the supervisor's WorkerPool.control does)."""

    workers = ("host-a-host-b", "icmp")

    def status_data(self) -> dict[str, Any]:
        return {"pid": 1, "config": "/etc/mt6d/mt6d.toml", "uptime": 3.5, "tunnel_mtu": 1452,
                "workers": [{"name": n, "pid": 2, "state": "running", "reason": "", "uptime": 3.0,
                             "queue": 2, "drops": {}} for n in self.workers], "streams": []}

    def control_workers(self, action: str, names: list[str]) -> dict[str, Any]:
        targets = list(self.workers) if names == ["all"] else names
        unknown = [n for n in targets if n not in self.workers]
        if unknown:
            raise commands.CommandError(f"no worker {', '.join(unknown)}")
        return {"workers": {n: {"state": "running", "pid": 2} for n in targets}}

    def reload(self) -> dict[str, Any]:
        return {"added": [], "removed": [], "unchanged": ["host-a-host-b"]}

    def routes_data(self) -> dict[str, Any]:
        return {"time": 1.0, "rotation_time": 2.0, "streams": []}

    def rehash(self) -> dict[str, Any]:
        return {"added": 0, "rebound": [], "firewall_diff": [], "published": 2}


def control_seeds() -> dict[str, bytes]:
    ident = b"\x00k\x8bEg"
    stats = pack({"packets_in": 3, "drops": {"replay": 1}})
    requests = {
        "snapshot": [b"snapshot"], "ready": [b"ready", b"w1"], "stats": [b"stats", b"w1", stats],
        "status": [b"status"], "start-all": [b"start", b"all"], "stop": [b"stop", b"icmp"],
        "restart-two": [b"restart", b"icmp", b"host-a-host-b"], "start-unknown": [b"start", b"\xffx"],
        "reload": [b"reload"], "routes": [b"routes"], "rehash": [b"rehash"], "doctor": [b"doctor"],
        "unknown": [b"frobnicate", b"x"], "no-command": [],
    }
    return {name: frame([ident, *frames]) for name, frames in requests.items()}


def control_strategy() -> st.SearchStrategy[bytes]:
    """Stats reports whose msgpack is mutated as a structure."""
    stats = mutated_msgpack([{"packets_in": 3, "drops": {"replay": 1}}, [1, 2]])
    return stats.map(lambda s: frame([b"id", b"stats", b"w1", s]))


def check_control(data: bytes) -> None:
    """BusServer.handle_control on one request (frames), with mt6dctl's commands registered as
    the supervisor registers them (mt6d_mp.commands.handlers): it never raises, every reply is
    msgpack, and no command hit its internal-error safety net."""
    frames = unframe(data)
    server = BusServer.__new__(BusServer)
    server.state, server.ready, server.stats = Replica(), set(), {}
    server.state.seq = 0
    server.state.apply(Update(1, STREAM))
    server.state.apply(Update(2, ROUTE))
    sup = FakeSupervisor()
    server.handlers = commands.handlers(sup)
    router = _Socket()
    server.control = router
    router.inbox.append(frames)
    server.handle_control()
    for ident, reply_bytes in router.sent:
        assert ident == frames[0]
        reply = bus.unpack(reply_bytes)
        assert isinstance(reply, dict | list)
        if isinstance(reply, dict) and "error" in reply:
            assert not str(reply["error"]).startswith("internal error"), reply


def ctl_reply_seeds() -> dict[str, bytes]:
    sup = FakeSupervisor()
    return {"status": pack(sup.status_data()), "start": pack(sup.control_workers("start", ["all"])),
            "error": pack({"error": "no worker x", "code": 1}), "snapshot": pack(wire_seeds()[2])}


def check_ctl_reply(data: bytes) -> None:
    """mt6dctl's Ctl.call taking a reply off the control socket: a reply it cannot use is a
    CommandError (exit 1), never a traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Path(tmp)
        (runtime / bus.CONTROL).touch()

        def request(runtime_dir: Path, command: bytes, *args: bytes, timeout: float = 3.0) -> Any:
            return bus.unpack(data)

        with mock.patch.object(bus, "request", request), contextlib.suppress(Mt6dError):
            reply = ctl.Ctl(runtime, 1.0).call(b"status")
            assert isinstance(reply, dict) and "error" not in reply


# --- the registry -----------------------------------------------------------------------------------------


# --- the key exchange (core/keyx.py, core/phases.py) ----------------------------------------------

KEYX_AAD = HA + HB + SPORT.to_bytes(2, "big") + DPORT.to_bytes(2, "big")
KEYX_KEY = keyx.auth_key(b"\x07" * 32)


def keyx_seeds() -> dict[str, bytes]:
    pub = bytes(range(32))
    msgs = {"init": keyx.Message(keyx.INIT, b"\x01" * 8, time_ms=1_700_000_000_000, phase=2,
                                 public=pub),
            "resp": keyx.Message(keyx.RESP, b"\x01" * 8, phase=3, public=pub, confirm=b"\x05" * 16),
            "confirm": keyx.Message(keyx.CONFIRM, b"\x01" * 8, phase=3, confirm=b"\x06" * 16)}
    out = {}
    for name, m in msgs.items():
        opts, payload = keyx.seal(KEYX_KEY, KEYX_AAD, m)
        out[name] = opts + payload
    return out


def check_keyx(data: bytes) -> None:
    """A received exchange message: a Message or PacketError from the codec, and whatever the
    state machine makes of it, never an exception (it counts refusals)."""
    opts, payload = data[:8], data[8:]
    with contextlib.suppress(PacketError):
        m = keyx.open_message(KEYX_KEY, KEYX_AAD, opts, payload)
        assert keyx.open_message(KEYX_KEY, KEYX_AAD, *keyx.seal(KEYX_KEY, KEYX_AAD, m)) == m
    ident = StreamIdentity("s", TB, b"\x02" * 6, TA, b"\x03" * 6)
    keys = StreamKeys(ident, b"\x07" * 32, 2.0, 2.0, Policy(60.0, 1.0, 0.0, 4.0), 1_700_000_000.0)
    keys.advance(1_700_000_000.0)
    route = keys.installed()[0]
    keys.receive(1_700_000_000.0, route, opts, payload)


class Target(NamedTuple):
    check: Callable[[bytes], None]
    seeds: Callable[[], dict[str, bytes]]
    strategy: Callable[[list[bytes]], st.SearchStrategy[bytes]]


def _bytes(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return mutated(seeds)


def _parts(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated_parts(seeds), mutated(seeds))


def _msgpack(objects: Callable[[], list[Any]]) -> Callable[[list[bytes]], st.SearchStrategy[bytes]]:
    return lambda seeds: st.one_of(mutated_msgpack(objects()), mutated(seeds))


def ctl_reply_objects() -> list[Any]:
    return [bus.unpack(b) for b in ctl_reply_seeds().values()]


TARGETS: dict[str, Target] = {
    "tunnel": Target(check_tunnel, tunnel_seeds, _bytes),
    "open_payload": Target(check_open_payload, open_payload_seeds, _parts),
    "inner_plain": Target(check_inner_plain_path, plain_seeds, _bytes),
    "payload_end": Target(check_payload_end, payload_end_seeds, _bytes),
    "ext_headers": Target(check_ext_headers, ext_header_seeds, _parts),
    "segment_tcp": Target(check_segment_tcp, segment_seeds, _parts),
    "reassembly": Target(check_reassembly, chunk_seeds, _parts),
    "icmpv6": Target(check_icmpv6, icmpv6_seeds, _bytes),
    "icmp_error": Target(check_icmp_error, icmp_error_seeds, _parts),
    "router_advert": Target(check_router_advert, ra_seeds, _parts),
    "packet_too_big": Target(check_packet_too_big, ptb_seeds, _bytes),
    "nfqueue": Target(check_nfqueue, nfqueue_seeds, _bytes),
    "netlink": Target(check_netlink, netlink_seeds, _parts),
    "records": Target(check_records, records_seeds, _msgpack(wire_seeds)),
    "keyx": Target(check_keyx, keyx_seeds, _parts),
    "bus_client": Target(check_bus_client, bus_client_seeds,
                         lambda seeds: st.one_of(_parts(seeds), bus_client_strategy())),
    "control": Target(check_control, control_seeds,
                      lambda seeds: st.one_of(_parts(seeds), control_strategy())),
    "ctl_reply": Target(check_ctl_reply, ctl_reply_seeds, _msgpack(ctl_reply_objects)),
}
