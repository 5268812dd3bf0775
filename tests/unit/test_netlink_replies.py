"""How the supervisor's rtnetlink client reads the kernel's replies (a stand-in socket replays
crafted datagrams; tests/netns/test_netlink.py runs it against the kernel)."""

from __future__ import annotations

import errno
import struct
from typing import Any

import pytest

from mt6d_mp.io import netlink
from mt6d_mp.io.netlink import (
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_GETLINK,
    NetlinkError,
    _Rtnl,
    linkmsg,
)

NLM_F_MULTI = 0x02  # a part of a multipart reply


def message(kind: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    data = struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body
    return data + bytes(-len(data) % 4)


def link(seq: int, index: int, name: str, flags: int = NLM_F_MULTI) -> bytes:
    attr = name.encode() + b"\0"
    nla = struct.pack("=HH", 4 + len(attr), 3) + attr + bytes(-len(attr) % 4)
    return message(16, seq, struct.pack("=BxHiII", 0, 1, index, 0, 0) + nla, flags)


def done(seq: int, flags: int = NLM_F_MULTI) -> bytes:
    return message(NLMSG_DONE, seq, struct.pack("=i", 0), flags)


class Socket:
    """Hands out one prepared datagram per recvmsg, for each request sent."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers: list[Any] = answers
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recvmsg(self, size: int) -> tuple[bytes, list[Any], int, Any]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(struct.unpack_from("=I", self.sent[-1], 8)[0]), [], 0, None


def client(answers: list[Any]) -> _Rtnl:
    rtnl = _Rtnl.__new__(_Rtnl)
    rtnl.sock, rtnl.seq = Socket(answers), 0  # type: ignore[assignment]
    return rtnl


def names(msgs: list[Any]) -> list[str]:
    return [m.get("IFLA_IFNAME") for m in msgs]


def test_a_dump_is_read_to_its_end_and_other_sequence_numbers_are_skipped() -> None:
    rtnl = client([lambda seq: link(seq + 7, 9, "stale") + link(seq, 1, "lo"),
                   lambda seq: link(seq, 2, "ext0") + done(seq)])
    assert names(rtnl.request(linkmsg(), RTM_GETLINK, NLM_F_DUMP, reply=linkmsg)) == ["lo", "ext0"]


def test_an_interrupted_dump_is_made_again() -> None:
    rtnl = client([lambda seq: link(seq, 1, "old", NLM_F_DUMP_INTR) + done(seq),
                   lambda seq: link(seq, 1, "new") + done(seq)])
    assert names(rtnl.request(linkmsg(), RTM_GETLINK, NLM_F_DUMP, reply=linkmsg)) == ["new"]
    sock = rtnl.sock
    assert len(sock.sent) == 2 and sock.sent[0][8:12] != sock.sent[1][8:12]  # type: ignore[attr-defined]
    assert sock.sent[0][:8] == sock.sent[1][:8] and sock.sent[0][12:] == sock.sent[1][12:]  # type: ignore[attr-defined]


def test_a_dump_interrupted_every_time_is_an_error() -> None:
    rtnl = client([lambda seq: done(seq, NLM_F_DUMP_INTR)] * netlink.DUMP_TRIES)
    with pytest.raises(NetlinkError) as exc:
        rtnl.request(linkmsg(), RTM_GETLINK, NLM_F_DUMP, reply=linkmsg)
    assert exc.value.code == errno.EINTR


def test_refusals_silence_and_garbage_are_netlink_errors() -> None:
    refused = client([lambda seq: message(NLMSG_ERROR, seq, struct.pack("=i", -errno.ENODEV)
                                          + bytes(16))])
    with pytest.raises(NetlinkError) as exc:
        refused.request(linkmsg(), RTM_GETLINK, reply=linkmsg)
    assert exc.value.code == errno.ENODEV
    with pytest.raises(NetlinkError) as exc:
        client([TimeoutError()]).request(linkmsg(), RTM_GETLINK)
    assert exc.value.code == errno.ETIMEDOUT
    with pytest.raises(NetlinkError) as exc:
        client([lambda seq: struct.pack("=IHHII", 400, 16, 0, seq, 0)]).request(linkmsg(), RTM_GETLINK)
    assert exc.value.code == errno.EBADMSG


def test_an_ack_ends_a_request() -> None:
    rtnl = client([lambda seq: message(NLMSG_ERROR, seq, struct.pack("=i", 0) + bytes(16))])
    assert rtnl.request(linkmsg(), RTM_GETLINK) == []


def test_a_link_request_answered_with_no_link_is_a_setup_error() -> None:
    """The kernel never does this, but a reply without the link asked for (an ack alone) must be
    a SystemSetupError naming the interface, not an IndexError."""
    from mt6d_mp.errors import SystemSetupError

    nl = netlink.Netlink.__new__(netlink.Netlink)
    nl._rtnl = client([lambda seq: message(NLMSG_ERROR, seq, struct.pack("=i", 0) + bytes(16))])
    nl._ifindex = {}
    with pytest.raises(SystemSetupError, match=r"ext0.*no link"):
        nl.ifindex("ext0")
