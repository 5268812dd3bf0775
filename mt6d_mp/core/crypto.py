"""Data-path cryptography: direction keys, the MT6D encryption option, sealing, opening, replay window.

Pure code: stdlib and ``cryptography`` only, no I/O. The wire layout is specified byte by byte in
``docs/PROTOCOL.md``; this module owns the 16-byte destination options header that carries the MT6D
encryption option (type 0x1E) because the AEAD nonce and associated data are built from it.

Why an AEAD with a counter nonce: the published MT6D used AES-CBC without authentication, so anyone who
can inject packets can tamper with them. Here every tunnel payload is AES-256-GCM or ChaCha20-Poly1305
(RFC 8439) sealed under a per-direction key (so the two gateways, which share one session key, never use
the same (key, nonce) pair), with the outer addresses, UDP ports and the option header as associated data,
and a sliding replay window that is only advanced by packets that authenticated (as WireGuard and IPsec
do, RFC 4303 section 3.4.3).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mt6d_mp.core import crypt_names as names
from mt6d_mp.errors import PacketError

Buffer = bytes | bytearray | memoryview  # what the packet code accepts, defined once here

# --- algorithm identifiers (the "alg" byte of the encryption option) ---------------------------------
CRYPT_NONE: Final = 0
CRYPT_AES_256_GCM: Final = 1
CRYPT_CHACHA20_POLY1305: Final = 2
CRYPT_TYPES: Final[dict[str, int]] = {
    names.AES_256_GCM: CRYPT_AES_256_GCM,
    names.CHACHA20_POLY1305: CRYPT_CHACHA20_POLY1305,
    names.NONE: CRYPT_NONE,
}

KEY_LEN: Final = 32
TAG_LEN: Final = 16
NONCE_LEN: Final = 12
# outer src (16) + outer dst (16) + UDP source port (2) + UDP destination port (2)
AAD_PREFIX_LEN: Final = 36
HKDF_SALT: Final = b"mt6d-mp v1"
COUNTER_LIMIT: Final = 2**64 - 1  # never used as a nonce: sealing refuses once it is reached

# --- destination options header with the MT6D encryption option (RFC 8200 4.2, 4.6) -------------------
IPPROTO_UDP: Final = 17
OPT_PAD1: Final = 0x00
OPT_PADN: Final = 0x01
# 0x1E = 0b00_0_11110, RFC 4727's experimental destination option with action 00: a node that does
# not know it skips it. The MT6D papers used 219 (action 11: discard and send Parameter Problem),
# which makes the receiving gateway's own kernel drop every tunnel packet once it parses the header
# itself, as it does when tunnel packets are received on a UDP socket rather than a queue. C bit 0:
# the option data does not change en route (it is covered by the AEAD's associated data anyway).
OPT_ENC: Final = 0x1E
# 0x3E = 0b00_1_11110, RFC 4727's experimental type with action 00 and C bit 1: reserved for the
# in-band key exchange option; parsed, not used yet.
OPT_KEYX: Final = 0x3E
ENC_OPT_DATA_LEN: Final = 12
DSTOPTS_LEN: Final = 16
DSTOPTS_HDREXTLEN: Final = 1  # (1 + 1) * 8 = 16 bytes
# nh, hdrextlen, opt type, opt data len, alg, key_phase, lane, counter
DSTOPTS: Final = struct.Struct("!BBBBBBHQ")
# Offsets inside an encryption option (relative to its type byte).
ENC_OFF_ALG: Final = 2
# High bit of the alg byte: the payload is one chunk of a message (docs/PROTOCOL.md 1.6), i.e. a
# large inner packet sealed once and carried in several datagrams. The byte is associated data, so
# a chunk can never be taken for a whole packet or the reverse.
ALG_CHUNKED: Final = 0x80
ENC_OFF_PHASE: Final = 3
ENC_OFF_LANE: Final = 4
ENC_OFF_COUNTER: Final = 6
ENC_OPT_LEN: Final = 2 + ENC_OPT_DATA_LEN
# In the Sealer's own 16-byte header the option starts at byte 2.
ENC_OPT_OFFSET: Final = 2
_COUNTER = struct.Struct("!Q")
_ENC_FIELDS = struct.Struct("!BBHQ")  # alg, key_phase, lane, counter
_NONCE_PAD: Final = b"\x00\x00"
# AES-GCM keystream for the plaintext starts at counter block J0 + 1 = nonce || 0x00000002
# (NIST SP 800-38D section 7.1, 96-bit IV case).
_GCM_FIRST_CTR: Final = b"\x00\x00\x00\x02"
# ChaCha20-Poly1305 encrypts the plaintext with block counter 1 (RFC 8439 section 2.8); cryptography's
# ChaCha20 takes counter (32-bit little endian) || nonce.
_CHACHA_FIRST_CTR: Final = b"\x01\x00\x00\x00"

DEFAULT_REPLAY_WINDOW: Final = 8192
MIN_REPLAY_WINDOW: Final = 2048


def derive_direction_key(
    session_key: bytes, sender_true16: bytes, receiver_true16: bytes, phase: int = 0
) -> bytes:
    """Key for packets from ``sender`` to ``receiver``: HKDF-SHA256 (RFC 5869).

    ikm = session key, salt = ``b"mt6d-mp v1"``, info = ``b"data" + phase byte + sender + receiver``.
    The two directions get different keys, so the two gateways, which both count from 0, never reuse a
    (key, nonce) pair although they share the session key.
    """
    if len(sender_true16) != 16 or len(receiver_true16) != 16:
        raise ValueError("true addresses must be 16 bytes")
    if not 0 <= phase <= 255:
        raise ValueError("phase must fit in one byte")
    if not session_key:
        raise ValueError("empty session key")
    info = b"data" + bytes((phase,)) + bytes(sender_true16) + bytes(receiver_true16)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=HKDF_SALT, info=info)
    return hkdf.derive(bytes(session_key))


def _make_aead(crypt_type: int, key: bytes) -> AESGCM | ChaCha20Poly1305 | None:
    if crypt_type == CRYPT_NONE:
        return None
    if len(key) != KEY_LEN:
        raise ValueError("direction key must be 32 bytes")
    if crypt_type == CRYPT_AES_256_GCM:
        return AESGCM(key)
    if crypt_type == CRYPT_CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown crypt type {crypt_type}")


def _stream_decrypt(crypt_type: int, key: bytes, nonce12: bytes, data: Buffer) -> bytes:
    """Run the AEAD's underlying stream cipher over ``data`` (no authentication)."""
    if crypt_type == CRYPT_AES_256_GCM:
        ctr = Cipher(algorithms.AES(key), modes.CTR(nonce12 + _GCM_FIRST_CTR))
        return ctr.decryptor().update(bytes(data))
    if crypt_type == CRYPT_CHACHA20_POLY1305:
        chacha = Cipher(algorithms.ChaCha20(key, _CHACHA_FIRST_CTR + nonce12), mode=None)
        return chacha.decryptor().update(bytes(data))
    raise PacketError("unknown_alg", str(crypt_type))


