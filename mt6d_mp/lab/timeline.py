"""``mt6d-lab metrics``: a minute of traffic through a lab with metrics on, drawn as a PNG.

Flow of :func:`run`, each step a function below:

- build a switched lab whose two supervisors serve Prometheus metrics on their own namespace's
  loopback (``[metrics] listen``, README "Metrics");
- start an iperf3 server in host B, then for ``seconds``: UDP at a fixed rate from host A to host
  B (iperf3, 1200-byte datagrams, well under the tunnel MTU) and a ping every 0.2 s, while
  :func:`_scrape` reads both gateways' ``/metrics`` once a second (curl inside the namespace);
- :func:`timeline` (pure) turns the scrapes into per-second series: inner bits per second out of
  gateway A's stream workers and into gateway B's, drops per second by reason (both gateways),
  each over the last 5 s of the supervisor's own clock (:func:`_rates`), and the moments gateway
  A's active route changed epoch (the rotations);
- :func:`draw` writes the PNG: throughput, drops and the rotations as vertical lines across both;
- remove the lab, and print one line: rotations, ping replies, UDP loss, drops.

matplotlib is the ``bench`` extra; without it the command says so before it builds anything.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from mt6d_mp.lab.info import LabError, LabUsageError
from mt6d_mp.lab.lab import Lab
from mt6d_mp.lab.netns import random_prefix

LISTEN = "127.0.0.1:9469"
PING_INTERVAL = 0.2
UDP_LENGTH = 1200  # bytes per datagram: under the tunnel MTU (1452 in the lab), no fragments
RATE_WINDOW = 5.0  # seconds each rate is taken over (_rates)

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> Samples:
    """Prometheus text format (as mt6d_mp/metrics.py writes it) -> {(name, labels): value}."""
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"not a sample line: {line!r}")
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def _sum(samples: Samples, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and all((k, val) in labels for k, val in match.items()))


@dataclass
class Timeline:
    """Per-second series over the run; ``t`` is the end of each interval, seconds from the start."""

    t: list[float] = field(default_factory=list)
    out_bps: list[float] = field(default_factory=list)  # inner bits/s tunnelled out of gateway A
    in_bps: list[float] = field(default_factory=list)  # inner bits/s extracted at gateway B
    drops: dict[str, list[float]] = field(default_factory=dict)  # reason -> drops/s, both gateways
    rotations: list[float] = field(default_factory=list)  # when gateway A's active epoch changed
    # drops during the run by reason, both gateways: the counters' last values less their first
    dropped: dict[str, float] = field(default_factory=dict)


def _totals(s: Samples) -> dict[str, float]:
    """One gateway's counters that the picture shows: inner bytes of its stream workers (the
    workers with a stream of the same name, ``mt6d_stream_epoch``) out and in, and drops by reason
    (``drop:REASON``, every worker)."""
    streams = {dict(labels)["stream"] for (n, labels) in s if n == "mt6d_stream_epoch"}
    out: dict[str, float] = {
        d: sum(_sum(s, "mt6d_worker_bytes_total", worker=w, direction=d) for w in streams)
        for d in ("out", "in")}
    for (n, labels), v in s.items():
        if n == "mt6d_worker_drops_total":
            key = "drop:" + dict(labels)["reason"]
            out[key] = out.get(key, 0.0) + v
    return out


def _rates(snapshots: Sequence[Samples], window: float) -> list[dict[str, float]]:
    """Per second, at each scrape after the first, of one gateway's :func:`_totals` over about
    the last ``window`` seconds, as Prometheus's rate() over a range.

    Three clocks tick once a second each without knowing of one another: the workers report their
    counters to the supervisor (workers/common.py), the supervisor renders its metrics
    (mt6d_mp/metrics.py), and this scrapes them. Over one second, a rate is zero or double by
    turns; so it is taken over the supervisor's own clock (``mt6d_supervisor_uptime_seconds``),
    between its latest rendering and the newest one at least ``window`` seconds older (else the
    oldest one), and a scrape that finds no new rendering holds the last rates. A counter that
    went down (a restarted worker begins at 0) counts its new value; a restarted supervisor
    (uptime went down) is taken from zero at its start.
    """
    out: list[dict[str, float]] = []
    renderings = [(_sum(snapshots[0], "mt6d_supervisor_uptime_seconds"), _totals(snapshots[0]))]
    held: dict[str, float] = {}
    for s in snapshots[1:]:
        up = _sum(s, "mt6d_supervisor_uptime_seconds")
        if up < renderings[-1][0]:
            renderings = [(0.0, {})]  # a restarted supervisor began at 0 with every counter at 0
        if up > renderings[-1][0]:
            renderings.append((up, _totals(s)))
            older = [r for r in renderings[:-1] if r[0] <= up - window]
            then, old = older[-1] if older else renderings[0]
            new = renderings[-1][1]
            held = {k: (new.get(k, 0.0) - old.get(k, 0.0) if new.get(k, 0.0) >= old.get(k, 0.0)
                        else new[k]) / (up - then) for k in set(new) | set(old)}
        out.append(dict(held))
    return out


def timeline(scrapes: Sequence[tuple[float, Samples, Samples]], window: float = RATE_WINDOW) -> Timeline:
    """Series from ``(seconds since start, gateway A samples, gateway B samples)``, in time order:
    rates by :func:`_rates` over ``window`` seconds, plotted at the scrapes' times; rotations
    where gateway A's active epoch differs from the scrape before."""
    tl = Timeline()
    if len(scrapes) < 2:
        return tl
    t0 = scrapes[0][0]
    rates_a = _rates([a for _, a, _ in scrapes], window)
    rates_b = _rates([b for _, _, b in scrapes], window)
    reasons = sorted({k[5:] for r in rates_a + rates_b for k in r if k.startswith("drop:")})
    tl.drops = {reason: [] for reason in reasons}

    def epoch(s: Samples) -> float | None:
        values = [v for (n, _), v in s.items() if n == "mt6d_stream_epoch"]
        return max(values) if values else None

    for i, ((_, a1, _), (t2, a2, _)) in enumerate(pairwise(scrapes)):
        tl.t.append(t2 - t0)
        tl.out_bps.append(8 * rates_a[i].get("out", 0.0))
        tl.in_bps.append(8 * rates_b[i].get("in", 0.0))
        for reason in reasons:
            key = "drop:" + reason
            tl.drops[reason].append(rates_a[i].get(key, 0.0) + rates_b[i].get(key, 0.0))
        e1, e2 = epoch(a1), epoch(a2)
        if e1 is not None and e2 is not None and e2 != e1:
            tl.rotations.append(t2 - t0)
    first = [_totals(s) for s in scrapes[0][1:]]
    last = [_totals(s) for s in scrapes[-1][1:]]
    for reason in reasons:
        key = "drop:" + reason
        tl.dropped[reason] = sum(b.get(key, 0.0) - a.get(key, 0.0) for a, b in zip(first, last, strict=True))
    return tl


