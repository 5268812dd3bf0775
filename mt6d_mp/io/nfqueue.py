"""A netfilter queue: binding it, reading it, giving verdicts. The only user of NetfilterQueue.

The flow, for one worker's queue:

1. :class:`BoundQueue` binds the queue with NetfilterQueue (``nfq_create_queue``), with the
   kernel queue length and socket buffer every worker uses. NetfilterQueue's own reading
   (``run``, one callback per packet with a ``Packet``) serves the ICMP worker.
2. The stream worker reads the same netlink socket itself with :class:`QueueReader`, because the
   binding reads into a fixed 4 KB buffer, gives one callback per packet and exposes no queue
   flags. With ``NFQA_CFG_F_GSO`` the kernel queues a GSO packet (a host's TCP super-packet of up
   to 64 KB) whole instead of segmenting it first, so one message and one netlink copy carry what
   would otherwise be some 45 packets (linux/netfilter/nfnetlink_queue.h,
   net/netfilter/nfnetlink_queue.c). Messages are parsed in place from one preallocated buffer;
   the handler gets a memoryview of the payload that is valid until it returns.
3. Verdicts: :class:`DropBatch` drops everything handled so far with one batch message;
   :func:`requeue_message` moves one packet to another queue.

The queues are fail-closed on purpose: the firewall rules carry no ``--queue-bypass``, so while
no worker is bound the kernel drops what the rules send to the queue.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from netfilterqueue import NetfilterQueue, Packet

from mt6d_mp.io.nlmsg import NLA_HEADER, NLMSG_ERROR, NLMSG_HEADER, nla, nlmsg
from mt6d_mp.io.sockets import errno_name

__all__ = ["BoundQueue", "DropBatch", "Packet", "QueueReader", "packet_message", "requeue_message"]

NFNL_SUBSYS_QUEUE: Final = 3
NFQNL_MSG_PACKET: Final = 0
NFQNL_MSG_VERDICT: Final = 1
NFQNL_MSG_CONFIG: Final = 2
NFQNL_MSG_VERDICT_BATCH: Final = 3  # the verdict for every queued packet up to the given id
NFQA_VERDICT_HDR: Final = 2
NF_DROP: Final = 0
NF_QUEUE: Final = 3  # with the target queue number in the upper 16 bits (NF_QUEUE_NR)
# Packets the kernel may hold for one queue before it drops (the default is 1024).
QUEUE_MAXLEN: Final = 8192
# Receive buffer of the queue's netlink socket: bursts of full-size packets fit.
QUEUE_SOCK_LEN: Final = 8 * 1024 * 1024
# Most drop verdicts one batch waits for: bounds what the kernel holds under a steady flood.
BATCH_MAX: Final = 64
# Attributes of a packet message.
NFQA_PACKET_HDR: Final = 1
# The packet's receive time (struct nfqnl_msg_packet_timestamp: seconds and microseconds, both
# big-endian 64 bits). The kernel adds it when the packet carries one, which it does while
# receive timestamping is on anywhere on the machine (a route socket with queue management
# turns it on: docs/KERNEL.md, "Where the tunnel's queue stands").
NFQA_TIMESTAMP: Final = 4
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

_BE32 = struct.Struct("!I")
_HWADDR = struct.Struct("!H2x")
_TIMESTAMP = struct.Struct("!QQ")
_PACKET_MSG: Final = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
_HDR_LEN: Final = 16 + 4  # nlmsghdr + nfgenmsg
RECV_BUFFER: Final = 128 * 1024  # one message is at most 64 KB of payload plus its attributes
READ_BUDGET: Final = 256  # messages per read() before the loop looks at its other sockets

# The handler: (packet id, payload, skb info flags, input ifindex, source MAC or b"").
Handler = Callable[[int, memoryview, int, int, bytes], None]


def _nfgenmsg(family: int, queue: int) -> bytes:
    return struct.pack("=BBH", family, 0, socket.htons(queue))


def config_message(queue: int, gso: bool) -> bytes:
    """NFQNL_MSG_CONFIG: copy whole packets (up to 64 KB) and, if ``gso``, queue GSO packets whole."""
    params = struct.pack("!IB", NFQNL_MAX_COPY_RANGE, NFQNL_COPY_PACKET)
    flags = NFQA_CFG_F_GSO if gso else 0
    body = (_nfgenmsg(socket.AF_UNSPEC, queue)
            + nla(NFQA_CFG_PARAMS, params)
            + nla(NFQA_CFG_MASK, _BE32.pack(NFQA_CFG_F_GSO))
            + nla(NFQA_CFG_FLAGS, _BE32.pack(flags)))
    return nlmsg((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG, body)


def packet_message(queue: int, pkt_id: int, payload: bytes, indev: int = 0, info: int = 0,
                   stamp: float | None = None) -> bytes:
    """NFQNL_MSG_PACKET as the kernel sends it (nfqnl_build_packet_message), for one packet:
    the worker's keep-warm and the tests feed it to :meth:`QueueReader.read`."""
    when = b"" if stamp is None else nla(
        NFQA_TIMESTAMP, _TIMESTAMP.pack(int(stamp), round(stamp % 1 * 1e6)))
    body = (_nfgenmsg(socket.AF_INET6, queue)
            + nla(NFQA_PACKET_HDR, struct.pack("!IHB", pkt_id, 0x86DD, 1)) + when
            + nla(NFQA_IFINDEX_INDEV, _BE32.pack(indev))
            + nla(NFQA_SKB_INFO, _BE32.pack(info))
            + nla(NFQA_PAYLOAD, payload))
    return nlmsg(_PACKET_MSG, body, flags=0)


