"""What someone who later learns a stream's profile key can take from a capture of its traffic.

A fresh program, given only the profile key, the hosts' true addresses and MACs (the gateway's
configuration files) and a pcap of the external link, tries what docs/PROTOCOL.md 5.7 says it
cannot do for rekeyed phases:

* open captured data packets with every direction key the profile key gives (any phase byte);
* compute the hashed addresses of every epoch in the capture and find captured packets on them.

It prints one JSON object: how many data packets it saw, opened and linked to the hosts, and how
many exchange messages it linked (those on bootstrap routes, which the profile key does name).
A self-check first seals a packet under a profile-key-derived key and opens it, so a zero is a
finding, not a broken probe.

Usage: ``python -m tests.lab.fs_probe --pcap F --key HEXFILE --host ADDR,MAC --host ADDR,MAC
--rotation S``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import struct
import sys
from pathlib import Path

from mt6d_mp.core.addressing import endpoint, mac_bytes
from mt6d_mp.core.crypto import (
    CRYPT_AES_256_GCM,
    Opener,
    Sealer,
    derive_direction_key,
)
from mt6d_mp.core.packet import aad_prefix
from mt6d_mp.errors import PacketError


def frames(path: Path) -> list[tuple[float, bytes, int]]:
    """(time, captured bytes, original length) of every frame of a little-endian pcap."""
    data = path.read_bytes()
    scale = 1e-6 if data[:4] == b"\xd4\xc3\xb2\xa1" else 1e-9
    out, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack_from("<IIII", data, off)
        out.append((sec + frac * scale, data[off + 16 : off + 16 + incl], orig))
        off += 16 + incl
    return out


def try_open(keys: list[tuple[bytes, int]], ip: bytes) -> bool:
    """Whether any (key, phase) opens this whole tunnel packet (options 0x1E, not a chunk)."""
    dstopts, udp = ip[40:56], ip[56:64]
    aad = aad_prefix(ip[8:24], ip[24:40], int.from_bytes(udp[0:2], "big"),
                     int.from_bytes(udp[2:4], "big"))
    for key, phase in keys:
        try:
            Opener(CRYPT_AES_256_GCM, key, phase=phase).open(aad, dstopts, ip[64:], 2)
            return True
        except PacketError:
            continue
    return False


def self_check(a: bytes, b: bytes, psk: bytes) -> None:
    key = derive_direction_key(psk, a, b, 7)
    src, dst = bytes(16), bytes(15) + b"\x01"
    dstopts, ct = Sealer(CRYPT_AES_256_GCM, key, phase=7).seal(b"x" * 20,
                                                                 aad_prefix(src, dst, 1, 2))
    ip = bytes(8) + src + dst + dstopts + (1).to_bytes(2, "big") + (2).to_bytes(2, "big") + bytes(4) + ct
    assert try_open([(key, 7)], ip), "the probe cannot open what it sealed itself"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pcap", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True, help="file with the profile key in hex")
    p.add_argument("--host", action="append", required=True, help="ADDRESS,MAC (twice)")
    p.add_argument("--rotation", type=float, required=True)
    args = p.parse_args(argv)
    psk = bytes.fromhex(args.key.read_text().strip())
    hosts = [(ipaddress.IPv6Address(h.split(",")[0]).packed, mac_bytes(h.split(",")[1]))
             for h in args.host]
    (a, _), (b, _) = hosts
    self_check(a, b, psk)
    # Both directions' keys for every phase byte (the packet names its phase; only its own
    # phase's keys need trying).
    keys = {phase: [(derive_direction_key(psk, s, r, phase), phase) for s, r in ((a, b), (b, a))]
            for phase in range(256)}
    captured = frames(args.pcap)
    times = [t for t, _, _ in captured]
    named: set[bytes] = set()  # every hashed address the profile key gives over the capture
    if times:
        for e in range(int(min(times) // args.rotation) - 2, int(max(times) // args.rotation) + 3):
            for addr, mac in hosts:
                named.add(endpoint(addr, psk, e, mac).address)
    result = {"frames": len(captured), "data": 0, "data_complete": 0, "data_opened": 0,
              "data_linked": 0, "keyx": 0, "keyx_linked": 0}
    for _, frame, orig in captured:
        if len(frame) < 64 or frame[12:14] != b"\x86\xdd":
            continue
        ip = frame[14:]
        if ip[6] != 60 or len(ip) < 48:
            continue
        linked = ip[8:24] in named or ip[24:40] in named
        if ip[42] == 0x3E:
            result["keyx"] += 1
            result["keyx_linked"] += linked
        elif ip[42] == 0x1E:
            result["data"] += 1
            result["data_linked"] += linked
            if len(frame) == orig and not ip[44] & 0x80:  # whole, and not a chunk of a message
                result["data_complete"] += 1
                result["data_opened"] += try_open(keys[ip[45]], ip)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
