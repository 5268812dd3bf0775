"""The in-band key exchange: messages, key schedule and one exchange's state (docs/PROTOCOL.md 5).

Pure code: stdlib and ``cryptography`` only, no I/O and no clock of its own (callers pass
``now``), so a test drives it with any clock and any random source.

Two gateways share a stream's *profile key* (PSK). Every few minutes they run a three-message
exchange over the stream's own hashed route:

    INIT     initiator -> responder   id, time, initiator's phase, ephemeral X25519 key Ei
    RESP     responder -> initiator   id, new phase q, ephemeral key Er, key confirmation
    CONFIRM  initiator -> responder   id, q, key confirmation

and both derive the *phase secret* of key phase ``q`` from the X25519 result **and** the PSK:
neither the long-term key alone nor the ephemeral exchange alone gives it. A phase secret
replaces the session key everywhere it was used: it hashes the addresses and ports
(mt6d_mp.core.addressing) and derives the direction keys (mt6d_mp.core.crypto). Phase 0, the
*bootstrap phase*, is the PSK itself; it carries exchange messages only, never data, so a
gateway that lost its state (a restart) can always reach its peer, and a later leak of the
PSK opens no data and names no address of any phase but 0.

Every message is authenticated with HMAC-SHA256 (truncated to 16 bytes) under a key derived from
the secret of the phase whose route it travels on, over the route (addresses and ports) and the
message: a message moved to another route, another stream or another phase fails.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from typing import Final, NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mt6d_mp.errors import PacketError

OPT_KEYX: Final = 0x3E  # RFC 4727 experimental option type, high bits 00, C = 1 (PROTOCOL.md 1.2)
VERSION: Final = 1
INIT: Final = 1
RESP: Final = 2
CONFIRM: Final = 3
TYPE_NAMES: Final = {INIT: "init", RESP: "resp", CONFIRM: "confirm"}

ID_LEN: Final = 8
PUB_LEN: Final = 32
TAG_LEN: Final = 16  # HMAC-SHA256 truncated: the message authentication and the confirmations
# The exchange's destination options header: next header UDP, length 8 bytes (hdr ext len 0),
# option 0x3E with 4 data bytes: version, message type, two reserved zero bytes.
DSTOPTS: Final = struct.Struct("!BBBBBBH")
DSTOPTS_LEN: Final = 8
IPPROTO_UDP: Final = 17
_INIT: Final = struct.Struct(f"!{ID_LEN}sQB{PUB_LEN}s")  # id, time (ms), initiator's phase, Ei
_RESP: Final = struct.Struct(f"!{ID_LEN}sB{PUB_LEN}s{TAG_LEN}s")  # id, q, Er, confirmation
_CONFIRM: Final = struct.Struct(f"!{ID_LEN}sB{TAG_LEN}s")  # id, q, confirmation
BODY: Final = {INIT: _INIT, RESP: _RESP, CONFIRM: _CONFIRM}
SALT: Final = b"mt6d-mp v1"
PHASE_SALT: Final = b"mt6d-mp v1 phase"
PHASES: Final = 256  # the key phase is one byte on the wire; 0 is the bootstrap phase


def _hkdf(secret: bytes, info: bytes, salt: bytes = SALT) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def auth_key(phase_secret: bytes) -> bytes:
    """The key that authenticates exchange messages on the routes of one phase."""
    return _hkdf(phase_secret, b"keyx auth")


def dstopts(msg_type: int) -> bytes:
    """The 8-byte destination options header of an exchange message."""
    return DSTOPTS.pack(IPPROTO_UDP, 0, OPT_KEYX, 4, VERSION, msg_type, 0)


def is_exchange(options: bytes | None) -> bool:
    """True when a received destination options header is an exchange message's."""
    return options is not None and len(options) >= 4 and options[2] == OPT_KEYX


def next_phase(*phases: int) -> int:
    """The phase after the highest of ``phases`` (1..255, then 1 again; 0 is never next)."""
    top = max(phases, default=0)
    return top % (PHASES - 1) + 1


class Message(NamedTuple):
    """One exchange message, parsed (fields not used by its type are empty)."""

    type: int
    id: bytes
    time_ms: int = 0
    phase: int = 0  # INIT: the initiator's current phase; RESP, CONFIRM: the new phase q
    public: bytes = b""
    confirm: bytes = b""


def seal(key: bytes, aad36: bytes, msg: Message) -> tuple[bytes, bytes]:
    """(destination options, UDP payload = body || tag) of ``msg`` for the route ``aad36``."""
    if msg.type == INIT:
        body = _INIT.pack(msg.id, msg.time_ms, msg.phase, msg.public)
    elif msg.type == RESP:
        body = _RESP.pack(msg.id, msg.phase, msg.public, msg.confirm)
    elif msg.type == CONFIRM:
        body = _CONFIRM.pack(msg.id, msg.phase, msg.confirm)
    else:
        raise ValueError(f"unknown message type {msg.type}")
    opts = dstopts(msg.type)
    return opts, body + _tag(key, aad36, opts, body)


def _tag(key: bytes, aad36: bytes, opts: bytes, body: bytes) -> bytes:
    return hmac.new(key, bytes(aad36) + bytes(opts) + bytes(body), hashlib.sha256).digest()[:TAG_LEN]


