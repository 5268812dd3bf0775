"""The worker pool: the supervisor's worker processes, each driven by its lifecycle state machine.

Flow: the supervisor plans one worker per stream queue, named ``qN`` after its queue, which
carries every stream whose profile names that queue (:meth:`WorkerPool.add_stream`: a shard),
and one ICMP worker (:meth:`WorkerPool.add_icmp`); every turn of its loop calls :meth:`supervise`, which
reports what it sees to each worker's :class:`~mt6d_mp.core.lifecycle.Lifecycle` (an exit, the
worker's ``ready`` on the bus, a deadline passed), logs the transition, and spawns what the state
machine says is due. Operator commands (``mt6dctl start|stop|restart``) request transitions
through :meth:`control`; :meth:`stop` stops workers at once and waits (a stream being removed,
teardown). :meth:`status` shapes the per-worker part of ``mt6dctl status`` with the kernel's
queue figures from ``/proc`` (:func:`kernel_queues`).

The state machine stays pure in :mod:`mt6d_mp.core.lifecycle`; processes, signals and the clock
live here.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mt6d_mp.core.lifecycle import Lifecycle, Policy, State, Transition
from mt6d_mp.core.queues import segment_queue
from mt6d_mp.errors import Mt6dError

log = logging.getLogger("mt6d.supervisor")  # the supervisor's log lines, wherever they are made

READY_TIMEOUT = 20.0
STOP_GRACE = 3.0
MAX_BACKOFF = 30.0
POLICY = Policy(startsecs=1.0, startretries=3, backoff=1.0, max_backoff=MAX_BACKOFF,
                start_timeout=READY_TIMEOUT, stop_timeout=STOP_GRACE)
REPO = Path(__file__).resolve().parents[1]  # workers run as ``python -m workers.X`` from here
ICMP = "icmp"  # the ICMP worker's name


class UnknownWorker(Mt6dError):
    """An operator named a worker the pool does not have."""


@dataclass
class WorkerProcess:
    """One worker: how to start it, its process, and its lifecycle state machine."""

    name: str
    queue: int
    argv: list[str]
    lc: Lifecycle
    proc: subprocess.Popen[bytes] | None = None
    streams: list[str] = field(default_factory=list)  # a stream worker's streams (its shard)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass(frozen=True)
class WorkerOptions:
    """What every worker's command line carries from the supervisor's configuration."""

    runtime_dir: Path
    log_level: str
    log_file: str  # "" when the log does not go to a file
    keep_warm_ms: int = 0
    clock_offset: float = 0.0  # [rotation] clock_offset: stream workers choose epochs with it
    receive_buffer_kb: int = 0  # a route socket's receive buffer; 0: the workers' default
    queue_target_ms: float = 0.0  # queue management of the route sockets (CoDel); 0: none
    queue_interval_ms: float = 100.0


class WorkerPool:
    """Spawns, watches and stops the worker processes.

    ``ready`` is the set of workers that said ``ready`` on the bus (the bus fills it; the pool
    clears a name when its process goes); ``keep_up()`` says whether a worker that is due may be
    spawned (not once the supervisor is stopping).
    """

    def __init__(self, options: WorkerOptions, keep_up: Callable[[], bool],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.keep_up = keep_up
        self.monotonic = monotonic
        self.ready: set[str] = set()
        self.workers: dict[str, WorkerProcess] = {}
        # Called with a worker's name just before each start of its process (the supervisor
        # gives each start of a stream worker a new sender lane: docs/PROTOCOL.md 2).
        self.before_spawn: Callable[[str], None] | None = None

    # --- planning -----------------------------------------------------------------------------

    def argv(self, name: str, queue: int, module: str, *extra: str) -> list[str]:
        o = self.options
        return [sys.executable, "-m", module, "--runtime-dir", str(o.runtime_dir),
                "--name", name, "--queue", str(queue), "--log-level", o.log_level,
                "--log-file", o.log_file, "--supervisor-pid", str(os.getpid()), *extra]

    def add(self, name: str, queue: int, argv: list[str]) -> WorkerProcess:
        w = WorkerProcess(name, queue, argv, Lifecycle(name, POLICY, self.monotonic))
        self.workers[name] = w
        return w

    def add_stream(self, stream: str, queue: int) -> bool:
        """Put a stream in the shard of its queue; True if that planned a new worker (a
        running one takes the stream from the bus)."""
        name = shard_name(queue)
        w = self.workers.get(name)
        if w is not None:
            if stream not in w.streams:
                w.streams.append(stream)
            return False
        warm = self.options.keep_warm_ms
        extra = ["--keep-warm-ms", str(warm)] if warm else []
        if self.options.clock_offset:
            extra += ["--clock-offset", repr(self.options.clock_offset)]
        if self.options.receive_buffer_kb:
            extra += ["--receive-buffer-kb", str(self.options.receive_buffer_kb)]
        if self.options.queue_target_ms:
            extra += ["--queue-target-ms", repr(float(self.options.queue_target_ms)),
                      "--queue-interval-ms", repr(float(self.options.queue_interval_ms))]
        self.add(name, queue, self.argv(name, queue, "workers.stream", *extra)).streams.append(stream)
        return True

    def remove_stream(self, stream: str) -> None:
        """Take a stream out of its shard; the shard's worker stops with its last stream."""
        for w in list(self.workers.values()):
            if stream in w.streams:
                w.streams.remove(stream)
                if not w.streams:
                    self.remove(w.name)

    def worker_of(self, stream: str) -> WorkerProcess | None:
        return next((w for w in self.workers.values() if stream in w.streams), None)

    def add_icmp(self, queue: int, *extra: str) -> None:
        self.add(ICMP, queue, self.argv(ICMP, queue, "workers.icmp", *extra))

    def remove(self, name: str) -> None:
        """Stop a worker now (if the pool has it) and forget it."""
        w = self.workers.pop(name, None)
        if w is not None:
            self.stop([w])

    # --- supervising --------------------------------------------------------------------------

    def spawn(self, w: WorkerProcess) -> None:
        log.info("action=start_worker worker=%s queue=%d", w.name, w.queue)
        self.ready.discard(w.name)  # readiness is per process: wait for the new one's
        if self.before_spawn is not None:
            self.before_spawn(w.name)
        try:
            w.proc = subprocess.Popen(w.argv, cwd=REPO, stdin=subprocess.DEVNULL)
        except OSError as e:
            # Counted like a start that failed at once: backoff, and FATAL if it persists.
            log.error("event=spawn_failed worker=%s error=%s", w.name, e)
            w.lc.spawned(0)
            log_transition(w.lc.exited(127))
            return
        log_transition(w.lc.spawned(w.proc.pid), w.proc.pid)

    def supervise(self) -> None:
        """One turn of every worker's lifecycle: see exits and readiness, act on deadlines."""
        for w in list(self.workers.values()):
            if w.proc is not None:
                self._watch(w, w.proc)
            if self.keep_up() and w.lc.due():
                self.spawn(w)

    def _watch(self, w: WorkerProcess, proc: subprocess.Popen[bytes]) -> None:
        lc = w.lc
        pid, code = proc.pid, proc.poll()
        if code is not None:
            w.proc = None
            self.ready.discard(w.name)
            log_transition(lc.exited(code), pid)
        elif w.name in self.ready and lc.state is State.STARTING:
            log_transition(lc.ready(), pid)
        elif (t := lc.start_timed_out()) is not None:
            log_transition(t, pid)
            proc.terminate()
        elif lc.stop_overdue() or (lc.timed_out and lc.state is State.STARTING
                                   and self.monotonic() - lc.spawned_at
                                   > POLICY.start_timeout + POLICY.stop_timeout):
            log.warning("action=kill_worker worker=%s pid=%d reason=no_exit_after_sigterm",
                        w.name, pid)
            proc.kill()

    def all_running(self) -> bool:
        return all(w.lc.state is State.RUNNING for w in self.workers.values())

    # --- operator control and stopping --------------------------------------------------------

    def control(self, action: str, names: list[str]) -> dict[str, Any]:
        """Daemon half of mt6dctl start|stop|restart: request the transitions, reply at once."""
        # A stream's name stands for its shard's worker (restarting it restarts the shard).
        named = list(self.workers) if names == ["all"] else names
        unknown = [n for n in named if n not in self.workers and self.worker_of(n) is None]
        if unknown:
            raise UnknownWorker(f"no worker or stream {', '.join(unknown)} (workers: "
                                f"{', '.join(self.workers) or 'none'})")
        targets = list(dict.fromkeys(
            n if n in self.workers else self.worker_of(n).name  # type: ignore[union-attr]
            for n in named))
        log.info("event=control command=%s workers=%s", action, ",".join(targets))
        for n in targets:
            w = self.workers[n]
            restart = action == "restart"
            t = w.lc.request_start() if action == "start" else w.lc.request_stop(restart)
            log_transition(t, w.pid)
            if t is not None and t.new is State.STOPPING and w.proc is not None:
                log.info("action=stop_worker worker=%s pid=%d", n, w.proc.pid)
                w.proc.terminate()
        self.supervise()
        # Keyed as the status rows are: a stream worker by each of its streams.
        return {"workers": {row: {"state": self.workers[n].lc.state.value,
                                  "pid": self.workers[n].pid}
                            for n in targets for row in (self.workers[n].streams or [n])}}

    def stop(self, workers: list[WorkerProcess]) -> None:
        """Stop these workers now (SIGTERM, SIGKILL after STOP_GRACE) and wait for them."""
        procs = [(w, w.proc) for w in workers if w.proc is not None]
        for w, p in procs:
            log.info("action=stop_worker worker=%s pid=%d", w.name, p.pid)
            log_transition(w.lc.request_stop(), p.pid)
            p.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for w, p in procs:
            try:
                code = p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("action=kill_worker worker=%s pid=%d reason=no_exit_after_sigterm",
                            w.name, p.pid)
                p.kill()
                code = p.wait()
            w.proc = None
            log_transition(w.lc.exited(code), p.pid)

    def stop_all(self) -> None:
        self.stop(list(self.workers.values()))

    # --- status -------------------------------------------------------------------------------

    def status(self, stats: dict[str, dict[str, Any]], icmp_queue: int) -> list[dict[str, Any]]:
        """The ``workers`` list of mt6dctl status (wire format in mt6d_mp.commands.Status): a
        row per stream (named after it; ``worker`` names its shard's process) and one for the
        ICMP worker. A stream worker's own counters (packets that matched none of its streams,
        queue errors) are in the row of its first stream, so that sums over rows count each
        packet once."""
        kernel = kernel_queues()
        rows = []
        for w in self.workers.values():
            reported = dict(stats.get(w.name, {}))
            reported.pop("pid", None)
            reported.pop("started", None)
            per_stream = reported.pop("streams", None) or {}
            for i, name in enumerate(w.streams or [w.name]):
                counters: dict[str, Any] = dict(reported) if i == 0 else {}
                for k, v in (per_stream.get(name) or {}).items():
                    counters[k] = counters.get(k, 0) + v
                rows.append(self._row(w, name, counters, kernel, icmp_queue))
        return rows

    @staticmethod
    def _row(w: WorkerProcess, name: str, counters: dict[str, Any],
             kernel: dict[int, dict[str, int]], icmp_queue: int) -> dict[str, Any]:
        return {
            "name": name, "worker": w.name, "queue": w.queue, "pid": w.pid,
            "state": w.lc.state.value, "reason": w.lc.reason, "uptime": w.lc.uptime(),
            "spawns": w.lc.spawns, "restarts": max(0, w.lc.spawns - 1),
            "exits": w.lc.exits[-5:], "kernel_queue": kernel.get(w.queue),
            "segment_queue": (None if w.queue == icmp_queue
                              else kernel.get(segment_queue(w.queue))),
            "packets_out": counters.get("tunnelled_packets", 0),
            "packets_in": counters.get("extracted_packets", 0),
            "bytes_out": counters.get("tunnelled_bytes", 0),
            "bytes_in": counters.get("extracted_bytes", 0),
            "drops": {k[5:]: v for k, v in counters.items() if k.startswith("drop_")},
            "counters": counters,
        }


def shard_name(queue: int) -> str:
    """The name of the stream worker that reads ``queue``."""
    return f"q{queue}"


def log_transition(t: Transition | None, pid: int | None = None) -> None:
    if t is None:
        return
    level = (logging.ERROR if t.new is State.FATAL
             else logging.WARNING if t.new in (State.BACKOFF, State.EXITED) or t.old is t.new
             else logging.INFO)
    log.log(level, "event=worker_state %s pid=%s", t, pid if pid is not None else "-")


def kernel_queues() -> dict[int, dict[str, int]]:
    """Per queue number, from /proc/net/netfilter/nfnetlink_queue (this network namespace):
    packets waiting, dropped by the kernel (queue full), and dropped on the way to user space."""
    out: dict[int, dict[str, int]] = {}
    try:
        text = Path("/proc/net/netfilter/nfnetlink_queue").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 7:
            out[int(f[0])] = {"waiting": int(f[2]), "queue_dropped": int(f[5]),
                              "user_dropped": int(f[6])}
    return out
