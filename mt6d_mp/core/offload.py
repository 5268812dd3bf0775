"""What a NIC does for a host, done in software where MT6D needs it: TCP segmentation and the
TCP/UDP checksums a host leaves to its NIC (Linux CHECKSUM_PARTIAL).

A host's TSO super-packet is cut into segments (:func:`segment_tcp`) when it cannot be carried or
delivered whole; a checksum the sending host left to its NIC is completed
(:func:`complete_checksum`) or left for the kernel to complete, with the pseudo-header sum in
place (:func:`pseudo_header_sum`, :func:`transport_checksum_offset`). Pure code.
"""

from __future__ import annotations

import struct
from typing import Final

from mt6d_mp.core.packet import (
    INNER_KEEP,
    IP6_OFF_DST,
    IP6_OFF_NH,
    IP6_OFF_PLEN,
    IP6_OFF_SRC,
    IPPROTO_UDP,
    IPV6_HDR_LEN,
    UDP_HDR_LEN,
    UDP_OFF_CSUM,
    Buffer,
    check_inner,
    transport_checksum,
)
from mt6d_mp.errors import PacketError

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
IPPROTO_TCP: Final = 6
TCP_OFF_SEQ: Final = 4
TCP_OFF_FLAGS: Final = 13
TCP_OFF_CSUM: Final = 16
TCP_FIN: Final = 0x01
TCP_PSH: Final = 0x08
TCP_CWR: Final = 0x80
TCP_MIN_HDR: Final = 20
TCP_OFF_DOFF: Final = 12  # data offset, in 32-bit words, in the high nibble


def tcp_header_len(packet: Buffer, at: int) -> int:
    """Length of the TCP header at offset ``at`` (its data offset field)."""
    return (packet[at + TCP_OFF_DOFF] >> 4) * 4


def pseudo_header_sum(src16: Buffer, dst16: Buffer, length: int, proto: int = IPPROTO_TCP) -> int:
    """The folded (not complemented) RFC 8200 8.1 pseudo-header sum: what the TCP or UDP checksum
    field holds while the checksum is left to a NIC (Linux CHECKSUM_PARTIAL)."""
    total = int.from_bytes(src16, "big") + int.from_bytes(dst16, "big") + length + proto
    return total % 0xFFFF or 0xFFFF


def transport_checksum_offset(plain: Buffer) -> int:
    """Offset in a packet without its addresses (``inner[0:8] + inner[40:]``) of the TCP or UDP
    checksum when that header follows the IPv6 header directly; -1 otherwise."""
    nh, n = plain[IP6_OFF_NH], len(plain)
    if nh == IPPROTO_TCP and n >= INNER_KEEP + TCP_MIN_HDR:
        return INNER_KEEP + TCP_OFF_CSUM
    if nh == IPPROTO_UDP and n >= INNER_KEEP + UDP_HDR_LEN:
        return INNER_KEEP + UDP_OFF_CSUM
    return -1


def segment_tcp(inner: Buffer, mss: int) -> list[bytes]:
    """Split a TCP/IPv6 super-packet into packets with at most ``mss`` bytes of data each.

    What a NIC's TSO does (and the kernel's GSO in software): every segment gets the IPv6 and TCP
    headers with its own payload length, sequence number and a full checksum; FIN and PSH stay
    on the last segment only and CWR on the first only. The TCP header must follow the IPv6
    header directly (``bad_inner`` otherwise).
    """
    check_inner(inner)
    if inner[IP6_OFF_NH] != IPPROTO_TCP:
        raise PacketError("gso_not_tcp", f"next header {inner[IP6_OFF_NH]}")
    mv = memoryview(inner)
    if len(mv) < IPV6_HDR_LEN + TCP_MIN_HDR:
        raise PacketError("bad_inner", "short TCP header")
    doff = tcp_header_len(mv, IPV6_HDR_LEN)
    data_start = IPV6_HDR_LEN + doff
    if doff < TCP_MIN_HDR or data_start > len(mv) or mss < 1:
        raise PacketError("bad_inner", "TCP header length")
    src, dst = mv[IP6_OFF_SRC:IP6_OFF_DST], mv[IP6_OFF_DST:IPV6_HDR_LEN]
    seq = _U32.unpack_from(mv, IPV6_HDR_LEN + TCP_OFF_SEQ)[0]
    flags = mv[IPV6_HDR_LEN + TCP_OFF_FLAGS]
    total = len(mv) - data_start
    out = []
    for off in range(0, max(total, 1), mss):
        part = mv[data_start + off : data_start + min(off + mss, total)]
        pkt = bytearray(mv[:data_start])
        pkt += part
        _U16.pack_into(pkt, IP6_OFF_PLEN, doff + len(part))
        _U32.pack_into(pkt, IPV6_HDR_LEN + TCP_OFF_SEQ, (seq + off) & 0xFFFFFFFF)
        f = flags
        if off + mss < total:
            f &= ~(TCP_FIN | TCP_PSH)
        if off:
            f &= ~TCP_CWR
        pkt[IPV6_HDR_LEN + TCP_OFF_FLAGS] = f
        segment = memoryview(pkt)[IPV6_HDR_LEN:]
        _U16.pack_into(pkt, IPV6_HDR_LEN + TCP_OFF_CSUM,
                       transport_checksum(src, dst, IPPROTO_TCP, segment, TCP_OFF_CSUM))
        out.append(bytes(pkt))
    return out


def complete_checksum(packet: Buffer) -> bytearray:
    """A copy of ``packet`` with its TCP or UDP checksum filled in.

    A host that offloads checksums to its NIC (every veth does) leaves the TCP or UDP checksum
    field holding only the pseudo-header sum; a netfilter queue with GSO packets whole passes
    such packets on as they are (``NFQA_SKB_CSUMNOTREADY``) instead of completing them. Only a
    transport header right after the IPv6 header is handled; anything else raises
    ``csum_not_ready``.
    """
    nh = packet[IP6_OFF_NH] if len(packet) >= IPV6_HDR_LEN else -1
    off = TCP_OFF_CSUM if nh == IPPROTO_TCP else UDP_OFF_CSUM if nh == IPPROTO_UDP else -1
    if off < 0 or len(packet) < IPV6_HDR_LEN + off + 2:
        raise PacketError("csum_not_ready", f"checksum to complete for next header {nh}")
    out = bytearray(packet)
    mv = memoryview(out)
    csum = transport_checksum(mv[IP6_OFF_SRC:IP6_OFF_DST], mv[IP6_OFF_DST:IPV6_HDR_LEN], nh,
                     mv[IPV6_HDR_LEN:], off)
    if nh == IPPROTO_UDP and csum == 0:
        csum = 0xFFFF
    _U16.pack_into(out, IPV6_HDR_LEN + off, csum)
    mv.release()
    return out