def open_message(key: bytes, aad36: bytes, opts: bytes, payload: bytes) -> Message:
    """Parse and authenticate an exchange message; PacketError(reason) when it is not one.

    ``aad36``: the route as received (source, destination, source port, destination port).
    """
    if len(opts) != DSTOPTS_LEN:
        raise PacketError("keyx_malformed", "options header length")
    nh, hlen, otype, olen, version, msg_type, reserved = DSTOPTS.unpack(opts)
    if nh != IPPROTO_UDP or hlen != 0 or otype != OPT_KEYX or olen != 4 or reserved:
        raise PacketError("keyx_malformed", "options header")
    if version != VERSION:
        raise PacketError("keyx_version", str(version))
    fmt = BODY.get(msg_type)
    if fmt is None:
        raise PacketError("keyx_malformed", f"type {msg_type}")
    if len(payload) != fmt.size + TAG_LEN:
        raise PacketError("keyx_malformed", "length")
    body, tag = bytes(payload[: fmt.size]), bytes(payload[fmt.size :])
    if not hmac.compare_digest(tag, _tag(key, aad36, opts, body)):
        raise PacketError("keyx_auth_failed")
    if msg_type == INIT:
        mid, t, phase, pub = _INIT.unpack(body)
        return Message(INIT, mid, time_ms=t, phase=phase, public=pub)
    if msg_type == RESP:
        mid, phase, pub, confirm = _RESP.unpack(body)
        return Message(RESP, mid, phase=phase, public=pub, confirm=confirm)
    mid, phase, confirm = _CONFIRM.unpack(body)
    return Message(CONFIRM, mid, phase=phase, confirm=confirm)


def psk_digest(psk: bytes) -> bytes:
    """What of the profile key enters a phase secret (a hash: the key itself is never mixed raw)."""
    return hashlib.sha256(b"mt6d-mp psk\0" + psk).digest()


def phase_secret(shared: bytes, psk: bytes, mid: bytes, ei: bytes, er: bytes, q: int) -> bytes:
    """Phase ``q``'s secret: HKDF(ikm = X25519 result || H(PSK), salt, info = transcript)."""
    return _hkdf(shared + psk_digest(psk), b"phase" + transcript(mid, ei, er, q), PHASE_SALT)


def transcript(mid: bytes, ei: bytes, er: bytes, q: int) -> bytes:
    return mid + ei + er + bytes((q,))


def confirmation(secret: bytes, role: bytes, mid: bytes, ei: bytes, er: bytes, q: int) -> bytes:
    """Proof of holding phase ``q``'s secret: ``role`` is b"R" (responder) or b"I" (initiator)."""
    key = _hkdf(secret, b"keyx confirm")
    return hmac.new(key, role + transcript(mid, ei, er, q), hashlib.sha256).digest()[:TAG_LEN]


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def exchange(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 (RFC 7748); an all-zero result (a low-order peer key) is refused."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise PacketError("keyx_bad_public", "low-order or malformed X25519 key") from None
    return shared


class Initiated(NamedTuple):
    """What the initiator keeps of its exchange in flight (the private key only until RESP)."""

    id: bytes
    private: X25519PrivateKey
    public: bytes
    started: float  # when the first INIT went
    sent: float  # when the last INIT went
    attempts: int
    time_ms: int
    phase: int  # the initiator's phase when it began


class Answered(NamedTuple):
    """What the responder keeps of an INIT it answered, until CONFIRM (or it gives up)."""

    id: bytes
    q: int
    secret: bytes
    reply: Message  # the RESP, sent again for a repeated INIT
    expected: bytes  # the initiator's confirmation
    until: float
    route_phase: int  # the phase of the route the INIT came on: RESP goes back on it


Random = Callable[[int], bytes]


def new_init(now: float, phase: int, rng: Random) -> tuple[Initiated, Message]:
    """Begin an exchange as initiator: a fresh ephemeral key and id."""
    private = X25519PrivateKey.from_private_bytes(rng(32))
    pub = public_bytes(private)
    mid = rng(ID_LEN)
    t = int(now * 1000)
    return (Initiated(mid, private, pub, now, now, 1, t, phase),
            Message(INIT, mid, time_ms=t, phase=phase, public=pub))


def answer(init: Message, psk: bytes, q: int, rng: Random) -> tuple[bytes, Message, bytes]:
    """The responder's side of an INIT: (phase secret, RESP, the initiator's expected
    confirmation). The responder's private key is used here and dropped."""
    private = X25519PrivateKey.from_private_bytes(rng(32))
    er = public_bytes(private)
    secret = phase_secret(exchange(private, init.public), psk, init.id, init.public, er, q)
    confirm_r = confirmation(secret, b"R", init.id, init.public, er, q)
    expected = confirmation(secret, b"I", init.id, init.public, er, q)
    return secret, Message(RESP, init.id, phase=q, public=er, confirm=confirm_r), expected


def complete(pending: Initiated, resp: Message, psk: bytes) -> tuple[bytes, Message]:
    """The initiator's side of a RESP: (phase secret, CONFIRM); PacketError if it does not
    prove the responder holds the same secret."""
    q = resp.phase
    secret = phase_secret(exchange(pending.private, resp.public), psk, pending.id, pending.public,
                          resp.public, q)
    if not hmac.compare_digest(
            resp.confirm, confirmation(secret, b"R", pending.id, pending.public, resp.public, q)):
        raise PacketError("keyx_confirm_failed", "responder")
    confirm_i = confirmation(secret, b"I", pending.id, pending.public, resp.public, q)
    return secret, Message(CONFIRM, pending.id, phase=q, confirm=confirm_i)
