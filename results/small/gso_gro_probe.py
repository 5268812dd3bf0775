"""Can UDP GSO send, or UDP GRO receive, a burst of tunnel datagrams whose destination options
differ (each carries its own AEAD counter)? Measured on this kernel in two namespaces joined by
a veth pair with GRO on (``w16p-a``, ``w16p-b``; made and removed here). Run as root from the
repository root: ``.venv/bin/python results/small/gso_gro_probe.py``.

1. GSO: one sendmsg with ``UDP_SEGMENT`` and one ``IPV6_DSTOPTS``: how many datagrams arrive,
   and with which options (the kernel copies the headers, options included, to every segment).
2. GRO: a burst of single datagrams, each with its own options (as the worker sends them), then a
   burst with identical options, to a receiver with ``UDP_GRO`` on: the largest number of
   datagrams one recvmsg returned.
"""

from __future__ import annotations

import subprocess
import time

A, B = "fd00:16::a", "fd00:16::b"
NA, NB = "w16p-a", "w16p-b"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


# The child: a receiver (with or without UDP_GRO) or a sender. Options header: next header
# (the kernel fills it), length 1 (16 bytes), option 0x1e (experimental, skipped) with 12 bytes
# of data: the counter, then 4 zero bytes.
CHILD = r'''
import socket, struct, sys, time
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
A, B = "fd00:16::a", "fd00:16::b"
def dstopts(counter):
    return struct.pack("!BBBB", 17, 1, 0x1E, 12) + struct.pack("!Q", counter) + bytes(4)
role = sys.argv[1]
if role == "rx":
    r = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    r.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVDSTOPTS, 1)
    if sys.argv[2] == "gro":
        r.setsockopt(SOL_UDP, UDP_GRO, 1)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    r.bind((B, 5000)); r.settimeout(1.5)
    print("ready", flush=True)
    calls = datagrams = most = 0; counters = set()
    try:
        while True:
            data, anc, flags, src = r.recvmsg(65535, 1024)
            seg = len(data)
            for lvl, kind, val in anc:
                if lvl == SOL_UDP and kind == UDP_GRO:
                    seg = struct.unpack("=H", val[:2])[0] if len(val) < 4 else struct.unpack("=i", val[:4])[0]
                if lvl == socket.IPPROTO_IPV6 and kind == socket.IPV6_DSTOPTS:
                    counters.add(struct.unpack_from("!Q", val, 4)[0])
            k = -(-len(data) // seg)
            calls += 1; datagrams += k; most = max(most, k)
    except socket.timeout:
        pass
    print(f"recvmsg calls {calls}, datagrams {datagrams}, most in one call {most}, "
          f"distinct counters {len(counters)}")
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind((A, 0)); s.connect((B, 5000))
    mode = sys.argv[2]
    if mode == "gso":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, dstopts(7))
        for _ in range(20):
            s.sendmsg([bytes(200 * 16)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 200))])
    else:
        for i in range(20000):
            opts = dstopts(i if mode == "differ" else 7)
            s.sendmsg([bytes(200)], [(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, opts)])
'''


def run(rx_mode: str, tx_mode: str) -> str:
    rx = subprocess.Popen(["ip", "netns", "exec", NB, "python3", "-c", CHILD, "rx", rx_mode],
                          stdout=subprocess.PIPE, text=True)
    assert rx.stdout is not None
    rx.stdout.readline()
    subprocess.run(["ip", "netns", "exec", NA, "python3", "-c", CHILD, "tx", tx_mode], check=True)
    out = rx.stdout.read().strip()
    rx.wait()
    return out


def main() -> None:
    sh("ip", "netns", "add", NA)
    try:
        sh("ip", "netns", "add", NB)
        sh("ip", "-n", NA, "link", "add", "p", "type", "veth", "peer", "name", "p", "netns", NB)
        for ns, addr in ((NA, A), (NB, B)):
            sh("ip", "-n", ns, "addr", "add", addr + "/64", "dev", "p", "nodad")
            sh("ip", "-n", ns, "link", "set", "p", "up")
            sh("ip", "netns", "exec", ns, "ethtool", "-K", "p", "gro", "on")
        time.sleep(0.5)
        print("GSO, 20 sends of 16 x 200 B, one options header each:", run("plain", "gso"))
        print("GRO receiver, 20000 single sends, options differ:", run("gro", "differ"))
        print("GRO receiver, 20000 single sends, options identical:", run("gro", "same"))
    finally:
        subprocess.run(["ip", "netns", "del", NA], check=False)
        subprocess.run(["ip", "netns", "del", NB], check=False)


if __name__ == "__main__":
    main()
