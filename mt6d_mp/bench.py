"""mt6d-bench: the thesis's test battery through MT6D and the tunnels an operator would pick instead.

One invocation measures, each in a fresh routed namespace lab (``mt6d_mp.lab``, topology
``routed``: site A 2001:db8:a::/64 - gateway A - router - gateway B - site B 2001:db8:b::/64):

* ``none``: no tunnel, plain kernel forwarding between the gateways (the ceiling);
* ``mt6d``: MT6D with encryption on and a rotation every ``--rotation-time`` seconds (2 s), so
  every test crosses rotations;
* ``openvpn``: OpenVPN 2.6 between the gateways' external addresses, UDP over IPv6, tun,
  AES-256-GCM, TLS with two self-signed certificates pinned by ``--peer-fingerprint``;
* ``wireguard-go``: wireguard-go on a TUN device in each gateway (the kernel has no WireGuard).

For the two tunnels the lab is built without MT6D; each gateway gets an outer address on ext0
(``2001:db8:a::fe``, ``2001:db8:b::fe``), the tunnel runs between those across the router, and
the other site's /64 is routed into the tunnel (with a /128 exception for the peer's outer
address via the router). Only the gateway namespaces are changed. Tunnel MTUs keep the outer
packets within 1500 bytes: wireguard-go 1420 (wg-quick's default), OpenVPN 1428
(1500 - 40 IPv6 - 8 UDP - 4 opcode/peer-id - 4 packet id - 16 GCM tag).

Tests per path (table 4.1 of the thesis, scaled; ``--quick`` in brackets): standard ping, 300
[50] at 0.2 s; ping floods of 10k and 50k [2k]; HTTP downloads from nginx with curl of 500 kB,
1 MB, 10 MB and 50 MB [500 kB, 10 MB], three [two] times each, SHA-256 checked; iperf3 TCP
10 s x3 [3 s x1]; iperf3 UDP at 100 Mbit/s with 1200-byte datagrams, 10 s x3 [3 s x1] (loss,
jitter). Each ping, flood and UDP run also records which drop counters grew while it ran, so a
loss comes with where it happened: per namespace Ip6In/OutDiscards, Udp6InErrors,
Udp6Rcvbuf/SndbufErrors and Icmp6InErrors (/proc/net/snmp6), per netfilter queue its
queue_dropped and user_dropped, and for MT6D every worker's ``drop_*`` counters.
Host metrics of each tunnel's processes on both gateways (for MT6D the supervisors and all their
children): CPU seconds (user + system, from /proc/PID/stat) per GB carried; private
memory per gateway at the start and after the run: the resident pages that only that gateway's
tunnel processes map (mt6d_mp/procmem.py; for one process it is its USS), and beside it the sums
of USS and PSS (from /proc/PID/smaps_rollup) and peak RSS (VmHWM).
MT6D only: the cost of one rotation (rehash cycle) for 1, 8 and 32 streams, in process
(``RouteList.advance`` for every stream) and on a running supervisor (its debug log line
``event=rotated seconds=...``: rehash plus addresses, firewall rules and bus messages).

Writes ``bench.json``, ``bench.md`` and PNG charts (``latency.png``, ``loss.png``,
``throughput.png``, ``host.png``, ``rotation.png``) into ``--out``. Medians with min-max over
the repeats. Needs root. Exit code 0 when every measurement ran, 1 when some failed (the
results are written either way), 2 for bad arguments, 4 without root, 5 when a program is missing.

Usage::

    mt6d-bench [--quick] [--out results/] [--paths none,mt6d,openvpn,wireguard-go]
               [--rotation-time S] [--rotation-streams 1,8,32] [--ping-count N] [--seconds S]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import functools
import hashlib
import json
import math
import operator
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from mt6d_mp import ctl
from mt6d_mp import lab as labmod
from mt6d_mp.core import config as cfgmod
from mt6d_mp.errors import EXIT_BAD_ARGS, EXIT_NOT_INSTALLED, EXIT_PRIVILEGE, Mt6dError
from mt6d_mp.lab import Lab, LabInfo
from mt6d_mp.procmem import group_private_kb

SCHEMA = "mt6d-bench/1"
PATHS = ("none", "mt6d", "openvpn", "wireguard-go")
TOPOLOGY = "routed"
SIDES = ("a", "b")
OUTER = {"a": "2001:db8:a::fe", "b": "2001:db8:b::fe"}  # the gateways' ext0 addresses (tunnels)
ROUTER = {"a": labmod.ROUTER_A, "b": labmod.ROUTER_B}
SITE = {"a": labmod.SITE_A_NET + "/64", "b": labmod.SITE_B_NET + "/64"}
OPENVPN_PORT = 1194
OPENVPN_TUN_MTU = 1428
WG_PORT = 51820
WG_MTU = 1420
IPERF_PORT = 5201
TUNNEL_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
GB = 1e9


# --- what to run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    mode: str
    paths: tuple[str, ...]
    rotation_time: float
    ping_count: int
    ping_interval: float
    floods: tuple[int, ...]
    http_sizes: tuple[int, ...]
    http_repeats: int
    tcp_seconds: int
    tcp_runs: int
    udp_rate_mbit: int
    udp_len: int
    udp_seconds: int
    udp_runs: int
    rotation_streams: tuple[int, ...]
    rotation_cycles: int  # in process, per stream count
    rotation_observe: float  # seconds of a running supervisor's rotations, per stream count
    rotation_system_time: float  # rotation_time of those labs


FULL = Plan(
    mode="full",
    paths=PATHS,
    rotation_time=2.0,
    ping_count=300,
    ping_interval=0.2,
    floods=(10_000, 50_000),
    http_sizes=(500_000, 1_000_000, 10_000_000, 50_000_000),
    http_repeats=3,
    tcp_seconds=10,
    tcp_runs=3,
    udp_rate_mbit=100,
    udp_len=1200,
    udp_seconds=10,
    udp_runs=3,
    rotation_streams=(1, 8, 32),
    rotation_cycles=500,
    rotation_observe=13.0,
    rotation_system_time=2.0,
)
QUICK = replace(
    FULL,
    mode="quick",
    ping_count=50,
    floods=(2_000,),
    http_sizes=(500_000, 10_000_000),
    http_repeats=2,
    tcp_seconds=3,
    tcp_runs=1,
    udp_seconds=3,
    udp_runs=1,
    rotation_cycles=100,
    rotation_observe=5.0,
)


# --- small helpers ----------------------------------------------------------------------------


class Progress:
    """Timestamped progress lines on stdout."""

    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.monotonic()
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)


def stats(values: Sequence[float | None]) -> dict[str, float | int] | None:
    """Median, min, max and count of the finite values; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tool_version(argv: Sequence[str]) -> str | None:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    os_name = None
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "os": os_name,
        "kernel": platform.release(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_mb": round(mem_kb / 1024) if mem_kb else None,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
        "tools": {
            "openvpn": _tool_version(["openvpn", "--version"]),
            "wireguard-go": _tool_version(["wireguard-go", "--version"]),
            "iperf3": _tool_version(["iperf3", "--version"]),
            "curl": _tool_version(["curl", "--version"]),
            "nginx": _tool_version(["nginx", "-v"]),
            "ping": _tool_version(["ping", "-V"]),
        },
    }


# --- processes: CPU and memory from /proc -----------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # [0] is field 3 (state)


