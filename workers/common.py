"""What every worker process shares: parent-death handling, the bus, the poll loop, counters.

The flow of a worker process (:meth:`Worker.run`):

1. die with the supervisor (``PR_SET_PDEATHSIG``), log, subscribe to the bus and wait for the
   snapshot (the Clone pattern), then ``rebuild`` the worker's state from it;
2. bind its netfilter queue (mt6d_mp.io.nfqueue), say ``ready`` on the bus;
3. loop: poll the queue's fd, the bus and whatever sockets the worker watches (a stream worker's
   per-route UDP sockets); call the handler of each readable fd (the queue's is
   :meth:`Worker.read_queue`); apply bus updates; report counters every second; when idle and a
   packet came in the last 2 s, run ``keep_warm``;
4. on SIGTERM, or when the supervisor is gone: unbind and report once more.

Every queued packet gets exactly one verdict: in the queue callback, or (a stream worker's
drops) in a batch (mt6d_mp.io.nfqueue.DropBatch). The queues are fail-closed on purpose: the
firewall rules carry no ``--queue-bypass``, so while no worker is bound (not started yet,
restarting, crashed) the kernel drops what the rules send to the queue.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mt6d_mp.core import aqm
from mt6d_mp.io import sockets
from mt6d_mp.io.bus import BusClient
from mt6d_mp.io.nfqueue import BoundQueue, DropBatch, Packet
from mt6d_mp.logs import setup_logging

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STATS_INTERVAL = 1.0
KEEP_WARM_FOR = 2.0  # seconds after the last packet that --keep-warm-ms stays on
SNAPSHOT_TIMEOUT = 10.0
SNAPSHOT_RETRY = 0.5
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
    p.add_argument("--receive-buffer-kb", type=int, default=sockets.RECEIVE_BUFFER // 1024,
                   help="a route socket's receive buffer, KB ([tunnel] receive_buffer_kb)")
    p.add_argument("--queue-target-ms", type=float, default=0.0,
                   help="CoDel's target wait of bulk TCP messages in the route sockets and the "
                   "netfilter queue, ms; 0: no queue management ([tunnel] queue_target_ms)")
    p.add_argument("--queue-interval-ms", type=float, default=aqm.DEFAULT_INTERVAL * 1000,
                   help="CoDel's interval, ms ([tunnel] queue_interval_ms)")
    p.add_argument("--clock-offset", type=float, default=0.0,
                   help="seconds added to the clock when choosing epochs ([rotation] clock_offset)")
    return p.parse_args(argv)


class Worker:
    """The skeleton: subclasses implement ``rebuild``, and either ``on_packet`` (one callback per
    queued packet, NetfilterQueue's way) or ``read_queue`` (a reader of their own)."""

    # Whether the worker keeps only the streams of its own queue (the bus topic of its shard:
    # mt6d_mp.io.bus), or every stream (the ICMP worker answers for every hashed address).
    shard_only = True

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
        self.bus = BusClient(self.runtime_dir, self.name,
                             topic=self.queue_num if self.shard_only else None)
        self.poller = self.bus.poller()
        self.handlers: dict[int, Callable[[], None]] = {}
        self.ready_fds: Sequence[int] = ()  # what the poller found readable, for the handlers
        self.turn = 0  # counts the loop's turns (a handler that drains several fds marks its turn)
        self.queue: BoundQueue | None = None
        self.drops = DropBatch(-1, self.queue_num, self.counters)  # its fd is set once bound
        self.started = time.time()
        self.keep_warm_ms: int = args.keep_warm_ms
        self.receive_buffer: int = args.receive_buffer_kb * 1024
        # Queue management (mt6d_mp.core.aqm), seconds; target 0: none.
        self.queue_target: float = args.queue_target_ms / 1000
        self.queue_interval: float = args.queue_interval_ms / 1000
        # The netfilter queue in front of the worker: one queue, one controller.
        self.queue_codel = self.new_codel()
        self.clock_offset: float = args.clock_offset

    def new_codel(self) -> aqm.CoDel | None:
        """A queue management controller with the worker's settings; None when it is off."""
        return aqm.CoDel(self.queue_target, self.queue_interval) if self.queue_target > 0 else None

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Call ``handler`` from the loop whenever ``fd`` is readable."""
        self.handlers[fd] = handler
        self.poller.watch(fd)

    def unwatch(self, fd: int) -> None:
        self.poller.unwatch(fd)
        del self.handlers[fd]


    def _stop(self, signum: int, frame: Any) -> None:
        self.running = False

    # --- subclass API -------------------------------------------------------------------------

    def read_queue(self) -> None:
        """The queue's fd is readable: every packet waiting, one ``on_packet`` call each."""
        assert self.queue is not None
        self.queue.run()
        self.drops.flush()

    def on_packet(self, pkt: Packet) -> None:
        """One queued packet (from :meth:`read_queue`). A worker that reads its queue itself
        never gets here; if it did, the packet is dropped and counted."""
        self.counters["drop_unexpected_callback"] += 1
        pkt.drop()

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
            self.queue = queue = BoundQueue(self.queue_num, self._callback)
            self.drops.fd = queue.fd
            try:
                self.on_bound()
            except OSError:
                self.on_stop()
                queue.unbind()
                raise
        except OSError as e:
            log.error("event=queue_bind_failed worker=%s queue=%d error=%s", self.name,
                      self.queue_num, e)
            return 4
        self.watch(queue.fd, self.read_queue)
        self.bus.send(b"ready", self.name.encode())
        log.info("event=worker_started worker=%s pid=%d queue=%d", self.name, os.getpid(),
                 self.queue_num)
        # The modules, sockets and tables built to start live as long as the worker: out of the
        # cyclic collector's way, so that a full collection (about 2 ms of its 19,000 objects
        # otherwise, warm) does not stall a packet.
        gc.freeze()
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
                self.turn += 1
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
                    self.bus.replica.outbox.clear()  # sent by rebuild if this worker's
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
            queue.unbind()
            self.report()
            self.bus.close()
            self.poller.close()
        log.info("event=worker_stopped worker=%s pid=%d", self.name, os.getpid())
        return 0

    def stats(self) -> dict[str, Any]:
        """What :meth:`report` sends: the counters (a stream worker adds its streams')."""
        return dict(self.counters)

    def report(self) -> None:
        stats = self.stats()
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