def _verdict_message(msg_type: int, queue: int, verdict: int, packet_id: int) -> bytes:
    """nlmsghdr + nfgenmsg + NFQA_VERDICT_HDR."""
    body = _nfgenmsg(socket.AF_UNSPEC, queue) + nla(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    return nlmsg((NFNL_SUBSYS_QUEUE << 8) | msg_type, body)


def verdict_batch_message(queue: int, verdict: int, top_id: int) -> bytes:
    """``verdict`` for every packet of ``queue`` still queued with an id <= ``top_id``."""
    return _verdict_message(NFQNL_MSG_VERDICT_BATCH, queue, verdict, top_id)


def requeue_message(queue: int, packet_id: int, target: int) -> bytes:
    """The verdict that moves one packet from ``queue`` to queue ``target`` (NF_QUEUE_NR). With
    no one bound to ``target`` the kernel drops it (no bypass flag: fail closed)."""
    return _verdict_message(NFQNL_MSG_VERDICT, queue, NF_QUEUE | (target << 16), packet_id)


class BoundQueue:
    """A queue bound with NetfilterQueue; ``fd`` is its netlink socket, readable when packets wait.

    ``callback`` gets each packet as a ``Packet`` when :meth:`run` reads them (the ICMP worker);
    a reader of its own (:class:`QueueReader`) can read the same ``fd`` instead (the stream
    worker), and then ``callback`` is never called.
    """

    def __init__(self, queue: int, callback: Callable[[Packet], None]) -> None:
        self.queue = queue
        self._nfq = NetfilterQueue()
        self._nfq.bind(queue, callback, max_len=QUEUE_MAXLEN, sock_len=QUEUE_SOCK_LEN)
        self.fd: int = self._nfq.get_fd()

    def run(self) -> None:
        """Every packet waiting, one callback each."""
        self._nfq.run(block=False)

    def unbind(self) -> None:
        self._nfq.unbind()


class DropBatch:
    """Drop verdicts in batches, written on the queue's own netlink socket.

    NetfilterQueue 1.1 gives one verdict per call (one system call per packet); the kernel also
    takes a batch verdict that covers every queued id up to the last one. Ids grow in the order
    packets are delivered, so after the callbacks for ids up to ``top`` one message drops them
    all. A failed write leaves them queued; the next batch, with a higher id, covers them too.
    """

    def __init__(self, fd: int, queue: int, counters: Counter[str]) -> None:
        self.fd, self.queue, self.counters = fd, queue, counters
        self.top = -1
        self.waiting = 0

    def add(self, packet_id: int) -> None:
        self.top = packet_id
        self.waiting += 1
        if self.waiting >= BATCH_MAX:
            self.flush()

    def flush(self) -> None:
        if not self.waiting:
            return
        try:
            os.write(self.fd, verdict_batch_message(self.queue, NF_DROP, self.top))
        except OSError as e:
            self.counters["verdict_batch_failed_" + errno_name(e.errno)] += 1
            return
        self.waiting = 0
        self.counters["verdict_batches"] += 1


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
        self.stamp_at = -1  # where the packet being handled has its NFQA_TIMESTAMP; -1: none

    def queued_at(self) -> float | None:
        """The receive time of the packet being handled (time.time()'s clock), if it has one:
        its wait in the queue is what the sender's queue management reads."""
        if self.stamp_at < 0:
            return None
        sec, usec = _TIMESTAMP.unpack_from(self.buf, self.stamp_at)
        return float(sec + usec * 1e-6)

    def configure(self, gso: bool) -> None:
        """Ask for whole packets; a refusal comes back as an NLMSG_ERROR that read() counts."""
        os.write(self.fd, config_message(self.queue, gso))

    def close(self) -> None:
        self.view.release()
        self.sock.close()

    def read(self, handle: Handler) -> int:
        """Hand every waiting packet message to ``handle``; return how many were read."""
        recv_into, buf, view = self.sock.recv_into, self.buf, self.view
        unpack_hdr, unpack_nla = NLMSG_HEADER.unpack_from, NLA_HEADER.unpack_from
        unpack_be32 = _BE32.unpack_from
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
                    stamp_at = -1
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
                        elif atype == NFQA_TIMESTAMP and alen >= 20:
                            stamp_at = pos + 4
                        pos += (alen + 3) & ~3
                    if pkt_id >= 0:
                        done += 1
                        self.stamp_at = stamp_at
                        handle(pkt_id, payload, info, indev, mac)
                elif kind == NLMSG_ERROR and length >= 20:  # header and error code
                    code = -struct.unpack_from("=i", buf, off + 16)[0]
                    if code:
                        self.counters["queue_netlink_" + errno_name(code)] += 1
                off += (length + 3) & ~3
        return done

