"""MT6D tunnel packet codec: encapsulation, parsing, decapsulation, checksums.

Pure code over ``bytes``/``bytearray``/``memoryview``: no sockets, no per-packet objects beyond the
returned buffers and one small :class:`TunnelView`. The byte layout is specified in ``docs/PROTOCOL.md``.

Tunnel packet::

    outer IPv6 header (hashed src/dst)            40 bytes  RFC 8200 section 3
    [destination options: MT6D encryption option] 16 bytes  RFC 8200 section 4.6, only when encrypting
    UDP header                                     8 bytes  RFC 768, checksum per RFC 8200 section 8.1
    payload: inner[0:8] + inner[40:]  (or its AEAD ciphertext + 16-byte tag)

The inner packet loses its two addresses (32 bytes); the receiver restores them from the route the
packet arrived on. Messages in chunks are in mt6d_mp.core.chunks, segmentation and checksum offload
in mt6d_mp.core.offload.

The workers send with :func:`tunnel_pieces` (scatter/gather, the kernel builds the headers) and
receive with :func:`open_payload` (the kernel parsed the headers). The whole-packet functions
:func:`encapsulate`, :func:`open_tunnel` and :func:`decapsulate` are the same protocol on one
buffer: what PROTOCOL.md's worked examples are checked against, what the ICMP error translation
parses quotes with (:func:`parse_tunnel`), and what the tests and fuzz targets build real tunnel
packets with; they stay here, beside the pieces, so that the two cannot drift apart.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from mt6d_mp.core.crypto import (
    AAD_PREFIX_LEN,
    CRYPT_NONE,
    DSTOPTS_LEN,
    ENC_OPT_DATA_LEN,
    OPT_ENC,
    OPT_KEYX,
    OPT_PAD1,
    OPT_PADN,
    TAG_LEN,
    Opener,
    Sealer,
)
from mt6d_mp.core.crypto import (
    Buffer as Buffer,
)
from mt6d_mp.errors import PacketError

# --- IPv6 header (RFC 8200 section 3) ------------------------------------------------------------------
IPV6_HDR: Final = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, nh, hop limit, src, dst
IPV6_HDR_LEN: Final = 40
IP6_OFF_PLEN: Final = 4
IP6_OFF_NH: Final = 6
IP6_OFF_HLIM: Final = 7
IP6_OFF_SRC: Final = 8
IP6_OFF_DST: Final = 24
IP6_ADDR_LEN: Final = 16
IP6_MAX_PAYLOAD: Final = 0xFFFF  # jumbograms (RFC 2675) are not supported
INNER_KEEP: Final = 8  # inner bytes 0-7 travel, bytes 8-39 (the addresses) do not
STRIPPED: Final = 32  # the two addresses: a host's packet is this much longer than what travels
_U32: Final = struct.Struct("!I")
_U16: Final = struct.Struct("!H")

# --- protocol numbers (IANA "Assigned Internet Protocol Numbers") ----------------------------------------
IPPROTO_HOPOPTS: Final = 0
IPPROTO_UDP: Final = 17
IPPROTO_ROUTING: Final = 43
IPPROTO_FRAGMENT: Final = 44
IPPROTO_ICMPV6: Final = 58
# Neighbor Discovery (RFC 4861 section 4): router solicitation and advertisement, neighbour
# solicitation and advertisement, redirect. Link-local business: it never crosses the tunnel.
ND_FIRST: Final = 133
ND_LAST: Final = 137
IPPROTO_DSTOPTS: Final = 60

# --- UDP header (RFC 768) -------------------------------------------------------------------------------
UDP_HDR: Final = struct.Struct("!HHHH")  # sport, dport, length, checksum
UDP_HDR_LEN: Final = 8
UDP_OFF_LEN: Final = 4
UDP_OFF_CSUM: Final = 6
ICMP_OFF_CSUM: Final = 2

# --- overheads ------------------------------------------------------------------------------------------
# 40 (outer IPv6) + 8 (UDP) - 32 (inner addresses)
TUNNEL_OVERHEAD_PLAIN: Final = IPV6_HDR_LEN + UDP_HDR_LEN - 2 * IP6_ADDR_LEN
# + 16 (destination options) + 16 (AEAD tag)
TUNNEL_OVERHEAD_AEAD: Final = TUNNEL_OVERHEAD_PLAIN + DSTOPTS_LEN + TAG_LEN
IPV6_MIN_MTU: Final = 1280  # RFC 8200 section 5


def tunnel_overhead(crypt_type: int) -> int:
    """Bytes the tunnel adds to an inner packet for ``crypt_type`` (16 plain, 48 AEAD)."""
    return TUNNEL_OVERHEAD_PLAIN if crypt_type == CRYPT_NONE else TUNNEL_OVERHEAD_AEAD


def tunnel_mtu(link_mtu: int, crypt_type: int) -> int:
    """Largest inner packet that fits in one tunnel packet on a link of ``link_mtu``."""
    return link_mtu - tunnel_overhead(crypt_type)


# --- checksums (RFC 8200 section 8.1 pseudo-header, RFC 1071 arithmetic) ---------------------------------
def transport_checksum(src16: Buffer, dst16: Buffer, proto: int, segment: Buffer, csum_off: int) -> int:
    """Internet checksum over the IPv6 pseudo-header and ``segment``, ignoring its checksum field.

    Uses the RFC 1071 property that the one's complement sum of 16-bit words is congruent to the
    big-endian integer value of the (even-length) data modulo 0xFFFF, which lets ``int.from_bytes`` do
    the summing in C. Parts of even length can be summed separately.
    """
    n = len(segment)
    total = (
        int.from_bytes(src16, "big")
        + int.from_bytes(dst16, "big")
        + n  # upper-layer packet length (32 bits)
        + proto  # three zero bytes + next header
        + (int.from_bytes(segment, "big") << (8 if n & 1 else 0))  # pad odd length with one zero
    )
    if csum_off + 2 <= n:
        # The field is word aligned, so its contribution is its value: take it back out.
        total -= (segment[csum_off] << 8) | segment[csum_off + 1]
    folded = total % 0xFFFF
    # A nonzero sum congruent to 0 is 0xFFFF ("negative zero"); the pseudo-header is never all zero.
    return 0xFFFF - (folded or 0xFFFF)


def udp_checksum(src16: Buffer, dst16: Buffer, udp_segment: Buffer) -> int:
    """UDP checksum (RFC 768, RFC 8200 8.1) of ``udp_segment`` as if its checksum field were zero.

    A computed 0 is sent as 0xFFFF (RFC 8200 section 8.1: zero means "no checksum").
    """
    return transport_checksum(src16, dst16, IPPROTO_UDP, udp_segment, UDP_OFF_CSUM) or 0xFFFF


def icmpv6_checksum(src16: Buffer, dst16: Buffer, icmp_message: Buffer) -> int:
    """ICMPv6 checksum (RFC 4443 section 2.3) of ``icmp_message`` as if its checksum were zero."""
    return transport_checksum(src16, dst16, IPPROTO_ICMPV6, icmp_message, ICMP_OFF_CSUM)


def udp_header(sport: int, dport: int, payload_len: int) -> bytes:
    """UDP header with checksum 0, for a raw socket with ``IPV6_CHECKSUM`` = 6 (kernel fills it)."""
    length = UDP_HDR_LEN + payload_len
    if length > 0xFFFF:
        raise PacketError("too_big", f"UDP length {length}")
    return UDP_HDR.pack(sport, dport, length, 0)


# --- IPv6 header checks and extension header walk --------------------------------------------------------
def ipv6_payload_end(packet: Buffer, allow_truncated: bool = False) -> int:
    """Check the IPv6 fixed header; return the end of the packet by its payload length.

    Trailing bytes beyond the payload length (link padding) are ignored. With ``allow_truncated``
    (a packet quoted in an ICMPv6 error) a short buffer is accepted and its length returned.
    """
    if len(packet) < IPV6_HDR_LEN:
        raise PacketError("truncated", f"{len(packet)} bytes, no IPv6 header")
    if packet[0] >> 4 != 6:
        raise PacketError("bad_version", str(packet[0] >> 4))
    end = IPV6_HDR_LEN + ((packet[IP6_OFF_PLEN] << 8) | packet[IP6_OFF_PLEN + 1])
    if end > len(packet):
        if not allow_truncated:
            raise PacketError("truncated", f"payload length says {end}, have {len(packet)}")
        end = len(packet)
    return end


def _parse_options(buf: Buffer, start: int, end: int) -> tuple[int, int]:
    """Walk the TLV options of one destination options header (RFC 8200 section 4.2).

    Returns (offset of the MT6D encryption option or -1, offset of the key exchange option or -1), both
    absolute in ``buf``. Unknown options are skipped when their two high bits are 00; any other action
    means the packet must be discarded, reported as ``unknown_option``.
    """
    enc = keyx = -1
    off = start
    while off < end:
        otype = buf[off]
        if otype == OPT_PAD1:
            off += 1
            continue
        if off + 2 > end:
            raise PacketError("bad_option", "option header overruns its extension header")
        olen = buf[off + 1]
        nxt = off + 2 + olen
        if nxt > end:
            raise PacketError("bad_option", f"option 0x{otype:02x} overruns its extension header")
        if otype == OPT_ENC:
            if enc >= 0 or olen != ENC_OPT_DATA_LEN:
                raise PacketError("bad_option", "duplicate or malformed encryption option")
            enc = off
        elif otype == OPT_KEYX:
            if keyx >= 0:
                raise PacketError("bad_option", "duplicate key exchange option")
            keyx = off
        elif otype != OPT_PADN and otype >> 6:
            raise PacketError("unknown_option", f"0x{otype:02x}")
        off = nxt
    return enc, keyx


def walk_extension_headers(packet: Buffer, end: int) -> tuple[int, int, int, int, int]:
    """Follow the next-header chain from the IPv6 header to the upper-layer header.

    Returns (protocol, offset, dstopts offset, encryption option offset, key exchange option offset);
    the last three are -1 unless a destination options header directly precedes the upper layer and
    carries them. Options in any other destination options header must not be MT6D options.
    Fragments are refused (``fragment``): tunnel packets are never fragmented, and the pieces cannot
    be checked one by one.
    """
    nh = packet[IP6_OFF_NH]
    off = IPV6_HDR_LEN
    dst = enc = keyx = -1
    while True:
        if nh == IPPROTO_FRAGMENT:
            raise PacketError("fragment")
        if nh not in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
            return nh, off, dst, enc, keyx
        if nh == IPPROTO_HOPOPTS and off != IPV6_HDR_LEN:
            # RFC 8200 section 4.1: hop-by-hop options only directly after the IPv6 header.
            raise PacketError("bad_ext_header", "hop-by-hop options not first")
        if off + 2 > end:
            raise PacketError("truncated", "extension header")
        nxt = off + ((packet[off + 1] + 1) << 3)
        if nxt > end:
            raise PacketError("truncated", "extension header overruns the packet")
        if enc >= 0 or keyx >= 0:
            raise PacketError("bad_option", "MT6D option not in the last destination options header")
        dst = -1
        if nh == IPPROTO_DSTOPTS:
            enc, keyx = _parse_options(packet, off + 2, nxt)
            dst = off
        nh = packet[off]
        off = nxt


_FRAG_HDR: Final = struct.Struct("!BBHI")  # next header, reserved, offset << 3 | M, identification


def split_fragment(packet: Buffer, mtu: int) -> list[bytes] | None:
    """Cut a host's IPv6 *fragment* that is larger than ``mtu`` into smaller fragments of the same
    datagram (same identification, offsets and the M flag adjusted), or None if ``packet`` is not
    a fragment or cannot be cut.

    A fragmenting host sizes its fragments to the link (1500) before it knows the tunnel's MTU.
    Answering Packet Too Big would lose that datagram (UDP does not resend it: a large DNS answer,
    say); the receiving host reassembles fragments by offset, so smaller pieces of a fragment are
    as good as the fragment. Packets that are not fragments still get Packet Too Big. The
    unfragmentable part (the IPv6 header and any hop-by-hop, routing or destination options before
    the fragment header, RFC 8200 4.5) is repeated in every piece.
    """
    end = ipv6_payload_end(packet)
    nh, off = packet[IP6_OFF_NH], IPV6_HDR_LEN
    while nh in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
        if off + 2 > end:
            return None
        nh, off = packet[off], off + ((packet[off + 1] + 1) << 3)
    if nh != IPPROTO_FRAGMENT or off + _FRAG_HDR.size > end:
        return None
    nxt, _, field, ident = _FRAG_HDR.unpack_from(packet, off)
    start, more = field & ~7, field & 1  # the offset (in units of 8 bytes, shifted by 3: bytes)
    data = memoryview(packet)[off + _FRAG_HDR.size : end]
    step = (mtu - off - _FRAG_HDR.size) & ~7
    if step <= 0 or len(data) <= step:
        return None
    mv = memoryview(packet)
    pieces = []
    for k in range(0, len(data), step):
        chunk = data[k : k + step]
        last = k + step >= len(data)
        header = bytearray(mv[:off])
        _U16.pack_into(header, IP6_OFF_PLEN, off - IPV6_HDR_LEN + _FRAG_HDR.size + len(chunk))
        frag = _FRAG_HDR.pack(nxt, 0, (start + k) | (more if last else 1), ident)
        pieces.append(b"".join((header, frag, chunk)))
    return pieces


# --- the tunnel view -----------------------------------------------------------------------------------
class TunnelView(NamedTuple):
    """Parsed outer headers of a tunnel packet; offsets index the buffer given to parse_tunnel."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    hop_limit: int
    traffic_class: int
    flow_label: int
    udp_offset: int
    udp_length: int  # from the UDP header; with a truncated quote it may exceed the buffer
    payload_offset: int
    payload_end: int
    dstopts: bytes | None  # the destination options header before UDP (16 bytes when MT6D sends it)
    enc_offset: int  # offset of the encryption option inside ``dstopts``, or -1
    alg: int  # encryption option fields; 0 when absent
    key_phase: int
    lane: int
    counter: int
    keyx: bytes | None  # raw data of the key exchange option (0x3E), not interpreted


