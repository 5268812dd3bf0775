"""MT6D's rekey cost on running gateways: how long one key exchange takes, and what it does to a transfer.

Flow of :func:`mt6d_rekey`: two MT6D labs side by side (``path_lab`` of tunnels.py), both
rotating every ``plan.rekey_rotation_time`` seconds: the *rekeying* lab with
``crypto.regen_interval`` = ``plan.rekey_interval`` and ``crypto.regen_window`` =
``plan.rekey_window``, the *baseline* lab with ``crypto.regen_interval`` = 0 (only the exchange
at start). First the rekeying lab runs without traffic for ``plan.rekey_observe`` seconds; then
iperf3 TCP transfers (:func:`_transfer`) take turns in the two labs, ``plan.rekey_runs`` each,
with intervals of 0.5 s as the receiver counts them.

* The duration of an exchange: while a lab is observed, a thread polls both gateways' status
  (:class:`Poller`); each new ``keyx_last_seconds`` of a stream is one exchange that gateway
  started, from its first INIT to its commit (``StreamKeys.last_exchange`` in
  mt6d_mp/core/phases.py) (:func:`exchange_samples`). Both gateways are pooled.
* The rekeys during a transfer come from the supervisors' logs: ``event=key_phase_committed``
  and ``event=key_phase_sending`` lines, timestamped to the millisecond (:func:`key_events`).
  One rekey per new phase, at its first commit on either gateway (:func:`rekeys_in`); both
  gateways send on the new phase within the hold after it (docs/PROTOCOL.md 5.4).
* The dip of a rekey: the lowest interval that overlaps the second after it, against the
  transfer's median interval; beside it, the lowest interval that overlaps no rekey's second
  (:func:`dips`; the first and the last interval left out). The baseline's transfers have only
  the latter, which is how low the intervals go without rekeys.

The intervals are placed from the moment the iperf3 client was started; the test itself starts
after the client has connected, at most ``start_slack_s`` later (the run's wall time less its
length). The pure functions come first, then the measurement.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from mt6d_mp.bench.battery import Runner
from mt6d_mp.bench.plan import Plan, Progress
from mt6d_mp.bench.results import dig, stats
from mt6d_mp.bench.tunnels import PathLab, path_lab
from mt6d_mp.errors import Mt6dError
from mt6d_mp.lab import random_prefix

IPERF_INTERVAL = 0.5  # seconds per iperf3 interval
DIP_WINDOW = 1.0  # the intervals within this many seconds after a rekey give its dip
POLL_S = 0.2  # status polls per gateway, seconds apart
_GROUP_S = 5.0  # one phase's commits on the two gateways lie within this many seconds

_KEY_EVENT = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?\bevent=key_phase_(committed|sending) phase=(\d+)",
    re.MULTILINE,
)


class KeyEvent(NamedTuple):
    at: float  # wall clock (time.time), seconds
    side: str  # "a" or "b"
    event: str  # "committed" or "sending"
    phase: int


def key_events(text: str, side: str) -> list[KeyEvent]:
    """The phase commits and switches in a supervisor's log (mt6d_mp/logs.py: local time, ms)."""
    return [
        KeyEvent(
            dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(),
            side,
            m.group(2),
            int(m.group(3)),
        )
        for m in _KEY_EVENT.finditer(text)
    ]


def rekeys_in(
    events: Iterable[KeyEvent], start: float, end: float, window: float = DIP_WINDOW
) -> list[dict[str, Any]]:
    """The rekeys whose ``window`` after the first commit overlaps [start, end].

    One per new phase: ``at``, its first commit on either gateway, and ``committed`` and
    ``sending``, each gateway's commit and switch to it, all in seconds from ``start``.
    """
    groups: list[tuple[float, int, dict[str, dict[str, float]]]] = []
    for e in sorted(events):
        same = [g for g in groups if g[1] == e.phase and abs(e.at - g[0]) <= _GROUP_S]
        if not same and e.event == "committed":
            same = [(e.at, e.phase, {"committed": {}, "sending": {}})]
            groups.append(same[0])
        if same:
            same[-1][2][e.event].setdefault(e.side, e.at)
    return [
        {
            "phase": phase,
            "at": first - start,
            **{kind: {side: t - start for side, t in sorted(times.items())} for kind, times in ev.items()},
        }
        for first, phase, ev in groups
        if start - window < first < end
    ]


def interval_rates(data: dict[str, Any], min_seconds: float) -> tuple[list[list[float]], str]:
    """``[start, end, Gbit/s]`` of each iperf3 interval at least ``min_seconds`` long, and whose:
    the receiver's (a JSON server and ``--get-server-output``) if the run has them, else the
    sender's."""
    source, intervals = "receiver", dig(data, "server_output_json", "intervals")
    if not intervals:
        source, intervals = "sender", data.get("intervals") or []
    out = []
    for i in intervals:
        s = i["sum"]
        if s["end"] - s["start"] >= min_seconds:
            out.append([float(s["start"]), float(s["end"]), float(s["bits_per_second"]) / 1e9])
    return out, source


def _ratio(x: float | None, ref: float | None) -> float | None:
    return x / ref if x is not None and ref else None


def dips(
    intervals: Sequence[Sequence[float]], rekeys: Sequence[dict[str, Any]], window: float = DIP_WINDOW
) -> dict[str, Any]:
    """Each rekey with the lowest interval overlapping [at, at + window] (``lowest_gbit_s``) and
    that against the median interval (``ratio``); the lowest interval overlapping no rekey's
    window. The first interval (slow start) and the last (the end of the test, cut short on the
    receiver's side) are left out of all three."""

    def near(iv: Sequence[float], at: float) -> bool:
        return iv[0] < at + window and iv[1] > at

    body = intervals[1:-1]
    median = statistics.median([iv[2] for iv in body]) if body else None
    after = []
    for r in rekeys:
        inside = [iv[2] for iv in body if near(iv, r["at"])]
        low = min(inside) if inside else None
        after.append({**r, "lowest_gbit_s": low, "ratio": _ratio(low, median)})
    elsewhere = [iv[2] for iv in body if not any(near(iv, r["at"]) for r in rekeys)]
    low = min(elsewhere) if elsewhere else None
    return {
        "median_interval_gbit_s": median,
        "rekeys": after,
        "lowest_elsewhere_gbit_s": low,
        "lowest_elsewhere_ratio": _ratio(low, median),
    }


def exchange_samples(replies: Iterable[Any]) -> list[float]:
    """Each new ``keyx_last_seconds`` of a stream in a series of one gateway's status replies
    (the first reply with the stream is the reference; a failed poll is None): one per exchange
    that gateway started and committed meanwhile."""
    last: dict[str, Any] = {}
    out: list[float] = []
    for reply in replies:
        for row in reply.get("streams", []) if isinstance(reply, dict) else []:
            name, value = row.get("name"), row.get("keyx_last_seconds")
            if name in last and value is not None and value != last[name]:
                out.append(float(value))
            if value is not None or name not in last:
                last[name] = value
    return out


def counter_growth(replies: Iterable[Any]) -> Counter[str]:
    """How much each key exchange counter (status ``keyx``, streams summed) grew from the first
    to the last status reply."""

    def total(reply: dict[str, Any]) -> Counter[str]:
        c: Counter[str] = Counter()
        for row in reply.get("streams", []):
            c.update(row.get("keyx") or {})
        return c

    valid = [r for r in replies if isinstance(r, dict)]
    if not valid:
        return Counter()
    grown = total(valid[-1])
    grown.subtract(total(valid[0]))
    return +grown


# --- the measurement ---------------------------------------------------------------------------


class Poller:
    """Both gateways' status every POLL_S seconds, on a thread, while in a ``with`` (once more at
    either end); ``replies[side]`` in order, None for a poll that failed."""

    def __init__(self, runtime_dirs: dict[str, Path]) -> None:
        self.dirs = runtime_dirs
        self.replies: dict[str, list[Any]] = {side: [] for side in runtime_dirs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)

    def __enter__(self) -> Poller:
        self._poll()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._poll()

    def _poll(self) -> None:
        from mt6d_mp.io.bus import request

        for side, runtime_dir in self.dirs.items():
            try:
                reply = request(runtime_dir, b"status", timeout=1.0)
            except Exception:  # a poll that fails is a missing reading, not a failed run
                reply = None
            self.replies[side].append(reply)

    def samples(self) -> list[float]:
        return [x for side in self.dirs for x in exchange_samples(self.replies[side])]

    def counters(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for side in self.dirs:
            total += counter_growth(self.replies[side])
        return dict(sorted(total.items()))


def _gateways(pl: PathLab) -> dict[str, Any]:
    return {"a": pl.info.gateway_a, "b": pl.info.gateway_b}


def _runtime_dirs(pl: PathLab) -> dict[str, Path]:
    return {side: Path(gw.runtime_dir) for side, gw in _gateways(pl).items()}


def _log_events(pl: PathLab) -> list[KeyEvent]:
    events: list[KeyEvent] = []
    for side, gw in _gateways(pl).items():
        with contextlib.suppress(OSError):
            events += key_events(Path(gw.log_file).read_text(errors="replace"), side)
    return events


def _transfer(runner: Runner, kind: str, plan: Plan, progress: Progress) -> dict[str, Any]:
    """One iperf3 TCP transfer in ``runner``'s lab, with its intervals, rekeys and exchanges."""
    run: dict[str, Any] = {
        "kind": kind,
        "seconds": plan.rekey_seconds,
        "gbit_s": None,
        "interval_source": None,
        "intervals": [],
        "start_slack_s": None,
        "median_interval_gbit_s": None,
        "rekeys": [],
        "lowest_elsewhere_gbit_s": None,
        "lowest_elsewhere_ratio": None,
        "exchanges": [],
        "counters": {},
    }
    with Poller(_runtime_dirs(runner.pl)) as poller:
        try:
            data = runner.iperf(["-i", f"{IPERF_INTERVAL:g}", "--get-server-output"], plan.rekey_seconds)
            gbit_s = data["end"]["sum_received"]["bits_per_second"] / 1e9
        except (Mt6dError, KeyError, TypeError) as e:
            runner.fail(f"rekey transfer ({kind})", e)
            return run
    t0, t1 = runner.launched, runner.returned
    intervals, source = interval_rates(data, IPERF_INTERVAL / 2)
    run.update(
        gbit_s=gbit_s,
        interval_source=source,
        intervals=intervals,
        start_slack_s=max(0.0, t1 - t0 - plan.rekey_seconds),
        exchanges=poller.samples(),
        counters=poller.counters(),
    )
    run.update(dips(intervals, rekeys_in(_log_events(runner.pl), t0, t1)))
    low = [r["ratio"] for r in run["rekeys"] if r["ratio"] is not None]
    runner.log(
        f"rekey transfer, {kind}: {gbit_s:.3f} Gbit/s, median interval "
        f"{run['median_interval_gbit_s'] or float('nan'):.3f}, {len(run['rekeys'])} rekey(s)"
        + (f", lowest interval after one {min(low):.0%} of the median" if low else "")
    )
    return run


def _summary(runs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    rs = [r for r in runs if r["kind"] == kind and r["gbit_s"] is not None]
    rekeys = [x for r in rs for x in r["rekeys"]]
    counters: Counter[str] = Counter()
    for r in rs:
        counters.update(r["counters"])
    return {
        "runs": len(rs),
        "gbit_s": stats([r["gbit_s"] for r in rs]),
        "median_interval_gbit_s": stats([r["median_interval_gbit_s"] for r in rs]),
        "rekeys": len(rekeys),
        "dip_gbit_s": stats([x["lowest_gbit_s"] for x in rekeys]),
        "dip_ratio": stats([x["ratio"] for x in rekeys]),
        "lowest_elsewhere_gbit_s": stats([r["lowest_elsewhere_gbit_s"] for r in rs]),
        "lowest_elsewhere_ratio": stats([r["lowest_elsewhere_ratio"] for r in rs]),
        "start_slack_s": stats([r["start_slack_s"] for r in rs]),
        "counters": dict(sorted(counters.items())),
    }


def mt6d_rekey(plan: Plan, scratch: Path, progress: Progress) -> dict[str, Any]:
    """The rekeying and the baseline lab, observed and under transfers (see the module docstring)."""
    res: dict[str, Any] = {
        "rotation_time": plan.rekey_rotation_time,
        "regen_interval": plan.rekey_interval,
        "regen_window": plan.rekey_window,
        "iperf_interval_s": IPERF_INTERVAL,
        "dip_window_s": DIP_WINDOW,
        "labs": {},
        "exchange": {"idle": None, "load": None, "all": None},
        "runs": [],
        "baseline": None,
        "rekeying": None,
        "errors": [],
    }
    settings = {
        "baseline": ("crypto.regen_interval=0",),
        "rekeying": (
            f"crypto.regen_interval={plan.rekey_interval:g}",
            f"crypto.regen_window={plan.rekey_window:g}",
        ),
    }
    idle: list[float] = []
    runners: dict[str, Runner] = {}
    try:
        with contextlib.ExitStack() as stack:
            for kind in ("baseline", "rekeying"):
                prefix = res["labs"][kind] = random_prefix("bn")
                pl = stack.enter_context(
                    path_lab(
                        "mt6d",
                        plan,
                        scratch,
                        progress,
                        prefix,
                        rotation_time=plan.rekey_rotation_time,
                        settings=settings[kind],
                    )
                )
                runners[kind] = Runner(pl, plan, {}, progress, ("-i", f"{IPERF_INTERVAL:g}", "-J"))
                runners[kind].warm_up()
            with Poller(_runtime_dirs(runners["rekeying"].pl)) as poller:
                time.sleep(plan.rekey_observe)
            idle = poller.samples()
            s = stats(idle)
            progress(
                "mt6d: rekey without traffic, first INIT to commit: "
                + (f"median {s['median'] * 1e3:.1f} ms, max {s['max'] * 1e3:.1f} ms, {s['n']} exchange(s)"
                   if s else "no exchange measured")
            )  # fmt: skip
            for _ in range(plan.rekey_runs):
                for kind in ("baseline", "rekeying"):
                    res["runs"].append(_transfer(runners[kind], kind, plan, progress))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # reported; the rest of the run goes on
        res["errors"].append(f"setup: {e}")
        progress(f"mt6d: rekey FAILED {e}")
    res["errors"] += [e for r in runners.values() for e in r.errors]
    load = [x for r in res["runs"] if r["kind"] == "rekeying" for x in r["exchanges"]]
    res["exchange"] = {"idle": stats(idle), "load": stats(load), "all": stats(idle + load)}
    res["baseline"] = _summary(res["runs"], "baseline")
    res["rekeying"] = _summary(res["runs"], "rekeying")
    if not res["errors"] and res["exchange"]["all"] is None:
        res["errors"].append("no exchange measured in the rekeying lab")
    return res


def bench_rekey(plan: Plan, scratch: Path, progress: Progress) -> dict[str, Any]:
    """MT6D's rekey cost and the tunnels' handshakes (handshakes.py), for the paths in the plan."""
    from mt6d_mp.bench.handshakes import openvpn_handshakes, wireguard_handshakes

    out: dict[str, Any] = {"mt6d": None, "openvpn": None, "wireguard-go": None}
    if "mt6d" in plan.paths:
        out["mt6d"] = mt6d_rekey(plan, scratch, progress)
    if "openvpn" in plan.paths:
        out["openvpn"] = openvpn_handshakes(plan, scratch, progress)
    if "wireguard-go" in plan.paths:
        out["wireguard-go"] = wireguard_handshakes(plan, scratch, progress)
    return out
