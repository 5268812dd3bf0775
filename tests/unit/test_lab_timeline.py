"""mt6d-lab metrics' series (mt6d_mp/lab/timeline.py) from the exporter's own text format."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp.lab.timeline import Samples, draw, parse_exposition, timeline
from mt6d_mp.metrics import render


def gateway(uptime: float, epoch: int, bytes_out: int, bytes_in: int, drops: dict[str, int],
            icmp_bytes: int = 0) -> Samples:
    """One scrape of a gateway: the exporter's rendering of a status reply made at ``uptime``."""
    status: dict[str, Any] = {
        "uptime": uptime, "tunnel_mtu": 1452,
        "workers": [{"name": "ha-hb", "state": "running", "bytes_out": bytes_out, "bytes_in": bytes_in,
                     "drops": drops},
                    # not a stream worker: its bytes are not throughput
                    {"name": "icmp", "state": "running", "bytes_out": icmp_bytes, "bytes_in": icmp_bytes,
                     "drops": {"rs_no_link_local": 1}}],
        "streams": [{"name": "ha-hb", "active": {"epoch": epoch}, "key_state": "keyed"}],
    }
    return parse_exposition(render(status))


def test_parse_exposition_reads_names_labels_and_values() -> None:
    samples = parse_exposition(
        '# HELP x y\n# TYPE mt6d_worker_drops_total counter\n'
        'mt6d_worker_drops_total{worker="a\\"b",reason="replay"} 2\nmt6d_tunnel_mtu_bytes 1452\n')
    assert samples == {("mt6d_worker_drops_total", (("reason", "replay"), ("worker", 'a\\"b'))): 2.0,
                       ("mt6d_tunnel_mtu_bytes", ()): 1452.0}
    with pytest.raises(ValueError):
        parse_exposition("mt6d_tunnel_mtu_bytes\n")


def test_timeline_rates_between_renderings_drops_and_rotations() -> None:
    scrapes = [
        (0.0, gateway(10.0, 10, 0, 0, {}, icmp_bytes=5), gateway(20.0, 20, 0, 0, {})),
        (1.0, gateway(11.0, 10, 1000, 0, {}, icmp_bytes=500), gateway(21.0, 20, 0, 900, {"replay": 2})),
        # gateway B had not rendered again: its last rates hold, its next interval is 2 s long
        (2.0, gateway(12.0, 11, 3000, 0, {"stale": 4}), gateway(21.0, 21, 0, 900, {"replay": 2})),
        (3.0, gateway(13.0, 11, 4000, 0, {"stale": 4}), gateway(23.0, 21, 0, 4900, {"replay": 3})),
        # a restarted worker begins its counters at 0 again: its new value counts
        (4.0, gateway(14.0, 12, 500, 0, {"stale": 4}), gateway(24.0, 21, 0, 5900, {"replay": 3})),
    ]
    tl = timeline(scrapes, window=1.0)
    assert tl.t == [1.0, 2.0, 3.0, 4.0]
    assert tl.out_bps == [8000.0, 16000.0, 8000.0, 4000.0]
    assert tl.in_bps == [7200.0, 7200.0, 16000.0, 8000.0]
    assert tl.drops["replay"] == [2.0, 2.0, 0.5, 0.0]
    assert tl.drops["stale"] == [0.0, 4.0, 0.0, 0.0]
    assert tl.drops["rs_no_link_local"] == [0.0, 0.0, 0.0, 0.0]  # both gateways' icmp, unchanged
    assert tl.rotations == [2.0, 4.0]  # gateway A's epoch: 10, 10, 11, 11, 12
    assert tl.dropped == {"replay": 3.0, "stale": 4.0, "rs_no_link_local": 0.0}


def test_a_restarted_supervisor_counts_from_zero_over_its_uptime() -> None:
    scrapes = [(0.0, gateway(50.0, 1, 9000, 0, {}), gateway(50.0, 1, 0, 0, {})),
               (1.0, gateway(2.0, 1, 1000, 0, {}), gateway(51.0, 1, 0, 0, {}))]
    assert timeline(scrapes, window=1.0).out_bps == [4000.0]


def test_rates_over_a_window_even_out_counters_reported_a_second_late() -> None:
    # 1000 bytes/s, but the counter moves in steps that land 0 or 2 s of traffic in a second
    counted = [0, 1000, 1000, 3000, 4000, 4000, 6000, 7000]
    scrapes = [(float(i), gateway(float(i), 1, c, 0, {}), gateway(float(i), 1, 0, 0, {}))
               for i, c in enumerate(counted)]
    assert timeline(scrapes, window=1.0).out_bps == [8000.0, 0.0, 16000.0, 8000.0, 0.0, 16000.0, 8000.0]
    # over 3 s: the first ones over what there is, then steady
    assert timeline(scrapes, window=3.0).out_bps[2:] == [8000.0, 8000.0, 8000.0, 8000.0, 8000.0]


def test_timeline_needs_two_scrapes() -> None:
    one = gateway(1.0, 1, 0, 0, {})
    assert timeline([(0.0, one, one)]).t == []


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_draw_writes_a_png(tmp_path: Path) -> None:
    scrapes = [(float(i), gateway(float(i), i // 2, 1000 * i, 0, {}),
                gateway(float(i), i // 2, 0, 1000 * i, {})) for i in range(6)]
    out = tmp_path / "m.png"
    draw(timeline(scrapes), out, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
