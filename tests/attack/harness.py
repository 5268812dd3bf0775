"""The attacker's tools: a foothold on the gateways' external link, frames, captures, verdicts.

Where the attacker sits:

* switched topology: a namespace ``P-at`` of its own (address ``2001:db8:100::66``, MAC
  ``02:6d:ee:ee:00:01``) with a veth port ``at`` on the switch's bridge ``br0``. tc ``mirred``
  (a ``u32`` match-all filter on the ingress of the gateways' bridge ports ``ga`` and ``gb``) copies
  every frame either gateway sends to the attacker's port, so a capture on the attacker's
  ``eth0`` sees the unicast between the gateways as well as what is sent to the attacker. It
  sends any frame to any MAC through its own port (the bridge forwards by destination MAC).
* routed topology: the router namespace itself, the on-path attacker. Its interface ``ga`` is
  gateway A's external link, ``gb`` gateway B's; it sends frames on the one that reaches the
  gateway it attacks, from its own address ``2001:db8:a::1``, and captures both.

Frames are built in the test process (scapy, or by hand where thousands are needed) and sent
inside the namespace by ``sendframes.py`` (an AF_PACKET socket: any MAC, any source address).
Every verdict about a leak looks only at frames a gateway sent (Ethernet source = a gateway's
ext0 MAC): the attacker's own frames carry true addresses because the attacker put them there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt6d_mp import lab as labmod
from mt6d_mp.io.bus import request
from mt6d_mp.lab import Lab, LabInfo
from tests.lab.test_mt6d import capture, frames, status, worker

HERE = Path(__file__).resolve().parent
SENDFRAMES = HERE / "sendframes.py"
ATTACKER_MAC = "02:6d:ee:ee:00:01"
ATTACKER_SWITCHED_ADDRESS = "2001:db8:100::66"
ETH_IPV6 = b"\x86\xdd"

# ICMPv6 types
ECHO_REQUEST, ECHO_REPLY = 128, 129
NS, NA = 135, 136
MLD_REPORT_V1, MLD_REPORT_V2 = 131, 143
ICMP_ERRORS = (1, 2, 3, 4)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def a16(address: str) -> bytes:
    return ipaddress.IPv6Address(address).packed


def a_str(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


# --- the lab with an attacker ------------------------------------------------------------------


@dataclass(frozen=True)
class Attacker:
    ns: str
    address: str  # its own IPv6 address: answers to it come back to ns
    ports: dict[str, tuple[str, str]]  # gateway role -> (interface in ns toward it, source MAC)
    watch: tuple[str, ...]  # interfaces in ns where the external link is captured
    macs: frozenset[str]  # every MAC the attacker sends from


@dataclass(frozen=True)
class AttackLab:
    lab: Lab
    info: LabInfo
    attacker: Attacker

    @property
    def gw_macs(self) -> dict[str, str]:
        """ext0 MAC of each gateway, by role."""
        return {r: self.info.ns(r).iface("ext0").mac for r in ("gateway-a", "gateway-b")}

    def gw_int_mac(self, role: str) -> str:
        return self.info.ns(role).iface("int0").mac

    def frame_to(self, role: str, ip6: bytes, src_mac: str | None = None) -> bytes:
        """An Ethernet frame carrying ``ip6`` from the attacker to ``role``'s ext0."""
        _, mac = self.attacker.ports[role]
        return mac_bytes(self.gw_macs[role]) + mac_bytes(src_mac or mac) + ETH_IPV6 + ip6

    def send(self, role: str, ip6s: Sequence[bytes], *, rounds: int = 1, gap: float = 0.0) -> int:
        """Send IPv6 packets as frames from the attacker to ``role``'s external interface."""
        iface, _ = self.attacker.ports[role]
        return send_frames(self.lab, self.attacker.ns, iface, [self.frame_to(role, p) for p in ip6s],
                           rounds=rounds, gap=gap)

    def send_frames(self, role: str, frames_: Sequence[bytes], *, rounds: int = 1, gap: float = 0.0) -> int:
        iface, _ = self.attacker.ports[role]
        return send_frames(self.lab, self.attacker.ns, iface, frames_, rounds=rounds, gap=gap)

    @contextmanager
    def watch(self, path: Path, filt: str = "ip6", snaplen: int = 0) -> Iterator[list[Path]]:
        """Capture the external link (every interface in ``watch``) for the block."""
        with contextlib.ExitStack() as stack:
            paths = [stack.enter_context(sniff(self.lab, self.attacker.ns, iface,
                                               path.with_name(f"{path.stem}-{iface}.pcap"), filt, snaplen))
                     for iface in self.attacker.watch]
            yield paths


