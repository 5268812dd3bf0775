"""How much memory a *group* of processes holds that no other process shares.

Summing each process's USS (``Private_Clean + Private_Dirty``) undercounts a group whose members
share pages among themselves (pages of the interpreter and of the libraries mapped by the
supervisor and its workers only, or the copy-on-write pages of a forked child): such a page is
private to none of them and counts in no one's USS. Summing PSS counts it right, but also counts
a share of every page shared with processes outside the group. The figure for "what one
gateway's MT6D costs" is the memory the system would get back if the whole group exited: the
resident pages that only processes of the group map.

:func:`group_private_kb` finds it from the kernel's own records, as root:

* ``/proc/PID/pagemap`` gives the frame number of every present page of each process (64 bits per
  page: bit 63 present, bits 0-54 the frame number; frame numbers need CAP_SYS_ADMIN);
* ``/proc/kpagecount`` gives, per frame, how many times it is mapped, system-wide;
* a frame mapped as many times inside the group as system-wide is the group's alone.

Only mappings with resident pages (``Rss`` in ``/proc/PID/smaps``) are read, so the gigabytes a
Go runtime reserves cost nothing. For one process the figure equals its USS (tested).
"""

from __future__ import annotations

import array
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
_VMA = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")
_RSS = re.compile(r"^Rss:\s+(\d+) kB")


def resident_ranges(smaps: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each mapping in an ``smaps`` text that has resident pages."""
    current: tuple[int, int] | None = None
    for line in smaps.splitlines():
        m = _VMA.match(line)
        if m:
            current = (int(m.group(1), 16), int(m.group(2), 16))
            continue
        r = _RSS.match(line)
        if r and current is not None:
            if int(r.group(1)) > 0:
                yield current
            current = None


def frames(pagemap: bytes) -> Iterator[int]:
    """The frame numbers of the present pages in a slice of ``/proc/PID/pagemap``."""
    entries = array.array("Q")
    entries.frombytes(pagemap[: len(pagemap) // 8 * 8])
    for e in entries:
        if e & PRESENT:
            pfn = e & PFN_MASK
            if pfn:
                yield pfn


def mapped_frames(pid: int) -> Counter[int]:
    """How many times process ``pid`` maps each resident frame (empty if it is gone)."""
    out: Counter[int] = Counter()
    try:
        smaps = Path(f"/proc/{pid}/smaps").read_text()
        with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm:
            for start, end in resident_ranges(smaps):
                pm.seek(start // PAGE * 8)
                out.update(frames(pm.read((end - start) // PAGE * 8)))
    except (FileNotFoundError, ProcessLookupError):
        return Counter()
    return out


def group_private_kb(pids: Iterable[int]) -> int | None:
    """Resident kB that only ``pids`` map; None without the privilege to read frame numbers."""
    group: Counter[int] = Counter()
    for pid in pids:
        group.update(mapped_frames(pid))
    if not group:
        return None  # no frame numbers: not root, or no process left
    unique = 0
    with open("/proc/kpagecount", "rb", buffering=0) as kpc:
        for pfn, n in group.items():
            kpc.seek(pfn * 8)
            raw = kpc.read(8)
            if len(raw) == 8 and int.from_bytes(raw, "little") == n:
                unique += 1
    return unique * PAGE // 1024
