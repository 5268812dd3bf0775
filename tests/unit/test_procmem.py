"""Group-private memory (mt6d_mp/procmem.py) against the kernel's own per-process figures."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from mt6d_mp import procmem

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="frame numbers in pagemap need root")
MB = 1024


def rollup(pid: int) -> dict[str, int]:
    kv = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            kv[parts[0].rstrip(":")] = int(parts[1])
    return kv


def uss_kb(pid: int) -> int:
    kv = rollup(pid)
    return kv["Private_Clean"] + kv["Private_Dirty"]


def rss_kb(pid: int) -> int:
    return rollup(pid)["Rss"]


def test_resident_ranges_skips_mappings_without_resident_pages() -> None:
    smaps = ("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/x\n"
             "Size:                328 kB\nRss:                 200 kB\n"
             "7f0000000000-7f0040000000 ---p 00000000 00:00 0\n"
             "Size:            1048576 kB\nRss:                   0 kB\n"
             "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n"
             "Rss:                  12 kB\n")
    assert list(procmem.resident_ranges(smaps)) == [(0x400000, 0x452000),
                                                    (0x7FFD00000000, 0x7FFD00021000)]


def test_frames_keeps_present_pages_only() -> None:
    entries = [procmem.PRESENT | 1234, 0, procmem.PRESENT | (1 << 62) | 99, 1 << 62]
    raw = b"".join(e.to_bytes(8, "little") for e in entries)
    assert list(procmem.frames(raw)) == [1234, 99]


@needs_root
def test_one_process_alone_is_its_uss() -> None:
    pid = os.getpid()
    before = uss_kb(pid)
    group = procmem.group_private_kb([pid])
    after = uss_kb(pid)  # this process may grow or shrink while it is measured: both bounds
    assert group is not None
    slack = max(256, max(before, after) // 50)
    assert min(before, after) - slack <= group <= max(before, after) + slack


@needs_root
def test_pages_shared_inside_the_group_count_once_and_only_for_the_group() -> None:
    shared = bytearray(os.urandom(32 * MB * 1024))  # 32 MB, resident, then shared by fork
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        os.write(w, b"x")
        time.sleep(60)
        os._exit(0)
    try:
        os.close(w)
        os.read(r, 1)
        me = os.getpid()
        alone = [procmem.group_private_kb([p]) for p in (me, child)]
        rss_before = rss_kb(me)
        both = procmem.group_private_kb([me, child])
        rss_after = rss_kb(me)  # this process's size moves while it is measured: both bounds
        assert None not in alone and both is not None
        # The buffer's pages are mapped by both: private to neither, the group's once.
        assert all(a is not None and a < uss_kb(me) + 8 * MB for a in alone)
        assert both >= sum(a for a in alone if a is not None) + 30 * MB
        # ... and not twice: the child is a copy of this process, so the group holds no more
        # than this process's resident pages plus what only the child holds.
        assert both <= max(rss_before, rss_after) + (alone[1] or 0) + 2 * MB
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        del shared