def _sh(argv: Sequence[str]) -> None:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr.strip()}"


def _add_switched_attacker(info: LabInfo, ns: str) -> Attacker:
    sw = info.ns("switch").name
    _sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
         "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_ra=0",
         "net.ipv6.conf.default.accept_ra=0"])
    _sh(["ip", "-n", sw, "link", "add", "at", "type", "veth", "peer", "name", "eth0", "netns", ns])
    _sh(["ip", "-n", ns, "link", "set", "eth0", "address", ATTACKER_MAC])
    _sh(["ip", "-n", sw, "link", "set", "at", "master", "br0", "up"])
    _sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
    _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    _sh(["ip", "-n", ns, "-6", "addr", "add", f"{ATTACKER_SWITCHED_ADDRESS}/64", "dev", "eth0", "nodad"])
    for port in ("ga", "gb"):  # everything either gateway sends is copied to the attacker's port
        _sh(["ip", "netns", "exec", sw, "tc", "qdisc", "add", "dev", port, "clsact"])
        _sh(["ip", "netns", "exec", sw, "tc", "filter", "add", "dev", port, "ingress", "protocol", "all",
             "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "at"])
    deadline = time.monotonic() + 10
    while _operstate(ns, "eth0") != "up":
        assert time.monotonic() < deadline, "attacker's link did not come up"
        time.sleep(0.05)
    return Attacker(ns=ns, address=ATTACKER_SWITCHED_ADDRESS,
                    ports={"gateway-a": ("eth0", ATTACKER_MAC), "gateway-b": ("eth0", ATTACKER_MAC)},
                    watch=("eth0",), macs=frozenset({ATTACKER_MAC}))


def _operstate(ns: str, iface: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{iface}/operstate"],
                       capture_output=True, text=True, timeout=10)
    return r.stdout.strip()


def _routed_attacker(info: LabInfo) -> Attacker:
    rt = info.ns("router")
    ports = {}
    for role in ("gateway-a", "gateway-b"):
        gw = info.ns(role).name
        port = next(i for i in rt.interfaces if i.peer and i.peer.startswith(gw + "/"))
        ports[role] = (port.name, port.mac)
    return Attacker(ns=rt.name, address=labmod.ROUTER_A, ports=ports, watch=("ga", "gb"),
                    macs=frozenset(m for _, m in ports.values()))


def attack_lab(topology: str, rotation: float, **kw: Any) -> Iterator[AttackLab]:
    """A lab with an attacker on its external link; everything is removed afterwards."""
    prefix = "at" + secrets.token_hex(3)  # 8 characters, the most a lab prefix may have
    lab = Lab(prefix, topology, rotation_time=rotation, **kw)
    attacker_ns = f"{prefix}-at"
    made_attacker = False
    try:
        info = lab.up()
        if topology == "switched":
            made_attacker = True  # before creating: a half-made namespace is deleted too
            _sh(["ip", "netns", "add", attacker_ns])
            attacker = _add_switched_attacker(info, attacker_ns)
        else:
            attacker = _routed_attacker(info)
        yield AttackLab(lab, info, attacker)
    finally:
        if made_attacker:
            subprocess.run(["ip", "netns", "del", attacker_ns], check=False, timeout=30)
        lab.down()
        stray = labmod.namespaces_with_prefix(prefix)
        for ns in stray:
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)
        assert not stray, f"left behind: {stray}"


# --- sending and capturing ---------------------------------------------------------------------


def write_frames(path: Path, frames_: Sequence[bytes]) -> None:
    with open(path, "wb") as f:
        for fr in frames_:
            f.write(struct.pack("!I", len(fr)) + fr)


def send_frames(lab: Lab, ns: str, iface: str, frames_: Sequence[bytes], *, rounds: int = 1,
                gap: float = 0.0) -> int:
    """Send Ethernet frames on ``iface`` in namespace ``ns``; returns how many were sent."""
    path = lab.dir / f"frames-{secrets.token_hex(4)}.bin"
    write_frames(path, frames_)
    try:
        r = lab.exec(ns, [sys.executable, str(SENDFRAMES), iface, str(path), "--rounds", str(rounds),
                          "--gap", str(gap)], timeout=300)
    finally:
        path.unlink(missing_ok=True)
    return int(r.stdout.strip())


@contextmanager
def sniff(lab: Lab, ns: str, iface: str, path: Path, filt: str = "ip6", snaplen: int = 0) -> Iterator[Path]:
    """tcpdump on ``iface`` in ``ns`` for the block (whole frames unless ``snaplen``)."""
    with capture(lab, ns, iface, path, filt, snaplen) as captured:
        yield captured


# --- reading frames ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pkt:
    """An IPv6 packet in an Ethernet frame, with its upper-layer header found."""

    time: float
    frame: bytes
    src_mac: str
    dst_mac: str
    ip: bytes
    nh: int  # final next header after hop-by-hop, routing, fragment and destination options
    l4: bytes  # from the upper-layer header on
    fragment: bool

    @property
    def src(self) -> str:
        return a_str(self.ip[8:24])

    @property
    def dst(self) -> str:
        return a_str(self.ip[24:40])

    @property
    def icmp_type(self) -> int | None:
        return self.l4[0] if self.nh == 58 and self.l4 else None

    def describe(self) -> str:
        what = f"next header {self.nh}"
        if self.nh == 58 and self.l4:
            what = f"ICMPv6 type {self.l4[0]} code {self.l4[1] if len(self.l4) > 1 else '?'}"
        elif self.nh in (6, 17) and len(self.l4) >= 4:
            sport, dport = struct.unpack_from("!HH", self.l4)
            what = f"{'TCP' if self.nh == 6 else 'UDP'} {sport} -> {dport}"
            if self.nh == 6 and len(self.l4) >= 14:
                what += f" flags 0x{self.l4[13]:02x}"
        return f"{self.src_mac} -> {self.dst_mac}: {self.src} -> {self.dst} {what}"


def walk(ip: bytes) -> tuple[int, int, bool]:
    """(final next header, its offset, whether a fragment header was seen)."""
    nh, off, frag = ip[6], 40, False
    while nh in (0, 43, 44, 60) and off + 8 <= len(ip):
        if nh == 44:
            frag = True
            if struct.unpack_from("!H", ip, off + 2)[0] & 0xFFF8:  # not the first fragment
                return ip[off], len(ip), True
            nh, off = ip[off], off + 8
        else:
            nh, off = ip[off], off + (ip[off + 1] + 1) * 8
    return nh, off, frag


def parse(t: float, frame: bytes) -> Pkt | None:
    if len(frame) < 54 or frame[12:14] != ETH_IPV6:
        return None
    ip = frame[14:]
    nh, off, frag = walk(ip)
    return Pkt(t, frame, frame[6:12].hex(":"), frame[0:6].hex(":"), ip, nh, ip[off:], frag)


def packets(paths: Path | Sequence[Path]) -> list[Pkt]:
    out = []
    for path in [paths] if isinstance(paths, Path) else paths:
        for t, fr in frames(path):
            p = parse(t, fr)
            if p is not None:
                out.append(p)
    return sorted(out, key=lambda p: p.time)


def from_gateways(al: AttackLab, pkts: Sequence[Pkt]) -> list[Pkt]:
    macs = set(al.gw_macs.values())
    return [p for p in pkts if p.src_mac in macs]


def host_secrets(info: LabInfo) -> dict[bytes, str]:
    """Every true address and host MAC, as the bytes to look for and a name to report."""
    out: dict[bytes, str] = {}
    for ns in info.namespaces:
        if ns.role.startswith("host") and ns.address and ns.mac:
            out[a16(ns.address)] = f"true address {ns.address} of {ns.role}"
            out[mac_bytes(ns.mac)] = f"MAC {ns.mac} of {ns.role}"
    return out


def leaks(al: AttackLab, pkts: Sequence[Pkt]) -> list[str]:
    """Frames a gateway sent onto the external link that carry a true address or a host MAC."""
    needles = host_secrets(al.info)
    found = []
    for p in from_gateways(al, pkts):
        for raw, name in needles.items():
            if raw in p.frame:
                found.append(f"{name} in {p.describe()}")
    return found


def assert_no_leaks(al: AttackLab, pkts: Sequence[Pkt], what: str = "") -> None:
    found = leaks(al, pkts)
    assert not found, (f"{what}: " if what else "") + (
        f"{len(found)} frame(s) from a gateway on the external link carry a true address or host MAC; "
        f"first: {found[:4]}")


# --- building packets --------------------------------------------------------------------------


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def l4_checksum(src: bytes, dst: bytes, nh: int, segment: bytes) -> int:
    pseudo = src + dst + struct.pack("!IxxxB", len(segment), nh)
    c = csum(pseudo + segment)
    return c or 0xFFFF


def ip6(src: str | bytes, dst: str | bytes, nh: int, payload: bytes, hlim: int = 64) -> bytes:
    s = src if isinstance(src, bytes) else a16(src)
    d = dst if isinstance(dst, bytes) else a16(dst)
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, hlim) + s + d + payload


