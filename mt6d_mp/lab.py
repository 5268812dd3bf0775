"""The two-gateway network namespace lab used by the tests, the demo and the benchmark.

Topology (``P`` is the lab's prefix)::

    switched:  P-ha[i] --eth0|int0-- P-ga --ext0|ga-- P-sw(br0) --gb|ext0-- P-gb --int0|eth0-- P-hb[i]
    routed:    P-ha[i] --eth0|int0-- P-ga --ext0|ga-- P-rt --gb|ext0-- P-gb --int0|eth0-- P-hb[i]

With several streams, ``int0`` is a bridge inside the gateway with one veth port ``h<i>`` per host.

Every system change is made with the ``ip`` and ``sysctl`` commands and echoed (``[#] ...``, like
wg-quick) at info level on the ``mt6d_mp.lab`` logger. Every namespace created and every process
started is recorded in ``/run/mt6d-lab/P/state.json`` as soon as it exists, so :func:`down` (or
``mt6d-lab down --prefix P``) removes exactly those: processes by their recorded PID (checked
against their recorded start time), then the namespaces. A failing :meth:`Lab.up` rolls back what
it did and re-raises.

Command line::

    mt6d-lab up --prefix P --topology switched|routed [--streams N] [--rotation-time S] [--json]
                [--no-mt6d] [--router-mtu M] [--ready-timeout S]
    mt6d-lab down --prefix P [--keep-files]
    mt6d-lab info --prefix P
    mt6d-lab demo [--topology T] [--prefix P] [--rotation-time S] [--no-mt6d]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from mt6d_mp.errors import EXIT_BAD_ARGS, EXIT_PRIVILEGE, Mt6dError, SystemSetupError

log = logging.getLogger("mt6d_mp.lab")

LAB_ROOT = Path("/run/mt6d-lab")
SUPERVISOR = Path(__file__).resolve().parents[1] / "supervisor.py"
TOPOLOGIES = ("switched", "routed")
MAX_PREFIX = 8
MAX_STREAMS = 50
PREFIX_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_]{{0,{MAX_PREFIX - 1}}}$")

# Address plan.
SWITCHED_NET = "2001:db8:100::"
SITE_A_NET = "2001:db8:a::"
SITE_B_NET = "2001:db8:b::"
ROUTER_A = "2001:db8:a::1"
ROUTER_B = "2001:db8:b::1"
GATEWAY_LL = "fe80::1"  # extra link-local address of each gateway's int0 (the hosts' next hop)

# Second-to-last byte of the MAC role field: 02:6d:PP:RR:II:NN.
_ROLE_HOST_A = 0xA0
_ROLE_HOST_B = 0xB0
_ROLE_GW_A = 0x1A
_ROLE_GW_B = 0x1B
_ROLE_SWITCH = 0x5E
_ROLE_ROUTER = 0x7E

LINK_UP_TIMEOUT = 10.0
TERM_TIMEOUT = 5.0


class LabError(SystemSetupError):
    """The lab could not be built, used or removed."""


class LabPrivilegeError(LabError):
    exit_code = EXIT_PRIVILEGE


class LabUsageError(LabError):
    exit_code = EXIT_BAD_ARGS


# --- what a lab looks like (returned by up(), printed by up --json) ---------------------------


@dataclass(frozen=True)
class InterfaceInfo:
    name: str
    kind: str  # "veth" or "bridge"
    mac: str
    mtu: int
    addresses: tuple[str, ...]  # configured by the lab, with prefix length (no EUI-64 link-local)
    link_local: str  # the kernel's EUI-64 link-local address (from the MAC)
    peer: str | None = None  # "namespace/interface" of the other veth end
    master: str | None = None  # bridge this interface is a port of
    ports: tuple[str, ...] = ()  # bridge ports (bridges only)


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    role: str  # host-a, host-a2, ..., gateway-a, gateway-b, switch, router, host-b, ...
    interfaces: tuple[InterfaceInfo, ...]
    hostname: str | None = None  # hosts: name in the users file
    address: str | None = None  # hosts: the true address (no prefix length)
    mac: str | None = None  # hosts: MAC of eth0 (the ethers file)
    dir: str | None = None  # gateways: /run/mt6d-lab/P/ga
    config: str | None = None  # gateways with MT6D: mt6d.toml
    runtime_dir: str | None = None
    log_file: str | None = None
    supervisor_out: str | None = None

    def iface(self, name: str) -> InterfaceInfo:
        for i in self.interfaces:
            if i.name == name:
                return i
        raise KeyError(f"{self.name} has no interface {name}")


@dataclass(frozen=True)
class StreamInfo:
    name: str  # "host-a-host-b": the stream's name in gateway A's configuration
    index: int  # 1..N
    queue: int
    key_file: str  # relative to each gateway's directory ("keys/<name>.key")
    host_a_ns: str
    host_a_name: str
    host_a_address: str
    host_a_mac: str
    host_b_ns: str
    host_b_name: str
    host_b_address: str
    host_b_mac: str


@dataclass(frozen=True)
class LabInfo:
    prefix: str
    topology: str
    mt6d: bool
    rotation_time: float
    router_mtu: int | None  # routed only
    lab_dir: str
    state_file: str
    site_a_net: str  # /64 of the A hosts
    site_b_net: str
    capture_ns: str  # where the external link can be watched
    capture_if: str
    namespaces: tuple[NamespaceInfo, ...]
    streams: tuple[StreamInfo, ...]
    pids: dict[str, int] = field(default_factory=dict)

    # lookups
    def ns(self, role: str) -> NamespaceInfo:
        for n in self.namespaces:
            if n.role == role:
                return n
        raise KeyError(f"lab {self.prefix} has no namespace with role {role}")

    def namespace(self, name: str) -> NamespaceInfo:
        for n in self.namespaces:
            if n.name == name:
                return n
        raise KeyError(f"lab {self.prefix} has no namespace {name}")

    def host_a(self, i: int = 1) -> NamespaceInfo:
        return self.ns("host-a" if i == 1 else f"host-a{i}")

    def host_b(self, i: int = 1) -> NamespaceInfo:
        return self.ns("host-b" if i == 1 else f"host-b{i}")

    @property
    def gateway_a(self) -> NamespaceInfo:
        return self.ns("gateway-a")

    @property
    def gateway_b(self) -> NamespaceInfo:
        return self.ns("gateway-b")

    @property
    def ha(self) -> str:
        return self.host_a().name

    @property
    def hb(self) -> str:
        return self.host_b().name

    @property
    def ga(self) -> str:
        return self.gateway_a.name

    @property
    def gb(self) -> str:
        return self.gateway_b.name

    @property
    def true_addresses(self) -> tuple[str, ...]:
        return tuple(n.address for n in self.namespaces if n.address)

    # (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roles"] = {n.role: n.name for n in self.namespaces}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabInfo:
        namespaces = tuple(
            NamespaceInfo(
                **{
                    **n,
                    "interfaces": tuple(
                        InterfaceInfo(**{**i, "addresses": tuple(i["addresses"]), "ports": tuple(i["ports"])})
                        for i in n["interfaces"]
                    ),
                }
            )
            for n in d["namespaces"]
        )
        streams = tuple(StreamInfo(**s) for s in d["streams"])
        plain = {k: v for k, v in d.items() if k not in ("namespaces", "streams", "roles")}
        return cls(**{**plain, "namespaces": namespaces, "streams": streams})


# --- small helpers ----------------------------------------------------------------------------


def random_prefix(stem: str = "m6") -> str:
    """A fresh lab prefix: ``stem`` followed by random hex, 6 characters for the default stem."""
    return stem + secrets.token_hex(max(1, (MAX_PREFIX - len(stem) - 2) // 2))


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise LabUsageError(
            f"bad lab prefix {prefix!r}: 1-{MAX_PREFIX} characters of letters, digits and '_', "
            "starting with a letter or digit"
        )
    return prefix


def _run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0, change: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command; ``change`` commands (system changes) are echoed at info level."""
    if change:
        log.info("[#] %s", shlex.join(cmd))
    else:
        log.debug("[>] %s", shlex.join(cmd))
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as e:
        raise LabError(f"{cmd[0]}: command not found") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"command timed out after {timeout:g} s: {shlex.join(cmd)}") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"command failed (exit {proc.returncode}): {shlex.join(cmd)}: {detail}")
    return proc


def list_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], change=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def log_tail(path: str | Path | None, lines: int = 12) -> str:
    """The last lines of a log, indented, for an error message (a lab's files may be gone by
    the time anyone reads the error, as in CI); empty if there is nothing to read."""
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return "; its last lines:\n" + "\n".join("  " + line for line in tail) if tail else ""


def namespaces_with_prefix(prefix: str) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(prefix + "-")]


def _mac(pp: int, role: int, index: int, nic: int) -> str:
    return f"02:6d:{pp:02x}:{role:02x}:{index:02x}:{nic:02x}"


def link_local_of(mac: str) -> str:
    """The EUI-64 link-local address the kernel derives from ``mac``."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    b[0] ^= 0x02
    eui = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, or None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _mkdir(path: Path, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


# --- the state file ---------------------------------------------------------------------------


class _StateFile:
    """``state.json``: read-modify-write under an exclusive lock, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name("state.lock")

    def load(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise LabError(f"{self.path}: not valid JSON: {e}") from e
        return data

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.load() or {}
            yield data
            tmp = self.path.with_name(f".state.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, self.path)


# --- the plan: everything up() will create, computed before anything is done -----------------


@dataclass
class _Veth:
    ns: str
    name: str
    mac: str
    peer_ns: str
    peer_name: str
    peer_mac: str
    mtu: int = 1500


@dataclass
class _Bridge:
    ns: str
    name: str
    mac: str
    ports: list[str]


@dataclass
class _Host:
    ns: str
    role: str  # host-a / host-a2 / host-b ...
    side: str  # "a" or "b"
    index: int
    address: str
    mac: str
    port: str  # the gateway-side interface the host hangs off (int0 or h<i>)
    port_mac: str


@dataclass
class _Plan:
    namespaces: list[tuple[str, str]] = field(default_factory=list)  # (name, role), create order
    sysctls: dict[str, list[str]] = field(default_factory=dict)
    bridge_namespaces: set[str] = field(default_factory=set)
    veths: list[_Veth] = field(default_factory=list)
    bridges: list[_Bridge] = field(default_factory=list)
    addresses: list[tuple[str, str, str]] = field(default_factory=list)  # (ns, dev, cidr)
    routes: list[tuple[str, list[str]]] = field(default_factory=list)
    proxies: list[tuple[str, str, str]] = field(default_factory=list)  # (ns, dev, address)
    hosts: list[_Host] = field(default_factory=list)


# --- the lab ----------------------------------------------------------------------------------


class Lab:
    """One lab, named by its prefix. ``up()`` builds it, ``down()`` removes what was recorded."""

    def __init__(
        self,
        prefix: str,
        topology: str = "switched",
        *,
        streams: int = 1,
        rotation_time: float = 2.0,
        mt6d: bool = True,
        router_mtu: int = 1500,
        encrypt: bool = True,
        settings: Sequence[str] = (),
        ready_timeout: float = 20.0,
        start_supervisors: bool = True,
        host_accept_ra: bool = False,
        root: Path = LAB_ROOT,
    ) -> None:
        self.prefix = check_prefix(prefix)
        if topology not in TOPOLOGIES:
            raise LabUsageError(f"unknown topology {topology!r}: expected one of {TOPOLOGIES}")
        if not 1 <= streams <= MAX_STREAMS:
            raise LabUsageError(f"--streams must be 1..{MAX_STREAMS}, not {streams}")
        if rotation_time <= 0:
            raise LabUsageError("--rotation-time must be positive")
        if not 1280 <= router_mtu <= 65535:
            raise LabUsageError("--router-mtu must be 1280..65535 (IPv6 minimum MTU is 1280)")
        self.topology = topology
        self.streams = streams
        self.rotation_time = float(rotation_time)
        self.mt6d = mt6d
        self.router_mtu = router_mtu
        self.encrypt = encrypt
        self.settings = list(settings)  # supervisor --set SECTION.KEY=VALUE, both gateways
        self.ready_timeout = ready_timeout
        self.start_supervisors = start_supervisors
        self.host_accept_ra = host_accept_ra
        self.dir = root / prefix
        self.state = _StateFile(self.dir / "state.json")
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._info: LabInfo | None = None
        self.claimed = False  # this object started the current state file (up() got going)

    # -- attaching to a lab made elsewhere (another process, the CLI) --

    @classmethod
    def attach(cls, prefix: str, root: Path = LAB_ROOT) -> Lab:
        """A handle on an existing lab (made by ``mt6d-lab up``), to spawn processes or ``down``."""
        lab = cls(check_prefix(prefix), root=root)
        data = lab.state.load()
        if data is None:
            raise LabError(f"no lab with prefix {prefix} (no {lab.state.path})")
        if data.get("info"):
            info = LabInfo.from_dict(data["info"])
            lab._info = info
            lab.topology, lab.mt6d, lab.rotation_time = info.topology, info.mt6d, info.rotation_time
            lab.streams = len(info.streams)
        return lab

    @property
    def info(self) -> LabInfo:
        if self._info is None:
            raise LabError(f"lab {self.prefix} is not up")
        return self._info

    def __enter__(self) -> LabInfo:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def ns_name(self, role: str) -> str:
        short = {"gateway-a": "ga", "gateway-b": "gb", "switch": "sw", "router": "rt"}
        if role in short:
            return f"{self.prefix}-{short[role]}"
        m = re.fullmatch(r"host-([ab])(\d*)", role)
        if not m:
            raise KeyError(role)
        return f"{self.prefix}-h{m.group(1)}{m.group(2)}"

    # -- building --

    def plan(self) -> _Plan:
        p = _Plan()
        pp = hashlib.sha256(self.prefix.encode()).digest()[0]
        ga, gb = self.ns_name("gateway-a"), self.ns_name("gateway-b")
        mid = self.ns_name("switch" if self.topology == "switched" else "router")
        net_a = SWITCHED_NET if self.topology == "switched" else SITE_A_NET
        net_b = SWITCHED_NET if self.topology == "switched" else SITE_B_NET
        many = self.streams > 1

        dad = [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]
        # MT6D needs no forwarding (the hosts' packets are local to the gateway, the tunnel
        # packets are its own), and with forwarding on a gateway whose supervisor is stopped or
        # restarting would route the hosts' packets in clear. The baseline and the other
        # tunnels of the benchmark route, so they get it.
        def forwarding(on: bool) -> list[str]:
            return [
                f"net.ipv6.conf.all.forwarding={int(on)}",
                f"net.ipv6.conf.default.forwarding={int(on)}",
                "net.ipv6.conf.all.accept_ra=0",
                "net.ipv6.conf.default.accept_ra=0",
            ]
        ra = "1" if self.host_accept_ra else "0"
        host_sys = [*dad, f"net.ipv6.conf.all.accept_ra={ra}", f"net.ipv6.conf.default.accept_ra={ra}"]
        gw_sys = [*dad, *forwarding(not self.mt6d)]
        if not self.mt6d:
            gw_sys += ["net.ipv6.conf.all.proxy_ndp=1", "net.ipv6.conf.default.proxy_ndp=1"]

        for side, net, role_byte, gw_byte in (
            ("a", net_a, _ROLE_HOST_A, _ROLE_GW_A),
            ("b", net_b, _ROLE_HOST_B, _ROLE_GW_B),
        ):
            for i in range(1, self.streams + 1):
                role = f"host-{side}" if i == 1 else f"host-{side}{i}"
                port = f"h{i}" if many else "int0"
                port_mac = _mac(pp, gw_byte, i, 3) if many else _mac(pp, gw_byte, 0, 1)
                p.hosts.append(
                    _Host(
                        ns=self.ns_name(role),
                        role=role,
                        side=side,
                        index=i,
                        address=f"{net}{side}{i}",
                        mac=_mac(pp, role_byte, i, 0),
                        port=port,
                        port_mac=port_mac,
                    )
                )
        hosts_a = [h for h in p.hosts if h.side == "a"]
        hosts_b = [h for h in p.hosts if h.side == "b"]

        for h in hosts_a:
            p.namespaces.append((h.ns, h.role))
        p.namespaces.append((ga, "gateway-a"))
        p.namespaces.append((mid, "switch" if self.topology == "switched" else "router"))
        p.namespaces.append((gb, "gateway-b"))
        for h in hosts_b:
            p.namespaces.append((h.ns, h.role))

        for h in p.hosts:
            p.sysctls[h.ns] = list(host_sys)
        p.sysctls[ga] = list(gw_sys)
        p.sysctls[gb] = list(gw_sys)
        if self.topology == "switched":
            p.sysctls[mid] = [
                *dad,
                # the switch is pure layer 2: no addresses, no NDP/MLD noise of its own
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]
            p.bridge_namespaces.add(mid)
        else:
            p.sysctls[mid] = [*dad, *forwarding(True)]  # the router routes, MT6D or not
        if many:
            p.bridge_namespaces.update((ga, gb))

        # links: hosts to their gateway
        for gw, hosts, gw_byte in ((ga, hosts_a, _ROLE_GW_A), (gb, hosts_b, _ROLE_GW_B)):
            for h in hosts:
                p.veths.append(_Veth(h.ns, "eth0", h.mac, gw, h.port, h.port_mac))
            if many:
                p.bridges.append(_Bridge(gw, "int0", _mac(pp, gw_byte, 0, 1), [h.port for h in hosts]))

        # links: gateways to the middle
        if self.topology == "switched":
            p.veths.append(
                _Veth(ga, "ext0", _mac(pp, _ROLE_GW_A, 0, 2), mid, "ga", _mac(pp, _ROLE_SWITCH, 0, 0x1A))
            )
            p.veths.append(
                _Veth(gb, "ext0", _mac(pp, _ROLE_GW_B, 0, 2), mid, "gb", _mac(pp, _ROLE_SWITCH, 0, 0x1B))
            )
            p.bridges.append(_Bridge(mid, "br0", _mac(pp, _ROLE_SWITCH, 0, 0), ["ga", "gb"]))
        else:
            p.veths.append(
                _Veth(ga, "ext0", _mac(pp, _ROLE_GW_A, 0, 2), mid, "ga", _mac(pp, _ROLE_ROUTER, 0, 0x1A))
            )
            p.veths.append(
                _Veth(
                    gb,
                    "ext0",
                    _mac(pp, _ROLE_GW_B, 0, 2),
                    mid,
                    "gb",
                    _mac(pp, _ROLE_ROUTER, 0, 0x1B),
                    mtu=self.router_mtu,
                )
            )

        # addresses
        for h in p.hosts:
            p.addresses.append((h.ns, "eth0", f"{h.address}/64"))
        for gw in (ga, gb):
            p.addresses.append((gw, "int0", f"{GATEWAY_LL}/64"))
        if self.topology == "routed":
            p.addresses.append((mid, "ga", f"{ROUTER_A}/64"))
            p.addresses.append((mid, "gb", f"{ROUTER_B}/64"))

        # routes: the gateways' external /64 on ext0 (hashed addresses live there)
        if self.topology == "switched":
            for gw in (ga, gb):
                p.routes.append((gw, ["-6", "route", "add", f"{SWITCHED_NET}/64", "dev", "ext0"]))
        else:
            for gw, net, router in ((ga, SITE_A_NET, ROUTER_A), (gb, SITE_B_NET, ROUTER_B)):
                p.routes.append((gw, ["-6", "route", "add", f"{net}/64", "dev", "ext0"]))
                p.routes.append((gw, ["-6", "route", "add", "default", "via", router, "dev", "ext0"]))
            for h in p.hosts:
                p.routes.append((h.ns, ["-6", "route", "add", "default", "via", GATEWAY_LL, "dev", "eth0"]))

        # the --no-mt6d baseline: plain forwarding, NDP proxied by the gateways
        if not self.mt6d:
            for gw, local, remote in ((ga, hosts_a, hosts_b), (gb, hosts_b, hosts_a)):
                for h in local:
                    p.routes.append((gw, ["-6", "route", "add", f"{h.address}/128", "dev", "int0"]))
                    p.proxies.append((gw, "ext0", h.address))
                if self.topology == "switched":  # remote hosts look on-link to the local ones
                    for h in remote:
                        p.proxies.append((gw, "int0", h.address))
        return p

    def _build_info(self, plan: _Plan) -> LabInfo:
        ifaces: dict[str, list[InterfaceInfo]] = {name: [] for name, _ in plan.namespaces}
        addrs: dict[tuple[str, str], list[str]] = {}
        for ns, dev, cidr in plan.addresses:
            addrs.setdefault((ns, dev), []).append(cidr)
        masters = {(b.ns, port): b.name for b in plan.bridges for port in b.ports}
        for v in plan.veths:
            for ns, name, mac, pns, pname in (
                (v.ns, v.name, v.mac, v.peer_ns, v.peer_name),
                (v.peer_ns, v.peer_name, v.peer_mac, v.ns, v.name),
            ):
                ifaces[ns].append(
                    InterfaceInfo(
                        name=name,
                        kind="veth",
                        mac=mac,
                        mtu=v.mtu,
                        addresses=tuple(addrs.get((ns, name), ())),
                        link_local=link_local_of(mac),
                        peer=f"{pns}/{pname}",
                        master=masters.get((ns, name)),
                    )
                )
        for b in plan.bridges:
            ifaces[b.ns].append(
                InterfaceInfo(
                    name=b.name,
                    kind="bridge",
                    mac=b.mac,
                    mtu=1500,
                    addresses=tuple(addrs.get((b.ns, b.name), ())),
                    link_local=link_local_of(b.mac),
                    ports=tuple(b.ports),
                )
            )
        hosts = {h.ns: h for h in plan.hosts}
        namespaces = []
        for name, role in plan.namespaces:
            extra: dict[str, Any] = {}
            if name in hosts:
                h = hosts[name]
                extra = {"hostname": h.role, "address": h.address, "mac": h.mac}
            elif role.startswith("gateway-"):
                gdir = self.dir / name.rsplit("-", 1)[1]
                extra = {"dir": str(gdir)}
                if self.mt6d:
                    extra.update(
                        config=str(gdir / "mt6d.toml"),
                        runtime_dir=str(gdir / "run"),
                        log_file=str(gdir / "mt6d.log"),
                        supervisor_out=str(gdir / "supervisor.out"),
                    )
            namespaces.append(
                NamespaceInfo(
                    name=name,
                    role=role,
                    interfaces=tuple(sorted(ifaces[name], key=lambda i: i.name)),
                    **extra,
                )
            )
        hosts_a = [h for h in plan.hosts if h.side == "a"]
        hosts_b = [h for h in plan.hosts if h.side == "b"]
        streams = []
        for a, z in zip(hosts_a, hosts_b, strict=True):
            sname = f"{a.role}-{z.role}"
            streams.append(
                StreamInfo(
                    name=sname,
                    index=a.index,
                    queue=1 + a.index,
                    key_file=f"keys/{sname}.key",
                    host_a_ns=a.ns,
                    host_a_name=a.role,
                    host_a_address=a.address,
                    host_a_mac=a.mac,
                    host_b_ns=z.ns,
                    host_b_name=z.role,
                    host_b_address=z.address,
                    host_b_mac=z.mac,
                )
            )
        switched = self.topology == "switched"
        return LabInfo(
            prefix=self.prefix,
            topology=self.topology,
            mt6d=self.mt6d,
            rotation_time=self.rotation_time,
            router_mtu=None if switched else self.router_mtu,
            lab_dir=str(self.dir),
            state_file=str(self.state.path),
            site_a_net=f"{SWITCHED_NET if switched else SITE_A_NET}/64",
            site_b_net=f"{SWITCHED_NET if switched else SITE_B_NET}/64",
            capture_ns=self.ns_name("switch" if switched else "router"),
            capture_if="br0" if switched else "ga",
            namespaces=tuple(namespaces),
            streams=tuple(streams),
        )

    def up(self) -> LabInfo:
        """Build the lab; on any failure (also Ctrl-C) roll back what was done and re-raise."""
        if os.geteuid() != 0:
            raise LabPrivilegeError("the lab needs root (network namespaces)")
        self._claim()
        plan = self.plan()
        info = self._build_info(plan)
        try:
            self._create_namespaces(plan)
            self._create_links(plan)
            self._set_links_up(plan)
            self._add_addresses(plan)
            self._add_routes(plan)
            self._add_proxies(plan)
            self._wait_links_up(plan)
            if self.mt6d:
                self._write_configs(info)
                if self.start_supervisors:
                    self._start_supervisors(info)
            with self.state.edit() as st:
                pids = {p["name"]: p["pid"] for p in st.get("pids", [])}
                info = LabInfo(**{**info.__dict__, "pids": pids})
                st["status"] = "up"
                st["info"] = info.to_dict()
        except BaseException as e:
            log.error("lab %s: setup failed (%s); rolling back", self.prefix, str(e) or type(e).__name__)
            try:
                self._teardown(keep_files=True)
            except Exception as e2:  # report, but the original error is what matters
                log.error("lab %s: rollback incomplete: %s", self.prefix, e2)
            raise
        self._info = info
        log.info("lab %s is up (%s, %s)", self.prefix, self.topology, "MT6D" if self.mt6d else "no MT6D")
        return info

    def _claim(self) -> None:
        """Refuse to build over a live lab of the same prefix; start a fresh state file."""
        old = self.state.load()
        if old and (old.get("namespaces") or old.get("pids")):
            raise LabError(
                f"lab {self.prefix} already exists ({self.state.path}); "
                f"run: mt6d-lab down --prefix {self.prefix}"
            )
        clash = namespaces_with_prefix(self.prefix)
        if clash:
            raise LabError(
                f"namespaces with prefix {self.prefix}- already exist and are not ours: "
                f"{' '.join(clash)}; choose another prefix"
            )
        if self.dir.exists():
            shutil.rmtree(self.dir)
        _mkdir(self.dir, 0o755)
        with self.state.edit() as st:
            st.clear()
            st.update(
                prefix=self.prefix,
                topology=self.topology,
                status="starting",
                created=time.time(),
                owner_pid=os.getpid(),
                namespaces=[],
                pids=[],
                info=None,
            )
        self.claimed = True

    def _create_namespaces(self, plan: _Plan) -> None:
        bridge_nf = Path("/proc/sys/net/bridge").is_dir()
        for name, _role in plan.namespaces:
            _run(["ip", "netns", "add", name])
            with self.state.edit() as st:
                st["namespaces"].append(name)
            # before any interface exists, so that every interface inherits "default"
            _run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", *plan.sysctls[name]])
            if bridge_nf and name in plan.bridge_namespaces:
                # bridged frames must not go through this namespace's ip6tables
                _run(
                    [
                        "ip", "netns", "exec", name, "sysctl", "-q", "-e", "-w",
                        "net.bridge.bridge-nf-call-ip6tables=0",
                        "net.bridge.bridge-nf-call-iptables=0",
                        "net.bridge.bridge-nf-call-arptables=0",
                    ]
                )  # fmt: skip
            _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _create_links(self, plan: _Plan) -> None:
        for b in plan.bridges:
            _run(
                [
                    "ip", "-n", b.ns, "link", "add", b.name, "address", b.mac, "type", "bridge",
                    "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
                ]
            )  # fmt: skip
        for v in plan.veths:
            mtu = ["mtu", str(v.mtu)] if v.mtu != 1500 else []
            _run(
                [
                    "ip", "-n", v.ns, "link", "add", v.name, "address", v.mac, *mtu,
                    "type", "veth", "peer", "name", v.peer_name, "address", v.peer_mac, *mtu,
                    "netns", v.peer_ns,
                ]
            )  # fmt: skip
        for b in plan.bridges:
            for port in b.ports:
                _run(["ip", "-n", b.ns, "link", "set", port, "master", b.name])

    def _set_links_up(self, plan: _Plan) -> None:
        for b in plan.bridges:
            _run(["ip", "-n", b.ns, "link", "set", b.name, "up"])
        for v in plan.veths:
            _run(["ip", "-n", v.ns, "link", "set", v.name, "up"])
            _run(["ip", "-n", v.peer_ns, "link", "set", v.peer_name, "up"])

    def _add_addresses(self, plan: _Plan) -> None:
        for ns, dev, cidr in plan.addresses:
            _run(["ip", "-n", ns, "-6", "addr", "add", cidr, "dev", dev, "nodad"])

    def _add_routes(self, plan: _Plan) -> None:
        for ns, args in plan.routes:
            _run(["ip", "-n", ns, *args])

    def _add_proxies(self, plan: _Plan) -> None:
        # answer proxied solicitations at once, not after a random delay of up to 0.8 s
        for ns, dev in dict.fromkeys((ns, dev) for ns, dev, _ in plan.proxies):
            _run(["ip", "-n", ns, "ntable", "change", "name", "ndisc_cache", "dev", dev,
                  "proxy_delay", "0"])  # fmt: skip
        for ns, dev, addr in plan.proxies:
            _run(["ip", "-n", ns, "-6", "neigh", "add", "proxy", addr, "dev", dev])

    def _wait_links_up(self, plan: _Plan) -> None:
        pending: dict[str, set[str]] = {}
        for v in plan.veths:
            pending.setdefault(v.ns, set()).add(v.name)
            pending.setdefault(v.peer_ns, set()).add(v.peer_name)
        for b in plan.bridges:
            pending.setdefault(b.ns, set()).add(b.name)
        deadline = time.monotonic() + LINK_UP_TIMEOUT
        while True:
            for ns in list(pending):
                out = _run(["ip", "-n", ns, "-j", "link", "show"], change=False).stdout
                for link in json.loads(out):
                    if link.get("operstate") == "UP":
                        pending[ns].discard(link.get("ifname", ""))
                if not pending[ns]:
                    del pending[ns]
            if not pending:
                return
            if time.monotonic() > deadline:
                late = " ".join(f"{ns}/{i}" for ns, s in sorted(pending.items()) for i in sorted(s))
                raise LabError(f"links not up after {LINK_UP_TIMEOUT:g} s: {late}")
            time.sleep(0.05)

    # -- MT6D configuration and supervisors --

    def _write_configs(self, info: LabInfo) -> None:
        keys = {s.name: os.urandom(64).hex() + "\n" for s in info.streams}
        hosts = [n for n in info.namespaces if n.address]
        users = "# <ipv6 address> <hostname>\n" + "".join(f"{n.address} {n.hostname}\n" for n in hosts)
        ethers = "# <mac> <ipv6 address>\n" + "".join(f"{n.mac} {n.address}\n" for n in hosts)
        for gw in (info.gateway_a, info.gateway_b):
            assert gw.dir and gw.config and gw.runtime_dir and gw.log_file
            gdir = _mkdir(Path(gw.dir), 0o700)
            kdir = _mkdir(gdir / "keys", 0o700)
            _mkdir(Path(gw.runtime_dir), 0o700)
            for name, key in keys.items():
                _write_private(kdir / f"{name}.key", key)
            side_a = gw.role == "gateway-a"
            lines = ["# <local host> <remote host> <queue> <key or @keyfile>"]
            for s in info.streams:
                local, remote = (s.host_a_name, s.host_b_name) if side_a else (s.host_b_name, s.host_a_name)
                lines.append(f"{local} {remote} {s.queue} @{s.key_file}")
            _write_private(gdir / "users", users, 0o644)
            _write_private(gdir / "ethers", ethers, 0o644)
            _write_private(gdir / "profiles", "\n".join(lines) + "\n")
            _write_private(gdir / "mt6d.toml", self._toml(gw), 0o644)
            log.info("[#] wrote %s (users, ethers, profiles, %d key files)", gw.config, len(keys))

    def _toml(self, gw: NamespaceInfo) -> str:
        rt = repr(self.rotation_time)
        return (
            f"# MT6D configuration of {gw.role} in lab {self.prefix} (written by mt6d-lab)\n"
            "[interfaces]\n"
            'internal = "int0"\n'
            'external = "ext0"\n'
            "[rotation]\n"
            f"rotation_time = {rt}\n"
            f"route_lifetime = {rt}\n"
            'hash_type = "sha256"\n'
            "[crypto]\n"
            f"encrypt = {'true' if self.encrypt else 'false'}\n"
            'crypt_type = "aes-256-gcm"\n'
            "[files]\n"
            'users = "users"\n'
            'ethers = "ethers"\n'
            'profiles = "profiles"\n'
            "[queues]\n"
            "icmp = 1\n"
            "[log]\n"
            'handlers = ["console", "file"]\n'
            f'file = "{gw.log_file}"\n'
            'level = "info"\n'
            "[runtime]\n"
            f'dir = "{gw.runtime_dir}"\n'
        )

    def _start_supervisors(self, info: LabInfo) -> None:
        if not SUPERVISOR.is_file():
            raise LabError(f"MT6D supervisor not found at {SUPERVISOR} (use --no-mt6d for the baseline)")
        started: list[tuple[NamespaceInfo, int]] = []
        for gw in (info.gateway_a, info.gateway_b):
            assert gw.config and gw.runtime_dir and gw.supervisor_out
            (Path(gw.runtime_dir) / "ready").unlink(missing_ok=True)
            pid = self.spawn(
                gw.name,
                [sys.executable, str(SUPERVISOR), "--config", gw.config,
                 *(a for s in self.settings for a in ("--set", s))],
                name=f"supervisor-{gw.role.rsplit('-', 1)[1]}",
                log_path=Path(gw.supervisor_out),
            )
            started.append((gw, pid))
        deadline = time.monotonic() + self.ready_timeout
        for gw, pid in started:
            assert gw.runtime_dir
            ready = Path(gw.runtime_dir) / "ready"
            while not ready.exists():
                if not self._alive(pid):
                    code = self._exit_code(pid)
                    raise LabError(
                        f"supervisor in {gw.name} exited"
                        f"{f' with code {code}' if code is not None else ''} before becoming ready; "
                        f"see {gw.supervisor_out}{log_tail(gw.supervisor_out)}"
                    )
                if time.monotonic() > deadline:
                    raise LabError(
                        f"supervisor in {gw.name} did not become ready in {self.ready_timeout:g}s; "
                        f"see {gw.supervisor_out}{log_tail(gw.supervisor_out)}"
                    )
                time.sleep(0.05)
            log.info("supervisor in %s is ready (pid %d)", gw.name, pid)

    # -- processes inside the lab --

    def exec(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in namespace ``ns`` and wait for it (output captured as text)."""
        return _run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout, change=False)

    def spawn(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        name: str,
        log_path: Path | None = None,
    ) -> int:
        """Start a background process in ``ns``; its PID is recorded so that ``down`` kills it.

        It runs in a session of its own (its PID is its process group), so a terminal's Ctrl-C
        does not reach it and ``stop`` can clean up children it leaves behind.
        """
        cmd = ["ip", "netns", "exec", ns, *argv]
        log.info("[#] %s%s &", shlex.join(cmd), f" >{log_path} 2>&1" if log_path else "")
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab") if log_path else None  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out if out else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if out:
                out.close()
        self._children[proc.pid] = proc
        stat = _proc_stat(proc.pid)
        with self.state.edit() as st:
            st.setdefault("pids", []).append(
                {
                    "name": name,
                    "pid": proc.pid,
                    "start": stat[1] if stat else None,
                    "ns": ns,
                    "argv": list(argv),
                    "log": str(log_path) if log_path else None,
                }
            )
        return proc.pid

    def pids(self) -> dict[str, int]:
        """Name to PID of every process recorded in the state file."""
        st = self.state.load() or {}
        return {p["name"]: p["pid"] for p in st.get("pids", [])}

    def _record(self, pid: int) -> dict[str, Any] | None:
        st = self.state.load() or {}
        for p in st.get("pids", []):
            if p["pid"] == pid:
                rec: dict[str, Any] = p
                return rec
        return None

    def _alive(self, pid: int, start: int | None = None) -> bool:
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return start is None or stat[1] == start

    def _exit_code(self, pid: int) -> int | None:
        child = self._children.get(pid)
        return child.poll() if child is not None else None

    def stop(self, pid: int, timeout: float = TERM_TIMEOUT) -> None:
        """Stop a process this lab started (SIGTERM, then SIGKILL to its process group)."""
        rec = self._record(pid)
        start = rec.get("start") if rec else None
        if pid in self._children or rec is not None:
            self._kill(pid, start, timeout)
        else:
            raise LabError(f"pid {pid} was not started by lab {self.prefix}")
        with self.state.edit() as st:
            st["pids"] = [p for p in st.get("pids", []) if p["pid"] != pid]

    def _kill(self, pid: int, start: int | None, timeout: float) -> None:
        if self._alive(pid, start):
            log.info("[#] kill -TERM %d", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(pid, start) and time.monotonic() < deadline:
                time.sleep(0.02)
        # the process group is the recorded PID (start_new_session): remove what is left of it,
        # the process itself if it ignored SIGTERM, and children it did not stop
        if self._alive(pid, start) or self._group_exists(pid):
            log.info("[#] kill -KILL -%d", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2.0
            while self._alive(pid, start) and time.monotonic() < deadline:
                time.sleep(0.02)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1.0)

    @staticmethod
    def _group_exists(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        # only zombies left (our unreaped child) count as gone
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            rest = text[text.rindex(")") + 2 :].split()
            if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
                return True
        return False

    # -- helpers for tests, the demo and the benchmark --

    def start_http_server(self, ns: str, root: Path, address: str, port: int = 80) -> int:
        """Serve ``root`` over HTTP on ``[address]:port`` in ``ns`` (nginx, else http.server)."""
        work = _mkdir(self.dir / ns.rsplit("-", 1)[1] / f"http-{port}", 0o755)
        nginx = shutil.which("nginx")
        if nginx:
            for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (work / d).mkdir(exist_ok=True)
            conf = work / "nginx.conf"
            conf.write_text(
                "daemon off;\n"
                "master_process off;\n"  # one process: the recorded PID is the server
                "worker_processes 1;\n"
                f"pid {work}/nginx.pid;\n"
                f"error_log {work}/error.log warn;\n"
                "events { worker_connections 256; }\n"
                "http {\n"
                f"  access_log {work}/access.log;\n"
                f"  client_body_temp_path {work}/body;\n"
                f"  proxy_temp_path {work}/proxy;\n"
                f"  fastcgi_temp_path {work}/fastcgi;\n"
                f"  uwsgi_temp_path {work}/uwsgi;\n"
                f"  scgi_temp_path {work}/scgi;\n"
                "  default_type application/octet-stream;\n"
                "  sendfile on;\n"
                "  server {\n"
                f"    listen [{address}]:{port};\n"
                f"    root {root};\n"
                "  }\n"
                "}\n"
            )
            argv = [nginx, "-e", f"{work}/error.log", "-p", str(work), "-c", str(conf)]
            name = f"nginx-{ns}-{port}"
        else:
            argv = [
                sys.executable, "-m", "http.server", "--bind", address,
                "--directory", str(root), str(port),
            ]  # fmt: skip
            name = f"http-{ns}-{port}"
        out = work / "server.out"
        pid = self.spawn(ns, argv, name=name, log_path=out)
        self.wait_listening(pid, port, what=f"HTTP server in {ns} (see {out})")
        return pid

    def wait_listening(self, pid: int, port: int, *, timeout: float = 10.0, what: str = "") -> None:
        """Wait until process ``pid``'s namespace has a TCP socket listening on ``port``."""
        deadline = time.monotonic() + timeout
        needle = f":{port:04X} "
        while True:
            if not self._alive(pid):
                raise LabError(f"{what or f'process {pid}'} exited before listening on {port}")
            with contextlib.suppress(OSError):
                for table in ("tcp6", "tcp"):
                    for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                        cols = line.split()
                        if (cols[1] + " ").endswith(needle) and cols[3] == "0A":
                            return
            if time.monotonic() > deadline:
                raise LabError(f"{what or f'process {pid}'} not listening on {port} in {timeout:g}s")
            time.sleep(0.05)

    # -- tearing down --

    def down(self, *, keep_files: bool = False) -> bool:
        """Kill the recorded processes, delete the recorded namespaces. False if none recorded."""
        return self._teardown(keep_files=keep_files)

    def _teardown(self, *, keep_files: bool) -> bool:
        st = self.state.load()
        if st is None:
            return False
        problems: list[str] = []
        for rec in reversed(st.get("pids", [])):
            try:
                self._kill(int(rec["pid"]), rec.get("start"), TERM_TIMEOUT)
            except Exception as e:
                problems.append(f"pid {rec['pid']} ({rec.get('name')}): {e}")
        with self.state.edit() as s:
            s["pids"] = []
        existing = set(list_namespaces())
        left: list[str] = []
        for ns in reversed(st.get("namespaces", [])):
            if ns not in existing:
                continue
            try:
                _run(["ip", "netns", "del", ns])
            except LabError as e:
                problems.append(str(e))
                left.append(ns)
        with self.state.edit() as s:
            s["namespaces"] = [n for n in s.get("namespaces", []) if n in left]
            s["status"] = "down"
        if problems:
            raise LabError(f"lab {self.prefix} not fully removed: " + "; ".join(problems))
        if not keep_files:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._info = None
        return True


# --- module-level API -------------------------------------------------------------------------


def up(
    prefix: str,
    topology: str = "switched",
    *,
    streams: int = 1,
    rotation_time: float = 2.0,
    mt6d: bool = True,
    router_mtu: int = 1500,
    settings: Sequence[str] = (),
    ready_timeout: float = 20.0,
    start_supervisors: bool = True,
    root: Path = LAB_ROOT,
) -> LabInfo:
    """Build lab ``prefix``; see :class:`Lab`."""
    return Lab(
        prefix,
        topology,
        streams=streams,
        rotation_time=rotation_time,
        mt6d=mt6d,
        router_mtu=router_mtu,
        settings=settings,
        ready_timeout=ready_timeout,
        start_supervisors=start_supervisors,
        root=root,
    ).up()


def down(prefix: str, *, keep_files: bool = False, root: Path = LAB_ROOT) -> bool:
    """Remove lab ``prefix``: kill its recorded PIDs, delete its recorded namespaces.

    Returns False when there is no state file for ``prefix`` (nothing to do).
    """
    lab = Lab(check_prefix(prefix), root=root)
    done = lab.down(keep_files=keep_files)
    if not done:
        stray = namespaces_with_prefix(prefix)
        if stray:
            log.warning(
                "no state for lab %s, but these namespaces exist (not touched): %s",
                prefix,
                " ".join(stray),
            )
    return done


def load(prefix: str, root: Path = LAB_ROOT) -> LabInfo:
    """The LabInfo of a lab that is up (from its state file)."""
    return Lab.attach(prefix, root).info


# --- pcap reading (for the demo) --------------------------------------------------------------


@dataclass(frozen=True)
class CapturedPacket:
    time: float
    src: str
    dst: str
    next_header: int  # after skipping hop-by-hop, routing, destination options and fragment
    frame: bytes


def read_pcap(path: Path) -> Iterator[CapturedPacket]:
    """IPv6 packets of a classic pcap file (Ethernet, raw IP or Linux cooked captures)."""
    data = path.read_bytes()
    magics = {
        b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
        b"\xa1\xb2\xc3\xd4": (">", 1e-6),
        b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
        b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    }
    if len(data) < 24 or data[:4] not in magics:
        raise LabError(f"{path}: not a pcap file")
    endian, scale = magics[data[:4]]
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        frame = data[off : off + incl]
        off += incl
        ip6 = _ipv6_payload(frame, linktype)
        if ip6 is None or len(ip6) < 40 or ip6[0] >> 4 != 6:
            continue
        yield CapturedPacket(
            time=sec + frac * scale,
            src=str(ipaddress.IPv6Address(ip6[8:24])),
            dst=str(ipaddress.IPv6Address(ip6[24:40])),
            next_header=_final_next_header(ip6),
            frame=frame,
        )


def _ipv6_payload(frame: bytes, linktype: int) -> bytes | None:
    if linktype == 1:  # Ethernet
        off, etype = 12, int.from_bytes(frame[12:14], "big")
        while etype in (0x8100, 0x88A8) and len(frame) >= off + 6:
            off += 4
            etype = int.from_bytes(frame[off : off + 2], "big")
        return frame[off + 2 :] if etype == 0x86DD else None
    if linktype in (101, 228, 229):  # raw IP
        return frame
    if linktype == 113:  # Linux cooked v1
        return frame[16:] if frame[14:16] == b"\x86\xdd" else None
    if linktype == 276:  # Linux cooked v2
        return frame[20:] if frame[0:2] == b"\x86\xdd" else None
    return None


def _final_next_header(ip6: bytes) -> int:
    nh, off = ip6[6], 40
    while nh in (0, 43, 44, 60) and off + 8 <= len(ip6):
        if nh == 44:
            nh, off = ip6[off], off + 8
        else:
            nh, off = ip6[off], off + (ip6[off + 1] + 1) * 8
    return nh


@dataclass
class CaptureReport:
    packets: int = 0
    pairs: list[tuple[str, str, float, float, int]] = field(default_factory=list)
    leaks: list[tuple[float, str]] = field(default_factory=list)  # (time, description)
    start: float = 0.0

    @property
    def distinct_pairs(self) -> int:
        return len(self.pairs)


def analyse_capture(path: Path, true_addresses: Sequence[str]) -> CaptureReport:
    """Outer (src, dst) pairs of non-ICMPv6 traffic, and any frame carrying a true address."""
    rep = CaptureReport()
    needles = {ipaddress.IPv6Address(a).packed: a for a in true_addresses}
    seen: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], int] = {}
    for pkt in read_pcap(path):
        if rep.packets == 0:
            rep.start = pkt.time
        rep.packets += 1
        for raw, text in needles.items():
            if raw in pkt.frame:
                rep.leaks.append((pkt.time - rep.start, f"{text} in {pkt.src} -> {pkt.dst}"))
        s, d = ipaddress.IPv6Address(pkt.src), ipaddress.IPv6Address(pkt.dst)
        if pkt.next_header == 58 or not all(
            a.is_global or a in ipaddress.IPv6Network("2001:db8::/32") for a in (s, d)
        ):
            continue
        key = (pkt.src, pkt.dst)
        t = pkt.time - rep.start
        if key in seen:
            seen[key][1] = t
        else:
            seen[key] = [t, t]
        counts[key] = counts.get(key, 0) + 1
    rep.pairs = sorted(((k[0], k[1], v[0], v[1], counts[k]) for k, v in seen.items()), key=lambda p: p[2])
    return rep


# --- the demo ---------------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(msg, flush=True)


# The threat model in one paragraph (docs/SECURITY.md has it whole; README says the same).
THREAT_MODEL = """\
   Threat model: an attacker on the external link sees every tunnel packet and may send any
   frame to any MAC and address (forge, replay, fragment, flood). They never see a true address,
   a host MAC or a key, cannot link one rotation's addresses to the next, and get no answer:
   the gateways answer nothing but their peer's authenticated tunnel packets (and neighbour
   discovery for the addresses in use) and send no error, echo reply or MLD report outside; a
   host gets nothing that did not come sealed from the peer gateway, and nothing but the
   protected host's own packets from the internal link enters the tunnel."""


def demo(
    topology: str = "switched",
    prefix: str | None = None,
    *,
    rotation_time: float = 2.0,
    mt6d: bool = True,
    size: int = 10 * 1024 * 1024,
) -> int:
    """Build a lab, ping and download through it while capturing the external link; 0 = success."""
    prefix = prefix or random_prefix()
    lab = Lab(prefix, topology, rotation_time=rotation_time, mt6d=mt6d)
    failures: list[str] = []
    try:
        _say(
            f"== mt6d-lab demo: lab {prefix}, {topology}, "
            f"{'MT6D rotation ' + format(rotation_time, 'g') + ' s' if mt6d else 'no MT6D'}"
        )
        if mt6d:
            _say(THREAT_MODEL)
        info = lab.up()
        ha, hb = info.host_a(), info.host_b()
        assert ha.address and hb.address
        _say(f"   host A {ha.name} {ha.address}   host B {hb.name} {hb.address}")

        pcap = Path(info.lab_dir) / "external.pcap"
        tcpdump_out = Path(info.lab_dir) / "tcpdump.out"
        cap = lab.spawn(
            info.capture_ns,
            ["tcpdump", "-i", info.capture_if, "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "256",
             "-w", str(pcap)],
            name="tcpdump",
            log_path=tcpdump_out,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while "listening on" not in (tcpdump_out.read_text() if tcpdump_out.exists() else ""):
            if time.monotonic() > deadline or not lab._alive(cap):
                raise LabError(f"tcpdump did not start; see {tcpdump_out}")
            time.sleep(0.05)
        _say(f"-- capturing the external link: {info.capture_ns} {info.capture_if} -> {pcap}")

        _say(f"-- ping -c 20 -i 0.2 {hb.address} from {ha.name}")
        ping = lab.exec(
            ha.name, ["ping", "-6", "-n", "-c", "20", "-i", "0.2", "-W", "2", hb.address],
            check=False, timeout=60,
        )  # fmt: skip
        m = re.search(r"(\d+) packets transmitted, (\d+) received", ping.stdout)
        rtt = re.search(r"= [\d.]+/([\d.]+)/", ping.stdout)
        sent, got = (int(m.group(1)), int(m.group(2))) if m else (20, 0)
        _say(f"   {got}/{sent} replies" + (f", avg rtt {rtt.group(1)} ms" if rtt else ""))
        if got < sent:
            failures.append(f"ping lost {sent - got} of {sent}")

        www = _mkdir(Path(info.lab_dir) / "hb" / "www", 0o755)
        blob = www / "file.bin"
        with open(blob, "wb") as f:
            f.write(os.urandom(size))
        want = hashlib.sha256(blob.read_bytes()).hexdigest()
        lab.start_http_server(hb.name, www, hb.address)
        dest = _mkdir(Path(info.lab_dir) / "ha", 0o755) / "file.bin"
        _say(f"-- curl http://[{hb.address}]/file.bin ({size / 2**20:g} MiB) from {ha.name}")
        curl = lab.exec(
            ha.name,
            ["curl", "-sS", "-g", "--fail", "--max-time", "120", "-o", str(dest),
             "-w", "%{speed_download} %{time_total}", f"http://[{hb.address}]/file.bin"],
            check=False, timeout=150,
        )  # fmt: skip
        if curl.returncode != 0:
            failures.append(f"download failed: curl exit {curl.returncode}: {curl.stderr.strip()}")
        else:
            got_sum = hashlib.sha256(dest.read_bytes()).hexdigest()
            speed, total = (float(x) for x in curl.stdout.split()[:2])
            same = got_sum == want
            _say(
                f"   {size / 2**20:g} MiB in {total:.2f} s ({speed * 8 / 1e6:.1f} Mbit/s), "
                f"sha256 {'matches' if same else 'DIFFERS'} ({got_sum[:16]}...)"
            )
            if not same:
                failures.append("downloaded file differs from the served file")

        time.sleep(0.3)
        lab.stop(cap)
        rep = analyse_capture(pcap, info.true_addresses)
        _say(
            f"-- external link: {rep.packets} IPv6 packets; outer address pairs (non-ICMP), "
            "by first appearance:"
        )
        for src, dst, first, last, n in rep.pairs[:40]:
            _say(f"   {first:7.2f}-{last:7.2f} s  {src:>28} -> {dst:<28} {n:6d} pkts")
        if len(rep.pairs) > 40:
            _say(f"   ... {len(rep.pairs) - 40} more")
        _say(f"   {rep.distinct_pairs} distinct pairs; true host addresses seen in {len(rep.leaks)} frames")
        for t, what in rep.leaks[:5]:
            _say(f"   leak at {t:.2f} s: {what}")
        if mt6d:
            if rep.leaks:
                failures.append(f"true host addresses visible on the external link ({len(rep.leaks)} frames)")
            if rep.distinct_pairs <= 2:
                failures.append(f"outer addresses did not rotate ({rep.distinct_pairs} pairs)")
        elif rep.leaks:
            _say("   (baseline without MT6D: the true addresses are visible, as expected)")
    except KeyboardInterrupt:
        failures.append("interrupted")
    except Mt6dError as e:
        failures.append(str(e))
    finally:
        try:
            if lab.claimed:  # never remove a lab of the same prefix that we did not build
                lab.down()
                _say(f"-- lab {prefix} removed")
        except Exception as e:
            failures.append(f"teardown: {e}")
    if failures:
        _say("== FAILED: " + "; ".join(failures))
        return 1
    _say(
        "== OK: "
        + (
            "traffic crossed MT6D intact, outer addresses rotated and no true host "
            "address appeared on the external link"
            if mt6d
            else "baseline traffic crossed the lab intact"
        )
    )
    return 0


# --- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="also show read-only commands")
    common.add_argument("-q", "--quiet", action="store_true", help="do not echo system changes")
    ap = argparse.ArgumentParser(prog="mt6d-lab", description="Two-gateway network namespace lab for MT6D.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", parents=[common], help="build a lab")
    p.add_argument("--prefix", required=True, help=f"namespace prefix (max {MAX_PREFIX} chars)")
    p.add_argument("--topology", choices=TOPOLOGIES, default="switched")
    p.add_argument("--streams", type=int, default=1, help="host pairs (default 1)")
    p.add_argument("--rotation-time", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--json", action="store_true", help="print the lab description as JSON")
    p.add_argument("--no-mt6d", action="store_true", help="plain forwarding baseline, no MT6D")
    p.add_argument("--router-mtu", type=int, default=1500, help="routed: MTU router<->gb")
    p.add_argument("--ready-timeout", type=float, default=20.0, help="supervisor start (s)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="configuration override for both supervisors (repeatable)")

    p = sub.add_parser("down", parents=[common], help="remove a lab")
    p.add_argument("--prefix", required=True)
    p.add_argument("--keep-files", action="store_true", help=f"keep {LAB_ROOT}/PREFIX")

    p = sub.add_parser("info", parents=[common], help="print a running lab's JSON description")
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("demo", parents=[common], help="build, demonstrate, remove")
    p.add_argument("--topology", choices=TOPOLOGIES, default="switched")
    p.add_argument("--prefix", default=None, help="default: m6 + 4 random hex digits")
    p.add_argument("--rotation-time", type=float, default=2.0)
    p.add_argument("--no-mt6d", action="store_true", help="run the demo on the baseline")
    return ap


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    default = logging.WARNING if args.cmd == "demo" else logging.INFO
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else default
    if args.cmd == "demo" and args.verbose:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if os.geteuid() != 0:
            raise LabPrivilegeError("mt6d-lab needs root (network namespaces)")
        if args.cmd == "up":
            info = up(
                args.prefix,
                args.topology,
                streams=args.streams,
                rotation_time=args.rotation_time,
                mt6d=not args.no_mt6d,
                router_mtu=args.router_mtu,
                settings=args.set,
                ready_timeout=args.ready_timeout,
            )
            if args.json:
                print(info.to_json())
            else:
                _print_summary(info)
            return 0
        if args.cmd == "down":
            if not down(args.prefix, keep_files=args.keep_files):
                log.warning("no lab with prefix %s", args.prefix)
            return 0
        if args.cmd == "info":
            print(load(args.prefix).to_json())
            return 0
        return demo(args.topology, args.prefix, rotation_time=args.rotation_time, mt6d=not args.no_mt6d)
    except Mt6dError as e:
        print(f"mt6d-lab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mt6d-lab: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
        log.removeHandler(handler)


def _print_summary(info: LabInfo) -> None:
    print(f"lab {info.prefix}: {info.topology}, {'MT6D' if info.mt6d else 'no MT6D'}")
    for n in info.namespaces:
        addrs = ", ".join(a for i in n.interfaces for a in i.addresses)
        print(f"  {n.role:10} {n.name:14} {' '.join(i.name for i in n.interfaces):24} {addrs}")
    for s in info.streams:
        print(f"  stream {s.name}: {s.host_a_address} <-> {s.host_b_address} queue {s.queue}")
    if info.mt6d:
        print(f"  configs: {info.gateway_a.config} {info.gateway_b.config}")
    print(f"  remove with: mt6d-lab down --prefix {info.prefix}")


if __name__ == "__main__":
    sys.exit(main())
