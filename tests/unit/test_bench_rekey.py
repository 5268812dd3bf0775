"""The benchmark's rekey section: what it reads from logs, status replies and iperf3, and how it reports it.

Pure functions on recorded text and numbers; the lab run itself is tests/lab/test_bench.py.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp.bench import (
    KeyEvent,
    counter_growth,
    dips,
    exchange_samples,
    interval_rates,
    key_events,
    last_handshake,
    markdown,
    openvpn_times,
    parse_uapi,
    rekey_errors,
    rekeys_in,
)
from mt6d_mp.bench.charts import charts

# A gateway's supervisor log around two rekeys (mt6d_mp/logs.py's format); in the second, both
# ends started an exchange within a round trip and both exchanges went through (phases 4 and 5).
LOG_A = """\
2026-12-06 19:03:44,186 INFO proc=supervisor pid=1 mt6d.supervisor: event=keyx_started phase=0 stream=s
2026-12-06 19:03:44,206 INFO proc=supervisor pid=1 mt6d.supervisor: event=key_phase_committed phase=2 stream=s
2026-12-06 19:03:44,206 INFO proc=supervisor pid=1 mt6d.supervisor: event=key_phase_sending phase=2 stream=s
2026-12-06 19:03:47,657 INFO proc=supervisor pid=1 mt6d.supervisor: event=keyx_started phase=2 stream=s
2026-12-06 19:03:47,671 INFO proc=supervisor pid=1 mt6d.supervisor: event=key_phase_committed phase=3 stream=s
2026-12-06 19:03:47,873 INFO proc=supervisor pid=1 mt6d.supervisor: event=key_phase_sending phase=3 stream=s
2026-12-06 19:03:51,036 INFO proc=supervisor pid=1 mt6d.supervisor: event=key_phase_dropped phase=2 stream=s
2026-12-06 19:03:51,680 INFO proc=supervisor pid=1 mt6d.supervisor: event=key_phase_committed phase=4 stream=s
2026-12-06 19:03:51,680 INFO proc=supervisor pid=1 mt6d.supervisor: event=key_phase_sending phase=4 stream=s
2026-12-06 19:03:51,686 INFO proc=supervisor pid=1 mt6d.supervisor: event=key_phase_committed phase=5 stream=s
2026-12-06 19:03:51,888 INFO proc=supervisor pid=1 mt6d.supervisor: event=key_phase_sending phase=5 stream=s
"""
LOG_B = """\
2026-12-06 19:03:47,686 INFO proc=supervisor pid=2 mt6d.supervisor: event=key_phase_committed phase=3 stream=s
2026-12-06 19:03:47,686 INFO proc=supervisor pid=2 mt6d.supervisor: event=key_phase_sending phase=3 stream=s
2026-12-06 19:03:51,668 INFO proc=supervisor pid=2 mt6d.supervisor: event=key_phase_committed phase=4 stream=s
2026-12-06 19:03:51,702 INFO proc=supervisor pid=2 mt6d.supervisor: event=key_phase_committed phase=5 stream=s
2026-12-06 19:03:51,702 INFO proc=supervisor pid=2 mt6d.supervisor: event=key_phase_sending phase=5 stream=s
"""


def _t(clock: str) -> float:
    """A log time of 2026-12-06 as time.time() would have given it (the log is in local time)."""
    return dt.datetime.strptime(f"2026-12-06 {clock}", "%Y-%m-%d %H:%M:%S.%f").timestamp()


def test_key_events_are_the_commits_and_switches_with_their_times() -> None:
    events = key_events(LOG_A, "a")
    assert len(events) == 8  # keyx_started and key_phase_dropped are not phase changes
    assert events[0] == KeyEvent(_t("19:03:44.206"), "a", "committed", 2)
    assert events[1] == KeyEvent(_t("19:03:44.206"), "a", "sending", 2)
    assert {e.event for e in events} == {"committed", "sending"}


def test_one_rekey_per_new_phase_at_its_first_commit_relative_to_the_start() -> None:
    events = key_events(LOG_A, "a") + key_events(LOG_B, "b")
    start = _t("19:03:46.000")
    rekeys = rekeys_in(events, start, start + 8.0)
    # Phase 2 (at start-up, more than the window before) is not in; 3, 4 and 5 are.
    assert [r["phase"] for r in rekeys] == [3, 4, 5]
    r3 = rekeys[0]
    assert r3["at"] == pytest.approx(1.671)
    assert r3["committed"] == pytest.approx({"a": 1.671, "b": 1.686})
    assert r3["sending"] == pytest.approx({"a": 1.873, "b": 1.686})
    r4 = rekeys[1]
    assert r4["at"] == pytest.approx(5.668)  # B committed phase 4 first
    assert r4["sending"] == pytest.approx({"a": 5.680})
    # A rekey within the window before the start still touches the transfer's first second.
    assert [r["phase"] for r in rekeys_in(events, _t("19:03:48.500"), _t("19:03:50.000"))] == [3]
    assert rekeys_in(events, _t("19:03:53.000"), _t("19:03:55.000")) == []


IPERF = {
    "intervals": [{"sum": {"start": 0.0, "end": 0.5, "bits_per_second": 3e9}}],
    "server_output_json": {
        "intervals": [
            {"sum": {"start": 0.0, "end": 0.5, "bits_per_second": 1.0e9}},
            {"sum": {"start": 0.5, "end": 1.0, "bits_per_second": 2.0e9}},
            {"sum": {"start": 1.0, "end": 1.0004, "bits_per_second": 9.9e9}},  # the tail
        ]
    },
}


def test_intervals_are_the_receivers_when_the_run_has_them_and_short_ones_are_dropped() -> None:
    assert interval_rates(IPERF, 0.25) == ([[0.0, 0.5, 1.0], [0.5, 1.0, 2.0]], "receiver")
    sender = {"intervals": IPERF["intervals"]}
    assert interval_rates(sender, 0.25) == ([[0.0, 0.5, 3.0]], "sender")


def test_the_dip_is_the_lowest_interval_in_the_second_after_a_rekey_against_the_median() -> None:
    rates = [1.0, 2.0, 2.0, 1.2, 2.0, 2.0, 2.0, 1.8, 2.0, 0.3]  # first: slow start; last: cut short
    intervals = [[i * 0.5, i * 0.5 + 0.5, g] for i, g in enumerate(rates)]
    res = dips(intervals, [{"phase": 3, "at": 1.3}])
    assert res["median_interval_gbit_s"] == 2.0  # of the eight in between
    (r,) = res["rekeys"]
    # [1.3, 2.3] overlaps the intervals from 1.0, 1.5 and 2.0: 2.0, 1.2, 2.0
    assert r["phase"] == 3 and r["lowest_gbit_s"] == 1.2 and r["ratio"] == pytest.approx(0.6)
    assert res["lowest_elsewhere_gbit_s"] == 1.8
    assert res["lowest_elsewhere_ratio"] == pytest.approx(0.9)
    none = dips(intervals, [])
    assert none["rekeys"] == [] and none["lowest_elsewhere_gbit_s"] == 1.2
    empty = dips([], [{"phase": 1, "at": 0.0}])
    assert empty["median_interval_gbit_s"] is None and empty["rekeys"][0]["ratio"] is None


def _status(last: float | None, **keyx: int) -> dict[str, Any]:
    return {"streams": [{"name": "s", "keyx_last_seconds": last, "keyx": keyx}]}


def test_each_new_keyx_last_seconds_is_one_exchange() -> None:
    replies = [
        None,  # a poll that timed out
        _status(0.004, rekeys=1),  # the reference: an exchange from before
        _status(0.004, rekeys=2),  # the peer's exchange: this end's figure stays
        _status(0.0061, rekeys=3),
        None,
        _status(0.0061, rekeys=3),
        _status(0.012, rekeys=4, keyx_retries=1),
    ]
    assert exchange_samples(replies) == [0.0061, 0.012]
    assert exchange_samples([_status(None), _status(0.003)]) == [0.003]  # none before, then one
    assert counter_growth(replies) == {"rekeys": 3, "keyx_retries": 1}
    assert counter_growth([None]) == {}


OPENVPN_LOG = """\
1796583725.079084 1 Using certificate fingerprint to verify peer (no CA option set).
1796583725.083590 14000003 TLS: Initial packet from [AF_INET6]2001:db8:b::fe:1194, sid=6a1e5686 6ddc940f
1796583725.085934 14000002 Control Channel: TLSv1.3, cipher TLSv1.3 TLS_AES_256_GCM_SHA384
1796583725.085942 1 [gwb] Peer Connection Initiated with [AF_INET6]2001:db8:b::fe:1194
1796583726.919715 1 Initialization Sequence Completed
1796583729.259485 14000003 TLS: soft reset sec=4/4 bytes=0/-1 pkts=0/0
1796583729.261498 14000002 VERIFY OK: depth=0, CN=gwb
1796583729.261855 14000002 Control Channel: TLSv1.3, cipher TLSv1.3 TLS_AES_256_GCM_SHA384
1796583733.425601 14000002 Control Channel: TLSv1.3, cipher TLSv1.3 TLS_AES_256_GCM_SHA384
1796583737.825050 14000003 TLS: soft reset sec=4/4 bytes=0/-1 pkts=0/0
1796583737.828293 14000002 Control Channel: TLSv1.3, cipher TLSv1.3 TLS_AES_256_GCM_SHA384
"""


def test_openvpn_times_from_a_machine_readable_log() -> None:
    t = openvpn_times(OPENVPN_LOG)
    assert t["handshake_s"] == pytest.approx(0.002352, abs=1e-6)
    assert t["startup_s"] == pytest.approx(1.840631, abs=1e-6)
    # The renegotiation at 733 was the peer's (no soft reset here): only this end's two count.
    assert t["renegotiations_s"] == pytest.approx([0.002370, 0.003243], abs=1e-6)
    assert openvpn_times("no timestamps here\n") == {
        "handshake_s": None, "startup_s": None, "renegotiations_s": []
    }  # fmt: skip


def test_wireguard_control_socket_replies() -> None:
    reply = parse_uapi(
        "private_key=aa\nlisten_port=51820\npublic_key=bb\nendpoint=[2001:db8:b::fe]:51820\n"
        "last_handshake_time_sec=1796583769\nlast_handshake_time_nsec=910767670\n"
        "public_key=cc\nlast_handshake_time_sec=5\nerrno=0\n\n"
    )
    assert reply["public_key"] == "bb" and reply["errno"] == "0"  # the first peer's
    assert last_handshake(reply) == pytest.approx(1796583769.910767670)
    assert last_handshake(parse_uapi("public_key=bb\nlast_handshake_time_sec=0\n"
                                      "last_handshake_time_nsec=0\n")) is None


def _stats(*xs: float) -> dict[str, Any]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _results() -> dict[str, Any]:
    run = {
        "kind": "rekeying", "gbit_s": 1.8, "interval_source": "receiver",
        "intervals": [[0.0, 0.5, 1.5], [0.5, 1.0, 1.9], [1.0, 1.5, 1.4], [1.5, 2.0, 1.9]],
        "rekeys": [{"phase": 3, "at": 0.9, "committed": {"a": 0.9}, "sending": {"a": 1.1},
                    "lowest_gbit_s": 1.4, "ratio": 0.74}],
        "start_slack_s": 0.017,
    }
    base = dict(run, kind="baseline", rekeys=[], intervals=[[0.0, 0.5, 1.6], [0.5, 1.0, 2.0]])
    summary = {
        "runs": 1, "gbit_s": _stats(1.8), "median_interval_gbit_s": _stats(1.9), "rekeys": 1,
        "dip_gbit_s": _stats(1.4), "dip_ratio": _stats(0.74), "lowest_elsewhere_gbit_s": _stats(1.9),
        "lowest_elsewhere_ratio": _stats(1.0), "start_slack_s": _stats(0.017),
        "counters": {"rekeys": 2, "keyx_started": 1, "keyx_sent_init": 1, "keyx_retries": 1},
    }
    mt6d = {
        "rotation_time": 1.0, "regen_interval": 3.0, "regen_window": 1.0, "iperf_interval_s": 0.5,
        "dip_window_s": 1.0, "labs": {"baseline": "bn0001", "rekeying": "bn0002"},
        "exchange": {"idle": _stats(0.003, 0.005), "load": _stats(0.012, 0.024), "all": None},
        "runs": [base, run], "baseline": dict(summary, rekeys=0, dip_gbit_s=None, dip_ratio=None,
                                              counters={}),
        "rekeying": summary, "errors": [],
    }
    return {
        "schema": "mt6d-bench/1",
        "machine": {"date": "d", "os": "o", "kernel": "k", "cpu_model": "c", "cores": 2, "memory_mb": 1,
                    "python": "3", "loadavg_start": [0.0, 0.0, 0.0], "loadavg_end": [0.0, 0.0, 0.0],
                    "tools": {}},
        "plan": {"mode": "quick", "rotation_time": 2.0, "ping_count": 1, "ping_interval": 0.2, "floods": [],
                 "http_sizes": [], "udp_rate_mbit": 100, "udp_len": 1200, "udp_seconds": 1, "udp_runs": 1,
                 "tcp_seconds": 1, "tcp_runs": 1, "rotation_streams": [], "rekey_seconds": 10,
                 "rekey_runs": 1},
        "paths": {},
        "rotation": None,
        "rekey": {
            "mt6d": mt6d,
            "openvpn": {"lab": "bn0003", "reneg_sec": 4, "observed_s": 9.0, "handshake_s": _stats(0.0018),
                        "startup_s": _stats(0.5, 0.8), "renegotiation_s": None,
                        "error": "no renegotiation logged in 9 s"},
            "wireguard-go": {"lab": "bn0004", "repeats": 3, "handshake_s": _stats(0.001, 0.0012, 0.0013),
                             "error": None},
        },
        "targets": [],
        "duration_s": 1.0,
    }  # fmt: skip


def test_the_report_has_the_rekey_section_and_says_what_was_not_measured() -> None:
    res = _results()
    md = markdown(res)
    assert "## Rekey cost" in md
    idle = "| MT6D | rekey: first INIT to commit (status `keyx_last_seconds`), no traffic | 4.00 | 5.00 | 2 |"
    assert idle in md
    assert "| wireguard-go |" in md and "| 1.20 | 1.30 | 3 |" in md
    # A part that failed is "not measured", with the reason, and listed under Errors.
    assert "not measured: no renegotiation logged in 9 s" in md
    assert "- openvpn handshake: no renegotiation logged in 9 s" in md
    assert rekey_errors(res) == ["openvpn handshake: no renegotiation logged in 9 s"]
    assert "| rekeys during the transfers | 0 | 1 |" in md
    assert "1.400; 74 %" in md
    # Only the unusual exchange counters are listed.
    row = "| exchange retries, collisions, failures, expiries during the transfers | none | keyx_retries 1 |"
    assert row in md
    assert "at most 17.00 ms later" in md
    assert "not measured" in md.lower() and "wireguard-go's own rekey" in md


def test_without_the_section_the_report_has_no_rekey_part() -> None:
    res = _results()
    res["rekey"] = None
    assert "Rekey cost" not in markdown(res)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
@pytest.mark.filterwarnings("ignore:No artists with labels")  # the other charts, with no paths
def test_the_rekey_chart_is_drawn(tmp_path: Path) -> None:
    written = charts(_results(), tmp_path)
    assert "rekey.png" in written
    assert (tmp_path / "rekey.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert math.isfinite((tmp_path / "rekey.png").stat().st_size)
