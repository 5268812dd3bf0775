"""The lifecycle of one worker process, as an explicit state machine (pure: no processes).

Modelled on supervisord's process states (``supervisor/process.py``). The transitions:

============  =========================================  ==========
from          event                                      to
============  =========================================  ==========
STOPPED       spawned (wanted)                           STARTING
STARTING      ``ready`` on the bus                       RUNNING
STARTING      exit, or no ready within start_timeout     BACKOFF or FATAL
RUNNING       exit after startsecs up                    EXITED
RUNNING       exit sooner than startsecs after ready     BACKOFF or FATAL
BACKOFF       spawned when the delay is over             STARTING
EXITED        spawned at once                            STARTING
STARTING,     operator stop or restart (SIGTERM sent)    STOPPING
RUNNING
STOPPING      exit                                       STOPPED
BACKOFF,      operator stop or restart                   STOPPED
EXITED,
FATAL
FATAL,        operator start                             STOPPED (then spawned)
BACKOFF
============  =========================================  ==========

* A start *succeeds* once the worker has said ``ready`` on the bus (its queue is bound) and
  then stayed up for ``startsecs``. A worker that exits before that, or never says ready within
  ``start_timeout``, has *failed to start*: it goes to BACKOFF and is retried after a delay that
  doubles each time (``backoff``, ``2 * backoff`` ... at most ``max_backoff``), until
  ``startretries`` retries have failed; then it is FATAL and stays down until an operator starts
  it again.
* A worker that exits after a successful start (it ran for a while) is restarted at once; its
  retry count starts again from zero (supervisord's ``autorestart=true``).
* STOPPING and STOPPED belong to the operator: an exit while STOPPING is not a failure.

The supervisor asks :meth:`Lifecycle.due` on every turn of its loop and reports what it saw
(:meth:`spawned`, :meth:`ready`, :meth:`exited`, :meth:`start_timed_out`); every method that
changes the state returns the :class:`Transition` so that the caller can log it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field


class State(enum.Enum):
    STOPPED = "stopped"  # not running, on purpose (never started, or an operator stopped it)
    STARTING = "starting"  # spawned, not yet ready on the bus
    RUNNING = "running"  # said ready: its queue is bound
    BACKOFF = "backoff"  # failed to start; waiting before the next try
    STOPPING = "stopping"  # asked to stop (SIGTERM sent); waiting for it to exit
    EXITED = "exited"  # exited after a successful start; restarted at once
    FATAL = "fatal"  # failed to start too many times; left down until an operator starts it


@dataclass(frozen=True)
class Policy:
    """How patient the supervisor is with one worker (supervisord's names where they exist)."""

    startsecs: float = 1.0  # a start succeeds after ready + this long up
    startretries: int = 3  # failed starts retried before FATAL
    backoff: float = 1.0  # first delay after a failed start; doubles each time
    max_backoff: float = 30.0
    start_timeout: float = 20.0  # no ready within this long: the start failed
    stop_timeout: float = 3.0  # SIGTERM, then SIGKILL after this long

    def __post_init__(self) -> None:
        if self.startsecs < 0 or self.startretries < 0 or self.backoff < 0:
            raise ValueError("startsecs, startretries and backoff must be >= 0")
        if self.max_backoff < self.backoff or self.start_timeout <= 0 or self.stop_timeout <= 0:
            raise ValueError("max_backoff >= backoff, start_timeout > 0, stop_timeout > 0")

    def delay(self, failures: int) -> float:
        """The wait before retry number ``failures`` (1, 2, ...): backoff * 2**(failures-1)."""
        return min(self.max_backoff, self.backoff * 2.0 ** max(0, failures - 1))


@dataclass(frozen=True)
class Transition:
    name: str
    old: State
    new: State
    reason: str

    def __str__(self) -> str:
        return (f"worker={self.name} from={self.old.value} to={self.new.value} "
                f'reason="{self.reason}"')


@dataclass
class Lifecycle:
    """One worker's state; ``clock`` is monotonic seconds (injected, so tests drive time)."""

    name: str
    policy: Policy = field(default_factory=Policy)
    clock: Callable[[], float] = field(default=lambda: 0.0)
    state: State = State.STOPPED
    wanted: bool = True  # should it be running? (False after an operator stop)
    pid: int | None = None
    failures: int = 0  # failed starts in a row
    spawns: int = 0
    spawned_at: float = 0.0
    ready_at: float = 0.0
    changed_at: float = 0.0
    next_start: float = 0.0
    reason: str = ""  # why it is in its state (shown by status, logged)
    exits: list[int] = field(default_factory=list)  # recent exit codes, newest last
    stop_deadline: float = 0.0
    timed_out: bool = False

    def _go(self, new: State, reason: str) -> Transition:
        t = Transition(self.name, self.state, new, reason)
        self.state, self.reason, self.changed_at = new, reason, self.clock()
        return t

    # --- queries ------------------------------------------------------------------------------

    def due(self) -> bool:
        """Should the supervisor spawn the worker now?"""
        if not self.wanted or self.pid is not None:
            return False
        if self.state in (State.STOPPED, State.EXITED):
            return True
        return self.state is State.BACKOFF and self.clock() >= self.next_start

    def uptime(self) -> float:
        return self.clock() - self.ready_at if self.state is State.RUNNING else 0.0

    def start_overdue(self) -> bool:
        """STARTING for longer than ``start_timeout`` without saying ready."""
        return (self.state is State.STARTING and not self.timed_out
                and self.clock() - self.spawned_at > self.policy.start_timeout)

    def stop_overdue(self) -> bool:
        """STOPPING for longer than ``stop_timeout``: time for SIGKILL."""
        return self.state is State.STOPPING and self.clock() > self.stop_deadline

    # --- what the supervisor saw --------------------------------------------------------------

    def spawned(self, pid: int) -> Transition:
        if not self.due():
            raise ValueError(f"{self.name}: spawned while {self.state.value} (not due)")
        self.pid, self.spawns, self.timed_out = pid, self.spawns + 1, False
        self.spawned_at = self.clock()
        # STOPPED/EXITED/BACKOFF -> STARTING: a process exists; it is not ready until it says so.
        return self._go(State.STARTING, f"spawned pid {pid}")

    def ready(self) -> Transition | None:
        if self.state is not State.STARTING:
            return None  # a late or repeated ready changes nothing
        self.ready_at = self.clock()
        # STARTING -> RUNNING: the worker bound its queue and said so on the bus.
        return self._go(State.RUNNING, "ready")

    def start_timed_out(self) -> Transition | None:
        """Record that the start took too long; the caller then terminates the process.

        The state stays STARTING until the exit is seen (:meth:`exited` counts it as a failure).
        """
        if not self.start_overdue():
            return None
        self.timed_out = True
        return Transition(self.name, self.state, self.state,
                          f"no ready after {self.policy.start_timeout:g}s; terminating")

    def exited(self, code: int) -> Transition:
        """The process is gone (``code``: exit status, or -signal)."""
        now = self.clock()
        self.exits = [*self.exits[-9:], code]
        self.pid = None
        how = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        if self.state is State.STOPPING:
            # STOPPING -> STOPPED: the operator asked for this; not a failure. A restart request
            # left ``wanted`` set, so due() spawns it again on the next turn.
            return self._go(State.STOPPED, f"{how} on request")
        if self.state is State.RUNNING and now - self.ready_at >= self.policy.startsecs:
            # RUNNING -> EXITED: it ran long enough to count as started; restart at once with a
            # fresh retry budget (supervisord's autorestart).
            self.failures = 0
            return self._go(State.EXITED, f"{how} after {now - self.ready_at:.1f}s up")
        # STARTING or RUNNING for less than startsecs: a failed start.
        self.failures += 1
        why = ("no ready in time" if self.timed_out
               else "before ready" if self.state is State.STARTING
               else f"{now - self.ready_at:.1f}s after ready (< startsecs {self.policy.startsecs:g})")
        if self.failures > self.policy.startretries:
            # STARTING/RUNNING -> FATAL: the retry budget is spent; an operator must act.
            self.wanted = False
            return self._go(State.FATAL, f"{how} {why}; gave up after {self.failures} failed starts")
        delay = self.policy.delay(self.failures)
        self.next_start = now + delay
        # STARTING/RUNNING -> BACKOFF: retry after a delay that doubles with each failure.
        return self._go(State.BACKOFF,
                        f"{how} {why}; retry {self.failures}/{self.policy.startretries} in {delay:g}s")

    # --- what the operator asked --------------------------------------------------------------

    def request_stop(self, restart: bool = False) -> Transition | None:
        """Stop (or, with ``restart``, stop and start again). The caller sends SIGTERM if this
        returns a transition to STOPPING."""
        self.wanted = restart
        if self.pid is not None and self.state in (State.STARTING, State.RUNNING):
            self.stop_deadline = self.clock() + self.policy.stop_timeout
            # STARTING/RUNNING -> STOPPING: SIGTERM goes out; the exit will be expected.
            return self._go(State.STOPPING, "restart requested" if restart else "stop requested")
        if self.state in (State.BACKOFF, State.EXITED, State.FATAL):
            self.failures = 0
            # BACKOFF/EXITED/FATAL -> STOPPED: no process to stop; a restart then starts it at
            # once (wanted), a stop leaves it down.
            return self._go(State.STOPPED, "restart requested" if restart else "stop requested")
        return None  # STOPPED or already STOPPING: nothing more to do

    def request_start(self) -> Transition | None:
        """Start a stopped or fatal worker now; cut a backoff short."""
        self.wanted = True
        if self.state in (State.FATAL, State.BACKOFF):
            self.failures = 0
            # FATAL/BACKOFF -> STOPPED: the operator takes over; the retry budget starts afresh
            # and due() spawns it on the next turn.
            return self._go(State.STOPPED, "start requested")
        return None  # STOPPED: due() now true; STARTING/RUNNING/STOPPING(restart): nothing to do
