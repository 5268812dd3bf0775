"""Does sendmmsg (a burst of datagrams per system call, through ctypes) make a small tunnel
datagram cheaper to send than one sendmsg each?

Python 3.11's socket module has no sendmmsg, so a burst is built with ctypes: per datagram an
iovec pair (UDP payload header and body, as the stream worker sends them) and its own
destination options header as ancillary data (each datagram's AEAD counter is in it:
docs/KERNEL.md), then one sendmmsg for the burst. Against that, the worker's way: one
``sock.sendmsg`` per datagram with the same pieces. Both send to a UDP socket on the loopback of
a namespace of their own; the receiver drains between rounds. Printed: processor time per
datagram, best of the rounds, for bursts of 1, 8 and 64.

Run as root from the repository root: ``python3 results/small/mmsg_probe.py`` (it makes and
deletes the namespace ``mmsgprobe-<pid>``).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import sys
import time

N = 20000  # datagrams per round
ROUNDS = 5
PAYLOAD = 200 + 16 + 8  # a 200-byte packet without addresses, its tag and the UDP header's room
IPV6_DSTOPTS = 59
SYS_SENDMMSG = 307  # x86_64


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def dstopts(counter: int) -> bytes:
    """A destination options header of 16 bytes with an 8-byte counter in a PadN-sized option."""
    return bytes([17, 1, 0x1E, 10]) + counter.to_bytes(8, "big") + bytes([1, 0]) + bytes(2)


def cmsg(level: int, kind: int, data: bytes) -> bytes:
    header = struct.pack("=Qii", socket.CMSG_LEN(len(data)), level, kind)  # struct cmsghdr
    return header + data + bytes(socket.CMSG_SPACE(len(data)) - socket.CMSG_LEN(len(data)))


def one_by_one(sock: socket.socket, bodies: list[bytes]) -> None:
    head = bytes(8)
    for i, body in enumerate(bodies):
        sock.sendmsg((head, body), [(socket.IPPROTO_IPV6, IPV6_DSTOPTS, dstopts(i))])


def in_bursts(sock: socket.socket, bodies: list[bytes], burst: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = sock.fileno()
    head = ctypes.create_string_buffer(8)
    msgs = (Mmsghdr * burst)()
    iovs = (Iovec * (2 * burst))()
    keep: list[object] = []
    for start in range(0, len(bodies), burst):
        keep.clear()
        chunk = bodies[start:start + burst]
        for j, body in enumerate(chunk):
            b = ctypes.create_string_buffer(body, len(body))
            c = ctypes.create_string_buffer(cmsg(socket.IPPROTO_IPV6, IPV6_DSTOPTS,
                                                 dstopts(start + j)))
            keep += (b, c)
            iovs[2 * j].base, iovs[2 * j].len = ctypes.addressof(head), 8
            iovs[2 * j + 1].base, iovs[2 * j + 1].len = ctypes.addressof(b), len(body)
            h = msgs[j].hdr
            h.iov = ctypes.cast(ctypes.byref(iovs, 2 * j * ctypes.sizeof(Iovec)),
                                ctypes.POINTER(Iovec))
            h.iovlen = 2
            h.control, h.controllen = ctypes.addressof(c), len(c.raw)
        sent = libc.syscall(SYS_SENDMMSG, fd, msgs, len(chunk), 0)
        if sent != len(chunk):
            raise OSError(ctypes.get_errno(), f"sendmmsg sent {sent} of {len(chunk)}")


def main() -> int:
    if os.environ.get("MMSG_PROBE_INSIDE") != "1":
        ns = f"mmsgprobe-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__],
                                  env={**os.environ, "MMSG_PROBE_INSIDE": "1"}).returncode
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: a round fits
    rx.bind(("::1", 9000))
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tx.connect(("::1", 9000))
    bodies = [os.urandom(PAYLOAD - 8) for _ in range(N)]
    ways = {"sendmsg each": lambda: one_by_one(tx, bodies)}
    for burst in (1, 8, 64):
        ways[f"sendmmsg x{burst}"] = lambda burst=burst: in_bursts(tx, bodies, burst)
    best = dict.fromkeys(ways, float("inf"))
    rx.setblocking(False)
    for _ in range(ROUNDS):
        for name, way in ways.items():  # alternated, round by round
            t = time.process_time()
            way()
            best[name] = min(best[name], time.process_time() - t)
            got = 0
            while True:
                try:
                    rx.recv(2048)
                    got += 1
                except BlockingIOError:
                    break
            if got != N:
                print(f"{name}: {got} of {N} arrived", file=sys.stderr)
    for name, seconds in best.items():
        print(f"{name}: {seconds / N * 1e6:.2f} us of processor time per datagram "
              f"(sending and the loopback's receive, in the sender's call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
