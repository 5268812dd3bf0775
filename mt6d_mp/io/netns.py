"""Entering a network namespace by name (``/run/netns/NAME``, as ``ip netns`` makes them).

Python 3.11 has no ``os.setns``, so ``setns(2)`` is called through ctypes. A namespace belongs to
the calling *thread*: :func:`setns` moves it for good (for a forked child), :func:`inside` only
for a block, returning to where it was (to make a socket there: a socket stays in the namespace
it was made in).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000


def _enter(fd: int, what: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


def setns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (use in a forked child only)."""
    fd = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(fd, name)
    finally:
        os.close(fd)


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block with the calling thread in namespace ``name``, then return it home."""
    with open(os.path.join(NETNS_RUN_DIR, name), "rb") as target, \
            open("/proc/thread-self/ns/net", "rb") as home:
        _enter(target.fileno(), name)
        try:
            yield
        finally:
            _enter(home.fileno(), "home")