_ENC_FIELDS = struct.Struct("!BBHQ")


def parse_tunnel(packet: Buffer, allow_truncated: bool = False) -> TunnelView:
    """Parse the outer headers of a tunnel packet; raise PacketError on anything malformed.

    Checks the IPv6 version, payload length against the buffer (``truncated``; trailing bytes beyond
    the payload length are ignored), every extension header, and that the UDP length equals what
    remains of the IPv6 payload (``bad_udp_length``). With ``allow_truncated`` (a quote inside an
    ICMPv6 error) only the headers up to and including UDP must be present.
    """
    end = ipv6_payload_end(packet, allow_truncated)
    proto, udp, dst_off, enc, keyx = walk_extension_headers(packet, end)
    if proto != IPPROTO_UDP:
        raise PacketError("no_udp", f"upper layer {proto}")
    payload = udp + UDP_HDR_LEN
    if payload > end:
        raise PacketError("truncated", "UDP header")
    sport, dport, udp_len, _ = UDP_HDR.unpack_from(packet, udp)
    if allow_truncated:
        if udp_len < UDP_HDR_LEN or udp + udp_len < end:
            raise PacketError("bad_udp_length", str(udp_len))
    elif udp + udp_len != end:
        raise PacketError("bad_udp_length", f"UDP says {udp_len}, IPv6 leaves {end - udp}")
    vtcfl = _U32.unpack_from(packet, 0)[0]
    dstopts = None if dst_off < 0 else bytes(packet[dst_off:udp])
    if enc >= 0:
        alg, phase, lane, counter = _ENC_FIELDS.unpack_from(packet, enc + 2)
        enc -= dst_off
    else:
        alg = phase = lane = counter = 0
    keyx_data = None if keyx < 0 else bytes(packet[keyx + 2 : keyx + 2 + packet[keyx + 1]])
    return TunnelView(
        bytes(packet[IP6_OFF_SRC:IP6_OFF_DST]),
        bytes(packet[IP6_OFF_DST:IPV6_HDR_LEN]),
        sport,
        dport,
        packet[IP6_OFF_HLIM],
        (vtcfl >> 20) & 0xFF,
        vtcfl & 0xFFFFF,
        udp,
        udp_len,
        payload,
        end if allow_truncated else udp + udp_len,
        dstopts,
        enc,
        alg,
        phase,
        lane,
        counter,
        keyx_data,
    )


