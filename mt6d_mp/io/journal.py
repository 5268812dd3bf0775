"""A receiving worker's replay floor, kept where a crash of the worker cannot lose it.

The highest counter accepted on each lane is stored, before the packet is delivered, in a small
file mapped shared into the worker (``MAP_SHARED``). A store lands in the page cache at once, so
it outlives a SIGKILL of the process, and a restarted worker resumes its replay windows above
exactly what its predecessor accepted. (A copy taken from the periodic stats reports would be up
to a second old, and packets accepted in that second could be replayed once.)

The file is bound to one receive key and key phase by a fingerprint in its header (a one-way
hash, never the key); a file with another fingerprint is started afresh. It lives in the
root-only runtime directory with mode 0600. Layout: magic ``MT6DRJ01`` (8 bytes), fingerprint
(8), then SLOTS slots of (lane + 1, top) as two native 64-bit integers; lane + 1 = 0 is a free
slot.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from pathlib import Path

MAGIC = b"MT6DRJ01"
HEADER = 16
SLOT = struct.Struct("=QQ")
SLOTS = 32
SIZE = HEADER + SLOTS * SLOT.size


def fingerprint(key: bytes, phase: int) -> bytes:
    """Which receive key and phase a journal belongs to (8 bytes of a domain-separated hash)."""
    return hashlib.sha256(b"mt6d replay journal\0" + bytes([phase & 0xFF]) + key).digest()[:8]


class ReplayJournal:
    """(lane, highest accepted counter) per lane, in a shared file mapping."""

    def __init__(self, path: Path, fp: bytes) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if os.fstat(fd).st_size != SIZE:
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        if self._map[:HEADER] != MAGIC + fp:
            self._map[:] = bytes(SIZE)
            self._map[:HEADER] = MAGIC + fp
        self._slots: dict[int, int] = {}  # lane -> offset of its slot
        for offset in range(HEADER, SIZE, SLOT.size):
            tag, _top = SLOT.unpack_from(self._map, offset)
            if tag:
                self._slots[tag - 1] = offset
        self.full = False  # more lanes than slots: the extra lanes are not journaled

    def floors(self) -> list[tuple[int, int]]:
        """(lane, top) for every lane journaled: what a successor must refuse."""
        return [(lane, SLOT.unpack_from(self._map, off)[1]) for lane, off in self._slots.items()]

    def record(self, lane: int, top: int) -> None:
        """Store the new top of ``lane`` (called after each accepted packet, before delivery)."""
        offset = self._slots.get(lane)
        if offset is None:
            if len(self._slots) >= SLOTS:
                self.full = True
                return
            used = set(self._slots.values())
            offset = next(o for o in range(HEADER, SIZE, SLOT.size) if o not in used)
            self._slots[lane] = offset
        SLOT.pack_into(self._map, offset, lane + 1, top)

    def close(self) -> None:
        self._map.close()
