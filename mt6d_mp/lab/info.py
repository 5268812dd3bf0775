"""What a lab looks like: the description :meth:`Lab.up` returns and ``mt6d-lab up --json`` prints.

Flow: the plan (plan.py) is turned into a :class:`LabInfo` before anything is built; the lab
stores it in its state file with :meth:`LabInfo.to_dict` and :func:`load` reads it back with
:meth:`LabInfo.from_dict`. In order:

- the lab's errors (:class:`LabError` and the two with their own exit codes);
- :class:`InterfaceInfo`, :class:`NamespaceInfo`, :class:`StreamInfo`, :class:`SiteInfo`: one
  interface, namespace, host pair, site (a gateway and the hosts behind it);
- :class:`LabInfo`: the whole lab, with lookups by role, name, site and gateway, and its
  (de)serialisation.

A stream has two ends, ``a`` and ``b`` (the ``host_a_*`` and ``host_b_*`` fields): in a two-site
lab host A's and host B's; in a three-site lab a stream between sites B and C has host B at end
``a``. The gateway in front of an end is the gateway of the end's site
(:meth:`LabInfo.stream_gateways`); each gateway names the stream after its own host first
(:meth:`StreamInfo.name_at`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from mt6d_mp.errors import EXIT_BAD_ARGS, EXIT_PRIVILEGE, SystemSetupError


class LabError(SystemSetupError):
    """The lab could not be built, used or removed."""


class LabPrivilegeError(LabError):
    exit_code = EXIT_PRIVILEGE


class LabUsageError(LabError):
    exit_code = EXIT_BAD_ARGS


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
    dir: str | None = None  # gateways (and hosts in host mode): /run/mt6d-lab/P/ga
    config: str | None = None  # gateways (and hosts in host mode) with MT6D: mt6d.toml
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
    name: str  # "host-a-host-b": the stream's name in the configuration of end a's gateway
    index: int  # 1..number of streams
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

    @property
    def reverse_name(self) -> str:
        """The stream's name in the configuration of end b's gateway ("host-b-host-a")."""
        return f"{self.host_b_name}-{self.host_a_name}"

    def name_at(self, host_ns: str) -> str:
        """The stream's name in the configuration of the gateway in front of ``host_ns`` (one of
        its two hosts' namespaces)."""
        if host_ns == self.host_a_ns:
            return self.name
        if host_ns == self.host_b_ns:
            return self.reverse_name
        raise KeyError(f"stream {self.name} has no host {host_ns}")


@dataclass(frozen=True)
class SiteInfo:
    name: str  # "a", "b", "c"
    gateway: str  # the gateway's namespace
    net: str  # /64 of the site's hosts
    hosts: tuple[str, ...]  # the hosts' namespaces, host 1 first


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
    sites: tuple[SiteInfo, ...] = ()  # site by site, a first (empty in a state file made before)

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

    def host(self, site: str, i: int = 1) -> NamespaceInfo:
        """Host ``i`` of ``site`` ("a", "b", "c")."""
        return self.ns(f"host-{site}" if i == 1 else f"host-{site}{i}")

    def gateway(self, site: str) -> NamespaceInfo:
        """The namespace that runs MT6D for ``site``: its gateway, or in the host-mode
        topologies (hostplan.py) its host, which protects itself."""
        for s in self.sites:
            if s.name == site:
                return self.namespace(s.gateway)
        return self.ns(f"gateway-{site}")

    @property
    def gateways(self) -> tuple[NamespaceInfo, ...]:
        """Every namespace that runs MT6D, site by site (A, B, then C in a three-site lab): the
        gateways, and in the host-mode topologies the hosts that protect themselves."""
        return tuple(sorted((n for n in self.namespaces
                             if n.role.startswith("gateway-") or self.host_mode(n)),
                            key=lambda n: n.role.rsplit("-", 1)[1]))

    def host_mode(self, n: NamespaceInfo) -> bool:
        """Whether ``n`` is a host that runs MT6D itself (a host with MT6D's files)."""
        return bool(n.dir and n.address)

    def site_of(self, host_ns: str) -> SiteInfo:
        """The site of a host (by its namespace)."""
        for site in self.sites:
            if host_ns in site.hosts:
                return site
        raise KeyError(f"lab {self.prefix} has no host {host_ns}")

    def stream_gateways(self, s: StreamInfo) -> tuple[NamespaceInfo, NamespaceInfo]:
        """The gateways in front of the stream's end a and end b."""
        if not self.sites:  # a state file from before sites were recorded: two sites
            return self.gateway_a, self.gateway_b
        return (self.namespace(self.site_of(s.host_a_ns).gateway),
                self.namespace(self.site_of(s.host_b_ns).gateway))

    def streams_of(self, gateway: NamespaceInfo) -> tuple[tuple[StreamInfo, str], ...]:
        """The streams a gateway carries, each with its name there (its own host first)."""
        out = []
        for s in self.streams:
            for end, gw in zip((s.host_a_ns, s.host_b_ns), self.stream_gateways(s), strict=True):
                if gw.name == gateway.name:
                    out.append((s, s.name_at(end)))
        return tuple(out)

    def streams_between(self, x: str, y: str) -> tuple[StreamInfo, ...]:
        """The streams between sites ``x`` and ``y`` (either order)."""
        want = {x, y}
        return tuple(s for s in self.streams
                     if {self.site_of(s.host_a_ns).name, self.site_of(s.host_b_ns).name} == want)

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
        sites = tuple(SiteInfo(**{**s, "hosts": tuple(s["hosts"])}) for s in d.get("sites", ()))
        plain = {k: v for k, v in d.items() if k not in ("namespaces", "streams", "roles", "sites")}
        return cls(**{**plain, "namespaces": namespaces, "streams": streams, "sites": sites})