def draw(tl: Timeline, out: Path, title: str) -> None:
    """Throughput and drops over time, the rotations as vertical lines across both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(10, 6),
                                   gridspec_kw={"height_ratios": [2, 1]})
    ax1.plot(tl.t, [v / 1e6 for v in tl.out_bps], label="out of gateway A (tunnelled)", color="#d62728")
    ax1.plot(tl.t, [v / 1e6 for v in tl.in_bps], label="into host B (extracted at gateway B)",
             color="#1f77b4", linestyle="--")
    ax1.set_ylabel(f"inner Mbit/s ({RATE_WINDOW:g} s rate)")
    ax1.set_title(title)
    if any(any(v > 0 for v in s) for s in tl.drops.values()):
        for reason, series in sorted(tl.drops.items()):
            if any(v > 0 for v in series):
                ax2.plot(tl.t, series, label=reason)
        ax2.legend(loc="upper right", fontsize="small")
    else:
        ax2.text(0.5, 0.5, "no drops", transform=ax2.transAxes, ha="center", va="center")
    ax2.set_ylabel(f"drops/s ({RATE_WINDOW:g} s rate)")
    ax2.set_xlabel("seconds")
    for ax in (ax1, ax2):
        for i, r in enumerate(tl.rotations):
            ax.axvline(r, color="#7f7f7f", linewidth=0.6, alpha=0.6,
                       label="rotation" if ax is ax1 and i == 0 else None)
        ax.set_ylim(bottom=0)
    ax1.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _udp_loss(iperf3_json: str) -> float | None:
    """The loss in percent that an iperf3 UDP client reports (``--json``), if it reports one."""
    try:
        return float(json.loads(iperf3_json)["end"]["sum"]["lost_percent"])
    except (ValueError, KeyError, TypeError):
        return None


def _scrape(lab: Lab, ns: str) -> Samples:
    done = lab.exec(ns, ["curl", "-sS", "-m", "2", f"http://{LISTEN}/metrics"], check=False, timeout=10)
    if done.returncode != 0:
        raise LabError(f"no metrics from {ns}: {done.stderr.strip()}")
    return parse_exposition(done.stdout)


def run(out: Path, *, prefix: str | None = None, seconds: float = 60.0, rate: str = "20M",
        rotation_time: float = 2.0) -> int:
    """Build a lab, send ``seconds`` of traffic while scraping, write ``out``; 0 = no loss."""
    try:
        import matplotlib  # noqa: F401  (checked before anything is built)
    except ImportError:
        raise LabUsageError("mt6d-lab metrics draws with matplotlib: pip install 'mt6d-mp[bench]'") from None
    if seconds < 5:
        raise LabUsageError("--seconds must be at least 5")
    prefix = prefix or random_prefix()
    lab = Lab(prefix, "switched", rotation_time=rotation_time, settings=[f"metrics.listen={LISTEN}"])
    try:
        print(f"== mt6d-lab metrics: lab {prefix}, rotation {rotation_time:g} s, {seconds:g} s of "
              f"UDP at {rate}bit/s and a ping every {PING_INTERVAL} s", flush=True)
        info = lab.up()
        ha, hb, ga, gb = info.host_a(), info.host_b(), info.gateway_a.name, info.gateway_b.name
        assert hb.address
        b_addr: str = hb.address
        server = lab.spawn(hb.name, ["iperf3", "-s", "-1", "-B", b_addr], name="iperf3-server",
                           log_path=Path(info.lab_dir) / "iperf3-server.out")
        lab.wait_listening(server, 5201, what="iperf3 server")
        udp: dict[str, Any] = {}

        def client() -> None:
            done = lab.exec(ha.name, ["iperf3", "-c", b_addr, "-u", "-b", rate, "-l", str(UDP_LENGTH),
                                      "-t", f"{seconds:g}", "--json"], check=False, timeout=seconds + 60)
            udp["out"] = done.stdout

        count = int(seconds / PING_INTERVAL)
        ping_out = Path(info.lab_dir) / "ping.out"
        ping = lab.spawn(ha.name, ["ping", "-6", "-n", "-i", str(PING_INTERVAL), "-c", str(count),
                                   b_addr], name="ping", log_path=ping_out)
        sender = threading.Thread(target=client, name="iperf3-client", daemon=True)
        start = time.monotonic()
        scrapes = [(0.0, _scrape(lab, ga), _scrape(lab, gb))]
        sender.start()
        while time.monotonic() - start < seconds + 1:
            time.sleep(max(0.0, start + len(scrapes) - time.monotonic()))
            scrapes.append((time.monotonic() - start, _scrape(lab, ga), _scrape(lab, gb)))
        sender.join(timeout=60)
        deadline = time.monotonic() + 10
        while lab.alive(ping) and time.monotonic() < deadline:
            time.sleep(0.2)
        tl = timeline(scrapes)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", ping_out.read_text())
        sent, got = (int(m.group(1)), int(m.group(2))) if m else (count, 0)
        lost = _udp_loss(udp.get("out", ""))
        drops = {r: round(v) for r, v in tl.dropped.items() if v}
        title = (f"MT6D lab: {rate}bit/s UDP host A -> host B, rotation every {rotation_time:g} s "
                 f"({len(tl.rotations)} in {seconds:g} s)")
        draw(tl, out, title)
        print(f"   {len(tl.rotations)} rotations; ping {got}/{sent} replies; UDP loss "
              f"{'unknown' if lost is None else format(lost, 'g') + ' %'}; drops {drops or 'none'}")
        print(f"== wrote {out}", flush=True)
        return 0 if got == sent and lost == 0.0 else 1
    finally:
        lab.down()
