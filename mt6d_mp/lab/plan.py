"""The plan: every namespace, link, address and route a lab will have, computed before anything is done.

Flow: :func:`make_plan` turns a :class:`Shape` (prefix, topology, streams, MT6D or not) into a
:class:`NetworkPlan`, one step at a time; network.py carries the plan out and
:func:`build_info` describes it as a :class:`LabInfo`. A lab has two sites (``a``, ``b``), or
three (``a``, ``b``, ``c``: topology ``three-sites``, switched, each gateway a peer of the two
others); every site has a gateway and ``streams`` hosts, and host ``i`` of a site is in one
stream with host ``i`` of every other site. In order:

- the address plan and the MAC scheme (``02:6d:PP:RR:II:NN``: prefix hash, role, index, NIC);
- :func:`ns_name`: a role's namespace name;
- the plan's parts (:class:`Veth`, :class:`Bridge`, :class:`Host`, :class:`NetworkPlan`);
- :func:`make_plan`: hosts, namespaces, sysctls, links, addresses, routes, the baseline's proxies;
- :func:`build_info`: interfaces, namespaces and streams of the plan as a :class:`LabInfo`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mt6d_mp.lab.info import InterfaceInfo, LabInfo, NamespaceInfo, SiteInfo, StreamInfo

TOPOLOGIES = ("switched", "routed", "three-sites", "host-gateway", "host-host")  # host-*: hostplan.py

# Address plan.
SWITCHED_NET = "2001:db8:100::"
SITE_A_NET = "2001:db8:a::"
SITE_B_NET = "2001:db8:b::"
ROUTER_A = "2001:db8:a::1"
ROUTER_B = "2001:db8:b::1"
GATEWAY_LL = "fe80::1"  # extra link-local address of each gateway's int0 (the hosts' next hop)

# Second-to-last byte of the MAC role field: 02:6d:PP:RR:II:NN.
_ROLE_HOST = {"a": 0xA0, "b": 0xB0, "c": 0xC0}
_ROLE_GW = {"a": 0x1A, "b": 0x1B, "c": 0x1C}
_ROLE_SWITCH = 0x5E
_ROLE_ROUTER = 0x7E

_DAD = [
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
]


def _mac(pp: int, role: int, index: int, nic: int) -> str:
    return f"02:6d:{pp:02x}:{role:02x}:{index:02x}:{nic:02x}"


def link_local_of(mac: str) -> str:
    """The EUI-64 link-local address the kernel derives from ``mac``."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    b[0] ^= 0x02
    eui = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


def ns_name(prefix: str, role: str) -> str:
    """The namespace of ``role`` (gateway-a, switch, host-b2, ...) in lab ``prefix``."""
    short = {"gateway-a": "ga", "gateway-b": "gb", "gateway-c": "gc", "switch": "sw", "router": "rt"}
    if role in short:
        return f"{prefix}-{short[role]}"
    m = re.fullmatch(r"host-([abc])(\d*)", role)
    if not m:
        raise KeyError(role)
    return f"{prefix}-h{m.group(1)}{m.group(2)}"


# --- the plan's parts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What the lab is asked to be (the arguments of :class:`Lab` that change the network)."""

    prefix: str
    topology: str
    streams: int  # hosts per site
    mt6d: bool
    router_mtu: int
    host_accept_ra: bool
    # Every host of a site is an address in one namespace (for hundreds of streams): one veth
    # to the gateway, one MAC, addresses SITE_NET + "<site>:<i>".
    hosts_as_addresses: bool = False
    shards: int = 0  # streams spread over this many queues (0: a queue per stream)

    @property
    def bridged(self) -> bool:
        """Hosts hang off a bridge int0 in their gateway (several host namespaces)."""
        return self.streams > 1 and not self.hosts_as_addresses

    @property
    def switched(self) -> bool:
        """One external link for every gateway (a bridge); routed has a router between two, as
        the host-mode topologies do (hostplan.py)."""
        return self.topology in ("switched", "three-sites")

    @property
    def sites(self) -> tuple[str, ...]:
        return ("a", "b", "c") if self.topology == "three-sites" else ("a", "b")

    @property
    def middle_role(self) -> str:
        return "switch" if self.switched else "router"


@dataclass
class Veth:
    ns: str
    name: str
    mac: str
    peer_ns: str
    peer_name: str
    peer_mac: str
    mtu: int = 1500


@dataclass
class Bridge:
    ns: str
    name: str
    mac: str
    ports: list[str]


