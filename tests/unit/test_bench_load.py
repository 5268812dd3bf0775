"""The benchmark's load rows (mt6d_mp/bench/load.py): what they read from ping and iperf3, how a run
is driven and how the report and the targets show it.

Pure functions on recorded text and JSON, and the row functions on a stand-in for the battery's
Runner; the lab run itself is tests/lab/test_bench.py.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp.bench import (
    QUICK,
    load_tests,
    markdown,
    parse_ping,
    ping_schedule,
    pool_pings,
    targets,
    tcp_figures,
    udp_figures,
)
from mt6d_mp.bench.charts import charts
from mt6d_mp.bench.drops import drops_between, runs_drops_cell
from mt6d_mp.lab import LabError


def test_the_ping_leaves_a_margin_at_each_end_of_the_transfer() -> None:
    assert ping_schedule(10, 0.05, 0.5) == (0.5, 180)  # 0.5 s to 9.45 s of a 10 s transfer
    assert ping_schedule(3, 0.05, 0.5) == (0.5, 40)
    assert ping_schedule(1, 0.05, 0.5) == (0.25, 10)  # a quarter at each end
    assert ping_schedule(0.1, 0.05, 0.5) == (0.025, 1)  # at least one ping


def _ping_text(rtts: list[float], sent: int) -> str:
    """ping -q's summary of echo replies with these round trips (mdev: population deviation)."""
    head = f"{sent} packets transmitted, {len(rtts)} received, time 1000ms\n"
    if not rtts:
        return head
    return head + (f"rtt min/avg/max/mdev = {min(rtts):.3f}/{statistics.fmean(rtts):.3f}/{max(rtts):.3f}/"
                   f"{statistics.pstdev(rtts):.3f} ms\n")  # fmt: skip


def test_pooled_pings_summarise_the_runs_as_one_ping() -> None:
    a, b = [0.5, 0.7, 0.9, 12.0], [0.4, 0.6]
    pooled = pool_pings([parse_ping(_ping_text(a, 5)), parse_ping(_ping_text(b, 2)),
                         parse_ping(_ping_text([], 3))])  # fmt: skip
    assert pooled is not None
    assert (pooled["sent"], pooled["received"]) == (10, 6)
    assert pooled["loss_pct"] == pytest.approx(40.0)
    rtt = pooled["rtt_ms"]
    assert rtt["min"] == 0.4 and rtt["max"] == 12.0
    assert rtt["avg"] == pytest.approx(statistics.fmean(a + b), abs=1e-3)
    assert rtt["mdev"] == pytest.approx(statistics.pstdev(a + b), abs=1e-3)
    assert pool_pings([]) is None
    lost = pool_pings([parse_ping(_ping_text([], 4))])
    assert lost == {"sent": 4, "received": 0, "loss_pct": 100.0, "rtt_ms": None}


# iperf3 3.12's JSON "end" of a UDP run at -b 0 with 200-byte datagrams, where the receiver lost
# many (recorded on loopback): sum_received counts what arrived, its "packets" only up to the
# highest sequence number received.
UDP_END = {
    "sum": {"start": 0, "end": 1.001564, "seconds": 1.001564, "bytes": 62274000,
            "bits_per_second": 497483583.38, "jitter_ms": 0.00035, "lost_packets": 135449,
            "packets": 311370, "lost_percent": 43.500979542023956, "sender": True},
    "sum_sent": {"start": 0, "end": 1.001424, "seconds": 1.001424, "bytes": 62274000,
                 "bits_per_second": 497483583.38, "jitter_ms": 0, "lost_packets": 0, "packets": 311370,
                 "lost_percent": 0, "sender": True},
    "sum_received": {"start": 0, "end": 1.001564, "seconds": 1.001564, "bytes": 34986400,
                     "bits_per_second": 279454133.73, "jitter_ms": 0.00035, "lost_packets": 135449,
                     "packets": 310381, "lost_percent": 43.500979542023956, "sender": False},
}  # fmt: skip


