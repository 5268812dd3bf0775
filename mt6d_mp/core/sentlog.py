"""What a gateway remembers of the tunnel packets it sent, to check the quote of an ICMPv6 error.

A router's error about a tunnel packet (Packet Too Big, Time Exceeded, ...) quotes the packet,
cut to fit 1280 bytes, so the AEAD tag is gone and the quote cannot be authenticated. AES-GCM
and ChaCha20 are stream ciphers: whoever flips a bit of the ciphertext flips the same bit of the
plaintext the gateway would decrypt. An error is therefore translated for the host only when its
quote matches, byte for byte, a packet the gateway really sent; the stream worker records, for
each packet it sends, the destination options (algorithm, phase, lane and counter) and the first
:data:`SENT_PREFIX` bytes of the UDP payload, and only those bytes are ever decrypted from a
quote (PROTOCOL.md 3.1).

Records live in :data:`SENT_SLOTS` slots. A sealed packet goes to the slot its counter names, so
the check is one comparison; a packet without options (crypt type none) goes to the next slot in
turn and is looked up by search. Pure code: the shared memory is in ``mt6d_mp.io.sentring``.
"""

from __future__ import annotations

import struct
from typing import Final

from mt6d_mp.core.crypto import DSTOPTS_LEN, ENC_OFF_COUNTER, ENC_OPT_OFFSET
from mt6d_mp.core.packet import Buffer

SENT_SLOTS: Final = 4096  # at 100k packets/s: the last 41 ms, longer than most paths' RTT
SENT_PREFIX: Final = 64  # payload bytes kept: the inner header and 56 bytes of its transport
RECORD: Final = struct.Struct(f"!{DSTOPTS_LEN}sH{SENT_PREFIX}s6x")  # options, length, prefix
RECORD_LEN: Final = RECORD.size  # 88
COUNTER_AT: Final = ENC_OPT_OFFSET + ENC_OFF_COUNTER  # where a sealed packet's counter is
_COUNTER: Final = struct.Struct("!Q")


def sent_record(dstopts: Buffer, prefix: Buffer) -> bytes:
    """The record of a packet with these options (``b""`` if none) whose payload starts with
    ``prefix`` (at most :data:`SENT_PREFIX` bytes: the whole payload if it is shorter)."""
    if len(dstopts) not in (0, DSTOPTS_LEN) or len(prefix) > SENT_PREFIX:
        raise ValueError("options header or prefix of the wrong size")
    return RECORD.pack(bytes(dstopts), len(prefix), bytes(prefix))


def sent_slot(dstopts: Buffer) -> int:
    """The slot of a sealed packet (its counter modulo the ring), or -1 without options."""
    if len(dstopts) != DSTOPTS_LEN:
        return -1
    counter: int = _COUNTER.unpack_from(dstopts, COUNTER_AT)[0]
    return counter % SENT_SLOTS
