"""ICMPv6 handling at the gateway (thesis 3.2.3): Packet Too Big, router advertisements and
solicitations, and translation of errors about tunnel packets back into errors about host packets.

Pure code; RFC 4443 (ICMPv6), RFC 4861 (Neighbor Discovery), RFC 8200 (IPv6).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from mt6d_mp.core.crypto import ALG_CHUNKED, TAG_LEN, PrefixDecryptor
from mt6d_mp.core.packet import (
    INNER_KEEP,
    IP6_ADDR_LEN,
    IP6_OFF_DST,
    IP6_OFF_HLIM,
    IP6_OFF_SRC,
    IPPROTO_ICMPV6,
    IPV6_HDR,
    IPV6_HDR_LEN,
    IPV6_MIN_MTU,
    Buffer,
    icmpv6_checksum,
    ipv6_payload_end,
    parse_tunnel,
    restore_inner,
    tunnel_overhead,
    walk_extension_headers,
)
from mt6d_mp.core.sentlog import SENT_PREFIX
from mt6d_mp.errors import PacketError

# --- ICMPv6 types (RFC 4443 section 2.1, RFC 4861 section 4) ----------------------------------------------
ICMP6_DST_UNREACH: Final = 1
ICMP6_PACKET_TOO_BIG: Final = 2
ICMP6_TIME_EXCEEDED: Final = 3
ICMP6_PARAM_PROB: Final = 4
ICMP6_ERROR_TYPES: Final = frozenset((1, 2, 3, 4))
ICMP6_ECHO_REPLY: Final = 129
MLD_REPORT: Final = 131  # RFC 2710
MLD_DONE: Final = 132
MLD2_REPORT: Final = 143  # RFC 3810
ND_ROUTER_SOLICIT: Final = 133
ND_ROUTER_ADVERT: Final = 134
ND_NEIGHBOR_SOLICIT: Final = 135
ND_NEIGHBOR_ADVERT: Final = 136
ND_REDIRECT: Final = 137

# --- layouts ---------------------------------------------------------------------------------------------
ICMP_HDR: Final = struct.Struct("!BBHI")  # type, code, checksum, 32-bit field (MTU, pointer, unused)
ICMP_HDR_LEN: Final = 8
ICMP_OFF_CSUM: Final = 2
ICMP_OFF_FIELD: Final = 4
RA_OFF_OPTIONS: Final = 16  # type, code, csum, cur hop limit, flags, lifetime, reachable, retrans
ND_OPT_SLLA: Final = 1  # source link-layer address, RFC 4861 section 4.6.1
ND_OPT_MTU: Final = 5  # RFC 4861 section 4.6.4
ND_OPT_MTU_OFF_VALUE: Final = 4
ND_HOP_LIMIT: Final = 255  # RFC 4861 section 6.1: ND messages must arrive with hop limit 255
ERROR_HOP_LIMIT: Final = 64
# RFC 4443 2.4(c): an error message must not exceed the minimum IPv6 MTU.
ICMP_ERROR_MAX: Final = IPV6_MIN_MTU
QUOTE_MAX: Final = ICMP_ERROR_MAX - IPV6_HDR_LEN - ICMP_HDR_LEN  # 1232
ALL_ROUTERS: Final = bytes.fromhex("ff020000000000000000000000000002")
UNSPECIFIED: Final = bytes(16)
_MTU: Final = struct.Struct("!I")
_U16: Final = struct.Struct("!H")

# was_sent(options header or b"", payload prefix) -> True if the stream's worker sent that packet
SentCheck = Callable[[bytes, Buffer], bool]
# lookup(outer src, outer dst) -> (true src, true dst, decryptor for the sending direction,
# was_sent) or None
RouteLookup = Callable[
    [bytes, bytes], "tuple[bytes, bytes, PrefixDecryptor | None, SentCheck] | None"]


def parse_icmpv6(packet: Buffer) -> tuple[int, int, int]:
    """(type, code, offset of the ICMPv6 header) of an IPv6 packet carrying ICMPv6."""
    end = ipv6_payload_end(packet)
    proto, off = walk_extension_headers(packet, end)[:2]
    if proto != IPPROTO_ICMPV6:
        raise PacketError("not_icmpv6", f"upper layer {proto}")
    if off + 4 > end:
        raise PacketError("truncated", "ICMPv6 header")
    return packet[off], packet[off + 1], off


def _build(src16: Buffer, dst16: Buffer, hop_limit: int, icmp: bytearray) -> bytes:
    """IPv6 header + ``icmp`` (whose checksum is filled in here)."""
    _U16.pack_into(icmp, ICMP_OFF_CSUM, icmpv6_checksum(src16, dst16, icmp))
    return IPV6_HDR.pack(6 << 28, len(icmp), IPPROTO_ICMPV6, hop_limit, src16, dst16) + icmp


def _error(
    src16: Buffer, dst16: Buffer, itype: int, code: int, field: int, quote: Buffer, hop_limit: int
) -> bytes:
    quote = memoryview(quote)[:QUOTE_MAX]
    icmp = bytearray(ICMP_HDR_LEN + len(quote))
    ICMP_HDR.pack_into(icmp, 0, itype, code, 0, field)
    icmp[ICMP_HDR_LEN:] = quote
    return _build(src16, dst16, hop_limit, icmp)


def _is_multicast_or_unspecified(addr: Buffer) -> bool:
    return addr[0] == 0xFF or bytes(addr) == UNSPECIFIED


def packet_too_big(original: Buffer, mtu: int, src16: bytes) -> bytes:
    """ICMPv6 Packet Too Big (RFC 4443 section 3.2) from ``src16`` to the original packet's source.

    Quotes as much of ``original`` as fits in 1280 bytes (RFC 4443 2.4(c)). Refuses (``no_error``) when
    RFC 4443 2.4(e) forbids an error: the original is itself an ICMPv6 error, or its source does not
    identify a single node (unspecified or multicast). A multicast destination is allowed for Packet Too
    Big (2.4(e.2) exception).
    """
    if len(original) < IPV6_HDR_LEN or original[0] >> 4 != 6:
        raise PacketError("bad_inner", "not an IPv6 packet")
    if len(src16) != IP6_ADDR_LEN:
        raise ValueError("source must be 16 bytes")
    dst = original[IP6_OFF_SRC:IP6_OFF_DST]
    if _is_multicast_or_unspecified(dst):
        raise PacketError("no_error", "source is unspecified or multicast")
    try:
        end = ipv6_payload_end(original, allow_truncated=True)
        proto, off = walk_extension_headers(original, end)[:2]
    except PacketError:
        proto = off = -1  # an odd header chain is no reason to withhold the error
    if proto == IPPROTO_ICMPV6 and 0 <= off < len(original) and original[off] < 128:
        raise PacketError("no_error", "original is an ICMPv6 error")
    return _error(src16, dst, ICMP6_PACKET_TOO_BIG, 0, mtu, original, ERROR_HOP_LIMIT)


def router_solicitation(src16: bytes, mac6: bytes) -> bytes:
    """Router Solicitation (RFC 4861 section 4.1) to ff02::2 with hop limit 255.

    Carries a source link-layer address option with ``mac6`` unless the source is the unspecified
    address, for which RFC 4861 4.1 forbids it.
    """
    if len(src16) != IP6_ADDR_LEN or len(mac6) != 6:
        raise ValueError("source must be 16 bytes and MAC 6 bytes")
    icmp = bytearray(8) if src16 == UNSPECIFIED else bytearray(16)
    icmp[0] = ND_ROUTER_SOLICIT
    if len(icmp) == 16:
        icmp[8] = ND_OPT_SLLA
        icmp[9] = 1  # length in units of 8 bytes
        icmp[10:16] = mac6
    return _build(src16, ALL_ROUTERS, ND_HOP_LIMIT, icmp)


ND_OPT_TLLA: Final = 2  # target link-layer address, RFC 4861 section 4.6.1
ND_NA_SOLICITED: Final = 0x40  # flags byte of a Neighbor Advertisement: S
ND_NA_OVERRIDE: Final = 0x20  # O
ALL_NODES: Final = bytes.fromhex("ff020000000000000000000000000001")
NS_LEN: Final = IPV6_HDR_LEN + 24  # a solicitation without options
SOLICITED_NODE_PREFIX: Final = bytes.fromhex("ff0200000000000000000001ff")


def neighbor_solicitation_target(packet: Buffer) -> tuple[bytes, bytes]:
    """(source, target) of a Neighbor Solicitation that RFC 4861 7.1.1 lets a node answer: hop
    limit 255, code 0, a valid checksum, a target that is no multicast address; from the
    unspecified address (duplicate address detection) only to a solicited-node group.
    PacketError otherwise."""
    if len(packet) < NS_LEN:
        raise PacketError("truncated", "neighbour solicitation")
    itype, code, off = parse_icmpv6(packet)
    if itype != ND_NEIGHBOR_SOLICIT or code != 0 or off != IPV6_HDR_LEN:
        raise PacketError("not_ns", f"type {itype} code {code}")
    if packet[7] != ND_HOP_LIMIT:
        raise PacketError("nd_hop_limit", f"hop limit {packet[7]}")
    end = ipv6_payload_end(packet)
    if end < NS_LEN:
        raise PacketError("truncated", "neighbour solicitation")
    _check_icmp_checksum(packet, off, end)
    src, dst = bytes(packet[IP6_OFF_SRC:IP6_OFF_DST]), bytes(packet[IP6_OFF_DST:IPV6_HDR_LEN])
    target = bytes(packet[off + 8:off + 24])
    if target[0] == 0xFF:
        raise PacketError("ns_multicast_target", "target is a multicast address")
    if src == UNSPECIFIED and dst[:13] != SOLICITED_NODE_PREFIX:
        raise PacketError("ns_dad_not_solicited_node", "unspecified source to another address")
    return src, target


def neighbor_advertisement(target16: bytes, solicitor16: bytes, mac6: bytes) -> tuple[bytes, bytes]:
    """The Neighbor Advertisement (RFC 4861 4.4, 7.2.4) that answers a solicitation for
    ``target16`` from ``solicitor16``: from the target, with its link-layer address ``mac6``,
    Override set; Solicited set and sent back to the solicitor, or (a solicitation from the
    unspecified address: duplicate address detection) not solicited and to all nodes. Returns
    (packet, its destination)."""
    if len(target16) != IP6_ADDR_LEN or len(solicitor16) != IP6_ADDR_LEN or len(mac6) != 6:
        raise ValueError("addresses must be 16 bytes and the MAC 6 bytes")
    dad = solicitor16 == UNSPECIFIED
    icmp = bytearray(32)
    icmp[0] = ND_NEIGHBOR_ADVERT
    icmp[4] = ND_NA_OVERRIDE | (0 if dad else ND_NA_SOLICITED)
    icmp[8:24] = target16
    icmp[24], icmp[25] = ND_OPT_TLLA, 1  # length in units of 8 bytes
    icmp[26:32] = mac6
    dst = ALL_NODES if dad else solicitor16
    return _build(target16, dst, ND_HOP_LIMIT, icmp), dst


def _check_icmp_checksum(packet: Buffer, off: int, end: int) -> None:
    msg = memoryview(packet)[off:end]
    stored = (msg[ICMP_OFF_CSUM] << 8) | msg[ICMP_OFF_CSUM + 1]
    src = packet[IP6_OFF_SRC:IP6_OFF_DST]
    if stored != icmpv6_checksum(src, packet[IP6_OFF_DST:IPV6_HDR_LEN], msg):
        raise PacketError("bad_checksum", "ICMPv6")


def rewrite_router_advertisement(
    ra_packet: Buffer, overhead: int, mac6: bytes, new_src16: bytes | None = None
) -> bytes:
    """Router Advertisement (RFC 4861 section 4.2) as the gateway forwards it to its hosts.

    The MTU option (4.6.4) is lowered by ``overhead`` (never below 1280; an absent option stays
    absent); the source link-layer address option (4.6.1) gets ``mac6``; with ``new_src16`` the source
    address is replaced (it must be link-local to be accepted, RFC 4861 6.1.2). Hop limit stays 255.
    The checksum is verified on input (``bad_checksum``) and recomputed. Options of length 0 are
    malformed (4.6, ``bad_option``). Bytes after the IPv6 payload length are dropped.
    """
    if len(mac6) != 6:
        raise ValueError("MAC must be 6 bytes")
    itype, code, off = parse_icmpv6(ra_packet)
    end = ipv6_payload_end(ra_packet)
    if itype != ND_ROUTER_ADVERT or code != 0:
        raise PacketError("not_ra", f"type {itype} code {code}")
    if ra_packet[IP6_OFF_HLIM] != ND_HOP_LIMIT:
        raise PacketError("bad_ra", "hop limit is not 255")
    if off + RA_OFF_OPTIONS > end:
        raise PacketError("truncated", "router advertisement")
    _check_icmp_checksum(ra_packet, off, end)
    out = bytearray(memoryview(ra_packet)[:end])
    opt = off + RA_OFF_OPTIONS
    while opt < end:
        if opt + 2 > end:
            raise PacketError("bad_option", "ND option header overruns the packet")
        olen = out[opt + 1] << 3
        if olen == 0 or opt + olen > end:
            raise PacketError("bad_option", "ND option length 0 or overrun")
        otype = out[opt]
        if otype == ND_OPT_MTU and olen == 8:
            mtu = _MTU.unpack_from(out, opt + ND_OPT_MTU_OFF_VALUE)[0]
            _MTU.pack_into(out, opt + ND_OPT_MTU_OFF_VALUE, max(IPV6_MIN_MTU, mtu - overhead))
        elif otype == ND_OPT_SLLA:
            # Ethernet: 2 + 6 bytes (RFC 2464 section 6); longer link layers keep their tail.
            out[opt + 2 : opt + 8] = mac6
        opt += olen
    if new_src16 is not None:
        if len(new_src16) != IP6_ADDR_LEN:
            raise ValueError("source must be 16 bytes")
        out[IP6_OFF_SRC:IP6_OFF_DST] = new_src16
    msg = memoryview(out)[off:end]
    _U16.pack_into(
        out, off + ICMP_OFF_CSUM, icmpv6_checksum(out[IP6_OFF_SRC:IP6_OFF_DST], out[IP6_OFF_DST:40], msg)
    )
    msg.release()
    return bytes(out)


def _map_pointer(pointer: int, payload_offset: int) -> int:
    """Map a Parameter Problem pointer from the tunnel packet to the restored original.

    Bytes 0-39 map to themselves (the outer header mirrors the inner one; the addresses map to the true
    addresses). A pointer into the tunnel's own headers (destination options, UDP) is about the tunnel,
    not the host's packet: ``tunnel_problem``, the caller drops it. Payload byte k maps to inner byte
    k for k < 8 and 40 + (k - 8) otherwise (the stream ciphers keep byte positions).
    """
    if pointer < IPV6_HDR_LEN:
        return pointer
    if pointer < payload_offset:
        raise PacketError("tunnel_problem", f"pointer {pointer} into tunnel headers")
    k = pointer - payload_offset
    return k if k < INNER_KEEP else IPV6_HDR_LEN + k - INNER_KEEP


def translate_icmp_error(packet: Buffer, lookup: RouteLookup) -> bytes:
    """Turn an ICMPv6 error about a tunnel packet into the error the host would have received.

    ``packet`` is an error (types 1-4) sent by a router to one of our hashed addresses, quoting a
    tunnel packet we sent. ``lookup(outer src, outer dst)`` gives the true addresses, a decryptor
    for the direction the quoted packet travelled (our Sealer, or an Opener with the same key) and
    a check that the stream's worker sent the packet, or None (``unknown_route``). The quote
    cannot be authenticated (it is cut before the tag), so it must match a packet the worker
    recorded (``quote_not_sent`` otherwise, see mt6d_mp.core.sentlog), and only the recorded
    prefix of it is decrypted, the true addresses restored, and a new error of the same type and
    code is built from the same router address to the true source, quoting the restored prefix.
    Packet Too Big's MTU is lowered by the tunnel overhead (never below 1280); Parameter
    Problem's pointer is mapped (see _map_pointer). An error from the peer's hashed address
    itself is about the tunnel, not the host's packet: Destination Unreachable is dropped
    (``peer_unreachable``), any other comes from the remote host's true address instead.
    """
    itype, code, off = parse_icmpv6(packet)
    end = ipv6_payload_end(packet)
    if itype not in ICMP6_ERROR_TYPES:
        raise PacketError("not_icmp_error", f"type {itype}")
    if off + ICMP_HDR_LEN > end:
        raise PacketError("truncated", "ICMPv6 error header")
    _check_icmp_checksum(packet, off, end)
    field = _MTU.unpack_from(packet, off + ICMP_OFF_FIELD)[0]
    quote = memoryview(packet)[off + ICMP_HDR_LEN : end]
    view = parse_tunnel(quote, allow_truncated=True)
    if view.src != packet[IP6_OFF_DST:IPV6_HDR_LEN]:
        raise PacketError("quote_mismatch", "error not addressed to the quoted packet's source")
    route = lookup(view.src, view.dst)
    if route is None:
        raise PacketError("unknown_route")
    true_src, true_dst, decryptor, was_sent = route
    router = bytes(packet[IP6_OFF_SRC:IP6_OFF_DST])
    if router == view.dst:
        # From the peer gateway's own stack, about the tunnel datagram itself (for example Port
        # Unreachable for a route it no longer has): nothing the host could act on, and the
        # hashed address must not reach the host as an error's source.
        if itype == ICMP6_DST_UNREACH:
            raise PacketError("peer_unreachable", f"code {code}")
        router = true_dst
    body = quote[view.payload_offset : view.payload_end]
    checked = min(SENT_PREFIX, view.udp_length - 8)  # what the worker recorded of the payload
    if checked < 0 or len(body) < checked:
        raise PacketError("quote_short", f"{len(body)} of {checked} payload bytes")
    body = body[:checked]
    options = b"" if view.dstopts is None else bytes(view.dstopts)
    if view.enc_offset >= 0 and view.alg & ALG_CHUNKED:
        raise PacketError("chunk_quote", "a chunk does not start with the inner packet")
    if not was_sent(options, body):
        raise PacketError("quote_not_sent", "the quote matches no packet this gateway sent")
    if view.enc_offset >= 0:
        if decryptor is None:
            raise PacketError("alg_mismatch", "encrypted quote, no key")
        assert view.dstopts is not None  # enc_offset >= 0 implies a dstopts header
        plain_len = view.udp_length - 8 - TAG_LEN  # the full plaintext; the quote may stop earlier
        if plain_len < INNER_KEEP:
            raise PacketError("bad_inner", "quoted ciphertext too short")
        plain = decryptor.decrypt_unauthenticated_prefix(view.dstopts, body[:plain_len], view.enc_offset)
        crypt_type = view.alg
    else:
        if decryptor is not None and decryptor.crypt_type != 0:
            raise PacketError("not_encrypted", "plain quote on an encrypted route")
        plain = bytes(body)
        crypt_type = 0
    if len(plain) < INNER_KEEP or plain[0] >> 4 != 6:
        raise PacketError("bad_inner", "quoted inner header")
    if itype == ICMP6_PACKET_TOO_BIG:
        field = max(IPV6_MIN_MTU, field - tunnel_overhead(crypt_type))
    elif itype == ICMP6_PARAM_PROB:
        field = _map_pointer(field, view.payload_offset)
    original = restore_inner(plain, true_src, true_dst)
    return _error(router, true_src, itype, code, field, original, ERROR_HOP_LIMIT)