def test_udp_figures_count_the_datagrams_that_arrived_against_those_sent() -> None:
    f = udp_figures(UDP_END, 200)
    assert f["sent"] == 311370 and f["received"] == 174932 == 310381 - 135449
    assert f["loss_pct"] == pytest.approx(100 * (311370 - 174932) / 311370)
    assert f["iperf3_lost_pct"] == pytest.approx(43.500979542023956)
    assert f["received_kpps"] == pytest.approx(174932 / 1.001564 / 1e3)
    assert f["received_mbit_s"] == pytest.approx(279.454, abs=1e-3)  # iperf3's own figure
    assert f["sent_kpps"] == pytest.approx(311370 / 1.001424 / 1e3)
    assert f["bytes"] == 34986400
    # Without sum_sent and sum_received (iperf3 before 3.10): the sum's packets less the lost.
    old = udp_figures({"sum": UDP_END["sum_received"] | {"packets": 311370}}, 200)
    assert old["sent"] == 311370 and old["received"] == 311370 - 135449


def test_tcp_figures_are_the_receivers_rate_and_the_senders_retransmits() -> None:
    end = {"sum_received": {"bits_per_second": 2.5e9, "bytes": 3_000_000_000},
           "sum_sent": {"bits_per_second": 2.6e9, "bytes": 3_100_000_000, "retransmits": 7}}  # fmt: skip
    assert tcp_figures(end) == {"gbit_s": 2.5, "bytes": 3_000_000_000, "retransmits": 7}


class FakeLab:
    dst = "2001:db8:b::1"


class FakeRunner:
    """The parts of battery.py's Runner the load rows use; iperf3 and ping are canned replies."""

    def __init__(self, *, fail_udp: bool = False) -> None:
        self.plan = replace(QUICK, ping_load_seconds=1, ping_load_margin=0.05, ping_load_interval=0.1)
        self.pl = FakeLab()
        self.errors: list[str] = []
        self.calls: list[list[str]] = []
        self.launched = self.returned = 0.0
        self.fail_udp = fail_udp
        self.counter: Counter[str] = Counter()

    def log(self, msg: str) -> None:
        pass

    def fail(self, what: str, e: BaseException | str) -> None:
        self.errors.append(f"{what}: {e}")

    def iperf_server(self, restart: bool = False) -> None:
        pass

    def drops(self) -> Counter[str]:
        return Counter(self.counter)

    def dropped_since(self, before: Counter[str] | None) -> dict[str, int] | None:
        return None if before is None else drops_between(before, self.drops())

    def iperf(self, extra: list[str], seconds: int) -> dict[str, Any]:
        self.calls.append(list(extra))
        self.launched = time.time()
        self.returned = self.launched + seconds + 0.01  # as if it had run (nothing waits here)
        if "-u" in extra:
            if self.fail_udp:
                raise LabError("iperf3: the server is busy")
            self.counter["gateway-a nfqueue_dropped"] += 5
            return {"end": UDP_END}
        return {"end": {"sum_received": {"bits_per_second": 1e9, "bytes": 10**8},
                        "sum_sent": {"retransmits": 3}}}  # fmt: skip

    def exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        count = int(argv[argv.index("-c") + 1])
        return subprocess.CompletedProcess(argv, 0, _ping_text([0.5] * count, count), "")


def test_the_load_rows_on_a_runner() -> None:
    run = FakeRunner()
    res: dict[str, Any] = {}
    load_tests(run, res)  # type: ignore[arg-type]
    assert run.errors == []
    pt = res["ping_under_tcp"]
    (r,) = pt["runs"]  # quick: one run of each
    assert pt["count"] == 9 and r["sent"] == 9 and pt["ping"]["loss_pct"] == 0.0
    assert r["ping_from_s"] >= 0 and r["drops"] == {} and r["gbit_s"] == 1.0
    ping = next(c for c in run.calls if c[:1] == ["ping"])
    assert ping[ping.index("-i") + 1] == "0.1" and ping[-1] == FakeLab.dst
    assert res["tcp_parallel"]["gbit_s"]["median"] == 1.0 and ["-P", "4"] in run.calls
    # UDP at full rate: the larger datagrams first, the results in the plan's order.
    udp = [c for c in run.calls if "-u" in c]
    assert [c[c.index("-l") + 1] for c in udp] == ["1200", "200"]
    assert all(c[c.index("-b") + 1] == "0" for c in udp)
    assert [u["datagram_bytes"] for u in res["udp_full"]] == [200, 1200]
    assert res["udp_full"][0]["runs"][0]["drops"] == {"gateway-a nfqueue_dropped": 5}


