"""Reading a netfilter queue directly from its netlink socket, with whole GSO packets.

NetfilterQueue binds the queue (``nfq_create_queue``); after that this module talks to the same
netlink socket itself, because the binding reads into a fixed 4 KB buffer, gives one callback per
packet and exposes no queue flags. With ``NFQA_CFG_F_GSO`` the kernel queues a GSO packet (a
host's TCP super-packet of up to 64 KB) whole instead of segmenting it first, so one message and
one netlink copy carry what would otherwise be some 45 packets (linux/netfilter/nfnetlink_queue.h,
net/netfilter/nfnetlink_queue.c).

Messages are parsed in place from one preallocated buffer; the handler gets a memoryview of the
payload that is valid until it returns. Verdicts are the caller's (workers.common.DropBatch).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from mt6d_mp.io.sockets import errno_name

NFNL_SUBSYS_QUEUE: Final = 3
NFQNL_MSG_PACKET: Final = 0
NFQNL_MSG_CONFIG: Final = 2
NLMSG_ERROR: Final = 2
NLM_F_REQUEST: Final = 1
# Attributes of a packet message.
NFQA_PACKET_HDR: Final = 1
NFQA_IFINDEX_INDEV: Final = 5
NFQA_HWADDR: Final = 9
NFQA_PAYLOAD: Final = 10
NFQA_CAP_LEN: Final = 13
NFQA_SKB_INFO: Final = 14
NFQA_SKB_CSUMNOTREADY: Final = 1 << 0
NFQA_SKB_GSO: Final = 1 << 1
# Attributes of a config message.
NFQA_CFG_PARAMS: Final = 2
NFQA_CFG_MASK: Final = 4
NFQA_CFG_FLAGS: Final = 5
NFQA_CFG_F_GSO: Final = 1 << 2
NFQNL_COPY_PACKET: Final = 2
NFQNL_MAX_COPY_RANGE: Final = 0xFFFF - 4  # 0xffff - NLA_HDRLEN
NLA_TYPE_MASK: Final = 0x3FFF
NETLINK_NETFILTER: Final = 12  # linux/netlink.h; not in the socket module
TRUNCATED_COPY: Final = 1 << 31  # set in the info flags we pass on when the kernel copied only part

_NLMSGHDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE32 = struct.Struct("!I")
_HWADDR = struct.Struct("!H2x")
_PACKET_MSG: Final = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
_HDR_LEN: Final = 16 + 4  # nlmsghdr + nfgenmsg
RECV_BUFFER: Final = 128 * 1024  # one message is at most 64 KB of payload plus its attributes
READ_BUDGET: Final = 256  # messages per read() before the loop looks at its other sockets

# The handler: (packet id, payload, skb info flags, input ifindex, source MAC or b"").
Handler = Callable[[int, memoryview, int, int, bytes], None]


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return _NLA.pack(length, kind) + value + bytes(-length % 4)


def config_message(queue: int, gso: bool) -> bytes:
    """NFQNL_MSG_CONFIG: copy whole packets (up to 64 KB) and, if ``gso``, queue GSO packets whole."""
    params = struct.pack("!IB", NFQNL_MAX_COPY_RANGE, NFQNL_COPY_PACKET)
    flags = NFQA_CFG_F_GSO if gso else 0
    body = (struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue))
            + _attr(NFQA_CFG_PARAMS, params)
            + _attr(NFQA_CFG_MASK, _BE32.pack(NFQA_CFG_F_GSO))
            + _attr(NFQA_CFG_FLAGS, _BE32.pack(flags)))
    kind = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return _NLMSGHDR.pack(16 + len(body), kind, NLM_F_REQUEST, 0, 0) + body


def packet_message(queue: int, pkt_id: int, payload: bytes, indev: int = 0, info: int = 0) -> bytes:
    """NFQNL_MSG_PACKET as the kernel sends it (nfqnl_build_packet_message), for one packet:
    the worker's keep-warm and the tests feed it to :meth:`QueueReader.read`."""
    body = (struct.pack("=BBH", socket.AF_INET6, 0, socket.htons(queue))
            + _attr(NFQA_PACKET_HDR, struct.pack("!IHB", pkt_id, 0x86DD, 1))
            + _attr(NFQA_IFINDEX_INDEV, _BE32.pack(indev))
            + _attr(NFQA_SKB_INFO, _BE32.pack(info))
            + _attr(NFQA_PAYLOAD, payload))
    return _NLMSGHDR.pack(16 + len(body), _PACKET_MSG, 0, 0, 0) + body


