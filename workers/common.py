"""What every worker process shares: parent-death handling, the bus, the poll loop, counters.

A worker is one thread with one poll loop over its netfilter queue's fd, its two bus sockets and
whatever sockets it adds (a stream worker's per-route UDP sockets). Every queued packet gets
exactly one verdict: in the queue callback, or (a stream worker's drops) in a batch sent once
the queue is drained or BATCH_MAX packets are waiting (see DropBatch). The queues are
fail-closed on purpose: the firewall rules carry no ``--queue-bypass``, so while no worker is
bound (not started yet, restarting, crashed) the kernel drops what the rules send to the queue.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from netfilterqueue import NetfilterQueue, Packet

from mt6d_mp.io.bus import BusClient
from mt6d_mp.io.sockets import errno_name
from mt6d_mp.logs import setup_logging

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STATS_INTERVAL = 1.0
KEEP_WARM_FOR = 2.0  # seconds after the last packet that --keep-warm-ms stays on
SNAPSHOT_TIMEOUT = 10.0
SNAPSHOT_RETRY = 0.5
# Packets the kernel may hold for one queue before it drops (the default is 1024).
QUEUE_MAXLEN = 8192
# Receive buffer of the queue's netlink socket: bursts of full-size packets fit.
QUEUE_SOCK_LEN = 8 * 1024 * 1024

# nfnetlink_queue's batch verdict (linux/netfilter/nfnetlink_queue.h): one message gives the
# verdict for every packet still queued with an id up to the given one.
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_VERDICT_HDR = 2
NLM_F_REQUEST = 1
NF_DROP = 0
NF_QUEUE = 3  # with the target queue number in the upper 16 bits (NF_QUEUE_NR)
# Most drop verdicts one batch waits for: bounds what the kernel holds under a steady flood.
BATCH_MAX = 64


def _verdict_message(msg_type: int, queue: int, verdict: int, packet_id: int) -> bytes:
    """nlmsghdr + nfgenmsg + NFQA_VERDICT_HDR."""
    attr = struct.pack("=HH", 12, NFQA_VERDICT_HDR) + struct.pack("!II", verdict, packet_id)
    nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue))
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return struct.pack("=IHHII", 16 + len(nfgen) + len(attr), kind, NLM_F_REQUEST, 0, 0) + nfgen + attr


def verdict_batch_message(queue: int, verdict: int, top_id: int) -> bytes:
    """``verdict`` for every packet of ``queue`` still queued with an id <= ``top_id``."""
    return _verdict_message(NFQNL_MSG_VERDICT_BATCH, queue, verdict, top_id)


def requeue_message(queue: int, packet_id: int, target: int) -> bytes:
    """The verdict that moves one packet from ``queue`` to queue ``target`` (NF_QUEUE_NR). With
    no one bound to ``target`` the kernel drops it (no bypass flag: fail closed)."""
    return _verdict_message(NFQNL_MSG_VERDICT, queue, NF_QUEUE | (target << 16), packet_id)


def bind_queue(nfq: NetfilterQueue, queue: int, callback: Callable[[Packet], None]) -> None:
    """Bind ``queue`` with the kernel queue length and socket buffer every worker uses."""
    nfq.bind(queue, callback, max_len=QUEUE_MAXLEN, sock_len=QUEUE_SOCK_LEN)


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


def die_with_parent(supervisor: int | None) -> int:
    """Ask the kernel to SIGTERM us when the supervisor dies; return the supervisor's pid.

    PR_SET_PDEATHSIG fires when the parent *thread* exits, so the supervisor never spawns
    workers from a helper thread. The supervisor passes its pid (``--supervisor-pid``): if our
    parent is already someone else once prctl() is in place, the supervisor died before, and
    we were reparented. (Comparing with pid 1 instead would be wrong: in a container without an
    init the supervisor *is* pid 1.)
    """
    expected = supervisor if supervisor is not None else os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("event=prctl_failed errno=%d", ctypes.get_errno())
    if os.getppid() != expected:
        sys.exit(0)
    return expected


def parse_args(
    description: str,
    argv: list[str] | None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(p)
    p.add_argument("--runtime-dir", required=True, type=Path)
    p.add_argument("--name", required=True, help="worker name (a stream name, or 'icmp')")
    p.add_argument("--queue", required=True, type=int)
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-file", default="")
    p.add_argument("--supervisor-pid", type=int, default=None,
                   help="exit at once unless this process is our parent")
    p.add_argument("--keep-warm-ms", type=int, default=0,
                   help="while active, call keep_warm() every N ms when idle (0: never)")
    return p.parse_args(argv)


class Worker:
    """The skeleton: subclasses implement ``on_packet`` and ``rebuild``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name: str = args.name
        self.queue_num: int = args.queue
        self.runtime_dir: Path = args.runtime_dir
        self.counters: Counter[str] = Counter()
        self.running = True
        self.parent = die_with_parent(args.supervisor_pid)
        setup_logging(args.log_level, ["console", "file"] if args.log_file else ["console"],
                      args.log_file, f"{self.name}")
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.bus = BusClient(self.runtime_dir, self.name)
        self.poller = self.bus.poller()
        self.handlers: dict[int, Callable[[], None]] = {}
        self.ready_fds: Sequence[int] = ()  # what the poller found readable, for the handlers
        self.nfq = NetfilterQueue()
        self.drops = DropBatch(-1, self.queue_num, self.counters)  # its fd is set once bound
        self.started = time.time()
        self.keep_warm_ms: int = args.keep_warm_ms

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Call ``handler`` from the loop whenever ``fd`` is readable."""
        self.handlers[fd] = handler
        self.poller.watch(fd)

    def unwatch(self, fd: int) -> None:
        self.poller.unwatch(fd)
        del self.handlers[fd]

    def _run_queue(self) -> None:
        self.nfq.run(block=False)  # every packet waiting, one callback each
        self.drops.flush()

    def _stop(self, signum: int, frame: Any) -> None:
        self.running = False

    # --- subclass API -------------------------------------------------------------------------

    def on_packet(self, pkt: Packet) -> None:
        raise NotImplementedError

    def rebuild(self) -> None:
        """Recompute derived state after the replica changed."""
        raise NotImplementedError

    def on_bound(self) -> None:
        """Called once the queue is bound (``self.drops.fd`` is its netlink socket); an
        ``OSError`` from it is a failed bind (exit 4)."""

    def on_stop(self) -> None:
        """Called before the queue is unbound, also after a failed ``on_bound``."""

    def keep_warm(self) -> None:
        """Run the packet path on a dummy packet, without I/O (``--keep-warm-ms``)."""

    # --- the loop -----------------------------------------------------------------------------

    def _callback(self, pkt: Packet) -> None:
        """Exactly one verdict per packet, whatever happens in on_packet."""
        try:
            self.on_packet(pkt)
        except Exception:  # never let one packet kill the worker; count it and drop it
            self.internal_error()
            with contextlib.suppress(Exception):  # the verdict may have been given already
                pkt.drop()

    def internal_error(self) -> None:
        """Count a bug met while handling one packet; log the first with its traceback.

        Call it from an ``except`` block. Every packet after the first is only counted, so a bug
        that every packet meets cannot flood the log.
        """
        self.counters["drop_internal_error"] += 1
        if self.counters["drop_internal_error"] == 1:
            log.exception("event=internal_error worker=%s (logged once; counted after)", self.name)

    def sync(self) -> None:
        """Subscribe, ask for a snapshot and wait until it arrives (the Clone pattern)."""
        deadline = time.monotonic() + SNAPSHOT_TIMEOUT
        while not self.bus.replica.synced:
            if time.monotonic() > deadline:
                log.error("event=no_snapshot worker=%s runtime_dir=%s", self.name, self.runtime_dir)
                sys.exit(3)
            self.bus.snapshot_pending = False
            self.bus.request_snapshot()
            if self.bus.wait_control(SNAPSHOT_RETRY):
                self.bus.poll_control()
            if os.getppid() != self.parent:
                sys.exit(0)
        self.bus.poll_updates()
        self.rebuild()

    def run(self) -> int:
        self.sync()
        try:
            bind_queue(self.nfq, self.queue_num, self._callback)
            self.drops.fd = self.nfq.get_fd()
            try:
                self.on_bound()
            except OSError:
                self.on_stop()
                self.nfq.unbind()
                raise
        except OSError as e:
            log.error("event=queue_bind_failed worker=%s queue=%d error=%s", self.name,
                      self.queue_num, e)
            return 4
        self.watch(self.drops.fd, self._run_queue)
        self.bus.send(b"ready", self.name.encode())
        log.info("event=worker_started worker=%s pid=%d queue=%d", self.name, os.getpid(),
                 self.queue_num)
        now = next_stats = time.monotonic()
        # Keep-warm: after 0.1 s idle the per-packet Python path runs 10x slower (its code and
        # data fell out of the CPU caches: results/wake/cold.py). While a packet arrived in the
        # last KEEP_WARM_FOR seconds, an idle loop wakes every keep_warm_ms and runs the path on
        # a dummy packet; an idle worker sleeps as before.
        warm_until = 0.0
        try:
            while self.running:
                warm = self.keep_warm_ms > 0 and now < warm_until
                ready, updates_ready, control_ready = self.poller.poll(
                    self.keep_warm_ms if warm else 200)
                self.ready_fds = ready
                for fd in ready:
                    self.handlers[fd]()
                if warm and not (ready or updates_ready or control_ready):
                    try:
                        self.keep_warm()
                    except Exception:
                        self.internal_error()
                    self.counters["keep_warm_runs"] += 1
                changed = False
                if updates_ready:
                    changed |= self.bus.poll_updates()
                if control_ready:
                    changed |= self.bus.poll_control()
                if changed:
                    self.rebuild()
                now = time.monotonic()  # one clock read per turn, for both uses
                if ready:
                    warm_until = now + KEEP_WARM_FOR
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL
                    self.report()
                    if os.getppid() != self.parent:
                        log.info("event=parent_gone worker=%s", self.name)
                        break
        finally:
            self.on_stop()
            self.nfq.unbind()
            self.report()
            self.bus.close()
        log.info("event=worker_stopped worker=%s pid=%d", self.name, os.getpid())
        return 0

    def report(self) -> None:
        stats: dict[str, Any] = dict(self.counters)
        stats["pid"] = os.getpid()
        stats["started"] = self.started
        self.bus.send_stats(stats)


def main(
    worker_class: type[Worker],
    description: str,
    argv: list[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    args = parse_args(description, argv, extra)
    return worker_class(args).run()