class PrefixDecryptor(Protocol):
    """Anything that can decrypt the quoted prefix of a packet it knows the key of."""

    @property
    def crypt_type(self) -> int: ...

    def decrypt_unauthenticated_prefix(
        self, dstopts: Buffer, ciphertext_prefix: Buffer, enc_offset: int = ENC_OPT_OFFSET
    ) -> bytes: ...


def _enc_fields(dstopts: Buffer, enc_offset: int) -> tuple[int, int, int, int]:
    """(alg, key_phase, lane, counter) of the encryption option at ``enc_offset`` in ``dstopts``."""
    if enc_offset < 2 or enc_offset + ENC_OPT_LEN > len(dstopts):
        raise PacketError("bad_option", "encryption option outside the header")
    if dstopts[enc_offset] != OPT_ENC or dstopts[enc_offset + 1] != ENC_OPT_DATA_LEN:
        raise PacketError("bad_option", "not an encryption option")
    fields: tuple[int, int, int, int] = _ENC_FIELDS.unpack_from(dstopts, enc_offset + ENC_OFF_ALG)
    return fields


def _nonce(dstopts: Buffer, enc_offset: int) -> bytes:
    # nonce = 0x0000 || lane (2) || counter (8): lane and counter are adjacent on the wire.
    start = enc_offset + ENC_OFF_LANE
    return _NONCE_PAD + bytes(dstopts[start : start + 10])