# --- encapsulation ---------------------------------------------------------------------------------------
def _check_ipv6(packet: Buffer, header_len: int) -> None:
    """Version 6, and the payload length field equals what follows a header of ``header_len``
    bytes (40 for a host's packet, INNER_KEEP for one without its addresses)."""
    n = len(packet)
    if n < header_len or packet[0] >> 4 != 6:
        raise PacketError("bad_inner", "not an IPv6 packet")
    if ((packet[IP6_OFF_PLEN] << 8) | packet[IP6_OFF_PLEN + 1]) != n - header_len:
        raise PacketError("bad_inner", "payload length does not match")


def check_inner(inner: Buffer) -> None:
    _check_ipv6(inner, IPV6_HDR_LEN)


def strip_addresses(inner: Buffer) -> bytes:
    """inner[0:8] + inner[40:]: the inner packet without its addresses, in one copy."""
    mv = memoryview(inner)
    return b"".join((mv[:INNER_KEEP], mv[IPV6_HDR_LEN:]))


def aad_prefix(src16: bytes, dst16: bytes, sport: int, dport: int) -> bytes:
    """The first 36 bytes of a tunnel packet's associated data: its outer addresses and ports."""
    return src16 + dst16 + _U16.pack(sport) + _U16.pack(dport)


def tunnel_pieces(
    inner: Buffer,
    src16: bytes,
    dst16: bytes,
    sport: int,
    dport: int,
    sealer: Sealer | None,
) -> tuple[bytes, bytes, bytes]:
    """(dstopts or b"", UDP header with checksum 0, payload) for a raw UDP socket.

    The worker passes the UDP header and payload as the iovec of ``sendmsg``, the destination options
    as ``IPV6_DSTOPTS`` ancillary data, and lets the kernel fill the UDP checksum (``IPV6_CHECKSUM``
    offset 6, RFC 3542 section 3.1).
    """
    check_inner(inner)
    plain = strip_addresses(inner)
    if sealer is None or sealer.crypt_type == CRYPT_NONE:
        return b"", udp_header(sport, dport, len(plain)), plain
    dstopts, payload = sealer.seal(plain, aad_prefix(src16, dst16, sport, dport))
    return dstopts, udp_header(sport, dport, len(payload)), payload