def descendants(roots: Sequence[int]) -> list[int]:
    """``roots`` and every live process below them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            f = _stat_fields(int(entry.name))
            if f is not None and f[0] not in ("Z", "X"):
                children.setdefault(int(f[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [r for r in roots if _stat_fields(r) is not None]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo.extend(children.get(pid, []))
    return sorted(out)


CpuSnapshot = dict[tuple[int, int], tuple[str, float, float]]  # (pid, start) -> (side, user, sys)


@dataclass
class TunnelProcesses:
    """The processes of one tunnel, per gateway side; children are included when asked."""

    roots: dict[str, list[int]]
    with_children: bool = False

    def pids(self) -> dict[str, list[int]]:
        return {
            side: descendants(r) if self.with_children else [p for p in r if _stat_fields(p) is not None]
            for side, r in self.roots.items()
        }

    def cpu(self) -> CpuSnapshot:
        snap: CpuSnapshot = {}
        for side, pids in self.pids().items():
            for pid in pids:
                f = _stat_fields(pid)
                if f is not None:
                    snap[(pid, int(f[19]))] = (side, int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK)
        return snap

    def memory(self) -> dict[str, dict[str, int]]:
        """Per side, in kB: the side's private memory as a group (``group_kb``: resident pages
        that only its processes map, mt6d_mp/procmem.py), and USS, PSS, RSS and peak RSS (VmHWM)
        summed over the processes."""
        out: dict[str, dict[str, int]] = {}
        for side, pids in self.pids().items():
            tot = {"group_kb": group_private_kb(pids) or 0, "uss_kb": 0, "pss_kb": 0, "rss_kb": 0,
                   "peak_rss_kb": 0, "processes": 0}
            for pid in pids:
                try:
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                kv = _kv_kb(rollup)
                tot["uss_kb"] += kv.get("Private_Clean", 0) + kv.get("Private_Dirty", 0)
                tot["pss_kb"] += kv.get("Pss", 0)
                tot["rss_kb"] += kv.get("Rss", 0)
                tot["peak_rss_kb"] += _kv_kb(status).get("VmHWM", 0)
                tot["processes"] += 1
            out[side] = tot
        return out


def _kv_kb(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s+(\d+) kB", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """User and system seconds spent between two snapshots (new processes count in full)."""
    user = system = 0.0
    for key, (_side, u, s) in after.items():
        _s0, u0, s0 = before.get(key, ("", 0.0, 0.0))
        user += u - u0
        system += s - s0
    return {"user_s": user, "system_s": system, "total_s": user + system}


# --- the lab for one path ---------------------------------------------------------------------


@dataclass
class PathLab:
    path: str
    lab: Lab
    info: LabInfo
    procs: TunnelProcesses | None
    work: Path  # scratch directory of this path (keys, downloads)

    @property
    def src_ns(self) -> str:
        return self.info.ha

    @property
    def dst(self) -> str:
        address = self.info.host_b().address
        assert address
        return address


# Where a test's packets were dropped, from counters that the kernel and MT6D keep: per namespace
# (/proc/net/snmp6), per netfilter queue (the kernel's queue_dropped and user_dropped) and, for
# MT6D, its workers' drop_* counters. A loss figure then comes with where it happened.
SNMP6_DROPS = ("Ip6InDiscards", "Ip6OutDiscards", "Udp6InErrors", "Udp6RcvbufErrors",
               "Udp6SndbufErrors", "Icmp6InErrors")


def kernel_drops(role: str, text: str) -> Counter[str]:
    """Drop counters in /proc/net/snmp6 followed by /proc/net/netfilter/nfnetlink_queue."""
    found: Counter[str] = Counter()
    for line in text.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] in SNMP6_DROPS:
            found[f"{role} {f[0]}"] += int(f[1])
        elif len(f) >= 7 and f[0].isdigit():  # queue portid waiting mode range q_drop u_drop ...
            found[f"{role} nfqueue_dropped"] += int(f[5]) + int(f[6])
    return found


def drop_counters(pl: PathLab) -> Counter[str]:
    """Every drop counter of the lab, as ``"<namespace role> <counter>": value``."""
    found: Counter[str] = Counter()
    for n in pl.info.namespaces:
        text = pl.lab.exec(n.name, ["cat", "/proc/net/snmp6", "/proc/net/netfilter/nfnetlink_queue"],
                           check=False).stdout
        found.update(kernel_drops(n.role, text))
    if pl.path == "mt6d":
        for gw in (pl.info.gateway_a, pl.info.gateway_b):
            assert gw.runtime_dir
            status = ctl.Ctl(Path(gw.runtime_dir), timeout=5).call(b"status")
            for w in status["workers"]:
                for key, value in w.get("counters", {}).items():
                    if key.startswith("drop_"):
                        found[f"{gw.role} {w['name']} {key}"] += int(value)
    return found


def drops_between(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in sorted(after) if after[k] > before[k]}


def _gw(info: LabInfo, side: str) -> str:
    return info.ga if side == "a" else info.gb


def _add_outer_addresses(lab: Lab, info: LabInfo) -> None:
    for side in SIDES:
        lab.exec(_gw(info, side), ["ip", "-6", "addr", "add", f"{OUTER[side]}/64", "dev", "ext0", "nodad"])


def _route_through(lab: Lab, info: LabInfo, dev: dict[str, str]) -> None:
    """The other site's /64 into the tunnel; the peer's outer address stays via the router."""
    for side, other in (("a", "b"), ("b", "a")):
        ns = _gw(info, side)
        lab.exec(ns, ["ip", "-6", "route", "add", f"{OUTER[other]}/128", "via", ROUTER[side], "dev", "ext0"])
        lab.exec(ns, ["ip", "-6", "route", "add", SITE[other], "dev", dev[side]])


def _file_contains(path: Path, needle: str) -> bool:
    try:
        return needle in path.read_text(errors="replace")
    except OSError:
        return False


def _wait_for(what: str, ok: Callable[[], bool], timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if not alive():
            raise labmod.LabError(f"{what}: process exited")
        if time.monotonic() > deadline:
            raise labmod.LabError(f"{what}: not ready after {timeout:g} s")
        time.sleep(0.1)


def _self_signed(cn: str, directory: Path) -> tuple[Path, Path, str]:
    """A P-256 key and self-signed certificate; returns (cert, key, SHA-256 fingerprint)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{cn}.crt", directory / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex(":").upper()


def setup_openvpn(lab: Lab, info: LabInfo, work: Path) -> TunnelProcesses:
    _add_outer_addresses(lab, info)
    certs = {side: _self_signed(f"gw{side}", work) for side in SIDES}
    inner = {"a": "fd6d:b::1", "b": "fd6d:b::2"}
    roots: dict[str, list[int]] = {}
    logs: dict[str, Path] = {}
    for side, other in (("a", "b"), ("b", "a")):
        cert, key, _fp = certs[side]
        logs[side] = work / f"openvpn-{side}.log"
        argv = [
            "openvpn",
            "--dev",
            "ovpn0",
            "--dev-type",
            "tun",
            "--proto",
            "udp6",
            "--local",
            OUTER[side],
            "--remote",
            OUTER[other],
            "--port",
            str(OPENVPN_PORT),
            "--tls-server" if side == "a" else "--tls-client",
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--peer-fingerprint",
            certs[other][2],
            "--dh",
            "none",
            "--cipher",
            "AES-256-GCM",
            "--data-ciphers",
            "AES-256-GCM",
            "--disable-dco",
            "--tun-mtu",
            str(OPENVPN_TUN_MTU),
            "--ifconfig-ipv6",
            f"{inner[side]}/64",
            inner[other],
            "--ping",
            "10",
            "--verb",
            "3",
            "--mute-replay-warnings",
        ]
        roots[side] = [lab.spawn(_gw(info, side), argv, name=f"openvpn-{side}", log_path=logs[side])]
    for side in SIDES:
        pid = roots[side][0]
        log = logs[side]
        _wait_for(
            f"openvpn in gateway {side} (see {log})",
            functools.partial(_file_contains, log, "Initialization Sequence Completed"),
            TUNNEL_TIMEOUT,
            functools.partial(lab.alive, pid),
        )
    _route_through(lab, info, {"a": "ovpn0", "b": "ovpn0"})
    return TunnelProcesses(roots)