def udp(src: str, dst: str, sport: int, dport: int, data: bytes, hlim: int = 64) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = l4_checksum(a16(src), a16(dst), 17, seg)
    return ip6(src, dst, 17, seg[:6] + struct.pack("!H", c) + seg[8:], hlim)


def icmp6(src: str, dst: str, typ: int, code: int, body: bytes, hlim: int = 64) -> bytes:
    msg = struct.pack("!BBH", typ, code, 0) + body
    c = l4_checksum(a16(src), a16(dst), 58, msg)
    return ip6(src, dst, 58, msg[:2] + struct.pack("!H", c) + msg[4:], hlim)


def echo_request(src: str, dst: str, ident: int, data: bytes, hlim: int = 64) -> bytes:
    return icmp6(src, dst, ECHO_REQUEST, 0, struct.pack("!HH", ident, 1) + data, hlim)


def tcp_syn(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 8192, 0, 0)
    c = l4_checksum(a16(src), a16(dst), 6, hdr)
    return ip6(src, dst, 6, hdr[:16] + struct.pack("!H", c) + hdr[18:])


def neighbor_solicitation(src: str, dst: str, target: str, lladdr: str) -> bytes:
    body = b"\0\0\0\0" + a16(target) + bytes([1, 1]) + mac_bytes(lladdr)
    return icmp6(src, dst, NS, 0, body, hlim=255)


