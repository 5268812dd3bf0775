"""Links, addresses, neighbours and host routes through rtnetlink (the only pyroute2 user).

One :class:`Netlink` wraps one blocking rtnetlink socket (:class:`_Rtnl`): it sends one request
and reads its replies, with pyroute2's message classes to build and read the messages. It works
in the network namespace of the calling process, or in ``netns`` if one is named (the socket is
made inside that namespace). Use one per thread.

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
  notification (pyroute2's ``IPRoute.ensure()`` discusses the same). :meth:`wait_address_usable`
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
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mt6d_mp.errors import SystemSetupError
from mt6d_mp.io import nlmsg as framing
from mt6d_mp.io.nlmsg import NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HEADER, nla

log = logging.getLogger(__name__)


def _import_codecs() -> tuple[Any, ...]:
    """pyroute2's rtnetlink message classes, imported without the package ``__init__``.

    That ``__init__`` imports all of pyroute2 (NDB with sqlite3, IPDB, nl80211, ipset, plan9,
    ...: 300 modules, 17.5 MB of private memory), and its ``IPRoute`` socket is built on asyncio
    (with ``ssl`` and ``unittest.mock``: 10-13 MB). The supervisor needs neither: it sends one
    request at a time and waits for the answer, so :class:`_Rtnl` does that on a plain socket
    with pyroute2's classes to build and read the messages: 0.5 MB and 8 modules (measured with
    /proc/self/smaps_rollup, pyroute2 0.9.7). The package module stands in ``sys.modules`` only
    while the imports run: a later ``import pyroute2`` anywhere in the process runs the real
    ``__init__``, which finds the submodules already loaded. If a pyroute2 release makes the
    submodules need the package's own names, the plain import is used instead.
    """

    def load() -> tuple[Any, ...]:
        from pyroute2.netlink import nlmsg
        from pyroute2.netlink.exceptions import NetlinkError as error
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ndmsg import ndmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg

        return nlmsg, ifaddrmsg, ndmsg, rtmsg, error

    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations is not None:
            sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)  # __init__ not run
            try:
                return load()
            except (ImportError, AttributeError):  # the submodules want the package's names
                for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
                    del sys.modules[name]
            finally:
                sys.modules.pop("pyroute2", None)
    import pyroute2  # noqa: F401  (the whole package, then its submodules)

    return load()


nlmsg, ifaddrmsg, ndmsg, rtmsg, NetlinkError = _import_codecs()


class linkmsg(nlmsg):  # type: ignore[misc, valid-type]
    """The part of ``struct ifinfomsg`` and its attributes that MT6D reads.

    pyroute2's own ``ifinfmsg`` loads a plugin module per link kind (26 modules, 0.7 MB more);
    these three attributes are all the supervisor asks of a link. Attributes not named here
    decode as unknown and are ignored.
    """

    prefix = "IFLA_"
    fields = (("family", "B"), ("__align", "x"), ("ifi_type", "H"), ("index", "i"),
              ("flags", "I"), ("change", "I"))
    nla_map = ((1, "IFLA_ADDRESS", "l2addr"), (3, "IFLA_IFNAME", "asciiz"),
               (4, "IFLA_MTU", "uint32"))


# include/uapi/linux/netlink.h and rtnetlink.h
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # an error echoes the request's header only, not its payload
NETLINK_EXT_ACK = 11  # and says what was wrong ("ipv6: Invalid prefix length")
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_ACK_TLVS = 0x200  # in an error message: attributes follow
NLM_F_DUMP_INTR = 0x10  # in a dump's part: the table changed while it ran, the parts may disagree
NLMSGERR_ATTR_MSG = 1
RTM_GETLINK = 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
RTN_UNICAST, RTN_LOCAL = 1, 2
RT_SCOPE_HOST = 254
RTA_DST, RTA_OIF = 1, 4
_RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg: family, dst_len, src_len, tos, table,
# protocol, scope, type, flags
INFINITY_LIFE_TIME = 0xFFFFFFFF  # include/net/addrconf.h: a lifetime that never runs out
RECV_BUFFER = 1 << 16  # a dump's reply datagrams are at most 32 KB
REPLY_TIMEOUT = 10.0  # seconds; the kernel answers at once, this only bounds a hang
DUMP_TRIES = 3  # an interrupted dump is made again, this many times in all
BATCH = 256  # change requests per datagram (about 90 bytes each; error replies queue in the receive buffer)


def _socket(netns: str | None) -> socket.socket:
    """An rtnetlink socket, in the named namespace (``/run/netns/NAME``) if one is given.

    A socket stays in the namespace it was made in; the calling thread enters the namespace only
    to make it and returns at once (mt6d_mp/io/netns.py).
    """
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
    if not netns or "/" in netns or netns in (".", ".."):
        raise NetlinkInputError(f"netns: expected a name under /run/netns, got {netns!r}")
    from mt6d_mp.io.netns import inside  # only for a named namespace (tests and tools)

    with inside(netns):
        return _socket(None)


def _ext_ack(data: bytes, offset: int, length: int, flags: int) -> str | None:
    """The kernel's text in an error message (``NLMSGERR_ATTR_MSG``), if it sent one.

    With ``NETLINK_CAP_ACK`` the attributes follow the error code and the echoed 16-byte header.
    """
    if not flags & NLM_F_ACK_TLVS:
        return None
    at, end = offset + 16 + 4 + 16, offset + length
    while at + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, at)
        if size < 4:
            break
        if kind & 0x3FFF == NLMSGERR_ATTR_MSG:
            return bytes(data[at + 4:at + size]).split(b"\0", 1)[0].decode(errors="replace")
        at += (size + 3) & ~3
    return None


class _Rtnl:
    """A blocking rtnetlink client: one request, then its replies up to the ack or the dump's end.

    pyroute2's message classes build and read the messages; this is only the socket. A reply
    with another sequence number (a late answer to an interrupted request) is skipped.
    """

    def __init__(self, netns: str | None) -> None:
        self.sock = _socket(netns)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.bind((0, 0))
            self.sock.settimeout(REPLY_TIMEOUT)
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, msg: Any, kind: int, flags: int = 0, reply: Any = None) -> list[Any]:
        """Send ``msg`` as message type ``kind``; the replies decoded as ``reply`` messages.

        Raises ``NetlinkError`` (``.code`` is the errno) if the kernel refused it or did not
        answer. A dump that the kernel marks interrupted (the table changed while it ran) is
        made again, up to DUMP_TRIES times in all.
        """
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        msg["header"] = {"type": kind, "flags": NLM_F_REQUEST | flags | (0 if dump else NLM_F_ACK),
                         "sequence_number": 0, "pid": 0}
        msg.encode()
        request = bytearray(msg.data)
        for _ in range(DUMP_TRIES):
            self.seq = self.seq % 0xFFFFFFFF + 1
            struct.pack_into("=I", request, 8, self.seq)  # the header's sequence number
            out, interrupted = self._exchange(bytes(request), reply)
            if not interrupted:
                return out
        raise NetlinkError(errno.EINTR, f"dump interrupted {DUMP_TRIES} times: the table keeps changing")

    def batch(self, requests: list[tuple[Any, int, int]]) -> list[int]:
        """Send many change requests (message, type, flags) in one datagram: the errno of each,
        0 for success, in order.

        The kernel handles the messages of one datagram one after the other (it does not stop
        at a refused one), so a rotation's hundreds of address changes cost one system call
        each way instead of one round trip per address (docs/KERNEL.md).
        """
        codes: list[int] = []
        for start in range(0, len(requests), BATCH):
            chunk = requests[start:start + BATCH]
            first = self.seq % 0xFFFFFFFF + 1
            data = bytearray()
            last = len(chunk) - 1
            for i, (msg, kind, flags) in enumerate(chunk):
                ack = NLM_F_ACK if i == last else 0
                msg["header"] = {"type": kind, "flags": NLM_F_REQUEST | ack | flags,
                                 "sequence_number": first + i, "pid": 0}
                msg.encode()
                data += msg.data
                data += bytes(-len(msg.data) % 4)
            self.seq = first + len(chunk) - 1
            codes += self._acks(bytes(data), first, len(chunk))
        return codes

    def batch_encoded(self, requests: list[tuple[int, int, bytes]]) -> list[int]:
        """:meth:`batch` for messages encoded by the caller: (type, flags, body after the
        netlink header) each."""
        codes: list[int] = []
        for start in range(0, len(requests), BATCH):
            chunk = requests[start:start + BATCH]
            first = self.seq % 0xFFFFFFFF + 1
            data = bytearray()
            last = len(chunk) - 1
            for i, (kind, flags, body) in enumerate(chunk):
                ack = NLM_F_ACK if i == last else 0
                data += framing.nlmsg(kind, body, NLM_F_REQUEST | ack | flags, first + i)
            self.seq = first + len(chunk) - 1
            codes += self._acks(bytes(data), first, len(chunk))
        return codes

    def _acks(self, request: bytes, first: int, n: int) -> list[int]:
        """Send a batch whose last message alone asks for an ack, and read the replies up to
        that ack. The kernel answers a refused message whether or not it asked (an error
        reply), and handles a datagram's messages in order, so every error comes before the
        last ack, and a message with no reply succeeded. One reply instead of one per message:
        each is a datagram of its own and a system call to read (docs/KERNEL.md)."""
        self.sock.send(request)
        last = first + n - 1
        codes: dict[int, int] = {}
        while last not in codes:
            data = self._receive()
            for offset, length, rkind, _mflags, seq in _messages(data):
                if first <= seq <= last and rkind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + 16)[0] if length >= 20 else 0
                    codes[seq] = code if 0 <= code <= 0xFFF else errno.EBADMSG
        return [codes.get(first + i, 0) for i in range(n)]

    def _receive(self) -> bytes:
        """One datagram of replies (NetlinkError on a timeout or a truncated datagram)."""
        try:
            data, _, rflags, _ = self.sock.recvmsg(RECV_BUFFER)
        except TimeoutError:
            raise NetlinkError(errno.ETIMEDOUT, f"no reply in {REPLY_TIMEOUT:g} s") from None
        if rflags & socket.MSG_TRUNC:
            raise NetlinkError(errno.EMSGSIZE, "netlink reply larger than the receive buffer")
        return bytes(data)

    def _exchange(self, request: bytes, reply: Any) -> tuple[list[Any], bool]:
        """One request and its replies: (the replies decoded, whether a dump was interrupted)."""
        self.sock.send(request)
        out: list[Any] = []
        interrupted = False
        while True:
            data = self._receive()
            for offset, length, rkind, mflags, seq in _messages(data):
                if seq == self.seq:
                    interrupted |= bool(mflags & NLM_F_DUMP_INTR)
                    if rkind in (NLMSG_ERROR, NLMSG_DONE):
                        code = -struct.unpack_from("=i", data, offset + 16)[0] if length >= 20 else 0
                        if code > 0xFFF:  # no errno (MAX_ERRNO is 4095)
                            raise NetlinkError(errno.EBADMSG, f"netlink error code {code}")
                        if code > 0:
                            raise NetlinkError(code, _ext_ack(data, offset, length, mflags))
                        return out, interrupted
                    if reply is not None:
                        message = reply(data[offset:offset + length])
                        try:
                            message.decode()
                        except struct.error as exc:  # shorter than its fixed header
                            raise NetlinkError(errno.EBADMSG, f"malformed netlink reply: {exc}") from None
                        out.append(message)


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(offset, length, type, flags, sequence number) of each message in a reply datagram;
    NetlinkError if a length does not fit."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, rkind, mflags, seq, _ = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            raise NetlinkError(errno.EBADMSG, "malformed netlink reply")
        yield offset, length, rkind, mflags, seq
        offset += (length + 3) & ~3


# include/uapi/linux/if_addr.h
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80
IFA_F_NOPREFIXROUTE = 0x200
# include/uapi/linux/neighbour.h
NUD_PERMANENT = 0x80
NTF_USE = 0x01  # RTM_NEWNEIGH: resolve the entry now, as a packet to it would
NTF_EXT_LEARNED = 0x10  # set by a control plane: outside the table's garbage-collection limit
NDA_DST, NDA_PROTOCOL = 1, 12
_NDMSG = struct.Struct("=BxxxiHBB")  # struct ndmsg: family, pad, ifindex, state, flags, type
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


def _packed16(addr: AddressLike) -> bytes:
    """The 16 bytes of an address (as they are when they already are 16 bytes)."""
    if type(addr) is bytes and len(addr) == 16:
        return addr
    return _v6(addr).packed


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
            self._rtnl = _Rtnl(netns)
        except OSError as exc:
            raise SystemSetupError(f"netlink: cannot open rtnetlink ({netns=}): {exc}") from exc

    def close(self) -> None:
        self._rtnl.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading

    def ifindex(self, name: str) -> int:
        """The interface's index, cached (one request per name). An interface that is deleted
        and created again gets a new index; call :meth:`forget` then."""
        index = self._ifindex.get(name)
        if index is not None:
            return index
        if not isinstance(name, str) or not name or len(name.encode()) >= 16:
            raise SystemSetupError(f"netlink: no interface {name!r}")
        msg = linkmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        try:
            found = self._rtnl.request(msg, RTM_GETLINK, reply=linkmsg)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise SystemSetupError(f"netlink: no interface {name!r}") from exc
            raise SystemSetupError(f"netlink: interface {name!r}: {exc}") from exc
        if not found:
            raise SystemSetupError(f"netlink: interface {name!r}: the kernel answered no link")
        self._ifindex[name] = index = int(found[0]["index"])
        return index

    def forget(self) -> None:
        """Drop the cached interface indexes."""
        self._ifindex.clear()

    def _link(self, name: str) -> Any:
        msg = linkmsg()
        msg["index"] = self.ifindex(name)
        try:
            found = self._rtnl.request(msg, RTM_GETLINK, reply=linkmsg)
        except NetlinkError as exc:
            raise SystemSetupError(f"netlink: interface {name!r}: {exc}") from exc
        if not found:
            raise SystemSetupError(f"netlink: interface {name!r}: the kernel answered no link")
        return found[0]

    def mac(self, name: str) -> bytes:
        lladdr = self._link(name).get("IFLA_ADDRESS")
        if not lladdr:
            raise SystemSetupError(f"netlink: interface {name} has no link-layer address")
        return bytes.fromhex(str(lladdr).replace(":", ""))

    def mtu(self, name: str) -> int:
        mtu = self._link(name).get("IFLA_MTU")
        if not isinstance(mtu, int):
            raise SystemSetupError(f"netlink: interface {name} reports no MTU")
        return mtu

    def addresses(self, ifname: str) -> list[IfAddress]:
        """The interface's IPv6 addresses, as the kernel reports them now."""
        return list(self._addresses(self.ifindex(ifname)))

    def _addresses(self, index: int | None = None) -> Iterator[IfAddress]:
        for _, addr in self._indexed_addresses(index):
            yield addr

    def _indexed_addresses(self, index: int | None = None) -> Iterator[tuple[int, IfAddress]]:
        for msg in self._dump(ifaddrmsg, RTM_GETADDR):
            address = msg.get("IFA_ADDRESS")
            if not address or (index is not None and int(msg["index"]) != index):
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

    def _dump(self, cls: Any, kind: int, family: int = socket.AF_INET6) -> list[Any]:
        """Every object of one kind (``family`` is the first field of each message)."""
        msg = cls()
        msg["family"] = family
        try:
            return self._rtnl.request(msg, kind, NLM_F_DUMP, reply=cls)
        except NetlinkError as exc:
            raise SystemSetupError(f"netlink: dump of message type {kind}: {exc}") from exc

    def _names(self) -> dict[int, str]:
        links = self._dump(linkmsg, RTM_GETLINK, socket.AF_UNSPEC)
        return {int(link["index"]): str(link.get("IFLA_IFNAME")) for link in links}

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
        for msg in self._dump(rtmsg, RTM_GETROUTE):
            if int(msg["proto"]) != self.proto or int(msg["type"]) != RTN_UNICAST:
                continue
            dst = ipaddress.IPv6Address(msg.get("RTA_DST") or "::").packed
            oif = msg.get("RTA_OIF")
            out.append((names.get(int(oif), "?") if oif else "?", dst, int(msg["dst_len"])))
        return out

    def owned_local_routes(self) -> list[bytes]:
        """The destinations of our local routes (:meth:`add_local_routes`)."""
        return [ipaddress.IPv6Address(msg.get("RTA_DST") or "::").packed
                for msg in self._dump(rtmsg, RTM_GETROUTE)
                if int(msg["proto"]) == self.proto and int(msg["type"]) == RTN_LOCAL
                and int(msg["dst_len"]) == 128]

    # -- local routes: addresses this machine takes as its own without binding them

    def add_local_routes(self, addrs: list[bytes]) -> int:
        """``ip route add local ADDR/128 dev lo table local proto 109`` for many addresses (one
        netlink batch); how many were new.

        A packet to such an address is delivered to this machine, and a socket with
        ``IPV6_FREEBIND`` may bind it, as if it were bound to an interface; unlike a bound
        address it joins no multicast group and walks no list, so a thousand cost what one does
        (docs/KERNEL.md, "Hashed addresses as local routes"). Nothing answers neighbour
        solicitations for it: the ICMP worker does (workers/icmp.py). The messages are encoded
        here, not by pyroute2: a rotation of a thousand streams sends thousands of them."""
        if addrs:
            log.info("action=add_local_routes count=%d proto=%d", len(addrs), self.proto)
        return self._local_routes(addrs, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, errno.EEXIST,
                                  "add local route")

    def remove_local_routes(self, addrs: list[bytes]) -> int:
        """Remove local routes of :meth:`add_local_routes`; how many were there."""
        if addrs:
            log.info("action=remove_local_routes count=%d", len(addrs))
        return self._local_routes(addrs, RTM_DELROUTE, 0, errno.ESRCH, "remove local route")

    def _local_routes(self, addrs: list[bytes], kind: int, flags: int, absent: int,
                      what: str) -> int:
        if not addrs:
            return 0
        lo = self.ifindex("lo")
        head = _RTMSG.pack(socket.AF_INET6, 128, 0, 0, RT_TABLE_LOCAL, self.proto,
                           RT_SCOPE_HOST, RTN_LOCAL, 0)
        oif = nla(RTA_OIF, struct.pack("=I", lo))
        dst = nla(RTA_DST, bytes(16))[:4]  # the attribute's header: 16 bytes need no padding
        requests = [(kind, flags, head + dst + _packed16(a) + oif) for a in addrs]
        return self._batch(requests, addrs, absent, what, self._rtnl.batch_encoded)

    # -- addresses

    def _change(self, msg: Any, kind: int, flags: int, absent: int | None, what: str) -> bool:
        """One change, acknowledged; False if the kernel answers ``absent`` (already there, or
        not there to remove), any other refusal is a SystemSetupError naming ``what``."""
        try:
            self._rtnl.request(msg, kind, flags)
        except NetlinkError as exc:
            if absent is not None and exc.code == absent:
                return False
            raise SystemSetupError(f"netlink: {what}: {exc}") from exc
        return True

    def add_address(self, ifname: str, addr: AddressLike, prefixlen: int = 128) -> bool:
        """Add ``addr/prefixlen``, deprecated, with NODAD|NOPREFIXROUTE; False if it was already there."""
        ip, plen = _v6(addr), _prefixlen(prefixlen)
        index = self.ifindex(ifname)
        log.info(
            "action=add_address dev=%s address=%s/%d flags=nodad,noprefixroute proto=%d",
            ifname,
            ip,
            plen,
            self.proto,
        )
        return self._change(self._new_address_msg(index, ip, plen), RTM_NEWADDR,
                            NLM_F_CREATE | NLM_F_EXCL, errno.EEXIST, f"add address {ip}/{plen} on {ifname}")

    def _new_address_msg(self, index: int, ip: ipaddress.IPv6Address, plen: int) -> Any:
        msg = self._address_msg(index, ip, plen)
        # IFA_FLAGS carries the flags above the header field's 8 bits (NOPREFIXROUTE).
        # Preferred lifetime 0 (valid for ever): the address is deprecated, so the kernel's source
        # selection (RFC 6724 rule 3) never picks it for the gateway's own traffic, and a hashed
        # address is not tied to anything but the tunnel. The workers name it explicitly
        # (IPV6_PKTINFO), which deprecation does not prevent (docs/KERNEL.md).
        msg["attrs"] += [
            ("IFA_FLAGS", IFA_F_NODAD | IFA_F_NOPREFIXROUTE),
            ("IFA_PROTO", self.proto),
            ("IFA_CACHEINFO", {"ifa_preferred": 0, "ifa_valid": INFINITY_LIFE_TIME,
                               "cstamp": 0, "tstamp": 0}),
        ]
        return msg

    def add_addresses(self, ifname: str, addrs: list[bytes]) -> int:
        """:meth:`add_address` for many /128s at once (one netlink batch); how many were new.
        Any refusal but "already there" is a SystemSetupError naming the first one refused
        (the others were still applied)."""
        index = self.ifindex(ifname)
        requests = []
        for addr in addrs:
            ip = _v6(addr)
            log.debug("action=add_address dev=%s address=%s/128 flags=nodad,noprefixroute proto=%d",
                      ifname, ip, self.proto)
            requests.append((self._new_address_msg(index, ip, 128), RTM_NEWADDR,
                             NLM_F_CREATE | NLM_F_EXCL))
        if requests:  # one line a batch: a rotation of a thousand streams binds thousands
            log.info("action=add_addresses dev=%s count=%d flags=nodad,noprefixroute proto=%d",
                     ifname, len(requests), self.proto)
        return self._batch(requests, addrs, errno.EEXIST, f"add address on {ifname}")

    def remove_addresses(self, ifname: str, addrs: list[bytes]) -> int:
        """:meth:`remove_address` for many /128s at once (one netlink batch); how many were
        there to remove."""
        index = self.ifindex(ifname)
        requests = []
        for addr in addrs:
            ip = _v6(addr)
            log.debug("action=remove_address dev=%s address=%s/128", ifname, ip)
            requests.append((self._address_msg(index, ip, 128), RTM_DELADDR, 0))
        if requests:
            log.info("action=remove_addresses dev=%s count=%d", ifname, len(requests))
        return self._batch(requests, addrs, errno.EADDRNOTAVAIL, f"remove address on {ifname}")

    def _batch(self, requests: list[Any], addrs: list[bytes], absent: int, what: str,
               send: Callable[[list[Any]], list[int]] | None = None) -> int:
        """Send the requests in batches (pyroute2 messages, or with ``send`` encoded ones);
        how many succeeded. Any refusal but ``absent`` is a SystemSetupError naming the first
        address refused (the others were still applied)."""
        if not requests:
            return 0
        try:
            codes = (send or self._rtnl.batch)(requests)
        except NetlinkError as exc:
            raise SystemSetupError(f"netlink: {what}: {exc}") from exc
        for addr, code in zip(addrs, codes, strict=True):
            if code and code != absent:
                raise SystemSetupError(
                    f"netlink: {what} {_v6(addr)}: {os.strerror(code)} (errno {code})")
        return sum(1 for code in codes if code == 0)

    def remove_address(self, ifname: str, addr: AddressLike, prefixlen: int = 128) -> bool:
        """Remove ``addr/prefixlen``; False if it was not there."""
        ip, plen = _v6(addr), _prefixlen(prefixlen)
        index = self.ifindex(ifname)
        log.info("action=remove_address dev=%s address=%s/%d", ifname, ip, plen)
        return self._change(self._address_msg(index, ip, plen), RTM_DELADDR, 0, errno.EADDRNOTAVAIL,
                            f"remove address {ip} on {ifname}")

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
        msg = self._neighbour_msg(index, ip)
        msg["state"] = NUD_PERMANENT
        msg["attrs"].append(("NDA_LLADDR", lladdr))
        self._change(msg, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, None,
                     f"neighbour {ip} on {ifname}")

    def pin_neighbours(self, ifname: str, addrs: list[bytes]) -> int:
        """Unresolved neighbour entries on ``ifname`` for the peer's hashed addresses, flagged
        ``NTF_EXT_LEARNED`` and tagged with our protocol number (one netlink batch); how many
        were new.

        An entry so flagged is outside the neighbour table's limit (``gc_thresh3``, one for the
        whole machine), which entries made by packets would fill at a few hundred streams; it
        still resolves and re-resolves as any other (solicitation, answer, reachability), so a
        peer that changes its MAC is followed. The kernel never removes it: the supervisor does
        when the route goes (:meth:`unpin_neighbours`), and after a crash by its protocol number
        (:meth:`owned_neighbours`). docs/KERNEL.md, "Hashed addresses as local routes"."""
        if addrs:
            log.info("action=pin_neighbours dev=%s count=%d proto=%d", ifname, len(addrs),
                     self.proto)
        return self._neighbours(ifname, addrs, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_EXCL,
                                NTF_EXT_LEARNED, errno.EEXIST, "pin neighbour")

    def unpin_neighbours(self, ifname: str, addrs: list[bytes]) -> int:
        """Remove the entries of :meth:`pin_neighbours`; how many were there."""
        if addrs:
            log.info("action=unpin_neighbours dev=%s count=%d", ifname, len(addrs))
        return self._neighbours(ifname, addrs, RTM_DELNEIGH, 0, 0, errno.ENOENT,
                                "unpin neighbour")

    def resolve_neighbours(self, ifname: str, addrs: list[bytes]) -> int:
        """Start neighbour discovery for addresses on ``ifname``'s link now, with no packet to
        send them (``RTM_NEWNEIGH`` with ``NTF_USE``: the kernel solicits, as for a packet);
        how many were asked. The supervisor asks for the peer's next hashed addresses a
        rotation before use, so that their first packets do not wait in the neighbour queue
        for the peer's answer (docs/KERNEL.md, "Hashed addresses as local routes")."""
        # Without NLM_F_CREATE: an entry unpinned meanwhile (its route went) is not made again,
        # untracked (ENOENT, counted as absent).
        return self._neighbours(ifname, addrs, RTM_NEWNEIGH, 0,
                                NTF_USE | NTF_EXT_LEARNED, errno.ENOENT, "resolve neighbour")

    def _neighbours(self, ifname: str, addrs: list[bytes], kind: int, flags: int,
                    ntf: int, absent: int, what: str) -> int:
        if not addrs:
            return 0
        head = _NDMSG.pack(socket.AF_INET6, self.ifindex(ifname), 0, ntf, 0)
        proto = nla(NDA_PROTOCOL, bytes([self.proto])) if kind == RTM_NEWNEIGH else b""
        dst = nla(NDA_DST, bytes(16))[:4]  # the attribute's header: 16 bytes need no padding
        requests = [(kind, flags, head + dst + _packed16(a) + proto) for a in addrs]
        return self._batch(requests, addrs, absent, f"{what} on {ifname}",
                           self._rtnl.batch_encoded)

    def owned_neighbours(self) -> list[tuple[str, bytes]]:
        """IPv6 neighbour entries that carry our protocol number: ``(ifname, address)``."""
        names = self._names()
        return [(names.get(int(msg["ifindex"]), "?"),
                 ipaddress.IPv6Address(msg.get("NDA_DST")).packed)
                for msg in self._dump(ndmsg, RTM_GETNEIGH)
                if msg.get("NDA_PROTOCOL") == self.proto and msg.get("NDA_DST")]

    def on_link(self, addr: AddressLike) -> bool:
        """Whether the kernel's route to ``addr`` reaches it on a link (no gateway)."""
        msg = rtmsg()
        msg.update(family=socket.AF_INET6, dst_len=128, src_len=0, tos=0, table=0, proto=0,
                   scope=0, type=0, flags=0)
        msg["attrs"] = [("RTA_DST", str(_v6(addr)))]
        try:
            found = self._rtnl.request(msg, RTM_GETROUTE, reply=rtmsg)
        except NetlinkError:
            return False  # no route: nothing to resolve
        return bool(found) and not found[0].get("RTA_GATEWAY") and int(found[0]["type"]) == RTN_UNICAST

    def remove_neighbour(self, ifname: str, addr: AddressLike) -> bool:
        """Remove the neighbour entry; False if there was none."""
        ip = _v6(addr)
        index = self.ifindex(ifname)
        log.info("action=remove_neighbour dev=%s address=%s", ifname, ip)
        return self._change(self._neighbour_msg(index, ip), RTM_DELNEIGH, 0, errno.ENOENT,
                            f"remove neighbour {ip} on {ifname}")

    # -- host routes

    def add_host_route(self, ifname: str, addr: AddressLike, *, mtu: int = 0,
                       source: AddressLike | None = None) -> None:
        """Route ``addr/128`` out of ``ifname`` (on-link, no gateway), replacing any such route;
        with ``mtu``, packets to it are at most that big (``ip route ... mtu``), and with
        ``source``, the kernel picks that source address for it (``ip route ... src``)."""
        ip = _v6(addr)
        index = self.ifindex(ifname)
        extra = f" mtu={mtu}" if mtu else ""
        extra += f" src={_v6(source, 'source')}" if source is not None else ""
        log.info("action=replace_route dst=%s/128 dev=%s proto=%d%s", ip, ifname, self.proto,
                 extra)
        msg = self._route_msg(index, ip)
        msg["proto"] = self.proto
        if source is not None:
            msg["attrs"].append(("RTA_PREFSRC", str(_v6(source, "source"))))
        if mtu:
            msg["attrs"].append(("RTA_METRICS", {"attrs": [("RTAX_MTU", mtu)]}))
        self._change(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, None,
                     f"route {ip}/128 via {ifname}")

    def interface_of(self, addr: AddressLike) -> str | None:
        """The name of the interface that has ``addr`` (not tentative), or None."""
        want = _v6(addr).packed
        for index, found in self._indexed_addresses():
            if found.address == want and not found.tentative:
                return self._names().get(index, "?")
        return None

    def remove_host_route(self, ifname: str, addr: AddressLike) -> bool:
        """Remove the ``addr/128`` route out of ``ifname``; False if there was none."""
        ip = _v6(addr)
        index = self.ifindex(ifname)
        log.info("action=remove_route dst=%s/128 dev=%s", ip, ifname)
        return self._change(self._route_msg(index, ip), RTM_DELROUTE, 0, errno.ESRCH,
                            f"remove route {ip}/128 via {ifname}")

    # -- requests

    @staticmethod
    def _address_msg(index: int, ip: ipaddress.IPv6Address, prefixlen: int) -> Any:
        msg = ifaddrmsg()
        msg.update(family=socket.AF_INET6, prefixlen=prefixlen, flags=0, scope=0, index=index)
        msg["attrs"] = [("IFA_ADDRESS", str(ip))]
        return msg

    @staticmethod
    def _neighbour_msg(index: int, ip: ipaddress.IPv6Address) -> Any:
        msg = ndmsg()
        msg.update(family=socket.AF_INET6, ifindex=index, state=0, flags=0, ndm_type=0)
        msg["attrs"] = [("NDA_DST", str(ip))]
        return msg

    @staticmethod
    def _route_msg(index: int, ip: ipaddress.IPv6Address) -> Any:
        """A /128 on-link route in the main table out of interface ``index``."""
        msg = rtmsg()
        msg.update(family=socket.AF_INET6, dst_len=128, src_len=0, tos=0, table=RT_TABLE_MAIN,
                   proto=0, scope=0, type=RTN_UNICAST, flags=0)
        msg["attrs"] = [("RTA_DST", str(ip)), ("RTA_OIF", index)]
        return msg