def _wg_keypair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    k = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    priv = k.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = k.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(priv).decode(), base64.b64encode(pub).decode()


def setup_wireguard(lab: Lab, info: LabInfo, work: Path) -> tuple[TunnelProcesses, dict[str, str]]:
    _add_outer_addresses(lab, info)
    # wireguard-go's control socket is /var/run/wireguard/<ifname>.sock, shared by every
    # namespace: the interface names carry the lab prefix so that labs never collide
    ifname = {side: f"wg{info.prefix}{side}" for side in SIDES}
    keys = {side: _wg_keypair() for side in SIDES}
    roots: dict[str, list[int]] = {}
    for side in SIDES:
        out = work / f"wireguard-go-{side}.log"
        pid = lab.spawn(
            _gw(info, side), ["wireguard-go", "-f", ifname[side]], name=f"wireguard-go-{side}", log_path=out
        )
        roots[side] = [pid]
        sock = Path(f"/var/run/wireguard/{ifname[side]}.sock")
        _wait_for(
            f"wireguard-go in gateway {side} (see {out})",
            sock.exists,
            TUNNEL_TIMEOUT,
            functools.partial(lab.alive, pid),
        )
    for side, other in (("a", "b"), ("b", "a")):
        ns = _gw(info, side)
        key_file = work / f"wg-{side}.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(keys[side][0] + "\n")
        lab.exec(
            ns,
            [
                "wg",
                "set",
                ifname[side],
                "private-key",
                str(key_file),
                "listen-port",
                str(WG_PORT),
                "peer",
                keys[other][1],
                "endpoint",
                f"[{OUTER[other]}]:{WG_PORT}",
                "allowed-ips",
                "::/0",
            ],
        )
        lab.exec(ns, ["ip", "link", "set", ifname[side], "mtu", str(WG_MTU), "up"])
    _route_through(lab, info, ifname)
    return TunnelProcesses(roots), ifname


@contextlib.contextmanager
def path_lab(path: str, plan: Plan, scratch: Path, progress: Progress, prefix: str) -> Iterator[PathLab]:
    """A fresh routed lab ``prefix`` carrying ``path``; always removed afterwards."""
    lab = Lab(prefix, TOPOLOGY, mt6d=path == "mt6d", rotation_time=plan.rotation_time)
    work = scratch / prefix
    work.mkdir(mode=0o700)
    try:
        t0 = time.monotonic()
        info = lab.up()
        procs: TunnelProcesses | None = None
        if path == "mt6d":
            pids = lab.pids()
            procs = TunnelProcesses({s: [pids[f"supervisor-{s}"]] for s in SIDES}, with_children=True)
        elif path == "openvpn":
            procs = setup_openvpn(lab, info, work)
        elif path == "wireguard-go":
            procs, _ = setup_wireguard(lab, info, work)
        progress(f"{path}: lab {prefix} up in {time.monotonic() - t0:.1f} s")
        yield PathLab(path, lab, info, procs, work)
    finally:
        if lab.claimed:
            try:
                lab.down()
            finally:
                shutil.rmtree(work, ignore_errors=True)


# --- the tests --------------------------------------------------------------------------------


_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def parse_ping(text: str) -> dict[str, Any]:
    m = _PING_COUNTS.search(text)
    if not m:
        raise ValueError(f"no ping summary in: {text.strip()[-300:]!r}")
    sent, got = int(m.group(1)), int(m.group(2))
    r = _PING_RTT.search(text)
    rtt = dict(zip(("min", "avg", "max", "mdev"), (float(x) for x in r.groups()), strict=True)) if r else None
    return {
        "sent": sent,
        "received": got,
        "loss_pct": 100.0 * (sent - got) / sent if sent else None,
        "rtt_ms": rtt,
    }