def outer_traffic_class(inner: Buffer) -> int:
    """The inner packet's DSCP with the ECN field cleared (Not-ECT).

    The DSCP is copied so that the network treats a tunnel packet like the packet it carries.
    ECN is not: the receiving gateway does not look at the outer ECN field, so a router's
    Congestion Experienced mark on the outer header would never reach the host, and RFC 6040
    (section 4.1, compatibility mode) then requires an outer Not-ECT, which makes a congested
    router drop instead of mark.
    """
    return (((inner[0] & 0x0F) << 4) | (inner[1] >> 4)) & 0xFC


def encapsulate(
    inner: Buffer,
    src16: bytes,
    dst16: bytes,
    sport: int,
    dport: int,
    sealer: Sealer | None,
    flow_label: int = 0,
) -> bytes:
    """Complete tunnel packet with a correct UDP checksum.

    Outer hop limit = inner hop limit (the tunnel packet expires where the inner one would have)
    and outer traffic class = ``outer_traffic_class(inner)`` (the inner DSCP, ECN Not-ECT).
    """
    if len(src16) != IP6_ADDR_LEN or len(dst16) != IP6_ADDR_LEN:
        raise ValueError("outer addresses must be 16 bytes")
    dstopts, udp_hdr, payload = tunnel_pieces(inner, src16, dst16, sport, dport, sealer)
    plen = len(dstopts) + len(udp_hdr) + len(payload)
    if plen > IP6_MAX_PAYLOAD:
        raise PacketError("too_big", f"outer payload {plen}")
    tclass = outer_traffic_class(inner)
    nh = IPPROTO_DSTOPTS if dstopts else IPPROTO_UDP
    out = bytearray(IPV6_HDR_LEN + plen)
    IPV6_HDR.pack_into(
        out,
        0,
        (6 << 28) | (tclass << 20) | (flow_label & 0xFFFFF),
        plen,
        nh,
        inner[IP6_OFF_HLIM],
        src16,
        dst16,
    )
    udp = IPV6_HDR_LEN + len(dstopts)
    out[IPV6_HDR_LEN:udp] = dstopts
    out[udp : udp + UDP_HDR_LEN] = udp_hdr
    out[udp + UDP_HDR_LEN :] = payload
    csum = udp_checksum(src16, dst16, memoryview(out)[udp:])
    _U16.pack_into(out, udp + UDP_OFF_CSUM, csum)
    return bytes(out)


