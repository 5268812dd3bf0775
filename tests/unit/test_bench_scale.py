"""The scale section's arithmetic and report (mt6d_mp/bench/scale.py), on made-up points."""

from __future__ import annotations

from typing import Any

from mt6d_mp.bench import scale


def point(streams: int, median_s: float, private_kb: int) -> dict[str, Any]:
    g = {"hashed_addresses": 8 * streams, "firewall_rules": 40 + 4 * streams,
         "route_set_members": 8 * streams, "worker_processes": min(streams, 8),
         "private_kb": private_kb}
    return {"streams": streams, "shards": min(streams, 8), "error": None,
            "rotation_s": {"median": median_s, "max": 2 * median_s, "min": median_s, "n": 10},
            "rotation_cpu_s": {"median": median_s / 4, "max": median_s / 2, "n": 10},
            "per_stream_ms": {"median": median_s * 1e3 / streams, "max": 2 * median_s * 1e3 / streams},
            "start_keyed_s": 1.0, "stop_s": 0.5, "ping": {"streams": 8, "sent": 480, "received": 480},
            "gateways": {"gateway-a": g, "gateway-b": g}}


def test_the_sample_spreads_over_every_stream_and_takes_all_of_few() -> None:
    assert scale._sample(3, 8) == [0, 1, 2]
    got = scale._sample(1024, 8)
    assert len(got) == 8 and got[0] == 0 and got[-1] == 1023 and got == sorted(set(got))


def test_ratios_and_report(monkeypatch: Any) -> None:
    made = {8: point(8, 0.004, 100_000), 32: point(32, 0.016, 101_000),
            1024: point(1024, 0.640, 150_000)}
    monkeypatch.setattr(scale, "scale_point", lambda n, shards, observe, progress: made[n])
    res = scale.bench_scale(lambda line: None, counts=(8, 32, 1024))
    assert res["per_stream_ratio_to_32"] == 1.25  # 0.625 ms / 0.5 ms
    assert res["memory_ratio_to_one_stream_per_shard"] == 1.5
    md = scale.markdown(res, ["scale.png"])
    assert "| 1024 | 8 | 640.0 / 1280.0 | 160.0 | 0.625 | 8192 |" in md
    assert "largest count over 32 streams: 1.25" in md and "(one per shard): 1.50" in md


def test_a_failed_point_is_reported_and_left_out_of_the_ratios(monkeypatch: Any) -> None:
    made = {32: point(32, 0.016, 1), 256: {"streams": 256, "shards": 8, "error": "LabError: x"}}
    monkeypatch.setattr(scale, "scale_point", lambda n, shards, observe, progress: made[n])
    res = scale.bench_scale(lambda line: None, counts=(32, 256))
    assert res["per_stream_ratio_to_32"] is None
    assert "| 256 | 8 | failed: LabError: x |" in scale.markdown(res, [])
