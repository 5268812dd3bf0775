"""Links, addresses, neighbours and host routes through rtnetlink (the only pyroute2 user).

One :class:`Netlink` wraps one ``IPRoute`` handle (pyroute2 wants one handle per process or
thread). The handle works in the network namespace of the calling process, or in ``netns`` if one
is named (pyroute2 then opens its socket inside that namespace).

Kernel facts relied on:

- An address added with ``IFA_F_NODAD`` skips duplicate address detection and is usable at once.
  Without it the address stays *tentative* (``bind()`` fails with EADDRNOTAVAIL) for about
  1.6-1.8 s, unless both ``net.ipv6.conf.all.accept_dad`` and the interface's ``accept_dad`` are 0;
  ``optimistic_dad`` does not help addresses added by hand.
- ``IFA_F_NOPREFIXROUTE`` stops the kernel adding the prefix route (a /64 for a /64 address) that
  it adds by default. The gateway holds the same /64 on both its sides, so a kernel prefix route
  on one side would steal the other side's traffic; hosts are reached through explicit /128 routes
  (:meth:`Netlink.add_host_route`) instead.
- A neighbour entry in state ``NUD_PERMANENT`` (0x80, 128) is never probed, never expires and is
  never replaced by neighbour discovery.
- Netlink replies confirm the change, but other sockets see it only once the kernel has sent the
  notification; pyroute2's ``IPRoute.ensure()`` discusses the same. :meth:`wait_address_usable`
  polls when a caller needs to be sure.

Every address and route we add carries the protocol number ``proto`` (``IFA_PROTO``, kernel
>= 6.1, and ``RTA``'s ``rtm_protocol``), so that :meth:`Netlink.owned_addresses` and
:meth:`Netlink.owned_routes` can find what a killed run left by owner, not by guesswork.
``ip addr``/``ip route`` show it as ``proto 109``.
"""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mt6d_mp.errors import SystemSetupError

log = logging.getLogger(__name__)


def _import_pyroute2() -> tuple[Any, type[Exception]]:
    """``IPRoute`` and ``NetlinkError``, imported without running pyroute2's package ``__init__``.

    That ``__init__`` imports all of pyroute2 (NDB with sqlite3, IPDB, nl80211, ipset, plan9,
    ...: 300 modules). The supervisor needs only ``IPRoute``; importing it from its own module
    with the package's ``__init__`` left out costs 12 MB of private memory instead of 17.5 MB
    (measured with /proc/self/smaps_rollup, pyroute2 0.9.7; pyroute2 issue #1404 is the same
    request upstream). The package module stands in ``sys.modules`` only while the two imports
    run: a later ``import pyroute2`` anywhere in the process runs the real ``__init__``, which
    finds the submodules already loaded. If a pyroute2 release makes the submodules need the
    package's own names, the plain import is used instead.
    """
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations is not None:
            sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)  # __init__ not run
            try:
                from pyroute2.iproute.linux import IPRoute as iproute
                from pyroute2.netlink.exceptions import NetlinkError as error

                return iproute, error
            except (ImportError, AttributeError):  # the submodules want the package's names
                for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
                    del sys.modules[name]
            finally:
                sys.modules.pop("pyroute2", None)
    from pyroute2 import IPRoute as iproute
    from pyroute2.netlink.exceptions import NetlinkError as error

    return iproute, error


if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
else:
    IPRoute, NetlinkError = _import_pyroute2()

# include/uapi/linux/if_addr.h
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80
IFA_F_NOPREFIXROUTE = 0x200
# include/uapi/linux/neighbour.h
NUD_PERMANENT = 0x80
# include/uapi/linux/rtnetlink.h: values above RTPROT_STATIC (4) are free for routing daemons.
RT_SCOPE_LINK = 253
PROTO_MT6D = 109  # 0x6d, "m"

AddressLike = str | bytes | ipaddress.IPv6Address


class NetlinkInputError(SystemSetupError, ValueError):
    """An argument was invalid; raised before anything in the system is touched."""


@dataclass(frozen=True, slots=True)
class IfAddress:
    """One IPv6 address of an interface as the kernel reports it."""

    address: bytes  # 16 bytes
    prefixlen: int
    flags: int  # IFA_FLAGS (all 32 bits)
    scope: int
    proto: int  # 0 when unset

    @property
    def tentative(self) -> bool:
        return bool(self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED))

    def __str__(self) -> str:
        return f"{ipaddress.IPv6Address(self.address)}/{self.prefixlen}"


def _v6(addr: AddressLike, what: str = "address") -> ipaddress.IPv6Address:
    try:
        return addr if isinstance(addr, ipaddress.IPv6Address) else ipaddress.IPv6Address(addr)
    except (ipaddress.AddressValueError, ValueError, TypeError) as exc:
        raise NetlinkInputError(f"{what}: not an IPv6 address: {addr!r}") from exc