# --- decapsulation ---------------------------------------------------------------------------------------
def check_inner_plain(plain: Buffer) -> None:
    """Validate a decrypted inner packet without addresses: IPv6 version and payload length."""
    _check_ipv6(plain, INNER_KEEP)


def open_tunnel(packet: Buffer, opener: Opener | None) -> tuple[TunnelView, bytes | memoryview]:
    """Parse, authenticate and decrypt; return the view and the inner packet without addresses.

    Without encryption the UDP checksum is verified (``bad_checksum``); the kernel has not checked it
    yet when the packet is taken from a netfilter queue. With encryption the AEAD tag covers more.
    A plain packet is refused when the opener expects encryption (``not_encrypted``) and an encrypted
    one when it does not (``alg_mismatch``): nobody can downgrade a stream.
    """
    view = parse_tunnel(packet)
    mv = memoryview(packet)
    body = mv[view.payload_offset : view.payload_end]
    encrypted = opener is not None and opener.crypt_type != CRYPT_NONE
    if view.enc_offset < 0:
        if encrypted:
            raise PacketError("not_encrypted")
        udp_seg = mv[view.udp_offset : view.payload_end]
        stored = (udp_seg[UDP_OFF_CSUM] << 8) | udp_seg[UDP_OFF_CSUM + 1]
        if stored != udp_checksum(view.src, view.dst, udp_seg):
            raise PacketError("bad_checksum", "UDP")
        plain: bytes | memoryview = body
    else:
        if opener is None or not encrypted:
            raise PacketError("alg_mismatch", "encrypted packet, encryption off")
        aad = bytearray(AAD_PREFIX_LEN)
        aad[:32] = mv[IP6_OFF_SRC:IPV6_HDR_LEN]
        aad[32:] = mv[view.udp_offset : view.udp_offset + 4]
        assert view.dstopts is not None  # enc_offset >= 0 implies a dstopts header
        plain = opener.open(aad, view.dstopts, body, view.enc_offset)
    check_inner_plain(plain)
    return view, plain


