"""Hashed addresses, hashed ports and the time salt (thesis section 2.5.2, equations 2.1 and 3.1).

A hashed address keeps the true address's /64 prefix, so it stays routable to the same site,
and replaces the interface identifier with 64 bits of a hash that only holders of the key can
compute (the secret of the route's key phase, ``session_key`` below: docs/PROTOCOL.md 0 and 5):

    hashed = true[0:8] || H(true[8:16] || session_key || salt_be64 || mac6)[0:8]

H is SHA-256 unless the configuration names another hash (``hash_type``). The C version of MT6D
adds the host's MAC to the hash; so do we.

The MT6D papers also obscure the UDP ports with hash bits 64-79. We take digest bytes 8-9 as a
big-endian number ``v`` and use ``1024 + v % 64512``: never 0 (reserved, RFC 768), never a
well-known port, and the same on both gateways because both compute the same digest.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import NamedTuple

from mt6d_mp.core.epochs import epoch_at

HASH_TYPES = ("sha256", "sha384", "sha512", "sha3_256", "sha3_512", "blake2b", "blake2s")
DEFAULT_HASH = "sha256"

_HASHES = {name: getattr(hashlib, name) for name in HASH_TYPES}

PORT_BASE = 1024
PORT_SPAN = 65536 - PORT_BASE
_SALT_BYTES = 8
_MAC_BYTES = 6

AddressLike = str | bytes | ipaddress.IPv6Address
MacLike = str | bytes


def address_bytes(address: AddressLike) -> bytes:
    """The 16 bytes of an IPv6 address given as text, bytes or IPv6Address."""
    if isinstance(address, bytes):
        if len(address) != 16:
            raise ValueError(f"an IPv6 address has 16 bytes, got {len(address)}")
        return address
    if isinstance(address, str):
        address = ipaddress.IPv6Address(address)
    return address.packed


def mac_bytes(mac: MacLike) -> bytes:
    """The 6 bytes of a MAC given as ``"00:ab:cd:11:22:01"`` (or with '-') or as 6 bytes."""
    if isinstance(mac, bytes):
        if len(mac) != _MAC_BYTES:
            raise ValueError(f"a MAC address has 6 bytes, got {len(mac)}")
        return mac
    parts = mac.replace("-", ":").split(":")
    if len(parts) != _MAC_BYTES or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"not a MAC address: {mac!r} (expected six hex pairs like 00:ab:cd:11:22:01)")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {mac!r} (expected six hex pairs)") from None


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def host_digest(
    true_address: AddressLike,
    session_key: bytes,
    salt: int,
    mac: MacLike,
    hash_type: str = DEFAULT_HASH,
) -> bytes:
    """The digest behind one hashed address and its port (at least 10 bytes long)."""
    new = _HASHES.get(hash_type)
    if new is None:
        raise ValueError(f"unknown hash_type {hash_type!r} (expected one of {', '.join(HASH_TYPES)})")
    if not 0 <= salt < 1 << 64:
        raise ValueError(f"salt {salt} does not fit 8 unsigned bytes")
    # One input, hashed in one call: a rotation of a thousand streams makes four thousand.
    digest: bytes = new(address_bytes(true_address)[8:16] + session_key
                        + salt.to_bytes(_SALT_BYTES, "big") + mac_bytes(mac)).digest()
    return digest


def port_from_digest(digest: bytes) -> int:
    """The obscured UDP port carried by a digest: 1024 + (bytes 8-9 as big endian) % 64512."""
    return PORT_BASE + int.from_bytes(digest[8:10], "big") % PORT_SPAN


def salt_for(t: float, rotation_time: float, offset: int = 0) -> int:
    """The salt (epoch number) for absolute time ``t``: floor(t / rotation_time) + offset.

    With rotation_time = 10 s this is thesis equation 3.1,
    ((t - t mod 10) + offset * 10) / 10. Salts count rotations since the Unix epoch, so two
    gateways agree on them exactly when their clocks agree (the thesis relies on NTP).
    """
    if rotation_time <= 0:
        raise ValueError("rotation_time must be positive")
    return epoch_at(t, rotation_time) + offset


def flow_label(source16: bytes, destination16: bytes) -> int:
    """The outer flow label of a route (``[switches] flow_label``): 20 bits, never 0.

    A function of the route's two hashed addresses only, so it changes with every rotation
    exactly as they do and links nothing that the addresses do not already link (RFC 6437 asks
    for labels that are uniformly distributed and not guessable across flows, which a hash of
    addresses that are themselves unpredictable gives).
    """
    digest = hashlib.sha256(b"mt6d-mp flow label" + source16 + destination16).digest()
    return int.from_bytes(digest[:3], "big") & 0xFFFFF or 1


class Endpoint(NamedTuple):
    """One side of a route: hashed address (16 bytes) and obscured port."""

    address: bytes
    port: int


def endpoint(
    true_address: AddressLike,
    session_key: bytes,
    salt: int,
    mac: MacLike,
    hash_type: str = DEFAULT_HASH,
) -> Endpoint:
    address = address_bytes(true_address)
    digest = host_digest(address, session_key, salt, mac, hash_type)
    return Endpoint(address[:8] + digest[:8], port_from_digest(digest))