def _decrypt_prefix(
    crypt_type: int, key: bytes, dstopts: Buffer, ciphertext_prefix: Buffer, enc_offset: int
) -> bytes:
    """Decrypt a ciphertext prefix without its tag, e.g. a packet quoted in an ICMPv6 error.

    RFC 4443 2.4(c) cuts the quote so that the error fits in 1280 bytes, so the tag is usually
    missing and nothing can be authenticated: the result may have been altered by anyone on the
    path, unless the caller checked the quote against what was sent (mt6d_mp.core.sentlog). Use
    it only to give a host an error about its own packet, never to accept data.
    """
    alg = _enc_fields(dstopts, enc_offset)[0]
    if alg & ALG_CHUNKED:
        raise PacketError("chunk_quote", "a chunk does not start with the inner packet")
    if alg != crypt_type:
        raise PacketError("alg_mismatch", f"got {alg}, expected {crypt_type}")
    return _stream_decrypt(alg, key, _nonce(dstopts, enc_offset), ciphertext_prefix)


class Sealer:
    """Seals tunnel payloads for one direction (one key) and one lane (one sender process).

    The counter is the nonce: one Sealer per (key, lane), never two, and a Sealer made again for
    the same key (a restarted worker) must start past every counter the old one used; workers
    start from the current time in microseconds (see workers.stream.initial_counter).
    """

    __slots__ = ("_aad", "_aead", "_counter", "_dstopts", "_key", "crypt_type", "lane", "phase")

    def __init__(
        self, crypt_type: int, key: bytes, lane: int = 0, phase: int = 0, counter: int = 0
    ) -> None:
        if not 0 <= counter < COUNTER_LIMIT:
            raise ValueError("counter must fit in 64 bits")
        if not 0 <= lane <= 0xFFFF:
            raise ValueError("lane must fit in 16 bits")
        if not 0 <= phase <= 0xFF:
            raise ValueError("phase must fit in 8 bits")
        self._aead = _make_aead(crypt_type, key)
        self._key = bytes(key)
        self.crypt_type = crypt_type
        self.lane = lane
        self.phase = phase
        self._counter = counter
        # Preallocated header; only the counter is rewritten per packet.
        self._dstopts = bytearray(DSTOPTS_LEN)
        DSTOPTS.pack_into(
            self._dstopts,
            0,
            IPPROTO_UDP,
            DSTOPTS_HDREXTLEN,
            OPT_ENC,
            ENC_OPT_DATA_LEN,
            crypt_type,
            phase,
            lane,
            0,
        )
        # Preallocated associated data: prefix (36) || dstopts (16).
        self._aad = bytearray(AAD_PREFIX_LEN + DSTOPTS_LEN)

    def __repr__(self) -> str:
        return f"Sealer(crypt_type={self.crypt_type}, lane={self.lane}, phase={self.phase})"

    __str__ = __repr__

    @property
    def counter(self) -> int:
        """The counter the next sealed packet will carry."""
        return self._counter

    @property
    def overhead(self) -> int:
        """Bytes this sealer adds to the plaintext, header included (0 or 16 + 16)."""
        return 0 if self._aead is None else DSTOPTS_LEN + TAG_LEN

    def seal(self, plain: Buffer, aad_prefix36: Buffer, chunked: bool = False) -> tuple[bytes, bytes]:
        """Return (dstopts header, ciphertext || tag); ``(b"", plain)`` for crypt type none.

        ``chunked`` sets ALG_CHUNKED: the result will travel as a message in chunks.
        """
        aead = self._aead
        if aead is None:
            return b"", bytes(plain)
        counter = self._counter
        if counter >= COUNTER_LIMIT:
            raise PacketError("counter_exhausted", "rekey required")
        if len(aad_prefix36) != AAD_PREFIX_LEN:
            raise ValueError("associated data prefix must be 36 bytes")
        self._counter = counter + 1
        hdr = self._dstopts
        _COUNTER.pack_into(hdr, ENC_OPT_OFFSET + ENC_OFF_COUNTER, counter)
        hdr[ENC_OPT_OFFSET + ENC_OFF_ALG] = self.crypt_type | ALG_CHUNKED if chunked else self.crypt_type
        aad = self._aad
        aad[:AAD_PREFIX_LEN] = aad_prefix36
        aad[AAD_PREFIX_LEN:] = hdr
        nonce = _NONCE_PAD + hdr[ENC_OPT_OFFSET + ENC_OFF_LANE :]
        return bytes(hdr), aead.encrypt(nonce, plain, aad)

    def decrypt_unauthenticated_prefix(
        self, dstopts: Buffer, ciphertext_prefix: Buffer, enc_offset: int = ENC_OPT_OFFSET
    ) -> bytes:
        """Decrypt the quoted prefix of a packet this sealer sealed (see :func:`_decrypt_prefix`)."""
        return _decrypt_prefix(self.crypt_type, self._key, dstopts, ciphertext_prefix, enc_offset)


