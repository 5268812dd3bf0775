"""What a lab looks like: the description :meth:`Lab.up` returns and ``mt6d-lab up --json`` prints.

Flow: the plan (plan.py) is turned into a :class:`LabInfo` before anything is built; the lab
stores it in its state file with :meth:`LabInfo.to_dict` and :func:`load` reads it back with
:meth:`LabInfo.from_dict`. In order:

- the lab's errors (:class:`LabError` and the two with their own exit codes);
- :class:`InterfaceInfo`, :class:`NamespaceInfo`, :class:`StreamInfo`: one interface, namespace,
  host pair;
- :class:`LabInfo`: the whole lab, with lookups by role and name and its (de)serialisation.
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
