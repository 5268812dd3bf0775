"""Which part of the cold per-packet path is the AEAD.

AES-256-GCM seal + open of a 72-byte payload, and a rough stand-in for the Python bookkeeping
(20 rounds of struct packing, slicing, joining and a dict counter), each timed warm and after
100 ms idle (medians of 40).

Run from the repository root: ``.venv/bin/python results/wake/cold_split.py``.
"""

from __future__ import annotations

import os
import statistics
import struct
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

AEAD = AESGCM(bytes(32))
NONCE, DATA, AAD = bytes(12), os.urandom(72), bytes(52)
HEADER = struct.Struct("!BBHQ")
BUF = bytearray(200)


def crypto() -> None:
    AEAD.decrypt(NONCE, AEAD.encrypt(NONCE, DATA, AAD), AAD)


def bookkeeping() -> None:
    counts: dict[str, int] = {}
    for i in range(20):
        HEADER.pack_into(BUF, 0, 1, 2, 3, i)
        bytes(BUF[:16])
        b"".join((memoryview(BUF)[:8], BUF[40:]))
        counts["x"] = counts.get("x", 0) + 1


def median_us(fn: Callable[[], None], idle: float) -> float:
    out = []
    for _ in range(40):
        time.sleep(idle)
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1000)
    return statistics.median(out)


if __name__ == "__main__":
    for _ in range(1000):
        crypto()
        bookkeeping()
    for name, fn in (("AES-GCM seal + open", crypto), ("Python bookkeeping", bookkeeping)):
        print(f"{name}: warm {median_us(fn, 0):.1f} us, after 100 ms idle {median_us(fn, 0.1):.1f} us")