def open_payload(
    opener: Opener | None, aad_prefix36: bytes, dstopts: bytes | None, payload: Buffer
) -> Buffer:
    """Authenticate and decrypt a tunnel payload received on a UDP socket.

    The kernel has already walked the extension headers and checked the UDP checksum; it hands
    over the destination options header (``IPV6_RECVDSTOPTS``, RFC 3542 section 4) and the UDP
    payload. ``aad_prefix36`` is the route's outer source, destination and ports, known from the
    socket the datagram arrived on. Returns the inner packet without its addresses.
    """
    encrypted = opener is not None and opener.crypt_type != CRYPT_NONE
    if dstopts is None:
        if encrypted:
            raise PacketError("not_encrypted")
        check_inner_plain(payload)
        return payload
    if opener is None or not encrypted:
        raise PacketError("alg_mismatch", "encrypted packet, encryption off")
    n = len(dstopts)
    if n < 8 or n != (dstopts[1] + 1) * 8:
        raise PacketError("bad_ext_header", "destination options length")
    if n == DSTOPTS_LEN and dstopts[2] == OPT_ENC and dstopts[3] == ENC_OPT_DATA_LEN:
        enc = 2  # what our senders always send: the option right after the header
    else:
        enc = _parse_options(dstopts, 2, n)[0]
        if enc < 0:
            raise PacketError("not_encrypted")
    plain = opener.open(aad_prefix36, dstopts, payload, enc)
    check_inner_plain(plain)
    return plain


def decapsulate_pieces(
    packet: Buffer, opener: Opener | None, true_src16: bytes, true_dst16: bytes
) -> tuple[Buffer, bytes, bytes, Buffer]:
    """The inner packet as (bytes 0-7, true source, true destination, rest) for scatter/gather.

    Without encryption the first and last pieces are views into ``packet``: keep it unchanged until
    they are sent.
    """
    plain = memoryview(open_tunnel(packet, opener)[1])
    return plain[:INNER_KEEP], true_src16, true_dst16, plain[INNER_KEEP:]


def decapsulate(packet: Buffer, opener: Opener | None, true_src16: bytes, true_dst16: bytes) -> bytes:
    """The inner packet: plain[0:8] + true source + true destination + plain[8:]."""
    return b"".join(decapsulate_pieces(packet, opener, true_src16, true_dst16))


def restore_inner(plain: Buffer, true_src16: bytes, true_dst16: bytes) -> bytes:
    """plain[0:8] + true source + true destination + plain[8:] (no validation)."""
    mv = memoryview(plain)
    return b"".join((mv[:INNER_KEEP], true_src16, true_dst16, mv[INNER_KEEP:]))
