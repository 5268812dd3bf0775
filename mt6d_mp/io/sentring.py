"""The ring of sent-packet records a stream worker writes and the ICMP worker reads.

One file per stream in the runtime directory (``sent-STREAM.ring``, mode 0600), mapped shared by
both processes; the records themselves are defined in ``mt6d_mp.core.sentlog``. The writer
clears the file in place when it starts (same inode), so a reader's mapping stays valid across a
worker restart; a reader maps the file again when its inode changed (the stream was removed and
added again). Nothing here is secret (the records are what went on the wire), but the files are
private anyway.

A reader may see a slot half-written (no lock: the writer must not wait). That makes a genuine
error fail the check, once, which costs the host one error message; it never makes a forged one
pass, since a forged quote would have to equal bytes that were sent.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from mt6d_mp.core.crypto import DSTOPTS_LEN
from mt6d_mp.core.packet import Buffer
from mt6d_mp.core.sentlog import (
    COUNTER_AT,
    RECORD,
    RECORD_LEN,
    SENT_PREFIX,
    SENT_SLOTS,
    sent_record,
    sent_slot,
)

RING_BYTES = RECORD_LEN * SENT_SLOTS
_COUNTER_FROM = struct.Struct("!Q").unpack_from
_PACK_INTO = RECORD.pack_into
PRIVATE_SLOTS = 4  # divides SENT_SLOTS: a counter's slot modulo 4 stays in range


def ring_path(runtime_dir: str | Path, stream: str) -> Path:
    return Path(runtime_dir) / f"sent-{stream}.ring"


class SentRing:
    """The writing side, in the stream worker: one record per packet sent."""

    __slots__ = ("_mm", "_next", "_slots", "path")

    def __init__(self, path: Path | None) -> None:
        """Clear and map the ring at ``path``; ``None`` for a private ring of a few slots that
        nobody reads (the worker's keep-warm runs its real send path with it, and needs no
        history: 4 slots instead of 360 KB)."""
        self.path = path
        self._next = 0
        if path is None:
            self._slots = PRIVATE_SLOTS
            self._mm = mmap.mmap(-1, RECORD_LEN * PRIVATE_SLOTS)
            return
        self._slots = SENT_SLOTS
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)  # in place: forget what a predecessor sent
            os.ftruncate(fd, RING_BYTES)
            self._mm = mmap.mmap(fd, RING_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def add(self, dstopts: Buffer, payload: Buffer) -> None:
        """Record a packet: the same bytes as ``sent_record``, in the slot ``sent_slot`` gives
        (the next one in turn without options). A sealed packet's record is packed straight
        into the ring, with no record object in between: this runs once per packet sent."""
        if len(dstopts) == DSTOPTS_LEN and type(dstopts) is bytes and type(payload) is bytes:
            prefix = payload[:SENT_PREFIX]
            at = _COUNTER_FROM(dstopts, COUNTER_AT)[0] % SENT_SLOTS % self._slots * RECORD_LEN
            _PACK_INTO(self._mm, at, dstopts, len(prefix), prefix)
            return
        slot = sent_slot(dstopts)
        if slot < 0:
            slot = self._next
            self._next = (slot + 1) % self._slots
        at = slot % self._slots * RECORD_LEN
        self._mm[at : at + RECORD_LEN] = sent_record(dstopts, payload[:SENT_PREFIX])

    def close(self) -> None:
        self._mm.close()


class SentReader:
    """The reading side, in the ICMP worker: was this packet sent by the stream's worker?"""

    __slots__ = ("_inode", "_mm", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mm: mmap.mmap | None = None
        self._inode = -1

    def _map(self) -> mmap.mmap | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if self._mm is None or st.st_ino != self._inode or st.st_size != RING_BYTES:
            if self._mm is not None:
                self._mm.close()
                self._mm = None
            if st.st_size != RING_BYTES:
                return None
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._mm = mmap.mmap(fd, RING_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
            self._inode = st.st_ino
        return self._mm

    def was_sent(self, dstopts: Buffer, prefix: Buffer) -> bool:
        mm = self._map()
        if mm is None:
            return False
        record = sent_record(dstopts, prefix)
        slot = sent_slot(dstopts)
        if slot >= 0:
            at = slot * RECORD_LEN
            return mm[at : at + RECORD_LEN] == record
        at = mm.find(record)
        while at >= 0:
            if at % RECORD_LEN == 0:
                return True
            at = mm.find(record, at + 1)
        return False

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
