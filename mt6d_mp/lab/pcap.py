"""Reading a capture of the external link, and what it shows: outer address pairs and leaks.

Flow: :func:`read_pcap` walks a classic pcap file frame by frame, takes the IPv6 packet out of
each frame (:func:`_ipv6_payload`: Ethernet with VLAN tags, raw IP, Linux cooked v1/v2) and
finds its final next header (:func:`_final_next_header`); :func:`analyse_capture` then collects
the outer (src, dst) pairs of non-ICMPv6 traffic (with the link each crossed, named by the
frames' MAC addresses, when asked) and every frame that carries a true address.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mt6d_mp.lab.info import LabError


@dataclass(frozen=True)
class CapturedPacket:
    time: float
    src: str
    dst: str
    next_header: int  # after skipping hop-by-hop, routing, destination options and fragment
    frame: bytes


def read_pcap(path: Path) -> Iterator[CapturedPacket]:
    """IPv6 packets of a classic pcap file (Ethernet, raw IP or Linux cooked captures)."""
    data = path.read_bytes()
    magics = {
        b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
        b"\xa1\xb2\xc3\xd4": (">", 1e-6),
        b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
        b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    }
    if len(data) < 24 or data[:4] not in magics:
        raise LabError(f"{path}: not a pcap file")
    endian, scale = magics[data[:4]]
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        frame = data[off : off + incl]
        off += incl
        ip6 = _ipv6_payload(frame, linktype)
        if ip6 is None or len(ip6) < 40 or ip6[0] >> 4 != 6:
            continue
        yield CapturedPacket(
            time=sec + frac * scale,
            src=str(ipaddress.IPv6Address(ip6[8:24])),
            dst=str(ipaddress.IPv6Address(ip6[24:40])),
            next_header=_final_next_header(ip6),
            frame=frame,
        )


def _ipv6_payload(frame: bytes, linktype: int) -> bytes | None:
    if linktype == 1:  # Ethernet
        off, etype = 12, int.from_bytes(frame[12:14], "big")
        while etype in (0x8100, 0x88A8) and len(frame) >= off + 6:
            off += 4
            etype = int.from_bytes(frame[off : off + 2], "big")
        return frame[off + 2 :] if etype == 0x86DD else None
    if linktype in (101, 228, 229):  # raw IP
        return frame
    if linktype == 113:  # Linux cooked v1
        return frame[16:] if frame[14:16] == b"\x86\xdd" else None
    if linktype == 276:  # Linux cooked v2
        return frame[20:] if frame[0:2] == b"\x86\xdd" else None
    return None


def _final_next_header(ip6: bytes) -> int:
    nh, off = ip6[6], 40
    while nh in (0, 43, 44, 60) and off + 8 <= len(ip6):
        if nh == 44:
            nh, off = ip6[off], off + 8
        else:
            nh, off = ip6[off], off + (ip6[off + 1] + 1) * 8
    return nh


@dataclass
class CaptureReport:
    packets: int = 0
    pairs: list[tuple[str, str, float, float, int]] = field(default_factory=list)
    leaks: list[tuple[float, str]] = field(default_factory=list)  # (time, description)
    start: float = 0.0
    # (src, dst) -> (sender, receiver) named by the ``labels`` of their MACs (Ethernet captures)
    links: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    @property
    def distinct_pairs(self) -> int:
        return len(self.pairs)


def analyse_capture(
    path: Path, true_addresses: Sequence[str], labels: Mapping[str, str] | None = None
) -> CaptureReport:
    """Outer (src, dst) pairs of non-ICMPv6 traffic, and any frame carrying a true address.

    ``labels`` names MAC addresses (``02:6d:...`` -> ``A``): each pair's link, by the source and
    destination MAC of its first Ethernet frame, goes to :attr:`CaptureReport.links`."""
    rep = CaptureReport()
    names = {bytes.fromhex(mac.replace(":", "")): name for mac, name in (labels or {}).items()}
    needles = {ipaddress.IPv6Address(a).packed: a for a in true_addresses}
    seen: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], int] = {}
    for pkt in read_pcap(path):
        if rep.packets == 0:
            rep.start = pkt.time
        rep.packets += 1
        for raw, text in needles.items():
            if raw in pkt.frame:
                rep.leaks.append((pkt.time - rep.start, f"{text} in {pkt.src} -> {pkt.dst}"))
        s, d = ipaddress.IPv6Address(pkt.src), ipaddress.IPv6Address(pkt.dst)
        if pkt.next_header == 58 or not all(
            a.is_global or a in ipaddress.IPv6Network("2001:db8::/32") for a in (s, d)
        ):
            continue
        key = (pkt.src, pkt.dst)
        t = pkt.time - rep.start
        if key in seen:
            seen[key][1] = t
        else:
            seen[key] = [t, t]
        counts[key] = counts.get(key, 0) + 1
        if names and key not in rep.links and len(pkt.frame) >= 12:
            rep.links[key] = (names.get(pkt.frame[6:12], "?"), names.get(pkt.frame[0:6], "?"))
    rep.pairs = sorted(((k[0], k[1], v[0], v[1], counts[k]) for k, v in seen.items()), key=lambda p: p[2])
    return rep
