"""PNG charts of a run, in the style of the thesis's figures 5.22-5.24.

Flow of :func:`charts`: for each chart (latency, loss, throughput, load, host, rotation, rekey;
one function each, in that order) gather the series per path (value, low, high) from the results,
draw them as grouped bars with whiskers (:func:`_grouped`) or, for the rotation, as lines against
the number of streams, for the rekey as bars and the intervals of a transfer over time, and save
the figure into the output directory. matplotlib is imported only
here, when charts are drawn (the ``bench`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mt6d_mp.bench.plan import PATHS
from mt6d_mp.bench.report import size_label, udp_full_of
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
        ("load.png", _load),
        ("host.png", _host),
        ("rotation.png", _rotation),
        ("rekey.png", _rekey),
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


def _load(plt: Any, results: dict[str, Any]) -> Any:
    """The load rows (load.py): ping idle and during TCP, UDP at full rate, TCP with 1 and -P streams."""
    P, plan = results["paths"], results["plan"]
    paths = _paths(results)
    if not plan.get("load") or not any(P[p].get("ping_under_tcp") or P[p].get("udp_full") for p in paths):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    series = {
        p: [_one(dig(P[p], "ping", "rtt_ms", "avg")),
            _one(dig(P[p], "ping_under_tcp", "ping", "rtt_ms", "avg")),
            _one(dig(P[p], "ping_under_tcp", "ping", "rtt_ms", "max"))]
        for p in paths
    }  # fmt: skip
    _grouped(axes[0][0], ["idle ping: avg", "during TCP: avg", "during TCP: max"], series,
             "round-trip time, ms (log scale)",
             f"Ping every {plan['ping_load_interval']:g} s during iperf3 TCP, beside the standard ping", 2,
             log=True)  # fmt: skip
    sizes = list(plan["udp_full_lens"])
    groups = [f"{n} B" for n in sizes]
    series = {p: [_st(dig(udp_full_of(P[p], n), "received_kpps")) for n in sizes] for p in paths}
    _grouped(axes[0][1], groups, series, "thousand packets/s received (log scale)",
             "iperf3 UDP at full offered rate (-b 0): received (median, min-max)", 1, log=True)  # fmt: skip
    series = {p: [_st(dig(udp_full_of(P[p], n), "loss_pct")) for n in sizes] for p in paths}
    _grouped(axes[1][0], groups, series, "loss, % of the datagrams sent",
             "iperf3 UDP at full offered rate: loss (median, min-max)", 1)  # fmt: skip
    k = plan["parallel_streams"]
    series = {p: [_st(dig(P[p], "tcp", "gbit_s")), _st(dig(P[p], "tcp_parallel", "gbit_s"))] for p in paths}
    _grouped(axes[1][1], ["1 stream", f"{k} streams (-P {k})"], series, "Gbit/s (log scale)",
             "iperf3 TCP, one stream and parallel streams (median, min-max)", log=True)  # fmt: skip
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


def _rekey(plt: Any, results: dict[str, Any]) -> Any:
    """Left: one exchange or handshake per path (median, min-max). Right: MT6D's first transfer
    of each lab, interval by interval, with the rekeys marked."""
    rk = results.get("rekey")
    if not rk:
        return None
    m, o, w = rk.get("mt6d"), rk.get("openvpn"), rk.get("wireguard-go")
    bars = [
        ("MT6D rekey\nno traffic", "mt6d", dig(m, "exchange", "idle")),
        ("MT6D rekey\nunder TCP", "mt6d", dig(m, "exchange", "load")),
        ("OpenVPN\nrenegotiation", "openvpn", dig(o, "renegotiation_s")),
        ("OpenVPN first\nhandshake", "openvpn", dig(o, "handshake_s")),
        ("wireguard-go\nhandshake", "wireguard-go", dig(w, "handshake_s")),
    ]
    bars = [b for b in bars if b[2]]
    runs = {kind: next((r for r in dig(m, "runs") or [] if r["kind"] == kind and r["intervals"]), None)
            for kind in ("baseline", "rekeying")}  # fmt: skip
    if not bars and not any(runs.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 3]})
    ax = axes[0]
    if bars:
        pos = list(range(len(bars)))
        med = [s["median"] * 1e3 for _, _, s in bars]
        lo = [(s["median"] - s["min"]) * 1e3 for _, _, s in bars]
        hi = [(s["max"] - s["median"]) * 1e3 for _, _, s in bars]
        drawn = ax.bar(pos, med, 0.6, color=[COLOURS.get(p) for _, p, _ in bars], yerr=[lo, hi], capsize=3,
                       error_kw={"elinewidth": 0.8, "alpha": 0.7})  # fmt: skip
        _label_bars(ax, drawn, [(v, None, None) for v in med], 2)
        ax.set_xticks(pos)
        ax.set_xticklabels([label for label, _, _ in bars], fontsize=8)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3, which="both")
    ax.set_ylabel("ms (median, min-max; log scale)")
    ax.set_title("One key exchange or handshake")
    ax = axes[1]
    for kind, colour in (("baseline", COLOURS["none"]), ("rekeying", COLOURS["mt6d"])):
        r = runs[kind]
        if r is None:
            continue
        label = f"regen_interval {m['regen_interval']:g} s" if kind == "rekeying" else "regen_interval 0"
        edges = [iv[0] for iv in r["intervals"]] + [r["intervals"][-1][1]]
        mean = f"{label}: {r['gbit_s']:.3f} Gbit/s mean"
        ax.stairs([iv[2] for iv in r["intervals"]], edges, color=colour, label=mean, lw=1.5)
        if kind == "rekeying":
            for i, k in enumerate(r["rekeys"]):
                ax.axvspan(k["at"], k["at"] + m["dip_window_s"], color=colour, alpha=0.12,
                           label="a rekey and the second after it" if i == 0 else None)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds into the transfer")
    ax.set_ylabel("Gbit/s per interval")
    ax.set_title("MT6D iperf3 TCP across rekeys (first transfer of each lab)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig
