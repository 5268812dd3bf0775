"""The verdict messages a worker writes on its queue's netlink socket (mt6d_mp.io.nfqueue)."""

from __future__ import annotations

import socket
import struct

from mt6d_mp.io.nfqueue import (
    NF_DROP,
    NF_QUEUE,
    NFNL_SUBSYS_QUEUE,
    NFQNL_MSG_VERDICT,
    NFQNL_MSG_VERDICT_BATCH,
    requeue_message,
    verdict_batch_message,
)


def fields(message: bytes) -> tuple[int, int, int, int, int, int]:
    """(length, type, flags, queue, verdict, id) of a verdict message."""
    length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", message)
    family, _version, res_id = struct.unpack_from("=BBH", message, 16)
    alen, atype = struct.unpack_from("=HH", message, 20)
    verdict, pkt_id = struct.unpack_from("!II", message, 24)
    assert family == socket.AF_UNSPEC and (alen, atype) == (12, 2) and len(message) == length == 32
    return length, kind, flags, socket.ntohs(res_id), verdict, pkt_id


def test_batch_drop() -> None:
    _, kind, flags, queue, verdict, top = fields(verdict_batch_message(5, NF_DROP, 1234))
    assert kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH and flags == 1
    assert (queue, verdict, top) == (5, NF_DROP, 1234)


def test_requeue_moves_one_packet_to_the_target_queue_without_bypass() -> None:
    _, kind, _, queue, verdict, pkt_id = fields(requeue_message(2, 77, 32770))
    assert kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT  # one packet, not a batch
    assert (queue, pkt_id) == (2, 77)
    # NF_QUEUE_NR(32770): the target in the upper 16 bits; bit 15 (NF_VERDICT_FLAG_QUEUE_BYPASS)
    # clear, so with no reader on the target the kernel drops the packet.
    assert verdict == NF_QUEUE | (32770 << 16) and not verdict & 0x8000
