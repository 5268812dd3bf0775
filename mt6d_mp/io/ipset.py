"""Kernel IP sets over netlink: the routes a rotation changes, as set members, not as rules.

A rotation changes every stream's routes at once. As firewall rules that meant a
python-iptables commit, which rewrites the whole table, per rotation: 90-750 ms at 32 streams,
growing with the table. As members of two sets that fixed rules match (mt6d_mp/core/rules.py),
a rotation is a few netlink messages: each carries up to :data:`BATCH` members in one
``IPSET_ATTR_ADT`` list, the kernel applies them in order and acks the message once
(docs/KERNEL.md, "IP sets").

pyroute2's ``IPSet`` sends one request per member and waits for its ack; the ipset protocol is
small enough to encode here (``include/uapi/linux/netfilter/ipset/ip_set.h``):

* a message is ``nlmsghdr`` + ``nfgenmsg`` (family, version 0, res_id 0) + attributes, of type
  ``NFNL_SUBSYS_IPSET << 8 | command``, on a ``NETLINK_NETFILTER`` socket;
* every message carries ``IPSET_ATTR_PROTOCOL`` (6) and, but for listing all sets, the set's name;
* nested attributes carry ``NLA_F_NESTED``; addresses and ports ``NLA_F_NET_BYTEORDER``.

Without ``NLM_F_EXCL`` adding a member that is there, or deleting one that is not, succeeds:
a repeated rotation step changes nothing.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from mt6d_mp.errors import SystemSetupError
from mt6d_mp.io.nlmsg import NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, nla, nlmsg

NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET = 6
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000

IPSET_PROTOCOL = 6
CMD_CREATE, CMD_DESTROY, CMD_FLUSH, CMD_LIST, CMD_ADD, CMD_DEL = 2, 3, 4, 7, 9, 10
ATTR_PROTOCOL, ATTR_SETNAME, ATTR_TYPENAME, ATTR_REVISION, ATTR_FAMILY = 1, 2, 3, 4, 5
ATTR_DATA, ATTR_ADT, ATTR_LINENO = 7, 8, 9
# Inside DATA: addresses (nested: IPADDR_IPV6), port, protocol, second address; for a create,
# the largest number of members.
ATTR_IP, ATTR_PORT, ATTR_PROTO, ATTR_IP2 = 1, 4, 7, 20
ATTR_MAXELEM = 19
ATTR_IPADDR_IPV6 = 2
IPSET_ERR_PRIVATE = 4096  # the ipset subsystem's own error codes start here

BATCH = 512  # members per message: its ADT list stays under nla_len's 64 KB
MAXELEM = 1 << 20
SETNAME_MAX = 31  # IPSET_MAXNAMELEN is 32 with the NUL
RECV_BUFFER = 1 << 20
TIMEOUT = 5.0

IPPROTO_UDP = 17


class Member(NamedTuple):
    """One member of a ``hash:ip,port,ip`` set: our address, the UDP port, the peer's address;
    a ``hash:ip`` set's members have only ``ip``."""

    ip: bytes
    port: int = 0
    ip2: bytes = b""


_attr = nla


