"""How a host-mode stream worker can hand the remote host's packets to its own machine's stack.

In host mode (README, "Host mode") the packets the worker opens are for this machine: they must
enter its input path as if they came from the remote host's true address. This measures, in a
namespace of its own (a veth pair whose one end has the local true address, nothing else), what the
kernel does with each way of sending them:

1. a packet socket on ``lo`` with a virtio-net header (mt6d_mp/io/sockets.py ``link_socket``),
   frames addressed to loopback's own MAC: a UDP datagram whose checksum field holds only the
   pseudo-header sum, marked NEEDS_CSUM (as the stream worker sends a checksum the sending host
   left to its NIC); the same with a wrong checksum field, marked NEEDS_CSUM and not marked;
2. the same socket: one 60000-byte UDP datagram as one frame (no GSO), and a 64 KB TCP
   super-packet marked GSO TCPV6: how many packets of what size reach the input path (a raw
   IPPROTO_TCP socket sees what is delivered);
3. a raw IPV6_HDRINCL socket (sockets.host_socket) to the local address: a 60000-byte UDP
   datagram with its checksum complete, and one larger than loopback's MTU;
4. which netfilter hooks each way passes (ip6tables-legacy counters on OUTPUT and INPUT).

Run from the repository root as root: ``.venv/bin/python results/hostmode/loopback.py``. The
namespace has a random name and is deleted afterwards, also on failure.
"""

from __future__ import annotations

import secrets
import socket
import struct
import subprocess
import sys
import time

from mt6d_mp.core.offload import pseudo_header_sum
from mt6d_mp.io import sockets

LOCAL = "2001:db8:a::a1"
REMOTE = "2001:db8:b::b1"
L16, R16 = socket.inet_pton(socket.AF_INET6, LOCAL), socket.inet_pton(socket.AF_INET6, REMOTE)


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ip6(nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, 64) + R16 + L16 + payload


def udp(port: int, data: bytes, field: int | None = None) -> bytes:
    """A UDP datagram from REMOTE to LOCAL; ``field``: the checksum field, else the complete sum."""
    seg = struct.pack("!HHHH", 4000, port, 8 + len(data), 0) + data
    if field is None:
        field = 0xFFFF - ((csum(seg) + pseudo_header_sum(R16, L16, len(seg), 17)) % 0xFFFF)
    return ip6(17, seg[:6] + struct.pack("!H", field) + seg[8:])


def frame(vnet: bytes, packet: bytes) -> bytes:
    return vnet + bytes(12) + sockets.ETH_P_IPV6 + packet  # loopback's MAC is all zeros


def counters() -> dict[str, int]:
    out = {}
    for chain in ("INPUT", "OUTPUT"):
        lines = subprocess.run(["ip6tables-legacy", "-nvxL", chain], capture_output=True,
                               text=True, check=True).stdout.splitlines()[2:]
        out[chain] = sum(int(line.split()[0]) for line in lines if line.strip())
    return out


def delta(before: dict[str, int]) -> str:
    after = counters()
    return ", ".join(f"{k} {after[k] - before[k]}" for k in after)


def receive(sock: socket.socket) -> list[int]:
    got = []
    sock.settimeout(0.3)
    try:
        while True:
            got.append(len(sock.recv(70000)))
    except TimeoutError:
        return got


def inside() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "link", "add", "ext0", "type", "veth", "peer", "name", "peer0"], check=True)
    subprocess.run(["ip", "link", "set", "ext0", "up"], check=True)
    subprocess.run(["ip", "link", "set", "peer0", "up"], check=True)
    subprocess.run(["ip", "-6", "addr", "add", f"{LOCAL}/64", "dev", "ext0", "nodad"], check=True)
    for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
        subprocess.run(["ip6tables-legacy", "-A", chain, "-s", REMOTE, flag, "lo"], check=True)
    lo = socket.if_nametoindex("lo")
    link, own = sockets.link_socket(lo)
    print(f"loopback ifindex {lo}, MAC {own.hex(':')}, MTU {sockets.interface_mtu(lo)}")
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind((LOCAL, 9999))
    partial = pseudo_header_sum(R16, L16, 8 + 100, 17)
    cases = [
        ("packet socket, NEEDS_CSUM, pseudo-header sum in the field", sockets.VNET_CSUM_UDP,
         udp(9999, b"x" * 100, partial)),
        ("packet socket, NEEDS_CSUM, a wrong value in the field", sockets.VNET_CSUM_UDP,
         udp(9999, b"x" * 100, 0x1234)),
        ("packet socket, no flag, a wrong checksum", sockets.VNET_PLAIN,
         udp(9999, b"x" * 100, 0x1234)),
        ("packet socket, no flag, the complete checksum", sockets.VNET_PLAIN,
         udp(9999, b"x" * 100)),
        ("packet socket, one 60000-byte datagram, no GSO, NEEDS_CSUM", sockets.VNET_CSUM_UDP,
         udp(9999, b"y" * 60000, pseudo_header_sum(R16, L16, 60008, 17))),
    ]
    for what, vnet, packet in cases:
        before = counters()
        try:
            link.send(frame(vnet, packet))
            sent = "sent"
        except OSError as e:
            sent = f"refused: {e.strerror}"
        print(f"{what}: {sent}; received {receive(rx)}; hooks {delta(before)}")
    # A TCP super-packet: what reaches the input path (a raw TCP socket gets a copy of each).
    watch = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
    payload = b"z" * 64000
    mss = 1392
    tcp = struct.pack("!HHIIBBHHH", 5000, 6000, 1, 0, 5 << 4, 0x18, 8192, 0, 0) + payload
    field = pseudo_header_sum(R16, L16, len(tcp), 6)
    tcp = tcp[:16] + struct.pack("!H", field) + tcp[18:]
    for what, vnet in (("GSO TCPV6", sockets.vnet_tcp_gso(20, mss)),
                       ("no GSO", sockets.VNET_CSUM_TCP)):
        before = counters()
        try:
            link.send(frame(vnet, ip6(6, tcp)))
            sent = "sent"
        except OSError as e:
            sent = f"refused: {e.strerror}"
        sizes = receive(watch)
        print(f"packet socket, a 64040-byte TCP packet, {what}: {sent}; input path saw "
              f"{len(sizes)} packets of {sorted(set(sizes))} bytes; hooks {delta(before)}")
    host = sockets.host_socket()
    for size in (60000, 65500):  # 65548 bytes with the headers: more than loopback's MTU
        before = counters()
        try:
            host.sendto(udp(9999, b"w" * size), sockets.sockaddr(L16))
            sent = "sent"
        except OSError as e:
            sent = f"refused: {e.strerror}"
        print(f"raw IPV6_HDRINCL socket, a {size}-byte datagram, complete checksum: {sent}; "
              f"received {receive(rx)}; hooks {delta(before)}")
    print("route to the local address:", subprocess.run(
        ["ip", "-6", "route", "get", LOCAL], capture_output=True, text=True).stdout.strip())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        inside()
        return 0
    ns = "hm" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        time.sleep(0.1)
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside"],
                              check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