def _mac(mac: bytes | str) -> str:
    if isinstance(mac, bytes | bytearray) and len(mac) == 6:
        return ":".join(f"{b:02x}" for b in mac)
    if isinstance(mac, str):
        parts = mac.split(":")
        if len(parts) == 6 and all(len(p) == 2 for p in parts):
            try:
                return ":".join(f"{int(p, 16):02x}" for p in parts)
            except ValueError:
                pass
    raise NetlinkInputError(f"mac: expected 6 bytes or aa:bb:cc:dd:ee:ff, got {mac!r}")


def _prefixlen(prefixlen: int) -> int:
    if isinstance(prefixlen, bool) or not isinstance(prefixlen, int) or not 0 <= prefixlen <= 128:
        raise NetlinkInputError(f"prefixlen: expected 0..128, got {prefixlen!r}")
    return prefixlen


class Netlink:
    """One rtnetlink handle; each change logs one INFO line before it is made.

    The add/remove methods are idempotent: adding what is there, or removing what is not, is
    not an error; they return whether they changed anything.
    """

    def __init__(self, netns: str | None = None, proto: int = PROTO_MT6D) -> None:
        if not 5 <= proto <= 255:
            raise NetlinkInputError(f"proto: expected 5..255, got {proto!r}")
        self.netns = netns
        self.proto = proto
        self._ifindex: dict[str, int] = {}
        try:
            self._ipr: Any = IPRoute(netns=netns) if netns else IPRoute()
        except (OSError, NetlinkError) as exc:
            raise SystemSetupError(f"netlink: cannot open rtnetlink ({netns=}): {exc}") from exc

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading

    def ifindex(self, name: str) -> int:
        """The interface's index, cached: pyroute2's link_lookup dumps every link each time,
        which made each address change of a rotation cost a millisecond more. An interface
        that is deleted and created again gets a new index; call :meth:`forget` then."""
        index = self._ifindex.get(name)
        if index is not None:
            return index
        found = self._ipr.link_lookup(ifname=name) if isinstance(name, str) and name else []
        if not found:
            raise SystemSetupError(f"netlink: no interface {name!r}")
        self._ifindex[name] = index = int(found[0])
        return index

    def forget(self) -> None:
        """Drop the cached interface indexes."""
        self._ifindex.clear()

    def _link(self, name: str) -> Any:
        return self._ipr.get_links(self.ifindex(name))[0]

    def mac(self, name: str) -> bytes:
        lladdr = self._link(name).get("IFLA_ADDRESS")
        if not lladdr:
            raise SystemSetupError(f"netlink: interface {name} has no link-layer address")
        return bytes.fromhex(str(lladdr).replace(":", ""))

    def mtu(self, name: str) -> int:
        return int(self._link(name).get("IFLA_MTU"))

    def addresses(self, ifname: str) -> list[IfAddress]:
        """The interface's IPv6 addresses, as the kernel reports them now."""
        return list(self._addresses(self.ifindex(ifname)))

    def _addresses(self, index: int | None = None) -> Iterator[IfAddress]:
        for _, addr in self._indexed_addresses(index):
            yield addr

    def _indexed_addresses(self, index: int | None = None) -> Iterator[tuple[int, IfAddress]]:
        kwargs = {"index": index} if index is not None else {}
        for msg in self._ipr.get_addr(family=socket.AF_INET6, **kwargs):
            address = msg.get("IFA_ADDRESS")
            if not address:
                continue
            yield (
                int(msg["index"]),
                IfAddress(
                    address=ipaddress.IPv6Address(address).packed,
                    prefixlen=int(msg["prefixlen"]),
                    # IFA_FLAGS carries all 32 bits; the header field only the low 8.
                    flags=int(msg.get("IFA_FLAGS") or msg["flags"]),
                    scope=int(msg["scope"]),
                    proto=int(msg.get("IFA_PROTO") or 0),
                ),
            )

    def _names(self) -> dict[int, str]:
        return {int(link["index"]): str(link.get("IFLA_IFNAME")) for link in self._ipr.get_links()}

    def link_local(self, name: str) -> bytes | None:
        """The interface's first usable link-local address (fe80::/10), if it has one yet."""
        for addr in self.addresses(name):
            if addr.scope == RT_SCOPE_LINK and not addr.tentative:
                return addr.address
        return None

    def owned_addresses(self) -> list[tuple[str, IfAddress]]:
        """Addresses on any interface that carry our protocol number: ``(ifname, address)``."""
        names = self._names()
        return [
            (names.get(index, "?"), addr)
            for index, addr in self._indexed_addresses()
            if addr.proto == self.proto
        ]

    def owned_routes(self) -> list[tuple[str, bytes, int]]:
        """IPv6 routes that carry our protocol number: ``(ifname, destination, prefix length)``."""
        names = self._names()
        out = []
        for msg in self._ipr.get_routes(family=socket.AF_INET6, proto=self.proto):
            if int(msg["proto"]) != self.proto:
                continue
            dst = ipaddress.IPv6Address(msg.get("RTA_DST") or "::").packed
            oif = msg.get("RTA_OIF")
            out.append((names.get(int(oif), "?") if oif else "?", dst, int(msg["dst_len"])))
        return out

    # -- addresses

    def add_address(self, ifname: str, addr: AddressLike, prefixlen: int = 128) -> bool:
        """Add ``addr/prefixlen`` with NODAD|NOPREFIXROUTE; False if it was already there."""
        ip, plen = _v6(addr), _prefixlen(prefixlen)
        index = self.ifindex(ifname)
        log.info(
            "action=add_address dev=%s address=%s/%d flags=nodad,noprefixroute proto=%d",
            ifname,
            ip,
            plen,
            self.proto,
        )
        try:
            self._ipr.addr(
                "add",
                index=index,
                address=str(ip),
                prefixlen=plen,
                flags=IFA_F_NODAD | IFA_F_NOPREFIXROUTE,
                proto=self.proto,
            )
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise SystemSetupError(f"netlink: add address {ip}/{plen} on {ifname}: {exc}") from exc
        return True

    def remove_address(self, ifname: str, addr: AddressLike, prefixlen: int = 128) -> bool:
        """Remove ``addr/prefixlen``; False if it was not there."""
        ip, plen = _v6(addr), _prefixlen(prefixlen)
        index = self.ifindex(ifname)
        log.info("action=remove_address dev=%s address=%s/%d", ifname, ip, plen)
        try:
            self._ipr.addr("del", index=index, address=str(ip), prefixlen=plen)
        except NetlinkError as exc:
            if exc.code == errno.EADDRNOTAVAIL:
                return False
            raise SystemSetupError(f"netlink: remove address {ip} on {ifname}: {exc}") from exc
        return True

    def wait_address_usable(self, addr: AddressLike, timeout: float = 3.0) -> None:
        """Wait until ``addr`` is on some interface and neither tentative nor failed DAD.

        Addresses added by :meth:`add_address` are usable at once (NODAD); this is for addresses
        added by others, and for callers that must not race the kernel's notification.
        """
        want = _v6(addr).packed
        deadline = time.monotonic() + timeout
        while True:
            found = [a for a in self._addresses() if a.address == want]
            if found and not found[0].tentative:
                return
            if found and found[0].flags & IFA_F_DADFAILED:
                raise SystemSetupError(f"netlink: {ipaddress.IPv6Address(want)} failed DAD")
            if time.monotonic() > deadline:
                state = "tentative" if found else "absent"
                raise SystemSetupError(
                    f"netlink: {ipaddress.IPv6Address(want)} still {state} after {timeout}s"
                )
            time.sleep(0.02)

    # -- neighbours

    def add_neighbour(self, ifname: str, addr: AddressLike, mac: bytes | str) -> None:
        """Make ``addr`` -> ``mac`` a permanent neighbour entry (NUD_PERMANENT), replacing any."""
        ip, lladdr = _v6(addr), _mac(mac)
        index = self.ifindex(ifname)
        log.info(
            "action=replace_neighbour dev=%s address=%s lladdr=%s state=permanent",
            ifname,
            ip,
            lladdr,
        )
        try:
            self._ipr.neigh(
                "replace",
                family=socket.AF_INET6,
                ifindex=index,
                dst=str(ip),
                lladdr=lladdr,
                state=NUD_PERMANENT,
            )
        except NetlinkError as exc:
            raise SystemSetupError(f"netlink: neighbour {ip} on {ifname}: {exc}") from exc

    def remove_neighbour(self, ifname: str, addr: AddressLike) -> bool:
        """Remove the neighbour entry; False if there was none."""
        ip = _v6(addr)
        index = self.ifindex(ifname)
        log.info("action=remove_neighbour dev=%s address=%s", ifname, ip)
        try:
            self._ipr.neigh("del", family=socket.AF_INET6, ifindex=index, dst=str(ip))
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                return False
            raise SystemSetupError(f"netlink: remove neighbour {ip} on {ifname}: {exc}") from exc
        return True

    # -- host routes

    def add_host_route(self, ifname: str, addr: AddressLike) -> None:
        """Route ``addr/128`` out of ``ifname`` (on-link, no gateway), replacing any such route."""
        ip = _v6(addr)
        index = self.ifindex(ifname)
        log.info("action=replace_route dst=%s/128 dev=%s proto=%d", ip, ifname, self.proto)
        try:
            self._ipr.route(
                "replace",
                family=socket.AF_INET6,
                dst=str(ip),
                dst_len=128,
                oif=index,
                proto=self.proto,
            )
        except NetlinkError as exc:
            raise SystemSetupError(f"netlink: route {ip}/128 via {ifname}: {exc}") from exc

    def remove_host_route(self, ifname: str, addr: AddressLike) -> bool:
        """Remove the ``addr/128`` route out of ``ifname``; False if there was none."""
        ip = _v6(addr)
        index = self.ifindex(ifname)
        log.info("action=remove_route dst=%s/128 dev=%s", ip, ifname)
        try:
            self._ipr.route("del", family=socket.AF_INET6, dst=str(ip), dst_len=128, oif=index)
        except NetlinkError as exc:
            if exc.code == errno.ESRCH:
                return False
            raise SystemSetupError(f"netlink: remove route {ip}/128 via {ifname}: {exc}") from exc
        return True