def _nested(kind: int, *parts: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _address(kind: int, packed: bytes) -> bytes:
    return _nested(kind, _attr(ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, packed))


def _encode_member(m: Member) -> bytes:
    """A member as the attributes say it (IPSET_ATTR_DATA), built attribute by attribute."""
    if not m.ip2:
        return _nested(ATTR_DATA, _address(ATTR_IP, m.ip))
    return _nested(ATTR_DATA, _address(ATTR_IP, m.ip),
                   _attr(ATTR_PORT | NLA_F_NET_BYTEORDER, struct.pack("!H", m.port)),
                   _attr(ATTR_PROTO, bytes([IPPROTO_UDP])), _address(ATTR_IP2, m.ip2))


def _template(m: Member) -> tuple[bytes, ...]:
    """The encoding of a member with marked values, cut around them: every member of a kind
    has the same attribute headers and lengths, so :func:`_member` only joins the constant
    pieces with its values (a rotation of a thousand streams encodes thousands)."""
    data, pieces, at = _encode_member(m), [], 0
    for value in (m.ip, m.port.to_bytes(2, "big"), m.ip2):
        if value and value != b"\0\0":
            i = data.index(value, at)
            pieces.append(data[at:i])
            at = i + len(value)
    pieces.append(data[at:])
    return tuple(pieces)


_IP_ONLY = _template(Member(b"\xa1" * 16))
_IP_PORT_IP = _template(Member(b"\xa1" * 16, 0xC3D4, b"\xb2" * 16))


def _member(m: Member) -> bytes:
    """:func:`_encode_member`, from the templates; an address not of 16 bytes is refused."""
    if len(m.ip) != 16 or (m.ip2 and len(m.ip2) != 16) or not 0 <= m.port <= 0xFFFF:
        raise SystemSetupError(f"ipset: member {m!r}: addresses are 16 bytes, ports 16 bits")
    if not m.ip2:
        return _IP_ONLY[0] + m.ip + _IP_ONLY[1]
    a, b, c, d = _IP_PORT_IP
    return a + m.ip + b + m.port.to_bytes(2, "big") + c + m.ip2 + d


def _name(name: str) -> bytes:
    if not 0 < len(name) <= SETNAME_MAX or not name.isascii():
        raise SystemSetupError(f"ipset: bad set name {name!r}")
    return _attr(ATTR_SETNAME, name.encode() + b"\0")


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER), data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def _parse_member(data: bytes) -> Member:
    ip = ip2 = b""
    port = 0
    for kind, value in _attrs(data, 0, len(data)):
        if kind in (ATTR_IP, ATTR_IP2):
            addr = next((v for k, v in _attrs(value, 0, len(value)) if k == ATTR_IPADDR_IPV6), b"")
            if kind == ATTR_IP:
                ip = addr
            else:
                ip2 = addr
        elif kind == ATTR_PORT:
            port = struct.unpack("!H", value[:2])[0]
    return Member(ip, port, ip2)


