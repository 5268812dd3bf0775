"""mt6d-bench (mt6d_mp.bench) in a reduced quick mode: it runs and writes well-formed results.

Only the paths ``none`` and ``mt6d``, short tests (the load rows included), one stream for the
rotation cost, MT6D's part of the rekey cost. Checks the shape of ``bench.json`` (every key
present, every number finite) and that the markdown and the charts are written and every lab is
gone afterwards. Never a speed threshold.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp import lab as labmod

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

REPO = Path(__file__).resolve().parents[2]

STATS = {"median", "min", "max", "n"}
RTT = {"min", "avg", "max", "mdev"}
PING = {"sent", "received", "loss_pct", "rtt_ms"}
HOST = {
    "processes", "cpu_all", "bytes_all", "cpu_s_per_gb_all", "cpu_tcp", "bytes_tcp", "cpu_s_per_gb_tcp",
    "memory_start", "memory_end", "private_mb_per_gateway_start", "private_mb_per_gateway_end",
    "private_growth_mb_max", "uss_mb_per_gateway_start", "uss_mb_per_gateway_end",
    "pss_mb_per_gateway_end", "uss_growth_mb_max", "peak_rss_mb_both",
}  # fmt: skip
MEMORY = {"group_kb", "uss_kb", "pss_kb", "rss_kb", "peak_rss_kb", "processes"}


def _reject_constant(name: str) -> float:
    raise AssertionError(f"bench.json holds {name}, which is not JSON")


def _numbers(obj: Any, where: str = "$") -> list[tuple[str, float]]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [(where, float(obj))]
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in _numbers(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [n for i, v in enumerate(obj) for n in _numbers(v, f"{where}[{i}]")]
    return []


def _stats(s: Any, where: str) -> None:
    assert isinstance(s, dict) and set(s) == STATS, f"{where}: {s!r}"
    assert s["min"] <= s["median"] <= s["max"], where


def _ping(p: Any, where: str) -> None:
    assert isinstance(p, dict) and set(p) >= PING, f"{where}: {p!r}"
    assert 0 <= p["received"] <= p["sent"] and p["sent"] > 0, where
    assert 0.0 <= p["loss_pct"] <= 100.0, where
    assert set(p["rtt_ms"]) == RTT, where


def _load_rows(p: dict[str, Any], plan: dict[str, Any], name: str) -> None:
    """Ping during TCP, UDP at full rate, TCP with parallel streams (mt6d_mp/bench/load.py)."""
    runs = plan["load_runs"]
    pt = p["ping_under_tcp"]
    assert len(pt["runs"]) == runs and pt["seconds"] == plan["ping_load_seconds"], (name, pt)
    _ping(pt["ping"], f"{name}.ping_under_tcp.ping")
    assert pt["ping"]["sent"] == pt["count"] * runs
    _stats(pt["gbit_s"], f"{name}.ping_under_tcp.gbit_s")
    for r in pt["runs"]:
        _ping(r, f"{name}.ping_under_tcp.runs")
        # The ping lay within the transfer (else the run is an error, and errors are checked).
        assert 0 <= r["ping_from_s"] <= r["ping_to_s"] <= min(pt["seconds"], r["transfer_s"]), (name, r)
        assert r["gbit_s"] > 0 and r["bytes"] > 0, (name, r)
    tp = p["tcp_parallel"]
    assert tp["streams"] == plan["parallel_streams"] and len(tp["runs"]) == runs and tp["bytes"] > 0
    _stats(tp["gbit_s"], f"{name}.tcp_parallel.gbit_s")
    _stats(tp["retransmits"], f"{name}.tcp_parallel.retransmits")
    assert [u["datagram_bytes"] for u in p["udp_full"]] == plan["udp_full_lens"], name
    for u in p["udp_full"]:
        where = f"{name}.udp_full.{u['datagram_bytes']}"
        assert len(u["runs"]) == runs and u["bytes"] > 0, where
        for key in ("received_mbit_s", "received_kpps", "sent_kpps", "loss_pct"):
            _stats(u[key], f"{where}.{key}")
        for r in u["runs"]:
            assert 0 < r["received"] <= r["sent"], (where, r)
            assert 0.0 <= r["loss_pct"] <= 100.0, (where, r)
            assert r["bytes"] == r["received"] * u["datagram_bytes"], (where, r)


def test_bench_quick_none_and_mt6d(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = [
        sys.executable, "-m", "mt6d_mp.bench", "--quick", "--paths", "none,mt6d", "--ping-count", "10",
        "--seconds", "2", "--rotation-streams", "1", "--out", str(out),
        "--set", "tunnel.receive_buffer_kb=1024",  # reaches MT6D's gateways (else they fail)
    ]  # fmt: skip
    proc = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=360, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[" in proc.stdout and "== mt6d" in proc.stdout  # progress lines

    res = json.loads((out / "bench.json").read_text(), parse_constant=_reject_constant)
    assert res["plan"]["mt6d_settings"] == ["tunnel.receive_buffer_kb=1024"]
    assert "set: tunnel.receive_buffer_kb=1024" in (out / "bench.md").read_text()
    for where, x in _numbers(res):
        assert math.isfinite(x), f"{where} = {x}"

    assert res["schema"] == "mt6d-bench/1"
    assert {"schema", "machine", "plan", "paths", "rotation", "rekey", "targets", "duration_s"} <= set(res)
    m = res["machine"]
    for key in ("date", "kernel", "cpu_model", "cores", "python", "loadavg_start", "loadavg_end", "tools"):
        assert m.get(key) is not None, key
    plan = res["plan"]
    assert plan["mode"] == "quick" and plan["paths"] == ["none", "mt6d"]
    assert set(res["paths"]) == {"none", "mt6d"}

    for name, p in res["paths"].items():
        assert p["errors"] == [], (name, p["errors"])
        assert not labmod.namespaces_with_prefix(p["lab"]), f"{name}: lab {p['lab']} left behind"
        _ping(p["ping"], f"{name}.ping")
        assert p["ping"]["sent"] == 10
        assert [f["count"] for f in p["flood"]] == plan["floods"]
        for f in p["flood"]:
            _ping(f, f"{name}.flood")
            assert f["seconds"] > 0
        assert [h["size"] for h in p["http"]] == plan["http_sizes"]
        for h in p["http"]:
            assert h["verified"] is True, (name, h)
            assert len(h["runs"]) == plan["http_repeats"]
            _stats(h["mbyte_s"], f"{name}.http.mbyte_s")
            _stats(h["seconds"], f"{name}.http.seconds")
        assert len(p["tcp"]["runs"]) == plan["tcp_runs"] and p["tcp"]["bytes"] > 0
        _stats(p["tcp"]["gbit_s"], f"{name}.tcp.gbit_s")
        _stats(p["tcp"]["retransmits"], f"{name}.tcp.retransmits")
        assert len(p["udp"]["runs"]) == plan["udp_runs"] and p["udp"]["bytes"] > 0
        _stats(p["udp"]["jitter_ms"], f"{name}.udp.jitter_ms")
        _stats(p["udp"]["loss_pct"], f"{name}.udp.loss_pct")
        _load_rows(p, plan, name)
        # Every loss test says which drop counters grew while it ran ({} if none did).
        udp_full = [r for u in p["udp_full"] for r in u["runs"]]
        for t in [p["ping"], *p["flood"], *p["udp"]["runs"], *p["ping_under_tcp"]["runs"], *udp_full]:
            assert isinstance(t["drops"], dict), (name, t)
            assert all(isinstance(v, int) and v > 0 for v in t["drops"].values()), (name, t)

    assert res["paths"]["none"]["host"] is None  # no tunnel processes to measure
    host = res["paths"]["mt6d"]["host"]
    assert set(host) == HOST
    assert host["processes"]["a"] >= 3 and host["processes"]["b"] >= 3  # supervisor, stream, icmp
    for when in ("memory_start", "memory_end"):
        for side in ("a", "b"):
            mem = host[when][side]
            assert set(mem) == MEMORY and mem["uss_kb"] > 0
            # Pages shared among the gateway's own processes count once in the group figure
            # and in nobody's USS, so the group figure is at least the summed USS, give or take
            # what the live processes allocated between the two readings.
            assert mem["group_kb"] >= mem["uss_kb"] - 2048
    assert host["cpu_all"]["total_s"] > 0 and host["cpu_s_per_gb_tcp"] > 0

    rot = res["rotation"]
    assert [r["streams"] for r in rot["in_process"]] == [1]
    _stats(rot["in_process"][0]["seconds"], "rotation.in_process")
    (sysrot,) = rot["system"]
    assert sysrot["error"] is None and sysrot["samples"] >= 1, sysrot
    assert not labmod.namespaces_with_prefix(sysrot["lab"])
    _stats(sysrot["seconds"], "rotation.system")

    # The rekey cost: MT6D only (the tunnels are not in --paths).
    rk = res["rekey"]
    assert rk["openvpn"] is None and rk["wireguard-go"] is None
    m6 = rk["mt6d"]
    assert m6["errors"] == [], m6["errors"]
    for prefix in m6["labs"].values():
        assert not labmod.namespaces_with_prefix(prefix), f"rekey lab {prefix} left behind"
    assert [r["kind"] for r in m6["runs"]] == ["baseline", "rekeying"] * plan["rekey_runs"]
    _stats(m6["exchange"]["all"], "rekey.exchange.all")  # at least one exchange was timed
    ex = m6["exchange"]
    assert ex["all"]["n"] == sum(ex[k]["n"] for k in ("idle", "load") if ex[k])
    for r in m6["runs"]:
        assert r["gbit_s"] > 0 and r["interval_source"] == "receiver", r
        assert all(iv[0] < iv[1] and iv[2] >= 0 for iv in r["intervals"]), r["intervals"]
        for k in r["rekeys"]:
            assert set(k) == {"phase", "at", "committed", "sending", "lowest_gbit_s", "ratio"}, k
    assert m6["baseline"]["rekeys"] == 0  # regen_interval 0: only the exchange at start
    assert m6["rekeying"]["rekeys"] >= 1  # a rekey every 3-4 s, transfers of rekey_seconds (10)
    _stats(m6["rekeying"]["dip_ratio"], "rekey.rekeying.dip_ratio")

    for t in res["targets"]:
        assert {"target", "mt6d", "reference", "unit", "met"} == set(t)
        assert t["met"] in (True, False, None)

    md = (out / "bench.md").read_text()
    assert "| test | none | mt6d |" in md and "rotation cost" in md and "## Rekey cost" in md
    assert "| drops counted during ping, floods and UDP (where) |" in md
    for row in ("| ping during TCP: loss % |", "| ping during TCP: drops (where) |",
                "| UDP full rate, 200 B: received thousand packets/s |",
                "| UDP full rate, 1200 B: drops (where) |", f"| iperf3 TCP -P {plan['parallel_streams']}, "):
        assert row in md, row
    assert "| ping during TCP: no loss |" in md  # a target
    if importlib.util.find_spec("matplotlib") is not None:
        for png in ("latency.png", "loss.png", "throughput.png", "load.png", "host.png", "rotation.png",
                    "rekey.png"):
            assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