class ReplayWindow:
    """Sliding window of seen counters (RFC 4303 section 3.4.3, RFC 6479 without the ring).

    Bit ``i`` of the bitmap is set when counter ``top - i`` has been committed. Out of order delivery
    within ``size`` counters of the highest seen is accepted; duplicates and older counters are not.
    """

    __slots__ = ("_bits", "_mask", "_top", "size")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        if size < 1:
            raise ValueError("window size must be positive")
        self.size = size
        self._mask = (1 << size) - 1
        self._top = -1
        self._bits = 0

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, top={self._top})"

    @property
    def top(self) -> int:
        """The highest counter committed so far (-1 before the first)."""
        return self._top

    def resume_above(self, top: int) -> None:
        """Treat every counter up to ``top`` as seen (a restarted receiver's replay floor)."""
        if top > self._top:
            self._top = top
            self._bits = self._mask

    def check(self, counter: int) -> bool:
        """True when ``counter`` is new and inside the window; does not change the window."""
        top = self._top
        if counter > top:
            return True
        back = top - counter
        if back >= self.size:
            return False
        return not (self._bits >> back) & 1

    def commit(self, counter: int) -> None:
        """Record ``counter`` as seen; call only after :meth:`check` and authentication succeeded."""
        top = self._top
        if counter > top:
            shift = counter - top
            # Never shift by a huge amount: a jump of a window or more simply restarts the bitmap.
            self._bits = 1 if shift >= self.size else ((self._bits << shift) | 1) & self._mask
            self._top = counter
        else:
            back = top - counter
            if back < self.size:
                self._bits |= 1 << back


