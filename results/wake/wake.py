"""Wake-up latency of an idle Python receiver (results/PROFILE.md).

A forked sender sends its clock every 0.2 s to a UDP socket on ::1; the receiver, blocked in
``select`` or in ``zmq.Poller.poll`` (as a worker is), records how long each datagram took to be
in its hands. Compare with wake.c. Usage: ``python wake.py select|zmq``.
"""

from __future__ import annotations

import os
import select
import socket
import statistics
import sys
import time

N = 40


def main(mode: str) -> None:
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind(("::1", 0))
    port = rx.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        time.sleep(0.3)
        for _ in range(N):
            tx.sendto(str(time.time_ns()).encode(), ("::1", port))
            time.sleep(0.2)
        os._exit(0)
    if mode == "zmq":
        import zmq

        poller = zmq.Poller()
        poller.register(rx.fileno(), zmq.POLLIN)

        def wait() -> None:
            poller.poll(1000)
    else:

        def wait() -> None:
            select.select([rx], [], [], 1)

    micros = []
    for _ in range(N):
        wait()
        sent = int(rx.recv(64))
        micros.append((time.time_ns() - sent) / 1000)
    os.waitpid(pid, 0)
    p90 = sorted(micros)[int(N * 0.9)]
    print(f"{mode}: median {statistics.median(micros):.0f} us, p90 {p90:.0f} us")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "select")