class Runner:
    """Runs the test battery on one PathLab; failures are recorded, never raised."""

    def __init__(self, pl: PathLab, plan: Plan, files: dict[int, tuple[Path, str]], progress: Progress):
        self.pl = pl
        self.plan = plan
        self.files = files
        self.say = progress
        self.errors: list[str] = []
        self.iperf_pid: int | None = None

    def log(self, msg: str) -> None:
        self.say(f"{self.pl.path}: {msg}")

    def fail(self, what: str, e: BaseException | str) -> None:
        msg = f"{what}: {e}"
        self.errors.append(msg)
        self.log(f"FAILED {msg}")

    def exec(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return self.pl.lab.exec(self.pl.src_ns, argv, check=False, timeout=timeout)

    def warm_up(self) -> None:
        """Until a reply comes back; then one full-size ping so the host learns the path MTU."""
        deadline = time.monotonic() + 15
        while True:
            r = self.exec(["ping", "-6", "-n", "-c", "1", "-W", "1", self.pl.dst], 10)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise labmod.LabError(f"no ping reply through {self.pl.path} in 15 s")
        self.exec(
            ["ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-s", "1452", self.pl.dst], 10
        )

    def drops(self) -> Counter[str] | None:
        try:
            return drop_counters(self.pl)
        except (Mt6dError, OSError, subprocess.SubprocessError, KeyError, ValueError) as e:
            self.fail("drop counters", e)
            return None

    def dropped_since(self, before: Counter[str] | None) -> dict[str, int] | None:
        """The drop counters that grew since ``before`` (None if either reading failed)."""
        after = self.drops() if before is not None else None
        return drops_between(before, after) if before is not None and after is not None else None

    def ping(self) -> dict[str, Any] | None:
        n, i = self.plan.ping_count, self.plan.ping_interval
        before = self.drops()
        try:
            r = self.exec(
                ["ping", "-6", "-n", "-q", "-c", str(n), "-i", f"{i:g}", "-W", "2", self.pl.dst],
                timeout=n * i + 30,
            )
            res = parse_ping(r.stdout)
        except (Mt6dError, ValueError) as e:
            self.fail("ping", e)
            return None
        res.update(count=n, interval_s=i, drops=self.dropped_since(before))
        rtt = res["rtt_ms"] or {}
        self.log(
            f"ping {n} x {i:g} s: avg {rtt.get('avg', float('nan')):.3f} ms, loss {res['loss_pct']:.2f}%"
            + _drops_text(res["drops"])
        )
        return res

    def flood(self, n: int) -> dict[str, Any]:
        deadline = max(30, n // 100)  # 10 ms per packet if every reply were lost
        res: dict[str, Any] = {
            "count": n,
            "sent": None,
            "received": None,
            "loss_pct": None,
            "rtt_ms": None,
            "seconds": None,
            "drops": None,
        }
        before = self.drops()
        t0 = time.monotonic()
        try:
            r = self.exec(
                ["ping", "-6", "-n", "-q", "-f", "-c", str(n), "-w", str(deadline), self.pl.dst],
                timeout=deadline + 30,
            )
            res.update(parse_ping(r.stdout))
        except (Mt6dError, ValueError) as e:
            self.fail(f"flood {n}", e)
            return res
        res["seconds"] = time.monotonic() - t0
        res["drops"] = self.dropped_since(before)
        rtt = res["rtt_ms"] or {}
        self.log(
            f"flood {n}: avg {rtt.get('avg', float('nan')):.3f} ms, loss {res['loss_pct']:.2f}%, "
            f"{res['seconds']:.1f} s" + _drops_text(res["drops"])
        )
        return res

    def http(self) -> list[dict[str, Any]]:
        pl = self.pl
        hb = pl.info.host_b()
        out: list[dict[str, Any]] = []
        try:
            pl.lab.start_http_server(hb.name, next(iter(self.files.values()))[0].parent, pl.dst)
        except Mt6dError as e:
            self.fail("http server", e)
            return [
                {"size": s, "runs": [], "mbyte_s": None, "seconds": None, "verified": False}
                for s in self.files
            ]
        dest = pl.work / "download.bin"
        for size, (src, digest) in self.files.items():
            runs: list[dict[str, Any]] = []
            for _ in range(self.plan.http_repeats):
                dest.unlink(missing_ok=True)
                url = f"http://[{pl.dst}]/{src.name}"
                try:
                    r = self.exec(
                        [
                            "curl",
                            "-sS",
                            "-g",
                            "--fail",
                            "--max-time",
                            "300",
                            "-o",
                            str(dest),
                            "-w",
                            "%{size_download} %{time_total}",
                            url,
                        ],
                        timeout=330,
                    )
                except Mt6dError as e:
                    self.fail(f"http {size}", e)
                    continue
                if r.returncode != 0:
                    self.fail(f"http {size}", f"curl exit {r.returncode}: {r.stderr.strip()}")
                    continue
                got, secs = (float(x) for x in r.stdout.split()[:2])
                ok = int(got) == size and _sha256(dest) == digest
                if not ok:
                    self.fail(f"http {size}", "downloaded file differs from the served file")
                runs.append(
                    {"seconds": secs, "mbyte_s": size / secs / 1e6 if secs > 0 else None, "verified": ok}
                )
            dest.unlink(missing_ok=True)
            entry: dict[str, Any] = {
                "size": size,
                "runs": runs,
                "mbyte_s": stats([x["mbyte_s"] for x in runs]),
                "seconds": stats([x["seconds"] for x in runs]),
                "verified": bool(runs)
                and len(runs) == self.plan.http_repeats
                and all(x["verified"] for x in runs),
            }
            out.append(entry)
            med = entry["mbyte_s"]["median"] if entry["mbyte_s"] else float("nan")
            self.log(
                f"http {size / 1e6:g} MB x{len(runs)}: median {med:.1f} MB/s, "
                f"sha256 {'ok' if entry['verified'] else 'NOT verified'}"
            )
        return out

    def _iperf_server(self, restart: bool = False) -> None:
        pl = self.pl
        if restart and self.iperf_pid is not None:
            with contextlib.suppress(Mt6dError):
                pl.lab.stop(self.iperf_pid)
            self.iperf_pid = None
        if self.iperf_pid is None:
            hb = pl.info.host_b()
            self.iperf_pid = pl.lab.spawn(
                hb.name,
                ["iperf3", "-s", "-B", pl.dst, "-p", str(IPERF_PORT)],
                name="iperf3-server",
                log_path=pl.work / "iperf3-server.log",
            )
            pl.lab.wait_listening(self.iperf_pid, IPERF_PORT, what="iperf3 server")

    def iperf(self, extra: Sequence[str], seconds: int) -> dict[str, Any]:
        """One iperf3 client run (JSON); one retry with a fresh server if it fails."""
        last = ""
        for attempt in range(2):
            self._iperf_server(restart=attempt > 0)
            argv = ["iperf3", "-c", self.pl.dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", *extra]
            r = self.exec(argv, timeout=seconds + 40)
            try:
                data: dict[str, Any] = json.loads(r.stdout)
            except json.JSONDecodeError:
                last = f"iperf3 exit {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}"
                continue
            if "error" in data:
                last = f"iperf3: {data['error']}"
                continue
            return data
        raise labmod.LabError(last)

    def tcp(self) -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        for k in range(self.plan.tcp_runs):
            try:
                end = self.iperf([], self.plan.tcp_seconds)["end"]
            except Mt6dError as e:
                self.fail(f"tcp run {k + 1}", e)
                continue
            rx, tx = end["sum_received"], end["sum_sent"]
            run = {
                "gbit_s": rx["bits_per_second"] / 1e9,
                "bytes": int(rx["bytes"]),
                "retransmits": int(tx.get("retransmits", 0)),
            }
            runs.append(run)
            self.log(
                f"tcp run {k + 1}/{self.plan.tcp_runs}: {run['gbit_s']:.3f} Gbit/s, "
                f"{run['retransmits']} retransmits"
            )
        return {
            "seconds": self.plan.tcp_seconds,
            "runs": runs,
            "gbit_s": stats([x["gbit_s"] for x in runs]),
            "retransmits": stats([x["retransmits"] for x in runs]),
            "bytes": sum(x["bytes"] for x in runs),
        }

    def udp(self) -> dict[str, Any]:
        p = self.plan
        runs: list[dict[str, Any]] = []
        for k in range(p.udp_runs):
            before = self.drops()
            try:
                end = self.iperf(["-u", "-b", f"{p.udp_rate_mbit}M", "-l", str(p.udp_len)], p.udp_seconds)[
                    "end"
                ]
            except Mt6dError as e:
                self.fail(f"udp run {k + 1}", e)
                continue
            s = end["sum"]
            run: dict[str, Any] = {
                "jitter_ms": float(s["jitter_ms"]),
                "loss_pct": float(s["lost_percent"]),
                "packets": int(s["packets"]),
                "lost": int(s["lost_packets"]),
                "gbit_s": float(s["bits_per_second"]) / 1e9,
                "bytes": int(s["bytes"]),
                "drops": self.dropped_since(before),
            }
            runs.append(run)
            self.log(
                f"udp run {k + 1}/{p.udp_runs} at {p.udp_rate_mbit} Mbit/s: loss {run['loss_pct']:.2f}%, "
                f"jitter {run['jitter_ms']:.3f} ms" + _drops_text(run["drops"])
            )
        return {
            "rate_mbit": p.udp_rate_mbit,
            "datagram_bytes": p.udp_len,
            "seconds": p.udp_seconds,
            "runs": runs,
            "jitter_ms": stats([x["jitter_ms"] for x in runs]),
            "loss_pct": stats([x["loss_pct"] for x in runs]),
            "bytes": sum(x["bytes"] for x in runs),
        }


def bench_path(
    path: str, plan: Plan, files: dict[int, tuple[Path, str]], scratch: Path, progress: Progress
) -> dict[str, Any]:
    """Every test on one path, in a lab of its own."""
    res: dict[str, Any] = {
        "path": path,
        "errors": [],
        "ping": None,
        "flood": [],
        "http": [],
        "tcp": None,
        "udp": None,
        "host": None,
        "lab": labmod.random_prefix("bn"),
    }
    t0 = time.monotonic()
    try:
        with path_lab(path, plan, scratch, progress, res["lab"]) as pl:
            run = Runner(pl, plan, files, progress)
            procs = pl.procs
            mem0 = procs.memory() if procs else None
            cpu0 = procs.cpu() if procs else None
            run.warm_up()
            res["ping"] = run.ping()
            res["flood"] = [run.flood(n) for n in plan.floods]
            res["http"] = run.http()
            c0 = procs.cpu() if procs else None
            res["tcp"] = run.tcp()
            c1 = procs.cpu() if procs else None
            res["udp"] = run.udp()
            if procs and mem0 is not None and cpu0 is not None and c0 is not None and c1 is not None:
                res["host"] = host_metrics(procs, mem0, cpu0, c0, c1, res, plan)
                h = res["host"]
                progress(
                    f"{path}: CPU {h['cpu_s_per_gb_tcp'] or float('nan'):.1f} s/GB (TCP), "
                    f"private memory per gateway {h['private_mb_per_gateway_end']:.1f} MB"
                )
            res["errors"] = run.errors
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a path that cannot be set up is reported, the others still run
        res["errors"].append(f"setup: {e}")
        progress(f"{path}: FAILED {e}")
    res["seconds"] = time.monotonic() - t0
    return res


def host_metrics(
    procs: TunnelProcesses,
    mem0: dict[str, dict[str, int]],
    cpu0: CpuSnapshot,
    tcp0: CpuSnapshot,
    tcp1: CpuSnapshot,
    res: dict[str, Any],
    plan: Plan,
) -> dict[str, Any]:
    mem1 = procs.memory()
    total = cpu_delta(cpu0, procs.cpu())
    tcp = cpu_delta(tcp0, tcp1)
    tcp_bytes = res["tcp"]["bytes"] if res["tcp"] else 0
    carried = tcp_bytes + (res["udp"]["bytes"] if res["udp"] else 0)
    for h in res["http"]:
        carried += h["size"] * len(h["runs"])
    if res["ping"]:
        carried += 2 * 104 * res["ping"]["received"]  # 56 data + 8 ICMPv6 + 40 IPv6, both ways
    for f in res["flood"]:
        carried += 2 * 104 * (f["received"] or 0)
    growth = [mem1[s]["group_kb"] - mem0[s]["group_kb"] for s in SIDES]
    uss_growth = [mem1[s]["uss_kb"] - mem0[s]["uss_kb"] for s in SIDES]
    return {
        "processes": {s: len(procs.pids()[s]) for s in SIDES},
        "cpu_all": total,
        "bytes_all": carried,
        "cpu_s_per_gb_all": total["total_s"] / (carried / GB) if carried else None,
        "cpu_tcp": tcp,
        "bytes_tcp": tcp_bytes,
        "cpu_s_per_gb_tcp": tcp["total_s"] / (tcp_bytes / GB) if tcp_bytes else None,
        "memory_start": mem0,
        "memory_end": mem1,
        "private_mb_per_gateway_start": max(mem0[s]["group_kb"] for s in SIDES) / 1024,
        "private_mb_per_gateway_end": max(mem1[s]["group_kb"] for s in SIDES) / 1024,
        "private_growth_mb_max": max(growth) / 1024,
        "uss_mb_per_gateway_start": max(mem0[s]["uss_kb"] for s in SIDES) / 1024,
        "uss_mb_per_gateway_end": max(mem1[s]["uss_kb"] for s in SIDES) / 1024,
        "pss_mb_per_gateway_end": max(mem1[s]["pss_kb"] for s in SIDES) / 1024,
        "uss_growth_mb_max": max(uss_growth) / 1024,
        "peak_rss_mb_both": sum(mem1[s]["peak_rss_kb"] for s in SIDES) / 1024,
    }


# --- rotation cost (MT6D) ---------------------------------------------------------------------


def rotation_in_process(streams: int, cycles: int, rotation_time: float) -> dict[str, Any]:
    """Seconds for one rotation of ``streams`` route lists (RouteList.advance each), pure code."""
    from mt6d_mp.core.routes import RouteList, StreamIdentity

    secret = os.urandom(64)
    lists = []
    for i in range(streams):
        ident = StreamIdentity(
            f"s{i}",
            bytes.fromhex("20010db8000a0000") + os.urandom(8),
            bytes([2, 0x6D, 0, 0xA0, i & 0xFF, 0]),
            bytes.fromhex("20010db8000b0000") + os.urandom(8),
            bytes([2, 0x6D, 0, 0xB0, i & 0xFF, 0]),
        )
        lists.append(RouteList(ident, lambda _e: (secret, 0), rotation_time, rotation_time))
    t = 1_700_000_000.0
    for rl in lists:
        rl.advance(t)
    samples = []
    for _ in range(cycles):
        t += rotation_time
        t0 = time.perf_counter()
        for rl in lists:
            rl.advance(t)
        samples.append(time.perf_counter() - t0)
    return {"streams": streams, "cycles": cycles, "seconds": stats(samples)}


# The supervisor with its own logger (only) at debug level, for its ``event=rotated`` lines.
# ``--log-level debug`` would also put the libraries at debug level (pyroute2 then logs every
# netlink message), which inflates the very rotations being measured.
_SUPERVISOR_ROTATION_DEBUG = """
import logging, sys
sys.path.insert(0, sys.argv.pop(1))
import supervisor
_setup = supervisor.setup_logging
def setup_logging(*args, **kwargs):
    _setup(*args, **kwargs)
    logging.getLogger("mt6d.supervisor").setLevel(logging.DEBUG)
supervisor.setup_logging = setup_logging
sys.exit(supervisor.main(sys.argv[1:]))
"""

_ROTATED = re.compile(r"event=rotated seconds=([\d.]+)")


def rotation_system(streams: int, plan: Plan, progress: Progress) -> dict[str, Any]:
    """Rotations of two running supervisors with ``streams`` streams, from their debug logs.

    The first rotation of each supervisor installs the whole window at start-up and is left out.
    """
    prefix = labmod.random_prefix("bn")
    lab = Lab(
        prefix,
        TOPOLOGY,
        streams=streams,
        rotation_time=plan.rotation_system_time,
        mt6d=True,
        start_supervisors=False,
    )
    res: dict[str, Any] = {
        "streams": streams,
        "lab": prefix,
        "rotation_time": plan.rotation_system_time,
        "samples": 0,
        "seconds": None,
        "error": None,
    }
    try:
        info = lab.up()
        gws = (info.gateway_a, info.gateway_b)
        pids = []
        for gw in gws:
            assert gw.config and gw.runtime_dir and gw.supervisor_out
            (Path(gw.runtime_dir) / "ready").unlink(missing_ok=True)
            pids.append(
                lab.spawn(
                    gw.name,
                    [
                        sys.executable,
                        "-c",
                        _SUPERVISOR_ROTATION_DEBUG,
                        str(labmod.SUPERVISOR.parent),
                        "--config",
                        gw.config,
                    ],
                    name=f"supervisor-{gw.role[-1]}",
                    log_path=Path(gw.supervisor_out),
                )
            )
        for gw, pid in zip(gws, pids, strict=True):
            assert gw.runtime_dir
            ready = Path(gw.runtime_dir) / "ready"
            _wait_for(
                f"supervisor in {gw.name} (see {gw.supervisor_out})",
                ready.exists,
                30 + streams,
                functools.partial(lab.alive, pid),
            )
        time.sleep(plan.rotation_observe)
        samples: list[float] = []
        for gw in gws:
            assert gw.log_file
            found = [
                float(m.group(1)) for m in _ROTATED.finditer(Path(gw.log_file).read_text(errors="replace"))
            ]
            samples += found[1:]
        res["samples"] = len(samples)
        res["seconds"] = stats(samples)
        if not samples:
            res["error"] = "no rotation logged"
    except KeyboardInterrupt:
        raise
    except Exception as e:
        res["error"] = str(e)
    finally:
        if lab.claimed:
            lab.down()
    s = res["seconds"]
    progress(
        f"rotation, {streams} stream(s), running supervisors: "
        + (
            f"median {s['median'] * 1e3:.2f} ms over {res['samples']} rotations"
            if s
            else f"FAILED {res['error']}"
        )
    )
    return res


def bench_rotation(plan: Plan, progress: Progress) -> dict[str, Any]:
    inproc = []
    for n in plan.rotation_streams:
        r = rotation_in_process(n, plan.rotation_cycles, plan.rotation_time)
        s = r["seconds"]
        progress(f"rotation, {n} stream(s), in process: median {s['median'] * 1e6:.1f} us")
        inproc.append(r)
    system = [rotation_system(n, plan, progress) for n in plan.rotation_streams]
    return {"in_process": inproc, "system": system}


# --- targets (issue 4), as ratios from this run -----------------------------------------------


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if d is None:
            return None
        if isinstance(d, dict):
            d = d.get(k)
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def _flood(p: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
    for f in _get(p, "flood") or []:
        if f["count"] == n:
            r: dict[str, Any] = f
            return r
    return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 4: MT6D's figure, the reference figure, and whether it is met."""
    P = results["paths"]
    m, o, w, n = P.get("mt6d"), P.get("openvpn"), P.get("wireguard-go"), P.get("none")
    out: list[dict[str, Any]] = []
    if m is None:
        return out

    def add(name: str, mt6d: float | None, ref: float | None, unit: str,
            met: Callable[[float, float], bool] = operator.le) -> None:
        """One target; ``met(mt6d, ref)`` decides it, unknown (None) when either figure is missing."""
        ok = None if mt6d is None or ref is None else met(mt6d, ref)
        out.append(
            {"target": name, "mt6d": _finite(mt6d), "reference": _finite(ref), "unit": unit, "met": ok}
        )

    peers = [
        x for x in (_get(o, "tcp", "gbit_s", "median"), _get(w, "tcp", "gbit_s", "median")) if x is not None
    ]
    add("TCP throughput >= faster of OpenVPN and wireguard-go", _get(m, "tcp", "gbit_s", "median"),
        max(peers) if peers else None, "Gbit/s", operator.ge)
    add("standard ping average <= OpenVPN's", _get(m, "ping", "rtt_ms", "avg"),
        _get(o, "ping", "rtt_ms", "avg"), "ms")
    add("zero loss, standard ping (rotations included)", _get(m, "ping", "loss_pct"), 0.0, "%",
        operator.eq)
    if results["plan"]["floods"]:
        nf = min(results["plan"]["floods"])
        add(f"zero loss, flood of {nf}", _get(_flood(m, nf), "loss_pct"), 0.0, "%", operator.eq)
    jn = _get(n, "udp", "jitter_ms", "median")
    add("UDP jitter <= 2 x no-MT6D + 0.05 ms", _get(m, "udp", "jitter_ms", "median"),
        None if jn is None else 2 * jn + 0.05, "ms")
    add("CPU seconds per GB (TCP) <= OpenVPN's", _get(m, "host", "cpu_s_per_gb_tcp"),
        _get(o, "host", "cpu_s_per_gb_tcp"), "s/GB")
    add("private memory per gateway <= wireguard-go's",
        _get(m, "host", "private_mb_per_gateway_end"), _get(w, "host", "private_mb_per_gateway_end"),
        "MB")
    add("private memory growth over the run < 1 MB", _get(m, "host", "private_growth_mb_max"), 1.0,
        "MB", operator.lt)
    sysr = {r["streams"]: _get(r, "seconds", "median") for r in _get(results, "rotation", "system") or []}
    ks = sorted(k for k, v in sysr.items() if v is not None)
    if len(ks) >= 2:
        lo, hi = ks[0], ks[-1]
        # linear or better: the cost per stream must not grow with the number of streams
        # (25 % tolerance for a noisy machine)
        add(f"rotation cost per stream, {hi} vs {lo} streams (linear: ratio <= 1, 1.25 for noise)",
            (sysr[hi] / hi) / (sysr[lo] / lo), 1.0, "ratio", lambda ratio, _: ratio <= 1.25)
    return out


# --- output: markdown, charts -----------------------------------------------------------------


def loss_drops(d: dict[str, Any]) -> dict[str, int] | None:
    """The drop counters that grew during the path's loss tests, summed; None if unread."""
    tests = [d.get("ping"), *d.get("flood", []), *(_get(d, "udp", "runs") or [])]
    total: Counter[str] = Counter()
    for t in tests:
        if not t or t.get("drops") is None:
            return None
        total.update(t["drops"])
    return dict(total)


def _drops_list(drops: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))


def drops_cell(d: dict[str, Any]) -> str:
    drops = loss_drops(d)
    return "-" if drops is None else _drops_list(drops) or "none"


def _drops_text(drops: dict[str, int] | None) -> str:
    return "; dropped: " + _drops_list(drops) if drops else ""


def _fmt(s: dict[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str:
    if not s:
        return "-"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    if s.get("n", 1) > 1:
        return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"
    return f"{med:.{digits}f}"


def _num(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.{digits}f}{suffix}"


def _size(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 1_000_000 else f"{n / 1e3:g} kB"


def markdown(results: dict[str, Any], charts_written: Sequence[str] = ()) -> str:
    plan = results["plan"]
    paths = [p for p in PATHS if p in results["paths"]]
    P = results["paths"]
    mach = results["machine"]
    lines = [
        f"# mt6d-bench results ({plan['mode']} mode)",
        "",
        f"Run {mach['date']} on {mach['os']}, kernel {mach['kernel']}, {mach['cpu_model']}, "
        f"{mach['cores']} cores, {mach['memory_mb']} MB RAM, Python {mach['python']}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in mach['loadavg_start'])}, at end "
        f"{' '.join(f'{x:.2f}' for x in mach.get('loadavg_end', []))}. Took {results['duration_s']:.0f} s.",
        "",
        "Tools: " + "; ".join(f"{k}: {v}" for k, v in mach["tools"].items() if v),
        "",
        f"Routed namespace lab (site A - gateway A - router - gateway B - site B, MTU 1500); every path in a "
        f"fresh lab; the test traffic runs from host A to host B. MT6D: encryption on (AES-256-GCM), "
        f"rotation every {plan['rotation_time']:g} s, every other setting at its default (keep-warm every "
        f"{cfgmod.SCHEMA['tunnel']['keep_warm_ms'].default} ms). Figures are medians with min-max over "
        f"the repeats in "
        f"brackets; ping rows give the ping summary (avg, with min-max over the packets).",
        "",
        "| test | " + " | ".join(paths) + " |",
        "|---|" + "---|" * len(paths),
    ]

    def row(name: str, f: Callable[[dict[str, Any]], str]) -> None:
        cells = []
        for p in paths:
            try:
                cells.append(f(P[p]))
            except (KeyError, TypeError, IndexError):
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    def rtt(d: dict[str, Any] | None) -> str:
        r = _get(d, "rtt_ms")
        return "-" if not r else f"{r['avg']:.3f} ({r['min']:.3f}-{r['max']:.3f})"

    row(f"ping {plan['ping_count']} x {plan['ping_interval']:g} s: rtt ms", lambda d: rtt(d["ping"]))
    row("ping: loss %", lambda d: _num(d["ping"]["loss_pct"]))

    def flood_rtt(d: dict[str, Any], n: int) -> str:
        return rtt(_flood(d, n))

    def flood_num(d: dict[str, Any], n: int, key: str, digits: int) -> str:
        return _num(_get(_flood(d, n), key), digits)

    def http_cell(d: dict[str, Any], i: int) -> str:
        h = d["http"][i]
        return _fmt(h["mbyte_s"], digits=1) + ("" if h["verified"] else " (NOT verified)")

    for n in plan["floods"]:
        row(f"flood {n}: rtt ms", functools.partial(flood_rtt, n=n))
        row(f"flood {n}: loss %", functools.partial(flood_num, n=n, key="loss_pct", digits=2))
        row(f"flood {n}: duration s", functools.partial(flood_num, n=n, key="seconds", digits=1))
    for i, size in enumerate(plan["http_sizes"]):
        row(f"HTTP {_size(size)}: MB/s", functools.partial(http_cell, i=i))
    row(
        f"iperf3 TCP {plan['tcp_seconds']} s x{plan['tcp_runs']}: Gbit/s",
        lambda d: _fmt(d["tcp"]["gbit_s"], digits=3),
    )
    row("iperf3 TCP: retransmits", lambda d: _fmt(d["tcp"]["retransmits"], digits=0))
    udp = (
        f"iperf3 UDP {plan['udp_rate_mbit']} Mbit/s, {plan['udp_len']} B, "
        f"{plan['udp_seconds']} s x{plan['udp_runs']}"
    )
    row(f"{udp}: loss %", lambda d: _fmt(d["udp"]["loss_pct"], digits=2))
    row(f"{udp}: jitter ms", lambda d: _fmt(d["udp"]["jitter_ms"], digits=3))
    row("drops counted during ping, floods and UDP (where)", drops_cell)
    row(
        "tunnel processes (gateway A + B)",
        lambda d: "-" if not d["host"] else f"{d['host']['processes']['a']} + {d['host']['processes']['b']}",
    )
    row("CPU s per GB, iperf3 TCP (user+system)", lambda d: _num(d["host"]["cpu_s_per_gb_tcp"], 1))
    row("CPU s per GB, whole run", lambda d: _num(d["host"]["cpu_s_per_gb_all"], 1))
    row(
        "CPU s, whole run (user / system)",
        lambda d: f"{d['host']['cpu_all']['user_s']:.1f} / {d['host']['cpu_all']['system_s']:.1f}",
    )
    row(
        "private MB per gateway (max of A, B): start -> end",
        lambda d: (f"{d['host']['private_mb_per_gateway_start']:.1f} -> "
                   f"{d['host']['private_mb_per_gateway_end']:.1f}"),
    )
    row(
        "sum of USS MB per gateway (max of A, B): start -> end",
        lambda d: f"{d['host']['uss_mb_per_gateway_start']:.1f} -> {d['host']['uss_mb_per_gateway_end']:.1f}",
    )
    row("sum of PSS MB per gateway (max of A, B), end",
        lambda d: _num(d["host"]["pss_mb_per_gateway_end"], 1))
    row("peak RSS MB, both gateways", lambda d: _num(d["host"]["peak_rss_mb_both"], 1))
    row("errors", lambda d: str(len(d["errors"])))

    rot = results.get("rotation")
    if rot:
        lines += [
            "",
            "## MT6D rotation cost (one rehash cycle for all streams)",
            "",
            "In process: `RouteList.advance` of every stream (the hashing). Running supervisors: the "
            "supervisor's `event=rotated seconds=` debug line, i.e. hashing plus binding and releasing "
            f"addresses, firewall rules and bus messages (labs with rotation every "
            f"{plan['rotation_system_time']:g} s; both gateways' rotations pooled, the start-up "
            "rotation left out).",
            "",
            "| streams | in process, us | running supervisors, ms | rotations measured |",
            "|---|---|---|---|",
        ]
        sysd = {r["streams"]: r for r in rot["system"]}
        for r in rot["in_process"]:
            s = sysd.get(r["streams"], {})
            lines.append(
                f"| {r['streams']} | {_fmt(r['seconds'], 1e6, 1)} | {_fmt(s.get('seconds'), 1e3, 2)} | "
                f"{s.get('samples', '-')} |"
            )
    tg = results.get("targets") or []
    if tg:
        lines += [
            "",
            "## Issue 4 targets, from this run",
            "",
            "| target | MT6D | reference | met |",
            "|---|---|---|---|",
        ]
        for t in tg:
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(
                f"| {t['target']} | {_num(t['mt6d'], 3)} {t['unit']} | "
                f"{_num(t['reference'], 3)} {t['unit']} | {met} |"
            )
    errs = [(p, e) for p in paths for e in P[p]["errors"]]
    if errs:
        lines += ["", "## Errors", ""] + [f"- {p}: {e}" for p, e in errs]
    if charts_written:
        lines += ["", "Charts: " + ", ".join(f"[{c}]({c})" for c in charts_written) + "."]
    lines.append("")
    return "\n".join(lines)


COLOURS = {"none": "#7f7f7f", "mt6d": "#d62728", "openvpn": "#1f77b4", "wireguard-go": "#2ca02c"}


def charts(results: dict[str, Any], out: Path) -> list[str]:
    """PNG charts in the style of the thesis's figures 5.22-5.24; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    P = results["paths"]
    plan = results["plan"]
    paths = [p for p in PATHS if p in P]
    written: list[str] = []

    def grouped(
        ax: Any,
        groups: list[str],
        series: dict[str, list[tuple[float | None, float | None, float | None]]],
        ylabel: str,
        title: str,
        digits: int = 2,
        log: bool = False,
    ) -> None:
        """Bars: one group per x label, one bar per path; (value, low, high) with whiskers."""
        if log:
            ax.set_yscale("log")
        width = 0.8 / max(1, len(series))
        for j, (path, vals) in enumerate(series.items()):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
            ys = [v if v is not None and (v > 0 or not log) else math.nan for v, _, _ in vals]
            lo = [max(0.0, (v - low)) if v is not None and low is not None else 0.0 for v, low, _ in vals]
            hi = [max(0.0, (high - v)) if v is not None and high is not None else 0.0 for v, _, high in vals]
            bars = ax.bar(
                xs,
                ys,
                width,
                label=path,
                color=COLOURS.get(path),
                yerr=[lo, hi] if any(lo) or any(hi) else None,
                capsize=3,
                error_kw={"elinewidth": 0.8, "alpha": 0.7},
            )
            for b, (v, _, _) in zip(bars, vals, strict=True):
                if not math.isfinite(b.get_height()):
                    continue
                ax.annotate(
                    "n/a" if v is None else f"{v:.{digits}f}",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)

    def st(s: dict[str, Any] | None, scale: float = 1.0) -> tuple[float | None, float | None, float | None]:
        if not s:
            return (None, None, None)
        return (s["median"] * scale, s["min"] * scale, s["max"] * scale)

    def rt(d: dict[str, Any] | None) -> tuple[float | None, float | None, float | None]:
        r = _get(d, "rtt_ms")
        if not r:
            return (None, None, None)
        return (r["avg"], max(0.0, r["avg"] - r["mdev"]), r["avg"] + r["mdev"])

    # latency
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    groups = [f"ping {plan['ping_count']}\nx {plan['ping_interval']:g} s"] + [
        f"flood {n}" for n in plan["floods"]
    ]
    series = {p: [rt(P[p]["ping"])] + [rt(_flood(P[p], n)) for n in plan["floods"]] for p in paths}
    grouped(axes[0], groups, series, "round-trip time, ms", "Ping latency (average, whiskers +-mdev)", 3)
    series = {p: [st(_get(P[p], "udp", "jitter_ms"))] for p in paths}
    grouped(
        axes[1],
        [f"UDP {plan['udp_rate_mbit']} Mbit/s"],
        series,
        "jitter, ms",
        "UDP jitter (median, min-max)",
        3,
    )
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    # loss
    fig, ax = plt.subplots(figsize=(10, 4.5))
    groups = ["ping"] + [f"flood {n}" for n in plan["floods"]] + [f"UDP {plan['udp_rate_mbit']} Mbit/s"]

    def one(x: float | None) -> tuple[float | None, float | None, float | None]:
        return (x, x, x)

    series = {
        p: [one(_get(P[p], "ping", "loss_pct"))]
        + [one(_get(_flood(P[p], n), "loss_pct")) for n in plan["floods"]]
        + [st(_get(P[p], "udp", "loss_pct"))]
        for p in paths
    }
    grouped(ax, groups, series, "packet loss, %", "Packet loss (UDP: median, min-max)", 2)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
    written.append("loss.png")

    # throughput
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 3]})
    series = {p: [st(_get(P[p], "tcp", "gbit_s"))] for p in paths}
    grouped(
        axes[0],
        [f"iperf3 TCP {plan['tcp_seconds']} s"],
        series,
        "Gbit/s (log scale)",
        "TCP throughput (median, min-max)",
        log=True,
    )
    groups = [f"HTTP {_size(s)}" for s in plan["http_sizes"]]
    series = {
        p: [st(_get(P[p], "http", i, "mbyte_s")) for i in range(len(plan["http_sizes"]))] for p in paths
    }
    grouped(
        axes[1],
        groups,
        series,
        "MB/s (log scale)",
        "HTTP download, curl from nginx (median, min-max)",
        1,
        log=True,
    )
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    written.append("throughput.png")

    # host
    tunnels = [p for p in paths if P[p]["host"]]
    if tunnels:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        series = {
            p: [one(_get(P[p], "host", "cpu_s_per_gb_tcp")), one(_get(P[p], "host", "cpu_s_per_gb_all"))]
            for p in tunnels
        }
        grouped(
            axes[0],
            ["iperf3 TCP", "whole run"],
            series,
            "CPU seconds per GB",
            "CPU (user+system) of the tunnel processes, both gateways",
            1,
        )
        series = {
            p: [
                one(_get(P[p], "host", "private_mb_per_gateway_start")),
                one(_get(P[p], "host", "private_mb_per_gateway_end")),
                one(_get(P[p], "host", "uss_mb_per_gateway_end")),
                one(_get(P[p], "host", "pss_mb_per_gateway_end")),
            ]
            for p in tunnels
        }
        grouped(
            axes[1],
            ["private, start", "private, end", "sum of USS, end", "sum of PSS, end"],
            series,
            "MB",
            "Private memory per gateway (max of A and B)",
            1,
        )
        fig.tight_layout()
        fig.savefig(out / "host.png", dpi=110)
        plt.close(fig)
        written.append("host.png")

    # rotation
    rot = results.get("rotation")
    if rot and rot["in_process"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, label, scale, colour in (
            ("in_process", "in process (RouteList.advance)", 1e3, "#9467bd"),
            ("system", "running supervisor", 1e3, "#d62728"),
        ):
            pts = [(r["streams"], r["seconds"]) for r in rot[key] if r.get("seconds")]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            med = [s["median"] * scale for _, s in pts]
            lo = [(s["median"] - s["min"]) * scale for _, s in pts]
            hi = [(s["max"] - s["median"]) * scale for _, s in pts]
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label, color=colour)
            ax.plot(
                xs,
                [med[0] * x / xs[0] for x in xs],
                ls=":",
                color=colour,
                alpha=0.6,
                label=f"linear from {xs[0]} stream(s), {key.replace('_', ' ')}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(plan["rotation_streams"]))
        ax.set_xticklabels([str(x) for x in plan["rotation_streams"]])
        ax.set_xlabel("streams")
        ax.set_ylabel("ms per rotation (median, min-max)")
        ax.set_title("MT6D rotation cost")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "rotation.png", dpi=110)
        plt.close(fig)
        written.append("rotation.png")
    return written


# --- the whole run ----------------------------------------------------------------------------


def make_files(sizes: Sequence[int], directory: Path) -> dict[int, tuple[Path, str]]:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(directory.parent, 0o755)  # nginx reads it
    files: dict[int, tuple[Path, str]] = {}
    for size in sizes:
        path = directory / f"file-{size}.bin"
        h = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 1 << 20))
                f.write(block)
                h.update(block)
                left -= len(block)
        os.chmod(path, 0o644)
        files[size] = (path, h.hexdigest())
    return files


def run(plan: Plan, out: Path, progress: Progress) -> dict[str, Any]:
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "machine": machine(),
        "plan": asdict(plan),
        "paths": {},
        "rotation": None,
        "targets": [],
        "duration_s": 0.0,
    }
    progress(f"mt6d-bench {plan.mode}: paths {', '.join(plan.paths)}; output in {out}")
    scratch = Path(tempfile.mkdtemp(prefix="mt6d-bench-"))
    try:
        files = make_files(plan.http_sizes, scratch / "www")
        for path in plan.paths:
            progress(f"== {path}")
            results["paths"][path] = bench_path(path, plan, files, scratch, progress)
        if "mt6d" in plan.paths and plan.rotation_streams:
            progress("== MT6D rotation cost")
            results["rotation"] = bench_rotation(plan, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["duration_s"] = time.monotonic() - t0
    results["targets"] = targets(results)
    return results


def write(results: dict[str, Any], out: Path, progress: Progress) -> None:
    clean = _clean(results)
    (out / "bench.json").write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    try:
        written = charts(clean, out)
    except ImportError:
        progress("matplotlib is not installed (pip install -e '.[bench]'): no charts")
        written = []
    (out / "bench.md").write_text(markdown(clean, written))
    progress(f"wrote {out / 'bench.json'}, {out / 'bench.md'}" + "".join(f", {w}" for w in written))


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None
    if any(v < 1 or v > labmod.MAX_STREAMS for v in vals):
        raise argparse.ArgumentTypeError(f"stream counts must be 1..{labmod.MAX_STREAMS}")
    return vals


def _csv_paths(text: str) -> tuple[str, ...]:
    want = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in want if x not in PATHS]
    if bad or not want:
        raise argparse.ArgumentTypeError(f"paths are a comma-separated subset of {','.join(PATHS)}")
    return tuple(p for p in PATHS if p in want)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mt6d-bench",
        description="MT6D against no tunnel, OpenVPN and wireguard-go in the namespace lab (needs root).",
    )
    ap.add_argument("--quick", action="store_true", help="short mode (under 3 minutes)")
    ap.add_argument("--out", type=Path, default=Path("results"), help="output directory (default results/)")
    ap.add_argument("--paths", type=_csv_paths, default=PATHS, help=f"subset of {','.join(PATHS)}")
    ap.add_argument("--rotation-time", type=float, default=None, help="MT6D rotation time, s (default 2)")
    ap.add_argument(
        "--rotation-streams",
        type=_csv_ints,
        default=None,
        help="stream counts for the rotation cost (default 1,8,32)",
    )
    ap.add_argument("--no-rotation", action="store_true", help="skip the rotation cost")
    ap.add_argument(
        "--ping-count", type=int, default=None, help="standard ping count (default 300, quick 50)"
    )
    ap.add_argument(
        "--seconds", type=int, default=None, help="iperf3 TCP and UDP run length (default 10, quick 3)"
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return ap


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = replace(plan, paths=args.paths)
    if args.rotation_time is not None:
        if args.rotation_time <= 0:
            print("mt6d-bench: --rotation-time must be positive", file=sys.stderr)
            return EXIT_BAD_ARGS
        plan = replace(plan, rotation_time=args.rotation_time)
    if args.rotation_streams is not None:
        plan = replace(plan, rotation_streams=args.rotation_streams)
    if args.no_rotation:
        plan = replace(plan, rotation_streams=())
    if args.ping_count is not None:
        if args.ping_count < 1:
            print("mt6d-bench: --ping-count must be at least 1", file=sys.stderr)
            return EXIT_BAD_ARGS
        plan = replace(plan, ping_count=args.ping_count)
    if args.seconds is not None:
        if args.seconds < 1:
            print("mt6d-bench: --seconds must be at least 1", file=sys.stderr)
            return EXIT_BAD_ARGS
        plan = replace(plan, tcp_seconds=args.seconds, udp_seconds=args.seconds)
    if os.geteuid() != 0:
        print("mt6d-bench: needs root (network namespaces)", file=sys.stderr)
        return EXIT_PRIVILEGE
    missing = [t for t in ("ip", "ping", "curl", "iperf3", "nginx") if shutil.which(t) is None]
    missing += [
        t
        for p, t in (("openvpn", "openvpn"), ("wireguard-go", "wireguard-go"), ("wireguard-go", "wg"))
        if p in plan.paths and shutil.which(t) is None
    ]
    if missing:
        print(f"mt6d-bench: missing programs: {' '.join(missing)} (run scripts/bootstrap)", file=sys.stderr)
        return EXIT_NOT_INSTALLED
    progress = Progress(args.quiet)
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        results = run(plan, args.out, progress)
        write(results, args.out, progress)
    except KeyboardInterrupt:
        print("mt6d-bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    errors = sum(len(p["errors"]) for p in results["paths"].values())
    errors += sum(1 for r in (results["rotation"] or {}).get("system", []) if r.get("error"))
    if not args.quiet:
        print(markdown(_clean(results)))
    if errors:
        print(f"mt6d-bench: {errors} measurement(s) failed; see {args.out / 'bench.md'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
