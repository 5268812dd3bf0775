"""Send raw Ethernet frames on an interface (run inside a lab namespace as root).

Usage: ``python sendframes.py IFACE FILE [--rounds N] [--gap SECONDS]``. FILE holds frames, each
preceded by its length as a 4-byte big-endian integer (``write_frames`` in harness.py). All frames
are sent in order, ``--rounds`` times, with ``--gap`` seconds between rounds. It prints how many
frames it sent. An AF_PACKET socket sends each frame exactly as given: Ethernet header included,
any destination MAC, any source address, no checksum or length fixed up.
"""

from __future__ import annotations

import argparse
import socket
import struct
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("file")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--gap", type=float, default=0.0)
    args = ap.parse_args()
    data = open(args.file, "rb").read()  # noqa: SIM115
    frames = []
    off = 0
    while off < len(data):
        (n,) = struct.unpack_from("!I", data, off)
        frames.append(data[off + 4 : off + 4 + n])
        off += 4 + n
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((args.iface, 0))
    sent = 0
    for r in range(args.rounds):
        for f in frames:
            while True:
                try:
                    s.send(f)
                    break
                except BlockingIOError:  # pragma: no cover - a full queue: wait a little
                    time.sleep(0.001)
            sent += 1
        if args.gap and r + 1 < args.rounds:
            time.sleep(args.gap)
    print(sent, flush=True)


if __name__ == "__main__":
    main()
