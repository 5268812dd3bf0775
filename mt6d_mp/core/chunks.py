"""Messages in chunks (docs/PROTOCOL.md 1.6): a large inner packet sealed once, sent in pieces.

A large inner packet (a TCP super-packet that a host's TSO or a gateway's GRO built, up to 64 KB) is
sealed once, as a message, and the ciphertext travels in chunks: each datagram's UDP payload is a
2-byte chunk header (index, count) and one slice of the message. All chunks of a message carry the
same destination options (the counter is the message's), so one sendmsg with UDP_SEGMENT sends them
all, and the receiver joins them back (:class:`Reassembly`) and opens the message once.

Sending: :func:`chunk_segment_size` for the route's MTU, :func:`seal_message`, :func:`chunk_iov`.
Receiving: :meth:`Reassembly.add` per chunk, then the opener on the whole message. Pure code.
"""

from __future__ import annotations

from typing import Final

from mt6d_mp.core.crypto import DSTOPTS_LEN, Sealer
from mt6d_mp.core.packet import (
    IPV6_HDR_LEN,
    TUNNEL_OVERHEAD_AEAD,
    UDP_HDR_LEN,
    Buffer,
    aad_prefix,
    check_inner,
    strip_addresses,
)
from mt6d_mp.errors import PacketError

CHUNK_HDR_LEN: Final = 2
CHUNK_HEADERS_LEN: Final = IPV6_HDR_LEN + DSTOPTS_LEN + UDP_HDR_LEN  # before a chunk's payload
MAX_CHUNKS: Final = 64
# CHUNK_HEADERS[count][index]: every chunk header, built once.
CHUNK_HEADERS: Final = tuple(tuple(bytes((i, n)) for i in range(n)) for n in range(MAX_CHUNKS + 1))


def chunk_segment_size(tunnel_mtu_: int) -> int:
    """UDP payload of each chunk datagram: the datagram fills the link MTU exactly.

    The link MTU is ``tunnel_mtu + 48`` (TUNNEL_OVERHEAD_AEAD) and a chunk datagram has
    CHUNK_HEADERS_LEN (40 + 16 + 8) bytes of headers: ``tunnel_mtu - 16`` bytes, 2 of chunk
    header and ``tunnel_mtu - 18`` of message.
    """
    return tunnel_mtu_ + TUNNEL_OVERHEAD_AEAD - CHUNK_HEADERS_LEN


def seal_message(
    inner: Buffer,
    src16: bytes,
    dst16: bytes,
    sport: int,
    dport: int,
    sealer: Sealer,
) -> tuple[bytes, bytes]:
    """(dstopts with ALG_CHUNKED, the message: ciphertext || tag) for ``chunk_iov``."""
    check_inner(inner)
    return sealer.seal(strip_addresses(inner), aad_prefix(src16, dst16, sport, dport), chunked=True)


def chunk_iov(message: bytes, segment: int) -> list[Buffer]:
    """The UDP payloads of all chunks of ``message`` as one iovec: header, slice, header, ...

    Every chunk's UDP payload is ``segment`` bytes except the last, so the list can go out in one
    ``sendmsg`` with ``UDP_SEGMENT`` = ``segment``. The split is not authenticated (the receiver
    joins the slices back before opening), so a message can be cut again, smaller, and resent.
    """
    step = segment - CHUNK_HDR_LEN
    count = -(-len(message) // step) if step > 0 else 0
    if not 2 <= count <= MAX_CHUNKS:
        raise PacketError("chunk_count", f"{count} chunks of {segment} bytes")
    mv = memoryview(message)
    iov: list[Buffer] = []
    for i, hdr in enumerate(CHUNK_HEADERS[count]):
        iov.append(hdr)
        iov.append(mv[i * step : (i + 1) * step])
    return iov


class Reassembly:
    """Chunks of messages not yet complete, for one route; the oldest message goes first when full.

    Nothing here is authenticated: the message is opened (and its counter checked against the
    replay window) once all chunks are in, and a forged or altered chunk makes that fail. A chunk
    only ever takes a slot of its own (index, count) under its own options, so forged chunks can
    at worst evict partial messages, as dropping them on the path would.
    """

    __slots__ = ("evicted", "limit", "partial")

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self.partial: dict[bytes, list[Buffer | None]] = {}
        self.evicted = 0

    def add(self, dstopts: bytes, payload: Buffer) -> bytes | None:
        """Store one chunk; return the whole message once its last missing chunk arrives."""
        if len(payload) <= CHUNK_HDR_LEN:
            raise PacketError("bad_chunk", "empty chunk")
        index, count = payload[0], payload[1]
        if not 2 <= count <= MAX_CHUNKS or index >= count:
            raise PacketError("bad_chunk", f"chunk {index} of {count}")
        parts = self.partial.get(dstopts)
        if parts is None:
            if len(self.partial) >= self.limit:
                del self.partial[next(iter(self.partial))]
                self.evicted += 1
            parts = self.partial[dstopts] = [None] * count
        elif len(parts) != count:
            raise PacketError("bad_chunk", "chunk count differs within a message")
        if parts[index] is not None:
            raise PacketError("chunk_duplicate", f"chunk {index}")
        parts[index] = payload[CHUNK_HDR_LEN:]
        if None in parts:
            return None
        del self.partial[dstopts]
        return b"".join(parts)  # type: ignore[arg-type]  # no None left