def test_a_failed_run_is_an_error_and_leaves_the_row_empty() -> None:
    run = FakeRunner(fail_udp=True)
    res: dict[str, Any] = {}
    load_tests(run, res)  # type: ignore[arg-type]
    assert run.errors == ["udp full rate 1200 B run 1: iperf3: the server is busy",
                          "udp full rate 200 B run 1: iperf3: the server is busy"]  # fmt: skip
    assert res["udp_full"][0]["runs"] == [] and res["udp_full"][0]["received_kpps"] is None


def _stats(*xs: float) -> dict[str, Any]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _path(idle: float, avg: float, mx: float, loss: float, kpps: float) -> dict[str, Any]:
    rtt = {"min": 0.1, "avg": avg, "max": mx, "mdev": 0.2}
    udp = [{"datagram_bytes": n, "seconds": 2, "runs": [{"drops": {"host-b Udp6RcvbufErrors": 4}}],
            "received_mbit_s": _stats(kpps * n * 8e-3), "received_kpps": _stats(kpps),
            "sent_kpps": _stats(300.0), "loss_pct": _stats(60.0, 62.5), "bytes": 1}
           for n in (200, 1200)]  # fmt: skip
    return {
        "errors": [], "ping": {"sent": 10, "received": 10, "loss_pct": 0.0, "rtt_ms": dict(rtt, avg=idle)},
        "flood": [], "http": [], "tcp": {"gbit_s": _stats(1.0), "retransmits": _stats(0)}, "udp": None,
        "host": None,
        "ping_under_tcp": {"runs": [{"drops": {}}], "ping": {"sent": 40, "received": 40, "loss_pct": loss,
                                                            "rtt_ms": rtt}, "gbit_s": _stats(0.9, 1.1)},
        "tcp_parallel": {"streams": 4, "gbit_s": _stats(1.5), "retransmits": _stats(12)},
        "udp_full": udp,
    }  # fmt: skip


def _results(**paths: dict[str, Any]) -> dict[str, Any]:
    plan = {"mode": "quick", "rotation_time": 2.0, "ping_count": 10, "ping_interval": 0.2, "floods": [],
            "http_sizes": [], "udp_rate_mbit": 100, "udp_len": 1200, "udp_seconds": 1, "udp_runs": 1,
            "tcp_seconds": 1, "tcp_runs": 1, "rotation_streams": [], "load": True, "load_runs": 1,
            "ping_load_seconds": 3, "ping_load_interval": 0.05, "ping_load_margin": 0.5,
            "udp_full_lens": [200, 1200], "udp_full_seconds": 2, "parallel_streams": 4,
            "parallel_seconds": 2}  # fmt: skip
    return {
        "schema": "mt6d-bench/1",
        "machine": {"date": "d", "os": "o", "kernel": "k", "cpu_model": "c", "cores": 2, "memory_mb": 1,
                    "python": "3", "loadavg_start": [0.0, 0.0, 0.0], "loadavg_end": [0.0, 0.0, 0.0],
                    "tools": {}},
        "plan": plan, "paths": paths, "rotation": None, "rekey": None, "targets": [], "duration_s": 1.0,
    }  # fmt: skip


def _by_name(tg: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in tg}


def test_the_load_targets() -> None:
    res = _results(mt6d=_path(0.6, 2.0, 9.0, 0.0, 41.0), openvpn=_path(0.4, 5.0, 27.0, 0.0, 40.0),
                   **{"wireguard-go": _path(0.6, 3.0, 28.0, 0.0, 39.0)})  # fmt: skip
    tg = _by_name(targets(res))
    t = tg["ping during TCP: average <= the lower of OpenVPN's and wireguard-go's"]
    assert (t["mt6d"], t["reference"], t["met"]) == (2.0, 3.0, True)
    t = tg["ping during TCP: max < 2 x OpenVPN's"]
    assert (t["mt6d"], t["reference"], t["met"]) == (9.0, 54.0, True)
    assert tg["ping during TCP: no loss"]["met"] is True
    t = tg["UDP at full rate, 200 B: received packets/s >= OpenVPN's"]
    assert (t["mt6d"], t["reference"], t["unit"], t["met"]) == (41.0, 40.0, "kpps", True)
    t = tg["idle ping average (standard ping) <= OpenVPN's (stretch)"]
    assert (t["mt6d"], t["reference"], t["met"]) == (0.6, 0.4, False)

    res["paths"]["mt6d"] = _path(0.6, 4.0, 60.0, 2.5, 20.0)
    tg = _by_name(targets(res))
    load = [k for k in tg if k.startswith(("ping during TCP", "UDP at full rate"))]
    assert len(load) == 4 and not any(tg[k]["met"] for k in load)
    # Without OpenVPN in the run the references are unknown, and so is whether a target is met.
    del res["paths"]["openvpn"]
    tg = _by_name(targets(res))
    assert tg["ping during TCP: max < 2 x OpenVPN's"]["met"] is None
    assert tg["ping during TCP: average <= the lower of OpenVPN's and wireguard-go's"]["reference"] == 3.0
    # Without the load rows (--no-load) there are no load targets.
    res["plan"]["load"] = False
    assert not [t for t in targets(res) if "during TCP" in t["target"] or "full rate" in t["target"]]


