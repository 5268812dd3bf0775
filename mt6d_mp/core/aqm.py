"""Active queue management of the tunnel's queues: CoDel, applied to bulk TCP messages only.

Under a bulk TCP transfer the tunnel's standing queue is where the slower worker is: mostly the
receiving gateway's route socket, at times the sending gateway's netfilter queue
(docs/KERNEL.md, "Where the tunnel's queue stands"). The host's TCP keeps as many bytes in
flight as its window allows, and they wait there, with every other packet of the stream behind
them. A smaller buffer shortens the wait only by dropping whatever arrives when it is full, a
ping as well as a chunk of a bulk transfer.

CoDel (Nichols and Jacobson; RFC 8289) drops on the time a packet waited rather than on the
queue's length: once every packet has waited longer than ``target`` for a whole ``interval``,
it drops one, then more often (the n-th drop ``interval / sqrt(n)`` after the one before) until
a packet leaves the queue within the target. TCP halves its window at a loss, so a drop or two
brings the queue down to the target and keeps the link busy.

Here the "packet" is a host's TCP super-packet of up to 64 KB: the only traffic that builds the
queue and the only traffic dropped. At the receiving end it is a chunked message
(mt6d_mp.core.chunks), whose wait is that of its last chunk (workers/inbound.py); at the
sending end the super-packet itself in the netfilter queue (workers/outbound.py). Either wait
is the kernel's receive time against the moment the worker read it. Single packets (pings,
small UDP, ACKs) are never dropped here; they are what the short queue is for. The controller
is pure: the caller gives it the times.
"""

from __future__ import annotations

import math

DEFAULT_TARGET = 0.005  # s: RFC 8289 section 4.4
DEFAULT_INTERVAL = 0.1  # s: RFC 8289 section 4.3, a worst-case round trip


class CoDel:
    """The drop decision of RFC 8289 for one queue, fed with each message's wait."""

    def __init__(self, target: float = DEFAULT_TARGET, interval: float = DEFAULT_INTERVAL) -> None:
        if not 0 < target < interval:
            raise ValueError(f"CoDel: need 0 < target < interval, got {target} and {interval}")
        self.target = target
        self.interval = interval
        self.first_above = 0.0  # when the wait will have been above target for an interval
        self.dropping = False
        self.drop_next = 0.0
        self.count = 0  # drops in this dropping state
        self.last_count = 0  # count when the last dropping state ended
        self.dropped = 0  # in all

    def admit(self, wait: float, now: float) -> bool:
        """Whether a message that waited ``wait`` seconds, read at ``now`` (monotonic seconds),
        goes on; False: drop it."""
        ok_to_drop = self._above(wait, now)
        if self.dropping:
            if not ok_to_drop:
                self.dropping = False
                return True
            if now >= self.drop_next:
                self.count += 1
                self.drop_next = self._control_law(self.drop_next)
                self.dropped += 1
                return False
            return True
        if ok_to_drop:
            self.dropping = True
            # Back in the dropping state soon after leaving it: start near the rate that worked
            # then, rather than from one drop per interval (RFC 8289 section 5.5).
            delta = self.count - self.last_count
            recent = now - self.drop_next < 16 * self.interval
            self.count = delta if delta > 1 and recent else 1
            self.last_count = self.count
            self.drop_next = self._control_law(now)
            self.dropped += 1
            return False
        return True

    def _above(self, wait: float, now: float) -> bool:
        """Whether the wait has stayed above target for at least an interval."""
        if wait < self.target:
            self.first_above = 0.0
            return False
        if self.first_above == 0.0:
            self.first_above = now + self.interval
            return False
        return now >= self.first_above

    def _control_law(self, t: float) -> float:
        return t + self.interval / math.sqrt(self.count)