@dataclass
class Host:
    ns: str
    role: str  # host-a / host-a2 / host-b ...
    side: str  # the site: "a", "b" or "c"
    index: int
    address: str
    mac: str
    port: str  # the gateway-side interface the host hangs off (int0 or h<i>)
    port_mac: str


@dataclass
class NetworkPlan:
    namespaces: list[tuple[str, str]] = field(default_factory=list)  # (name, role), create order
    sysctls: dict[str, list[str]] = field(default_factory=dict)
    bridge_namespaces: set[str] = field(default_factory=set)
    veths: list[Veth] = field(default_factory=list)
    bridges: list[Bridge] = field(default_factory=list)
    addresses: list[tuple[str, str, str]] = field(default_factory=list)  # (ns, dev, cidr)
    routes: list[tuple[str, list[str]]] = field(default_factory=list)
    proxies: list[tuple[str, str, str]] = field(default_factory=list)  # (ns, dev, address)
    hosts: list[Host] = field(default_factory=list)
    mt6d_hosts: set[str] = field(default_factory=set)  # hosts running MT6D themselves (host mode)

    def side(self, side: str) -> list[Host]:
        return [h for h in self.hosts if h.side == side]


# --- making the plan --------------------------------------------------------------------------


def make_plan(shape: Shape) -> NetworkPlan:
    """Everything :meth:`Lab.up` will create, in the order it creates it."""
    if shape.topology.startswith("host-"):
        from mt6d_mp.lab.hostplan import make_host_plan

        return make_host_plan(shape)
    p = NetworkPlan()
    pp = hashlib.sha256(shape.prefix.encode()).digest()[0]
    p.hosts = _hosts(shape, pp)
    _plan_namespaces(p, shape)
    _plan_sysctls(p, shape)
    _plan_host_links(p, shape, pp)
    _plan_middle_links(p, shape, pp)
    _plan_addresses(p, shape)
    _plan_routes(p, shape)
    if not shape.mt6d:
        _plan_baseline(p, shape)
    return p


def site_net(shape: Shape, site: str) -> str:
    """The /64 (without the length) of a site's hosts."""
    if shape.switched:
        return SWITCHED_NET
    return {"a": SITE_A_NET, "b": SITE_B_NET}[site]


def _hosts(shape: Shape, pp: int) -> list[Host]:
    many = shape.bridged
    shared = shape.hosts_as_addresses
    hosts = []
    for side in shape.sites:
        net, role_byte, gw_byte = site_net(shape, side), _ROLE_HOST[side], _ROLE_GW[side]
        for i in range(1, shape.streams + 1):
            role = f"host-{side}" if i == 1 else f"host-{side}{i}"
            hosts.append(
                Host(
                    ns=ns_name(shape.prefix, f"host-{side}" if shared else role),
                    role=role,
                    side=side,
                    index=i,
                    address=f"{net}{side}:{i:x}" if shared else f"{net}{side}{i}",
                    mac=_mac(pp, role_byte, 1 if shared else i, 0),
                    port=f"h{i}" if many else "int0",
                    port_mac=_mac(pp, gw_byte, i, 3) if many else _mac(pp, gw_byte, 0, 1),
                )
            )
    return hosts


def _host_namespaces(p: NetworkPlan, side: str) -> list[Host]:
    """The first host of each host namespace of a site (one per host, or one for them all)."""
    first: dict[str, Host] = {}
    for h in p.side(side):
        first.setdefault(h.ns, h)
    return list(first.values())


def _gateways(shape: Shape) -> list[str]:
    """The gateways' namespaces, site by site."""
    return [ns_name(shape.prefix, f"gateway-{site}") for site in shape.sites]


def _plan_namespaces(p: NetworkPlan, shape: Shape) -> None:
    """Site A's hosts and gateway, the middle, then each other site's gateway and hosts."""
    for h in _host_namespaces(p, "a"):
        p.namespaces.append((h.ns, h.role))
    p.namespaces.append((ns_name(shape.prefix, "gateway-a"), "gateway-a"))
    p.namespaces.append((ns_name(shape.prefix, shape.middle_role), shape.middle_role))
    for site in shape.sites[1:]:
        p.namespaces.append((ns_name(shape.prefix, f"gateway-{site}"), f"gateway-{site}"))
        for h in _host_namespaces(p, site):
            p.namespaces.append((h.ns, h.role))