def fix_udp_checksum(ip: bytes) -> bytes:
    """Recompute the UDP checksum of a (tunnel) packet: after a forged byte the kernel lets it in."""
    nh, off, _ = walk(ip)
    assert nh == 17, nh
    seg = bytearray(ip[off:])
    seg[6:8] = b"\0\0"
    seg[6:8] = struct.pack("!H", l4_checksum(ip[8:24], ip[24:40], 17, bytes(seg)))
    return ip[:off] + bytes(seg)


# --- the gateways' state -----------------------------------------------------------------------


def routes(al: AttackLab, gateway: str) -> list[dict[str, Any]]:
    """The first stream's installed routes at ``gateway``, newest first, each with its state."""
    gw = al.info.ns(gateway)
    assert gw.runtime_dir is not None
    reply = request(Path(gw.runtime_dir), b"routes")
    assert isinstance(reply, dict), f"no routes from {gateway}"
    return list(reply["streams"][0]["routes"])


def bound_hashed(al: AttackLab, gateway: str) -> set[str]:
    """The hashed addresses the gateway holds now: every global address in its namespace that is
    not a host's true address (on ext0 today, wherever a fix may put them), and the local
    addresses of its installed routes."""
    r = al.lab.exec(al.info.ns(gateway).name, ["ip", "-6", "-j", "addr", "show"])
    out = {r_["local"] for r_ in routes(al, gateway)}
    for link in json.loads(r.stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global":
                out.add(a["local"])
    return out - set(al.info.true_addresses)


def stream_worker(al: AttackLab, gateway: str) -> dict[str, Any]:
    name = status(al.info, gateway)["streams"][0]["name"]
    return worker(al.info, name, gateway)


def private_kb(pid: int) -> int:
    """Private_Clean + Private_Dirty of a process, in kB (smaps_rollup)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def drops(w: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in w["counters"].items() if k.startswith("drop_")}


def firewall_counters(al: AttackLab, gateway: str, needle: str) -> dict[str, int]:
    """Packet counts of the gateway's ip6tables-legacy rules (every table) whose comment contains
    ``needle``, by table and rule text without its counters."""
    out: dict[str, int] = {}
    for table in ("raw", "mangle", "filter"):
        r = al.lab.exec(al.info.ns(gateway).name, ["ip6tables-legacy", "-t", table, "-S", "-v", "-w"],
                        check=False)
        for line in r.stdout.splitlines():
            cols = line.split()
            if "--comment" in cols and needle in line and "-c" in cols:
                i = cols.index("-c")
                out[f"{table}: {' '.join(cols[:i] + cols[i + 3:])}"] = int(cols[i + 1])
    return out


# --- a receiver in a host ----------------------------------------------------------------------

UDP_SINK = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
out = open(sys.argv[3], "a", buffering=1)
while True:
    data, peer = s.recvfrom(70000)
    out.write(f"{peer[0]} {len(data)} {data[:64].hex()}\n")
"""


@dataclass
class UdpSink:
    """A UDP receiver in a host; every datagram it gets is one line of ``path``."""

    lab: Lab
    pid: int
    path: Path

    def received(self) -> list[tuple[str, int, bytes]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            peer, n, head = line.split(" ")
            out.append((peer, int(n), bytes.fromhex(head)))
        return out

    def count(self, marker: bytes) -> int:
        return sum(1 for _, _, head in self.received() if marker in head)


@contextmanager
def udp_sink(lab: Lab, ns: str, address: str, port: int) -> Iterator[UdpSink]:
    path = lab.dir / f"sink-{port}-{secrets.token_hex(3)}.txt"
    pid = lab.spawn(ns, [sys.executable, "-c", UDP_SINK, address, str(port), str(path)],
                    name=f"udp-sink-{port}")
    deadline = time.monotonic() + 10
    needle = f":{port:04X} "
    while True:  # until the socket is bound
        with contextlib.suppress(OSError):
            if any(needle in line for line in Path(f"/proc/{pid}/net/udp6").read_text().splitlines()[1:]):
                break
        assert time.monotonic() < deadline, "UDP sink did not bind"
        time.sleep(0.05)
    try:
        yield UdpSink(lab, pid, path)
    finally:
        lab.stop(pid)
        path.unlink(missing_ok=True)


SEND_UDP = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
"""


def host_send_udp(lab: Lab, ns: str, address: str, port: int, data: bytes) -> None:
    lab.exec(ns, [sys.executable, "-c", SEND_UDP, address, str(port), data.hex()])


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def neighbour_mac(lab: Lab, ns: str, address: str) -> str | None:
    r = lab.exec(ns, ["ip", "-6", "-j", "neigh", "show", "to", address, "dev", "eth0"], check=False)
    with contextlib.suppress(json.JSONDecodeError):
        for n in json.loads(r.stdout or "[]"):
            mac = n.get("lladdr")
            return str(mac) if mac else None
    return None



def ctl(al: AttackLab, gateway: str, *args: str) -> str:
    """``mt6dctl -c CONFIG ARGS`` for ``gateway``; fails the test if it fails."""
    config = al.info.ns(gateway).config
    assert config is not None
    r = subprocess.run([sys.executable, "-m", "mt6d_mp.ctl", "-c", config, *args], capture_output=True,
                       text=True, timeout=120, cwd=HERE.parents[1])
    assert r.returncode == 0, (f"mt6dctl {' '.join(args)} at {gateway}: exit {r.returncode}: "
                               f"{r.stdout}{r.stderr}")
    return r.stdout


def wait_worker_state(al: AttackLab, gateway: str, name: str, state: str, *, not_pid: int | None = None,
                      timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        w = worker(al.info, name, gateway)
        if w["state"] == state and (not_pid is None or w["pid"] != not_pid):
            return w
        assert time.monotonic() < deadline, f"worker {name} at {gateway} not {state}: {w}"
        time.sleep(0.1)


def route_state(al: AttackLab, gateway: str, local: str) -> str:
    """State of the route whose local hashed address is ``local`` ("gone" once uninstalled)."""
    for r in routes(al, gateway):
        if r["local"] == local:
            return str(r["state"])
    return "gone"


def tunnel_packets(al: AttackLab, pkts: Sequence[Pkt], sender: str) -> list[Pkt]:
    """Encrypted tunnel packets ``sender`` sent to the other gateway."""
    other = "gateway-b" if sender == "gateway-a" else "gateway-a"
    return [p for p in pkts if p.src_mac == al.gw_macs[sender] and p.dst_mac == al.gw_macs[other]
            and p.ip[6] == 60 and p.nh == 17]
