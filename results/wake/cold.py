"""How much slower the worker's per-packet Python path runs after the process sat idle.

Seals a 112-byte ICMPv6 packet and opens it again (``tunnel_pieces`` + ``open_payload``, what a
worker does per packet minus the system calls), timed alone after different idle times, 40 times
each, medians. "Warmed" runs the same path every N ms while idle and measures at a random moment
in between, as a keep-warm timer in a worker would; "bare wake-ups" only sleep in N ms steps.

Run from the repository root: ``.venv/bin/python results/wake/cold.py``.
"""

from __future__ import annotations

import os
import random
import statistics
import struct
import time
from collections import Counter

from mt6d_mp.core.crypto import CRYPT_AES_256_GCM, Opener, Sealer
from mt6d_mp.core.packet import open_payload, tunnel_pieces

KEY = bytes(32)
SRC, DST = bytes(range(16)), bytes(range(16, 32))
INNER = bytes.fromhex("60000000") + struct.pack("!HBB", 64, 58, 64) + SRC + DST + os.urandom(64)
AAD = SRC + DST + b"\x01\x02\x03\x04"
sealer, opener = Sealer(CRYPT_AES_256_GCM, KEY), Opener(CRYPT_AES_256_GCM, KEY)
counters: Counter[str] = Counter()


def one() -> None:
    dstopts, _udp, payload = tunnel_pieces(INNER, SRC, DST, 258, 772, sealer)
    open_payload(opener, AAD, dstopts, payload)
    counters["packets"] += 1


def timed() -> float:
    t = time.perf_counter_ns()
    one()
    return (time.perf_counter_ns() - t) / 1000


def after_idle(idle: float) -> float:
    out = []
    for _ in range(40):
        time.sleep(idle)
        out.append(timed())
    return statistics.median(out)


def kept(idle: float, every: float, warm: bool) -> float:
    out = []
    for _ in range(40):
        end = time.monotonic() + idle
        while time.monotonic() < end:
            time.sleep(every)
            if warm:
                one()
        time.sleep(random.random() * every)
        out.append(timed())
    return statistics.median(out)


if __name__ == "__main__":
    for _ in range(1000):
        one()
    print(f"warm: {after_idle(0):.1f} us; after 1 ms idle: {after_idle(0.001):.1f} us; "
          f"after 100 ms idle: {after_idle(0.1):.1f} us")
    print(f"100 ms idle, warmed every 1 ms: {kept(0.1, 0.001, True):.1f} us; every 5 ms: "
          f"{kept(0.1, 0.005, True):.1f} us; bare wake-ups every 1 ms: {kept(0.1, 0.001, False):.1f} us")