class IpSets:
    """A netlink socket to the kernel's IP sets of this network namespace."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_NETFILTER)
        except OSError as e:
            raise SystemSetupError(f"ipset: no netfilter netlink socket: {e}") from e
        self.sock.settimeout(TIMEOUT)
        # An error ack echoes only the request's header, not its members (mt6d_mp.io.netlink).
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> IpSets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- messages -----------------------------------------------------------------------------

    def _message(self, cmd: int, body: bytes, flags: int = NLM_F_ACK) -> tuple[bytes, int]:
        self.seq = self.seq % 0xFFFFFFFF + 1
        payload = (struct.pack("=BBH", socket.AF_INET6, 0, 0)  # nfgenmsg: family, version, res_id
                   + _attr(ATTR_PROTOCOL, bytes([IPSET_PROTOCOL])) + body)
        return nlmsg(NFNL_SUBSYS_IPSET << 8 | cmd, payload, NLM_F_REQUEST | flags, self.seq), self.seq

    def _call(self, messages: list[tuple[bytes, int]], what: str, ok: tuple[int, ...] = ()) -> None:
        """Send messages, one datagram each, then read their acks; a refusal is a
        SystemSetupError."""
        for m, _ in messages:
            self.sock.send(m)
        waiting = {seq for _, seq in messages}
        while waiting:
            data = self._receive(what)
            for offset, length, kind, seq in _headers(data):
                if kind == NLMSG_ERROR and seq in waiting:
                    waiting.discard(seq)
                    code = -struct.unpack_from("=i", data, offset + NLMSG_HDRLEN)[0]
                    if code and code not in ok:
                        raise SystemSetupError(f"ipset: {what}: {_strerror(code)}")
                del length

    def _receive(self, what: str) -> bytes:
        try:
            return self.sock.recv(RECV_BUFFER)
        except TimeoutError:
            raise SystemSetupError(f"ipset: {what}: no reply in {TIMEOUT:g} s") from None

    # --- sets ---------------------------------------------------------------------------------

    def create(self, name: str, kind: str) -> None:
        """Create the set (``hash:ip`` or ``hash:ip,port,ip``, IPv6) or empty the one there."""
        body = (_name(name) + _attr(ATTR_TYPENAME, kind.encode() + b"\0")
                + _attr(ATTR_REVISION, b"\0") + _attr(ATTR_FAMILY, bytes([socket.AF_INET6]))
                + _nested(ATTR_DATA, _attr(ATTR_MAXELEM | NLA_F_NET_BYTEORDER,
                                           struct.pack("!I", MAXELEM))))
        try:  # without NLM_F_EXCL the kernel accepts a set of this name and type that is there
            self._call([self._message(CMD_CREATE, body)], f"create {name} {kind}")
        except SystemSetupError as e:
            if "EEXIST" not in str(e) and "File exists" not in str(e):
                raise
            raise SystemSetupError(f"ipset: a set named {name} exists with another type than "
                                   f"{kind}; it is not ours to remove") from None
        self.flush(name)

    def flush(self, name: str) -> None:
        self._call([self._message(CMD_FLUSH, _name(name))], f"flush {name}")

    def destroy(self, name: str) -> None:
        """Remove the set if it is there; a set a rule still uses cannot go (set in use)."""
        self._call([self._message(CMD_DESTROY, _name(name))], f"destroy {name}", ok=(errno.ENOENT,))

    def change(self, name: str, add: Iterable[Member] = (), remove: Iterable[Member] = ()) -> None:
        """Delete then add members, :data:`BATCH` to a message."""
        for cmd, members in ((CMD_DEL, list(remove)), (CMD_ADD, list(add))):
            messages = []
            for start in range(0, len(members), BATCH):
                adt = _nested(ATTR_ADT, *(_member(m) for m in members[start:start + BATCH]))
                # A list of members needs a line number (ipset restore's, for its errors).
                messages.append(self._message(cmd, _name(name) + adt
                                              + _attr(ATTR_LINENO, struct.pack("=I", 0))))
            self._call(messages, f"{'add to' if cmd == CMD_ADD else 'delete from'} {name}")

    def members(self, name: str) -> set[Member]:
        """Every member of the set, as the kernel lists it."""
        msg, seq = self._message(CMD_LIST, _name(name), NLM_F_DUMP)
        self.sock.send(msg)
        out: set[Member] = set()
        while True:
            data = self._receive(f"list {name}")
            for offset, length, kind, rseq in _headers(data):
                if rseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + NLMSG_HDRLEN)[0]
                    if code:
                        raise SystemSetupError(f"ipset: list {name}: {_strerror(code)}")
                    return out
                start = offset + NLMSG_HDRLEN + 4  # past nfgenmsg
                for akind, value in _attrs(data, start, offset + length):
                    if akind == ATTR_ADT:
                        out.update(_parse_member(v) for k, v in _attrs(value, 0, len(value))
                                   if k == ATTR_DATA)

    def names(self) -> list[str]:
        """The names of every set in this namespace."""
        msg, seq = self._message(CMD_LIST, b"", NLM_F_DUMP)
        self.sock.send(msg)
        names: list[str] = []
        while True:
            data = self._receive("list")
            for offset, length, kind, rseq in _headers(data):
                if rseq != seq:
                    continue
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    return list(dict.fromkeys(names))
                start = offset + NLMSG_HDRLEN + 4
                for akind, value in _attrs(data, start, offset + length):
                    if akind == ATTR_SETNAME:
                        names.append(value.rstrip(b"\0").decode("ascii", "replace"))


def _headers(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(offset, length, type, sequence) of each netlink message in a datagram."""
    offset = 0
    while offset + NLMSG_HDRLEN <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < NLMSG_HDRLEN:
            return
        yield offset, length, kind, seq
        offset += (length + 3) & ~3


_IPSET_ERRORS = {  # enum ipset_errno
    4097: "protocol error", 4098: "set type not supported", 4099: "too many sets",
    4100: "set in use by a rule", 4101: "a set of this name exists with another type",
    4102: "set type mismatch", 4103: "member already there", 4106: "wrong family",
    4108: "set referenced", 4353: "set is full",
}


def _strerror(code: int) -> str:
    if code >= IPSET_ERR_PRIVATE:
        return f"{_IPSET_ERRORS.get(code, 'ipset error')} (code {code})"
    if code == errno.ENOENT:
        return "set does not exist (ENOENT)"
    return f"{os.strerror(code)} (errno {code})"


def address(a: str | bytes | ipaddress.IPv6Address) -> bytes:
    """16 bytes of an IPv6 address given as text, bytes or an address object."""
    if isinstance(a, bytes) and len(a) == 16:
        return a
    text = a if isinstance(a, str) else str(a)
    return ipaddress.IPv6Address(text.split("/")[0]).packed
