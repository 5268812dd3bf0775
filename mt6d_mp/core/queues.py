"""Netfilter queue numbers: which a configuration may use, and each stream's segmenting queue.

A stream's worker reads its queue with GSO packets queued whole (fast bulk TCP). The queue
message does not say where a host's UDP GSO packet is to be cut (its gso_size), so the worker
moves such a packet, with an NF_QUEUE verdict, to the stream's second queue, bound without the
GSO flag: there the kernel cuts it into datagrams, which the worker tunnels one by one.
"""

from __future__ import annotations

MAX_QUEUE = 32767  # a configuration's queue numbers are 0..MAX_QUEUE
SEGMENT_QUEUE_OFFSET = 32768
QUEUE_RANGE = f"0..{MAX_QUEUE} ({MAX_QUEUE + 1} and up are the streams' segmenting queues)"


def segment_queue(queue: int) -> int:
    """The stream queue's segmenting queue (32768..65535)."""
    return queue + SEGMENT_QUEUE_OFFSET