def test_the_report_has_the_load_rows() -> None:
    res = _results(none=_path(0.05, 0.1, 0.3, 0.0, 150.0), mt6d=_path(0.6, 2.0, 9.0, 0.0, 41.0))
    res["paths"]["none"]["udp_full"] = []  # as if the path had failed before the load rows
    res["targets"] = targets(res)
    md = markdown(res)
    row = "| ping every 0.05 s during iperf3 TCP 3 s x1: rtt ms | 0.100 (0.100-0.300) | 2.000 (0.100-9.000) |"
    assert row in md
    assert "| ping during TCP: loss % | 0.00 | 0.00 |" in md
    assert "| ping during TCP: the TCP transfer, Gbit/s | 1.000 (0.900-1.100) | 1.000 (0.900-1.100) |" in md
    assert "| ping during TCP: drops (where) | none | none |" in md
    assert "| iperf3 UDP full rate (-b 0), 200 B, 2 s x1: received Mbit/s | - | 65.6 |" in md
    assert "| UDP full rate, 200 B: received thousand packets/s | - | 41.0 |" in md
    assert "| UDP full rate, 1200 B: loss % (of the datagrams sent) | - | 61.25 (60.00-62.50) |" in md
    assert "| UDP full rate, 1200 B: drops (where) | - | host-b Udp6RcvbufErrors 4 |" in md
    assert "| iperf3 TCP -P 4, 2 s x1: Gbit/s | 1.500 | 1.500 |" in md
    assert "| iperf3 TCP -P 4: retransmits | 12 | 12 |" in md
    assert "Load rows, run last on each path" in md
    assert "| ping during TCP: no loss | 0.000 % | 0.000 % | yes |" in md
    res["plan"]["load"] = False  # --no-load
    res["targets"] = targets(res)
    md = markdown(res)
    assert "during TCP" not in md and "full rate" not in md and "Load rows" not in md


def test_a_drops_cell_of_several_runs() -> None:
    assert runs_drops_cell([{"drops": {"a x": 1}}, {"drops": {"a x": 2, "b y": 1}}]) == "a x 3, b y 1"
    assert runs_drops_cell([{"drops": {}}]) == "none"
    assert runs_drops_cell([{"drops": {}}, {"drops": None}]) == "-"  # a reading failed
    assert runs_drops_cell([]) == "-"  # no run


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_the_load_chart_is_drawn(tmp_path: Path) -> None:
    res = _results(mt6d=_path(0.6, 2.0, 9.0, 0.0, 41.0), openvpn=_path(0.4, 5.0, 27.0, 0.0, 40.0))
    written = charts(res, tmp_path)
    assert "load.png" in written
    assert (tmp_path / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res["plan"]["load"] = False  # --no-load
    (tmp_path / "no-load").mkdir()
    assert "load.png" not in charts(res, tmp_path / "no-load")


def test_bench_refuses_an_unknown_setting_before_anything_runs(capsys: Any) -> None:
    """mt6d-bench --set takes the supervisor's SECTION.KEY=VALUE and checks the key first."""
    from mt6d_mp.bench import cli
    from mt6d_mp.errors import EXIT_BAD_ARGS

    assert cli.main(["--quick", "--set", "tunnel.no_such_key=1"]) == EXIT_BAD_ARGS
    assert "no_such_key" in capsys.readouterr().err
