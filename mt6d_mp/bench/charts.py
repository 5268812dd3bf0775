"""PNG charts of a run, in the style of the thesis's figures 5.22-5.24.

Flow of :func:`charts`: for each chart (latency, loss, throughput, host, rotation; one function
each, in that order) gather the series per path (value, low, high) from the results, draw them
as grouped bars with whiskers (:func:`_grouped`) or, for the rotation, as lines against the
number of streams, and save the figure into the output directory. matplotlib is imported only
here, when charts are drawn (the ``bench`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mt6d_mp.bench.plan import PATHS
from mt6d_mp.bench.report import size_label
from mt6d_mp.bench.results import dig, flood_of

COLOURS = {"none": "#7f7f7f", "mt6d": "#d62728", "openvpn": "#1f77b4", "wireguard-go": "#2ca02c"}


Triple = tuple[float | None, float | None, float | None]  # (value, low, high) of one bar
Series = dict[str, list[Triple]]  # path -> one bar per group


def charts(results: dict[str, Any], out: Path) -> list[str]:
    """PNG charts in the style of the thesis's figures 5.22-5.24; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    for name, draw in (
        ("latency.png", _latency),
        ("loss.png", _loss),
        ("throughput.png", _throughput),
        ("host.png", _host),
        ("rotation.png", _rotation),
    ):
        fig = draw(plt, results)
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def _grouped(
    ax: Any,
    groups: list[str],
    series: Series,
    ylabel: str,
    title: str,
    digits: int = 2,
    log: bool = False,
) -> None:
    """Bars: one group per x label, one bar per path; (value, low, high) with whiskers."""
    if log:
        ax.set_yscale("log")
    width = 0.8 / max(1, len(series))
    for j, (path, vals) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ys = [v if v is not None and (v > 0 or not log) else math.nan for v, _, _ in vals]
        lo = [max(0.0, (v - low)) if v is not None and low is not None else 0.0 for v, low, _ in vals]
        hi = [max(0.0, (high - v)) if v is not None and high is not None else 0.0 for v, _, high in vals]
        bars = ax.bar(
            xs,
            ys,
            width,
            label=path,
            color=COLOURS.get(path),
            yerr=[lo, hi] if any(lo) or any(hi) else None,
            capsize=3,
            error_kw={"elinewidth": 0.8, "alpha": 0.7},
        )
        _label_bars(ax, bars, vals, digits)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _label_bars(ax: Any, bars: Any, vals: list[Triple], digits: int) -> None:
    """Each drawn bar's value above it."""
    for b, (v, _, _) in zip(bars, vals, strict=True):
        if not math.isfinite(b.get_height()):
            continue
        ax.annotate(
            "n/a" if v is None else f"{v:.{digits}f}",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
            xytext=(0, 2),
            textcoords="offset points",
        )


def _st(s: dict[str, Any] | None, scale: float = 1.0) -> Triple:
    """A summary (median, min, max) as a bar."""
    if not s:
        return (None, None, None)
    return (s["median"] * scale, s["min"] * scale, s["max"] * scale)


def _rt(d: dict[str, Any] | None) -> Triple:
    """A ping summary as a bar: the average, whiskers +-mdev."""
    r = dig(d, "rtt_ms")
    if not r:
        return (None, None, None)
    return (r["avg"], max(0.0, r["avg"] - r["mdev"]), r["avg"] + r["mdev"])


def _one(x: float | None) -> Triple:
    """A single figure as a bar without whiskers."""
    return (x, x, x)


def _paths(results: dict[str, Any]) -> list[str]:
    return [p for p in PATHS if p in results["paths"]]


