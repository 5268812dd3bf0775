"""The worker lifecycle state machine, driven by a fake clock (no processes)."""

from __future__ import annotations

import pytest

from mt6d_mp.core.lifecycle import Lifecycle, Policy, State


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


POLICY = Policy(startsecs=1.0, startretries=3, backoff=1.0, max_backoff=4.0, start_timeout=10.0,
                stop_timeout=3.0)


def make() -> tuple[Lifecycle, Clock]:
    clock = Clock()
    return Lifecycle("s1", POLICY, clock), clock


def run_up(lc: Lifecycle, clock: Clock, pid: int = 100) -> None:
    assert lc.due()
    lc.spawned(pid)
    assert lc.state is State.STARTING and not lc.due()
    clock.advance(0.5)
    t = lc.ready()
    assert t is not None and t.old is State.STARTING and t.new is State.RUNNING


def test_start_ready_running_uptime() -> None:
    lc, clock = make()
    assert lc.state is State.STOPPED and lc.due()
    run_up(lc, clock)
    clock.advance(5)
    assert lc.uptime() == pytest.approx(5.0)
    assert lc.ready() is None  # a repeated ready changes nothing


def test_exit_after_startsecs_restarts_at_once_with_fresh_budget() -> None:
    lc, clock = make()
    run_up(lc, clock)
    clock.advance(60)
    t = lc.exited(-9)
    assert t.new is State.EXITED and "signal 9" in t.reason
    assert lc.due() and lc.failures == 0 and lc.pid is None


def test_quick_deaths_back_off_growing_then_fatal() -> None:
    lc, clock = make()
    delays = []
    for attempt in range(1, 4):
        assert lc.due()
        lc.spawned(100 + attempt)
        clock.advance(0.2)
        t = lc.exited(1)
        assert t.new is State.BACKOFF and lc.failures == attempt
        delays.append(lc.next_start - clock())
        assert not lc.due()
        clock.advance(delays[-1] - 0.01)
        assert not lc.due()
        clock.advance(0.02)
    assert delays == [1.0, 2.0, 4.0]
    lc.spawned(200)
    clock.advance(0.2)
    t = lc.exited(1)
    assert t.new is State.FATAL and "gave up after 4 failed starts" in t.reason
    clock.advance(1000)
    assert not lc.due()


def test_backoff_is_capped() -> None:
    assert [POLICY.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_death_soon_after_ready_is_a_failed_start() -> None:
    lc, clock = make()
    run_up(lc, clock)
    clock.advance(0.5)  # < startsecs after ready
    t = lc.exited(3)
    assert t.new is State.BACKOFF and "after ready" in t.reason


def test_no_ready_in_time_counts_as_failure() -> None:
    lc, clock = make()
    lc.spawned(1)
    clock.advance(9)
    assert lc.start_timed_out() is None
    clock.advance(2)
    t = lc.start_timed_out()
    assert t is not None and "no ready" in t.reason and lc.state is State.STARTING
    assert lc.start_timed_out() is None  # reported once
    t = lc.exited(-15)
    assert t.new is State.BACKOFF and "no ready in time" in t.reason


def test_operator_stop_is_not_a_failure_and_stays_down() -> None:
    lc, clock = make()
    run_up(lc, clock)
    t = lc.request_stop()
    assert t is not None and t.new is State.STOPPING
    clock.advance(3.5)
    assert lc.stop_overdue()
    t = lc.exited(-15)
    assert t.new is State.STOPPED and lc.failures == 0
    assert not lc.due()
    assert lc.request_start() is None and lc.due()


def test_restart_stops_then_spawns_again() -> None:
    lc, clock = make()
    run_up(lc, clock)
    lc.request_stop(restart=True)
    assert lc.state is State.STOPPING and not lc.due()
    lc.exited(0)
    assert lc.state is State.STOPPED and lc.due()


def test_operator_start_clears_fatal_and_backoff() -> None:
    lc, clock = make()
    for _ in range(4):
        clock.advance(100)
        lc.spawned(1)
        lc.exited(1)
    assert lc.state is State.FATAL
    t = lc.request_start()
    assert t is not None and t.old is State.FATAL and t.new is State.STOPPED
    assert lc.due() and lc.failures == 0
    lc.spawned(2)
    lc.exited(1)
    assert lc.state is State.BACKOFF and not lc.due()
    lc.request_start()  # cuts the backoff short
    assert lc.due()


def test_stop_while_in_backoff_or_stopped() -> None:
    lc, _clock = make()
    lc.spawned(1)
    lc.exited(1)
    t = lc.request_stop()
    assert t is not None and t.new is State.STOPPED and not lc.due()
    assert lc.request_stop() is None


def test_spawn_when_not_due_is_a_bug() -> None:
    lc, _clock = make()
    lc.spawned(1)
    with pytest.raises(ValueError):
        lc.spawned(2)


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        Policy(startretries=-1)
    with pytest.raises(ValueError):
        Policy(backoff=10, max_backoff=5)