def _forwarding(on: bool) -> list[str]:
    return [
        f"net.ipv6.conf.all.forwarding={int(on)}",
        f"net.ipv6.conf.default.forwarding={int(on)}",
        "net.ipv6.conf.all.accept_ra=0",
        "net.ipv6.conf.default.accept_ra=0",
    ]


def _plan_sysctls(p: NetworkPlan, shape: Shape) -> None:
    gateways = _gateways(shape)
    mid = ns_name(shape.prefix, shape.middle_role)
    ra = "1" if shape.host_accept_ra else "0"
    host_sys = [*_DAD, f"net.ipv6.conf.all.accept_ra={ra}", f"net.ipv6.conf.default.accept_ra={ra}"]
    # MT6D needs no forwarding (the hosts' packets are local to the gateway, the tunnel
    # packets are its own), and with forwarding on a gateway whose supervisor is stopped or
    # restarting would route the hosts' packets in clear. The baseline and the other
    # tunnels of the benchmark route, so they get it.
    gw_sys = [*_DAD, *_forwarding(not shape.mt6d)]
    if not shape.mt6d:
        gw_sys += ["net.ipv6.conf.all.proxy_ndp=1", "net.ipv6.conf.default.proxy_ndp=1"]
    for h in p.hosts:
        p.sysctls[h.ns] = list(host_sys)
    for gw in gateways:
        p.sysctls[gw] = list(gw_sys)
    if shape.switched:
        p.sysctls[mid] = [
            *_DAD,
            # the switch is pure layer 2: no addresses, no NDP/MLD noise of its own
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]
        p.bridge_namespaces.add(mid)
    else:
        p.sysctls[mid] = [*_DAD, *_forwarding(True)]  # the router routes, MT6D or not
    if shape.bridged:
        p.bridge_namespaces.update(gateways)


def _plan_host_links(p: NetworkPlan, shape: Shape, pp: int) -> None:
    """Hosts to their gateway: one veth each, bridged into int0 when there are several."""
    for side in shape.sites:
        gw, hosts = ns_name(shape.prefix, f"gateway-{side}"), _host_namespaces(p, side)
        for h in hosts:
            p.veths.append(Veth(h.ns, "eth0", h.mac, gw, h.port, h.port_mac))
        if shape.bridged:
            p.bridges.append(Bridge(gw, "int0", _mac(pp, _ROLE_GW[side], 0, 1), [h.port for h in hosts]))


def _plan_middle_links(p: NetworkPlan, shape: Shape, pp: int) -> None:
    """Gateways to the switch (a bridge br0, port ``g<site>`` per gateway) or the router (gb's
    link with the router's MTU)."""
    mid = ns_name(shape.prefix, shape.middle_role)
    mid_byte = _ROLE_SWITCH if shape.switched else _ROLE_ROUTER
    for site in shape.sites:
        gw, byte = ns_name(shape.prefix, f"gateway-{site}"), _ROLE_GW[site]
        p.veths.append(
            Veth(
                gw, "ext0", _mac(pp, byte, 0, 2), mid, f"g{site}", _mac(pp, mid_byte, 0, byte),
                mtu=shape.router_mtu if site == "b" and not shape.switched else 1500,
            )
        )  # fmt: skip
    if shape.switched:
        p.bridges.append(Bridge(mid, "br0", _mac(pp, _ROLE_SWITCH, 0, 0), [f"g{s}" for s in shape.sites]))


def _plan_addresses(p: NetworkPlan, shape: Shape) -> None:
    for h in p.hosts:
        p.addresses.append((h.ns, "eth0", f"{h.address}/64"))
    for gw in _gateways(shape):
        p.addresses.append((gw, "int0", f"{GATEWAY_LL}/64"))
    if not shape.switched:
        mid = ns_name(shape.prefix, "router")
        p.addresses.append((mid, "ga", f"{ROUTER_A}/64"))
        p.addresses.append((mid, "gb", f"{ROUTER_B}/64"))


def _plan_routes(p: NetworkPlan, shape: Shape) -> None:
    """The gateways' external /64 on ext0 (hashed addresses live there); routed: the defaults."""
    ga, gb = ns_name(shape.prefix, "gateway-a"), ns_name(shape.prefix, "gateway-b")
    if shape.switched:
        for gw in _gateways(shape):
            p.routes.append((gw, ["-6", "route", "add", f"{SWITCHED_NET}/64", "dev", "ext0"]))
        return
    for gw, net, router in ((ga, SITE_A_NET, ROUTER_A), (gb, SITE_B_NET, ROUTER_B)):
        p.routes.append((gw, ["-6", "route", "add", f"{net}/64", "dev", "ext0"]))
        p.routes.append((gw, ["-6", "route", "add", "default", "via", router, "dev", "ext0"]))
    for h in (h for site in shape.sites for h in _host_namespaces(p, site)):
        p.routes.append((h.ns, ["-6", "route", "add", "default", "via", GATEWAY_LL, "dev", "eth0"]))