def _latency(plt: Any, results: dict[str, Any]) -> Any:
    P, plan = results["paths"], results["plan"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    groups = [f"ping {plan['ping_count']}\nx {plan['ping_interval']:g} s"] + [
        f"flood {n}" for n in plan["floods"]
    ]
    series = {
        p: [_rt(P[p]["ping"])] + [_rt(flood_of(P[p], n)) for n in plan["floods"]] for p in _paths(results)
    }
    _grouped(axes[0], groups, series, "round-trip time, ms", "Ping latency (average, whiskers +-mdev)", 3)
    series = {p: [_st(dig(P[p], "udp", "jitter_ms"))] for p in _paths(results)}
    _grouped(
        axes[1],
        [f"UDP {plan['udp_rate_mbit']} Mbit/s"],
        series,
        "jitter, ms",
        "UDP jitter (median, min-max)",
        3,
    )
    return fig


def _loss(plt: Any, results: dict[str, Any]) -> Any:
    P, plan = results["paths"], results["plan"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    groups = ["ping"] + [f"flood {n}" for n in plan["floods"]] + [f"UDP {plan['udp_rate_mbit']} Mbit/s"]
    series = {
        p: [_one(dig(P[p], "ping", "loss_pct"))]
        + [_one(dig(flood_of(P[p], n), "loss_pct")) for n in plan["floods"]]
        + [_st(dig(P[p], "udp", "loss_pct"))]
        for p in _paths(results)
    }
    _grouped(ax, groups, series, "packet loss, %", "Packet loss (UDP: median, min-max)", 2)
    return fig


def _throughput(plt: Any, results: dict[str, Any]) -> Any:
    P, plan = results["paths"], results["plan"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 3]})
    series = {p: [_st(dig(P[p], "tcp", "gbit_s"))] for p in _paths(results)}
    _grouped(
        axes[0],
        [f"iperf3 TCP {plan['tcp_seconds']} s"],
        series,
        "Gbit/s (log scale)",
        "TCP throughput (median, min-max)",
        log=True,
    )
    groups = [f"HTTP {size_label(s)}" for s in plan["http_sizes"]]
    series = {
        p: [_st(dig(P[p], "http", i, "mbyte_s")) for i in range(len(plan["http_sizes"]))]
        for p in _paths(results)
    }
    _grouped(
        axes[1],
        groups,
        series,
        "MB/s (log scale)",
        "HTTP download, curl from nginx (median, min-max)",
        1,
        log=True,
    )
    return fig


def _host(plt: Any, results: dict[str, Any]) -> Any:
    P = results["paths"]
    tunnels = [p for p in _paths(results) if P[p]["host"]]
    if not tunnels:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    series = {
        p: [_one(dig(P[p], "host", "cpu_s_per_gb_tcp")), _one(dig(P[p], "host", "cpu_s_per_gb_all"))]
        for p in tunnels
    }
    _grouped(
        axes[0],
        ["iperf3 TCP", "whole run"],
        series,
        "CPU seconds per GB",
        "CPU (user+system) of the tunnel processes, both gateways",
        1,
    )
    keys = ("private_mb_per_gateway_start", "private_mb_per_gateway_end", "uss_mb_per_gateway_end",
            "pss_mb_per_gateway_end")  # fmt: skip
    series = {p: [_one(dig(P[p], "host", k)) for k in keys] for p in tunnels}
    _grouped(
        axes[1],
        ["private, start", "private, end", "sum of USS, end", "sum of PSS, end"],
        series,
        "MB",
        "Private memory per gateway (max of A and B)",
        1,
    )
    return fig


def _rotation(plt: Any, results: dict[str, Any]) -> Any:
    rot = results.get("rotation")
    if not rot or not rot["in_process"]:
        return None
    plan = results["plan"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, scale, colour in (
        ("in_process", "in process (RouteList.advance)", 1e3, "#9467bd"),
        ("system", "running supervisor", 1e3, "#d62728"),
    ):
        pts = [(r["streams"], r["seconds"]) for r in rot[key] if r.get("seconds")]
        if not pts:
            continue
        xs = [x for x, _ in pts]
        med = [s["median"] * scale for _, s in pts]
        lo = [(s["median"] - s["min"]) * scale for _, s in pts]
        hi = [(s["max"] - s["median"]) * scale for _, s in pts]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label, color=colour)
        ax.plot(
            xs,
            [med[0] * x / xs[0] for x in xs],
            ls=":",
            color=colour,
            alpha=0.6,
            label=f"linear from {xs[0]} stream(s), {key.replace('_', ' ')}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(plan["rotation_streams"]))
    ax.set_xticklabels([str(x) for x in plan["rotation_streams"]])
    ax.set_xlabel("streams")
    ax.set_ylabel("ms per rotation (median, min-max)")
    ax.set_title("MT6D rotation cost")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig
