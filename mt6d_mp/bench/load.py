"""The load rows on one path: ping during a TCP transfer, UDP at full offered rate, parallel TCP.

Flow: runner.py calls :func:`load_tests` with the path's :class:`~mt6d_mp.bench.battery.Runner`
after the battery and after the CPU and memory figures are taken (host.py), so those cover the
same tests as in earlier runs. In order:

* :func:`ping_under_tcp`: an iperf3 TCP transfer from host A to host B (``ping_load_seconds``)
  in a thread; a ping every ``ping_load_interval`` from host A to host B starts
  ``ping_load_margin`` after the transfer and stops as long before its end
  (:func:`ping_schedule`); the runs' ping summaries are pooled (:func:`pool_pings`);
* :func:`tcp_parallel`: iperf3 TCP with ``parallel_streams`` streams (``-P``);
* :func:`udp_full` per datagram size, the larger first: iperf3 UDP with ``-b 0`` (as fast as the
  sender can write) and ``-l`` the size; the received rate and loss are counted from the
  datagrams that reached host B against those sent (:func:`udp_figures`).

Each run also records the drop counters that grew while it ran (drops.py). A failure is recorded
in the Runner's errors, never raised.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mt6d_mp.bench.battery import parse_ping, tcp_figures
from mt6d_mp.bench.drops import drops_text
from mt6d_mp.bench.results import stats
from mt6d_mp.errors import Mt6dError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mt6d_mp.bench.battery import Runner


def ping_schedule(seconds: float, interval: float, margin: float) -> tuple[float, int]:
    """When the ping starts after the transfer's start, and how many it sends, so that it ends
    ``margin`` before the transfer does; a transfer too short for the margin gets a quarter of its
    length at each end, and at least one ping."""
    margin = min(margin, seconds / 4)
    return margin, max(1, math.floor((seconds - 2 * margin) / interval + 1e-9))


def pool_pings(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Ping summaries (parse_ping) of several runs as one, as if one ping had sent them all:
    counts summed, the average weighted by the replies, min and max over all, mdev from the
    pooled mean square (ping's mdev is the population deviation of the round trips)."""
    if not runs:
        return None
    sent = sum(r["sent"] for r in runs)
    got = sum(r["received"] for r in runs)
    timed = [(r["received"], r["rtt_ms"]) for r in runs if r["rtt_ms"] and r["received"]]
    rtt = None
    if timed:
        n = sum(k for k, _ in timed)
        avg = sum(k * t["avg"] for k, t in timed) / n
        square = sum(k * (t["mdev"] ** 2 + t["avg"] ** 2) for k, t in timed) / n
        rtt = {
            "min": min(t["min"] for _, t in timed),
            "avg": avg,
            "max": max(t["max"] for _, t in timed),
            "mdev": math.sqrt(max(0.0, square - avg * avg)),
        }
    return {"sent": sent, "received": got, "loss_pct": 100.0 * (sent - got) / sent if sent else None,
            "rtt_ms": rtt}  # fmt: skip


def udp_figures(end: dict[str, Any], length: int) -> dict[str, Any]:
    """One iperf3 UDP run (its JSON ``end``) with ``length``-byte datagrams: what was sent and
    what reached the receiver, per second. The loss is of the datagrams sent, so it includes those
    lost after the last one that arrived (iperf3's own ``lost_percent``, kept as
    ``iperf3_lost_pct``, counts up to the highest sequence number received)."""
    total = end["sum"]
    sent_sum = end.get("sum_sent") or total
    sent = int(sent_sum["packets"])
    rcv = end.get("sum_received")
    if rcv is not None:  # iperf3 >= 3.10 (bookworm has 3.12): the receiver's own byte count
        received, seconds = int(rcv["bytes"]) // length, float(rcv["seconds"])
    else:
        received, seconds = int(total["packets"]) - int(total["lost_packets"]), float(total["seconds"])
    return {
        "sent": sent,
        "received": received,
        "loss_pct": 100.0 * max(0, sent - received) / sent if sent else None,
        "iperf3_lost_pct": float(total["lost_percent"]),
        "sent_kpps": sent / float(sent_sum["seconds"]) / 1e3 if sent_sum["seconds"] else None,
        "received_kpps": received / seconds / 1e3 if seconds else None,
        "received_mbit_s": received * length * 8 / seconds / 1e6 if seconds else None,
        "bytes": received * length,
        "jitter_ms": float(total["jitter_ms"]),
    }


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def ping_under_tcp(run: Runner) -> dict[str, Any]:
    p = run.plan
    secs, interval = p.ping_load_seconds, p.ping_load_interval
    margin, count = ping_schedule(secs, interval, p.ping_load_margin)
    runs: list[dict[str, Any]] = []
    for k in range(p.load_runs):
        what = f"ping under tcp run {k + 1}"
        before = run.drops()
        try:
            run.iperf_server()  # listening before the clock starts
            with ThreadPoolExecutor(1) as pool:
                transfer = pool.submit(run.iperf, [], secs)
                time.sleep(margin)
                t0 = time.time()
                r = run.exec(
                    ["ping", "-6", "-n", "-q", "-c", str(count), "-i", f"{interval:g}", "-W", "2",
                     run.pl.dst],
                    timeout=secs + 30,
                )  # fmt: skip
                t1 = time.time()
                end = transfer.result()["end"]
            res: dict[str, Any] = parse_ping(r.stdout)
        except (Mt6dError, ValueError, KeyError) as e:
            run.fail(what, e)
            continue
        res.update(tcp_figures(end))
        # Where the ping lay in the transfer (the last attempt's, battery.py Runner.iperf): from
        # its first to its last echo request, against the client's start. The client sends for
        # ``secs`` from its connection, which comes after its start: the ping was within the
        # transfer if it began after the start and ended within ``secs`` of it.
        res["ping_from_s"] = t0 - run.launched
        res["ping_to_s"] = t0 + (count - 1) * interval - run.launched
        res["ping_exit_s"] = t1 - run.launched  # later than ping_to_s by the last round trip
        res["transfer_s"] = run.returned - run.launched
        res["drops"] = run.dropped_since(before)
        if res["ping_from_s"] < 0 or res["ping_to_s"] > min(secs, res["transfer_s"]):
            run.fail(what, f"the ping ({res['ping_from_s']:.2f}-{res['ping_to_s']:.2f} s) was not "
                           f"within the transfer (0-{min(secs, res['transfer_s']):.2f} s)")  # fmt: skip
        runs.append(res)
        rtt = res["rtt_ms"] or {}
        run.log(
            f"{what}/{p.load_runs}: {count} x {interval:g} s: avg {rtt.get('avg', math.nan):.3f} ms, "
            f"max {rtt.get('max', math.nan):.3f} ms, loss {res['loss_pct']:.2f}%, TCP "
            f"{res['gbit_s']:.3f} Gbit/s" + drops_text(res["drops"])
        )
    return {
        "seconds": secs,
        "interval_s": interval,
        "count": count,
        "margin_s": margin,
        "runs": runs,
        "ping": pool_pings(runs),
        "rtt_avg_ms": stats([(x["rtt_ms"] or {}).get("avg") for x in runs]),
        "gbit_s": stats([x["gbit_s"] for x in runs]),
    }


def tcp_parallel(run: Runner) -> dict[str, Any]:
    p = run.plan
    n = p.parallel_streams
    runs: list[dict[str, Any]] = []
    for k in range(p.load_runs):
        try:
            res = tcp_figures(run.iperf(["-P", str(n)], p.parallel_seconds)["end"])
        except (Mt6dError, KeyError) as e:
            run.fail(f"tcp -P {n} run {k + 1}", e)
            continue
        runs.append(res)
        run.log(f"tcp -P {n} run {k + 1}/{p.load_runs}: {res['gbit_s']:.3f} Gbit/s, "
                f"{res['retransmits']} retransmits")  # fmt: skip
    return {
        "streams": n,
        "seconds": p.parallel_seconds,
        "runs": runs,
        "gbit_s": stats([x["gbit_s"] for x in runs]),
        "retransmits": stats([x["retransmits"] for x in runs]),
        "bytes": sum(x["bytes"] for x in runs),
    }


def udp_full(run: Runner, length: int) -> dict[str, Any]:
    p = run.plan
    runs: list[dict[str, Any]] = []
    for k in range(p.load_runs):
        what = f"udp full rate {length} B run {k + 1}"
        before = run.drops()
        try:
            res = udp_figures(run.iperf(["-u", "-b", "0", "-l", str(length)], p.udp_full_seconds)["end"],
                              length)  # fmt: skip
        except (Mt6dError, KeyError, ValueError) as e:
            run.fail(what, e)
            continue
        res["drops"] = run.dropped_since(before)
        runs.append(res)
        run.log(
            f"{what}/{p.load_runs}: received {_f(res['received_mbit_s'])} Mbit/s, "
            f"{_f(res['received_kpps'])} kpps of {_f(res['sent_kpps'])} sent, "
            f"loss {_f(res['loss_pct'], 2)}%" + drops_text(res["drops"])
        )
    return {
        "datagram_bytes": length,
        "seconds": p.udp_full_seconds,
        "runs": runs,
        "received_mbit_s": stats([x["received_mbit_s"] for x in runs]),
        "received_kpps": stats([x["received_kpps"] for x in runs]),
        "sent_kpps": stats([x["sent_kpps"] for x in runs]),
        "loss_pct": stats([x["loss_pct"] for x in runs]),
        "bytes": sum(x["bytes"] for x in runs),
    }


def load_tests(run: Runner, res: dict[str, Any]) -> None:
    """The load rows into a path's results (``ping_under_tcp``, ``tcp_parallel``, ``udp_full``)."""
    p = run.plan
    res["ping_under_tcp"] = ping_under_tcp(run)
    res["tcp_parallel"] = tcp_parallel(run)
    # The larger datagrams first: the smaller ones are the harder load, and a queue they leave
    # full should not reach into another row.
    by_size = {n: udp_full(run, n) for n in sorted(p.udp_full_lens, reverse=True)}
    res["udp_full"] = [by_size[n] for n in p.udp_full_lens]