def _plan_baseline(p: NetworkPlan, shape: Shape) -> None:
    """The --no-mt6d baseline: plain forwarding, NDP proxied by the gateways."""
    for site in shape.sites:
        gw = ns_name(shape.prefix, f"gateway-{site}")
        local, remote = p.side(site), [h for h in p.hosts if h.side != site]
        for h in local:
            p.routes.append((gw, ["-6", "route", "add", f"{h.address}/128", "dev", "int0"]))
            p.proxies.append((gw, "ext0", h.address))
        if shape.switched:  # remote hosts look on-link to the local ones
            for h in remote:
                p.proxies.append((gw, "int0", h.address))


# --- describing the plan ----------------------------------------------------------------------


def build_info(
    plan: NetworkPlan, shape: Shape, *, rotation_time: float, lab_dir: Path, state_file: Path
) -> LabInfo:
    """The :class:`LabInfo` of a lab built from ``plan`` (no PIDs yet)."""
    switched = shape.switched
    return LabInfo(
        prefix=shape.prefix,
        topology=shape.topology,
        mt6d=shape.mt6d,
        rotation_time=rotation_time,
        router_mtu=None if switched else shape.router_mtu,
        lab_dir=str(lab_dir),
        state_file=str(state_file),
        site_a_net=f"{site_net(shape, 'a')}/64",
        site_b_net=f"{site_net(shape, 'b')}/64",
        capture_ns=ns_name(shape.prefix, shape.middle_role),
        capture_if="br0" if switched else "ga",
        namespaces=_namespace_infos(plan, shape.mt6d, lab_dir),
        streams=_stream_infos(plan, shape),
        sites=tuple(
            SiteInfo(
                name=site,
                gateway=next((h.ns for h in plan.side(site) if h.ns in plan.mt6d_hosts),
                             ns_name(shape.prefix, f"gateway-{site}")),
                net=f"{site_net(shape, site)}/64",
                hosts=tuple(h.ns for h in _host_namespaces(plan, site)),
            )
            for site in shape.sites
        ),
    )


def _interfaces(plan: NetworkPlan) -> dict[str, list[InterfaceInfo]]:
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
    return ifaces


def _namespace_infos(plan: NetworkPlan, mt6d: bool, lab_dir: Path) -> tuple[NamespaceInfo, ...]:
    ifaces = _interfaces(plan)
    hosts: dict[str, Host] = {}
    for h in plan.hosts:
        hosts.setdefault(h.ns, h)  # a namespace of many host addresses: its first host
    namespaces = []
    for name, role in plan.namespaces:
        extra: dict[str, Any] = {}
        if name in hosts:
            h = hosts[name]
            extra = {"hostname": h.role, "address": h.address, "mac": h.mac}
        if name in plan.mt6d_hosts or role.startswith("gateway-"):
            gdir = lab_dir / name.rsplit("-", 1)[1]
            extra["dir"] = str(gdir)
            if mt6d:
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
    return tuple(namespaces)


def _stream_infos(plan: NetworkPlan, shape: Shape) -> tuple[StreamInfo, ...]:
    """Host ``i`` of each site with host ``i`` of each later site: with two sites A-B (index
    and queue as always: 1..N, 2..N+1), with three A-B, A-C, B-C (index 1..3N, one queue
    number each, so that no gateway has two streams on one queue). With ``shards`` the
    streams share that many queues, in turn (2, 3, ..., 2, 3, ...)."""
    pairs = [(x, y) for n, x in enumerate(shape.sites) for y in shape.sites[n + 1:]]
    streams = []
    ends = (end for x, y in pairs for end in zip(plan.side(x), plan.side(y), strict=True))
    for index, (a, z) in enumerate(ends, start=1):
        sname = f"{a.role}-{z.role}"
        streams.append(
            StreamInfo(
                name=sname,
                index=index,
                queue=2 + (index - 1) % shape.shards if shape.shards else 1 + index,
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
    return tuple(streams)