class QueueReader:
    """Packet messages from a bound queue's netlink socket, parsed without copying the payload."""

    def __init__(self, fd: int, queue: int, counters: Counter[str], sock: Any = None) -> None:
        self.fd, self.queue, self.counters = fd, queue, counters
        if sock is None:
            # A socket object over a duplicate of the fd: recv_into with MSG_TRUNC reports the
            # real length of a message that did not fit. Closing it leaves the binding's own fd.
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER,
                                 fileno=os.dup(fd))
            sock.setblocking(False)
        self.sock = sock  # or a stand-in with recv_into (keep-warm)
        self.buf = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buf)

    def configure(self, gso: bool) -> None:
        """Ask for whole packets; a refusal comes back as an NLMSG_ERROR that read() counts."""
        os.write(self.fd, config_message(self.queue, gso))

    def close(self) -> None:
        self.view.release()
        self.sock.close()

    def read(self, handle: Handler) -> int:
        """Hand every waiting packet message to ``handle``; return how many were read."""
        recv_into, buf, view = self.sock.recv_into, self.buf, self.view
        unpack_hdr, unpack_nla, unpack_be32 = _NLMSGHDR.unpack_from, _NLA.unpack_from, _BE32.unpack_from
        done = 0
        while done < READ_BUDGET:
            try:
                n = recv_into(buf, RECV_BUFFER, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as e:
                # ENOBUFS: the socket buffer overflowed and the kernel dropped messages; the
                # packets stay queued and a later batch verdict drops them.
                self.counters["queue_recv_" + errno_name(e.errno)] += 1
                if e.errno == errno.ENOBUFS:
                    continue
                break
            if n > RECV_BUFFER:
                self.counters["queue_truncated"] += 1
                continue
            off = 0
            while off + 16 <= n:
                length, kind = unpack_hdr(buf, off)[:2]
                if length < 16 or off + length > n:
                    self.counters["queue_bad_message"] += 1
                    break
                if kind == _PACKET_MSG:
                    pkt_id = -1
                    payload = view[0:0]
                    info = indev = 0
                    mac = b""
                    pos, end = off + _HDR_LEN, off + length
                    while pos + 4 <= end:
                        alen, atype = unpack_nla(buf, pos)
                        if alen < 4 or pos + alen > end:  # malformed: overruns its message
                            break
                        atype &= NLA_TYPE_MASK
                        if atype == NFQA_PAYLOAD:
                            payload = view[pos + 4 : pos + alen]
                        elif alen < 8:
                            pass  # too short for any value below: read nothing past it
                        elif atype == NFQA_PACKET_HDR:
                            pkt_id = unpack_be32(buf, pos + 4)[0]
                        elif atype == NFQA_SKB_INFO:
                            info = unpack_be32(buf, pos + 4)[0]
                        elif atype == NFQA_IFINDEX_INDEV:
                            indev = unpack_be32(buf, pos + 4)[0]
                        elif atype == NFQA_HWADDR:
                            hwlen = min(_HWADDR.unpack_from(buf, pos + 4)[0], 8, alen - 8)
                            mac = bytes(buf[pos + 8 : pos + 8 + hwlen])
                        elif atype == NFQA_CAP_LEN:
                            info |= TRUNCATED_COPY
                        pos += (alen + 3) & ~3
                    if pkt_id >= 0:
                        done += 1
                        handle(pkt_id, payload, info, indev, mac)
                elif kind == NLMSG_ERROR and length >= 20:  # header and error code
                    code = -struct.unpack_from("=i", buf, off + 16)[0]
                    if code:
                        self.counters["queue_netlink_" + errno_name(code)] += 1
                off += (length + 3) & ~3
        return done

