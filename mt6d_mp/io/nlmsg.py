"""The netlink message header, the one layout every netlink conversation of ours shares.

``struct nlmsghdr`` (linux/netlink.h): length, type, flags, sequence number, port id, in host
byte order, followed by the message; attributes (``struct nlattr``: length, type) are padded to 4
bytes. The rtnetlink messages themselves are pyroute2's (mt6d_mp.io.netlink); the netfilter
queue's are built by hand in mt6d_mp.io.nfqueue. Pure code: no socket here.
"""

from __future__ import annotations

import struct
from typing import Final

NLMSG_HEADER: Final = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
NLMSG_HDRLEN: Final = NLMSG_HEADER.size  # 16
NLA_HEADER: Final = struct.Struct("=HH")  # length, type
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 1


def nlmsg(kind: int, body: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    """One message: the header (its length counts itself) and ``body``."""
    return NLMSG_HEADER.pack(NLMSG_HDRLEN + len(body), kind, flags, seq, 0) + body


def nla(kind: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = NLA_HEADER.size + len(value)
    return NLA_HEADER.pack(length, kind) + value + bytes(-length % 4)