class Opener:
    """Opens tunnel payloads of one direction (one key), with one replay window per lane."""

    __slots__ = ("_aad", "_aead", "_key", "_windows", "crypt_type", "on_commit", "phase",
                 "window_size")

    def __init__(
        self,
        crypt_type: int,
        key: bytes,
        window_size: int = DEFAULT_REPLAY_WINDOW,
        phase: int = 0,
    ) -> None:
        if window_size < MIN_REPLAY_WINDOW:
            raise ValueError(f"replay window must be at least {MIN_REPLAY_WINDOW}")
        self._aead = _make_aead(crypt_type, key)
        self._key = bytes(key)
        self.crypt_type = crypt_type
        self.phase = phase
        self.window_size = window_size
        self._windows: dict[int, ReplayWindow] = {}
        self._aad = bytearray(AAD_PREFIX_LEN + DSTOPTS_LEN)
        # Called with (lane, new top) after every accepted packet, before it is returned: where
        # a worker journals its replay floor (mt6d_mp.io.journal).
        self.on_commit: Callable[[int, int], None] | None = None

    def __repr__(self) -> str:
        return (
            f"Opener(crypt_type={self.crypt_type}, phase={self.phase}, "
            f"window_size={self.window_size}, lanes={len(self._windows)})"
        )

    __str__ = __repr__

    def resume_above(self, lane: int, top: int) -> None:
        """Refuse every counter up to ``top`` on ``lane`` (see ReplayWindow.resume_above).

        A receiving worker that restarts would otherwise start with an empty window and accept
        one replay of any packet still on an accepted route.
        """
        window = self._windows.get(lane)
        if window is None:
            window = self._windows[lane] = ReplayWindow(self.window_size)
        window.resume_above(top)

    def open(
        self,
        aad_prefix36: Buffer,
        dstopts: Buffer | None,
        ciphertext: Buffer,
        enc_offset: int = ENC_OPT_OFFSET,
        chunked: bool = False,
    ) -> bytes:
        """Authenticate and decrypt; commit the counter to the lane's replay window only on success.

        ``chunked``: the ciphertext is a message reassembled from chunks, whose option must carry
        ALG_CHUNKED; a single packet's must not.

        ``dstopts`` is the whole destination options header that precedes UDP (it is associated data)
        and ``enc_offset`` the offset of the encryption option inside it. For crypt type none,
        ``dstopts`` must be None or empty and the payload is returned as is.
        """
        aead = self._aead
        if aead is None:
            if dstopts:
                raise PacketError("alg_mismatch", "encrypted packet, encryption off")
            return bytes(ciphertext)
        if not dstopts:
            raise PacketError("not_encrypted")
        alg, phase, lane, counter = _enc_fields(dstopts, enc_offset)
        if bool(alg & ALG_CHUNKED) != chunked:
            raise PacketError("chunk_mismatch", "chunk flag does not match how it arrived")
        alg &= ~ALG_CHUNKED
        if alg != self.crypt_type:
            if alg not in (CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305):
                raise PacketError("unknown_alg", str(alg))
            raise PacketError("alg_mismatch", f"got {alg}, expected {self.crypt_type}")
        if phase != self.phase:
            raise PacketError("key_phase", f"got {phase}, expected {self.phase}")
        if len(ciphertext) < TAG_LEN:
            raise PacketError("truncated", "ciphertext shorter than the tag")
        if len(aad_prefix36) != AAD_PREFIX_LEN:
            raise ValueError("associated data prefix must be 36 bytes")
        window = self._windows.get(lane)
        # Cheap early reject; the window is only changed after authentication below.
        if window is not None and not window.check(counter):
            raise PacketError("replay", f"lane {lane} counter {counter}")
        if len(dstopts) == DSTOPTS_LEN:
            aad: Buffer = self._aad
            self._aad[:AAD_PREFIX_LEN] = aad_prefix36
            self._aad[AAD_PREFIX_LEN:] = dstopts
        else:
            aad = bytes(aad_prefix36) + bytes(dstopts)
        try:
            plain = aead.decrypt(_nonce(dstopts, enc_offset), ciphertext, aad)
        except InvalidTag:
            raise PacketError("auth_failed") from None
        if window is None:
            window = self._windows[lane] = ReplayWindow(self.window_size)
        elif not window.check(counter):  # pragma: no cover - single-threaded: cannot change
            raise PacketError("replay", f"lane {lane} counter {counter}")
        window.commit(counter)
        if self.on_commit is not None:
            self.on_commit(lane, window.top)
        return plain

    def decrypt_unauthenticated_prefix(
        self, dstopts: Buffer, ciphertext_prefix: Buffer, enc_offset: int = ENC_OPT_OFFSET
    ) -> bytes:
        """Decrypt a ciphertext prefix without its tag, e.g. a packet quoted in an ICMPv6 error
        (see :func:`_decrypt_prefix`). The replay window is not touched."""
        return _decrypt_prefix(self.crypt_type, self._key, dstopts, ciphertext_prefix, enc_offset)
