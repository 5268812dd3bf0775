"""bench.md: the results as tables, and the targets the project set itself, as ratios from this run.

Flow: :func:`targets` compares MT6D's figures with the references (OpenVPN, wireguard-go, no
tunnel) once the run is over; :func:`markdown` writes the report: the machine and the set-up
(:func:`_intro`), one table row per measurement and one column per path
(:func:`_measurement_rows`, :func:`_host_rows`), the rotation cost, the targets, the errors and
the charts (one function each, in that order).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

from mt6d_mp.bench.drops import drops_cell, runs_drops_cell
from mt6d_mp.bench.plan import PATHS
from mt6d_mp.bench.results import dig, finite, flood_of, rekey_errors, stats
from mt6d_mp.core import config as cfgmod


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: MT6D's figure, the reference figure, and whether it is met."""
    P = results["paths"]
    m, o, w, n = P.get("mt6d"), P.get("openvpn"), P.get("wireguard-go"), P.get("none")
    out: list[dict[str, Any]] = []
    if m is None:
        return out

    def add(name: str, mt6d: float | None, ref: float | None, unit: str,
            met: Callable[[float, float], bool] = operator.le) -> None:
        """One target; ``met(mt6d, ref)`` decides it, unknown (None) when either figure is missing."""
        ok = None if mt6d is None or ref is None else met(mt6d, ref)
        out.append(
            {"target": name, "mt6d": finite(mt6d), "reference": finite(ref), "unit": unit, "met": ok}
        )

    peers = [
        x for x in (dig(o, "tcp", "gbit_s", "median"), dig(w, "tcp", "gbit_s", "median")) if x is not None
    ]
    add("TCP throughput >= faster of OpenVPN and wireguard-go", dig(m, "tcp", "gbit_s", "median"),
        max(peers) if peers else None, "Gbit/s", operator.ge)
    add("idle ping average (standard ping) <= OpenVPN's (stretch)", dig(m, "ping", "rtt_ms", "avg"),
        dig(o, "ping", "rtt_ms", "avg"), "ms")
    if results["plan"].get("load"):
        _load_targets(add, m, o, w, results["plan"])
    add("zero loss, standard ping (rotations included)", dig(m, "ping", "loss_pct"), 0.0, "%",
        operator.eq)
    if results["plan"]["floods"]:
        nf = min(results["plan"]["floods"])
        add(f"zero loss, flood of {nf}", dig(flood_of(m, nf), "loss_pct"), 0.0, "%", operator.eq)
    jn = dig(n, "udp", "jitter_ms", "median")
    add("UDP jitter <= 2 x no-MT6D + 0.05 ms", dig(m, "udp", "jitter_ms", "median"),
        None if jn is None else 2 * jn + 0.05, "ms")
    add("CPU seconds per GB (TCP) <= OpenVPN's", dig(m, "host", "cpu_s_per_gb_tcp"),
        dig(o, "host", "cpu_s_per_gb_tcp"), "s/GB")
    add("private memory per gateway <= wireguard-go's",
        dig(m, "host", "private_mb_per_gateway_end"), dig(w, "host", "private_mb_per_gateway_end"),
        "MB")
    add("private memory growth over the run < 1 MB", dig(m, "host", "private_growth_mb_max"), 1.0,
        "MB", operator.lt)
    sysr = {r["streams"]: dig(r, "seconds", "median") for r in dig(results, "rotation", "system") or []}
    ks = sorted(k for k, v in sysr.items() if v is not None)
    if len(ks) >= 2:
        lo, hi = ks[0], ks[-1]
        # linear or better: the cost per stream must not grow with the number of streams
        # (25 % tolerance for a noisy machine)
        add(f"rotation cost per stream, {hi} vs {lo} streams (linear: ratio <= 1, 1.25 for noise)",
            (sysr[hi] / hi) / (sysr[lo] / lo), 1.0, "ratio", lambda ratio, _: ratio <= 1.25)
    return out


Add = Callable[..., None]  # targets' add(name, mt6d, reference, unit, met=operator.le)


def udp_full_of(p: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
    """A path's UDP run at full rate with ``n``-byte datagrams (load.py)."""
    for u in dig(p, "udp_full") or []:
        if u["datagram_bytes"] == n:
            r: dict[str, Any] = u
            return r
    return None


def _load_targets(add: Add, m: dict[str, Any], o: dict[str, Any] | None, w: dict[str, Any] | None,
                  plan: dict[str, Any]) -> None:
    """The targets of the load rows: the ping during a TCP transfer, small datagrams at full rate."""
    def ping(x: dict[str, Any] | None, key: str) -> float | None:
        v: float | None = dig(x, "ping_under_tcp", "ping", "rtt_ms", key)
        return v

    peers = [x for x in (ping(o, "avg"), ping(w, "avg")) if x is not None]
    add("ping during TCP: average <= the lower of OpenVPN's and wireguard-go's", ping(m, "avg"),
        min(peers) if peers else None, "ms")
    omax = ping(o, "max")
    add("ping during TCP: max < 2 x OpenVPN's", ping(m, "max"), None if omax is None else 2 * omax, "ms",
        operator.lt)
    add("ping during TCP: no loss", dig(m, "ping_under_tcp", "ping", "loss_pct"), 0.0, "%", operator.eq)
    if plan.get("udp_full_lens"):
        n = min(plan["udp_full_lens"])
        add(f"UDP at full rate, {n} B: received packets/s >= OpenVPN's",
            dig(udp_full_of(m, n), "received_kpps", "median"),
            dig(udp_full_of(o, n), "received_kpps", "median"), "kpps", operator.ge)


def _fmt(s: dict[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str:
    if not s:
        return "-"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    if s.get("n", 1) > 1:
        return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"
    return f"{med:.{digits}f}"


def _num(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.{digits}f}{suffix}"


def size_label(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 1_000_000 else f"{n / 1e3:g} kB"


Cell = Callable[[dict[str, Any]], str]  # one path's results -> the text of its table cell


def markdown(results: dict[str, Any], charts_written: Sequence[str] = ()) -> str:
    """bench.md: set-up, the table of measurements, rotation cost, targets, errors, charts."""
    paths = [p for p in PATHS if p in results["paths"]]
    lines = _intro(results)
    lines += _table(results, paths, [*_measurement_rows(results["plan"]), *_load_rows(results["plan"]),
                                     *_host_rows()])
    lines += _load_note(results["plan"])
    lines += _rotation_section(results)
    lines += _rekey_section(results)
    lines += _targets_section(results)
    errs = [f"{p}: {e}" for p in paths for e in results["paths"][p]["errors"]] + rekey_errors(results)
    if errs:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errs]
    if charts_written:
        lines += ["", "Charts: " + ", ".join(f"[{c}]({c})" for c in charts_written) + "."]
    lines.append("")
    return "\n".join(lines)


def _intro(results: dict[str, Any]) -> list[str]:
    plan = results["plan"]
    mach = results["machine"]
    return [
        f"# mt6d-bench results ({plan['mode']} mode)",
        "",
        f"Run {mach['date']} on {mach['os']}, kernel {mach['kernel']}, {mach['cpu_model']}, "
        f"{mach['cores']} cores, {mach['memory_mb']} MB RAM, Python {mach['python']}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in mach['loadavg_start'])}, at end "
        f"{' '.join(f'{x:.2f}' for x in mach.get('loadavg_end', []))}. Took {results['duration_s']:.0f} s.",
        "",
        "Tools: " + "; ".join(f"{k}: {v}" for k, v in mach["tools"].items() if v),
        "",
        f"Routed namespace lab (site A - gateway A - router - gateway B - site B, MTU 1500); every path in a "
        f"fresh lab; the test traffic runs from host A to host B. MT6D: encryption on (AES-256-GCM), "
        f"rotation every {plan['rotation_time']:g} s, "
        + (f"set: {', '.join(plan['mt6d_settings'])}; " if plan.get("mt6d_settings") else "")
        + f"every other setting at its default (keep-warm every "
        f"{cfgmod.SCHEMA['tunnel']['keep_warm_ms'].default} ms). Figures are medians with min-max over "
        f"the repeats in "
        f"brackets; ping rows give the ping summary (avg, with min-max over the packets).",
        "",
    ]


def _table(results: dict[str, Any], paths: list[str], rows: list[tuple[str, Cell]]) -> list[str]:
    """One row per measurement, one column per path; a cell that cannot be made is ``-``."""
    lines = ["| test | " + " | ".join(paths) + " |", "|---|" + "---|" * len(paths)]
    for name, f in rows:
        cells = []
        for p in paths:
            try:
                cells.append(f(results["paths"][p]))
            except (KeyError, TypeError, IndexError):
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _rtt(d: dict[str, Any] | None) -> str:
    r = dig(d, "rtt_ms")
    return "-" if not r else f"{r['avg']:.3f} ({r['min']:.3f}-{r['max']:.3f})"


def _flood_rtt(d: dict[str, Any], n: int) -> str:
    return _rtt(flood_of(d, n))


def _flood_num(d: dict[str, Any], n: int, key: str, digits: int) -> str:
    return _num(dig(flood_of(d, n), key), digits)


def _http_cell(d: dict[str, Any], i: int) -> str:
    h = d["http"][i]
    return _fmt(h["mbyte_s"], digits=1) + ("" if h["verified"] else " (NOT verified)")


def _measurement_rows(plan: dict[str, Any]) -> list[tuple[str, Cell]]:
    """Ping, floods, HTTP, iperf3 TCP and UDP, and the drop counters."""
    rows: list[tuple[str, Cell]] = [
        (f"ping {plan['ping_count']} x {plan['ping_interval']:g} s: rtt ms", lambda d: _rtt(d["ping"])),
        ("ping: loss %", lambda d: _num(d["ping"]["loss_pct"])),
    ]
    for n in plan["floods"]:
        rows.append((f"flood {n}: rtt ms", functools.partial(_flood_rtt, n=n)))
        rows.append((f"flood {n}: loss %", functools.partial(_flood_num, n=n, key="loss_pct", digits=2)))
        rows.append((f"flood {n}: duration s", functools.partial(_flood_num, n=n, key="seconds", digits=1)))
    for i, size in enumerate(plan["http_sizes"]):
        rows.append((f"HTTP {size_label(size)}: MB/s", functools.partial(_http_cell, i=i)))
    udp = (
        f"iperf3 UDP {plan['udp_rate_mbit']} Mbit/s, {plan['udp_len']} B, "
        f"{plan['udp_seconds']} s x{plan['udp_runs']}"
    )
    rows += [
        (f"iperf3 TCP {plan['tcp_seconds']} s x{plan['tcp_runs']}: Gbit/s",
         lambda d: _fmt(d["tcp"]["gbit_s"], digits=3)),
        ("iperf3 TCP: retransmits", lambda d: _fmt(d["tcp"]["retransmits"], digits=0)),
        (f"{udp}: loss %", lambda d: _fmt(d["udp"]["loss_pct"], digits=2)),
        (f"{udp}: jitter ms", lambda d: _fmt(d["udp"]["jitter_ms"], digits=3)),
        ("drops counted during ping, floods and UDP (where)", drops_cell),
    ]  # fmt: skip
    return rows


def _udp_full_cell(d: dict[str, Any], n: int, key: str, digits: int) -> str:
    u = udp_full_of(d, n)
    return "-" if u is None else _fmt(u[key], digits=digits)


def _udp_full_drops(d: dict[str, Any], n: int) -> str:
    u = udp_full_of(d, n)
    return "-" if u is None else runs_drops_cell(u["runs"])


def _load_rows(plan: dict[str, Any]) -> list[tuple[str, Cell]]:
    """Ping during TCP, UDP at full offered rate per datagram size, TCP with parallel streams (load.py)."""
    if not plan.get("load"):
        return []
    runs = plan["load_runs"]
    pt = (f"ping every {plan['ping_load_interval']:g} s during iperf3 TCP "
          f"{plan['ping_load_seconds']} s x{runs}")  # fmt: skip
    rows: list[tuple[str, Cell]] = [
        (f"{pt}: rtt ms", lambda d: _rtt(d["ping_under_tcp"]["ping"])),
        ("ping during TCP: loss %", lambda d: _num(d["ping_under_tcp"]["ping"]["loss_pct"])),
        ("ping during TCP: the TCP transfer, Gbit/s",
         lambda d: _fmt(d["ping_under_tcp"]["gbit_s"], digits=3)),
        ("ping during TCP: drops (where)", lambda d: runs_drops_cell(d["ping_under_tcp"]["runs"])),
    ]  # fmt: skip
    for i, n in enumerate(plan["udp_full_lens"]):
        head = f"iperf3 UDP full rate (-b 0), {n} B"
        if i == 0:
            head += f", {plan['udp_full_seconds']} s x{runs}"
        rows += [
            (f"{head}: received Mbit/s",
             functools.partial(_udp_full_cell, n=n, key="received_mbit_s", digits=1)),
            (f"UDP full rate, {n} B: received thousand packets/s",
             functools.partial(_udp_full_cell, n=n, key="received_kpps", digits=1)),
            (f"UDP full rate, {n} B: sent thousand packets/s",
             functools.partial(_udp_full_cell, n=n, key="sent_kpps", digits=1)),
            (f"UDP full rate, {n} B: loss % (of the datagrams sent)",
             functools.partial(_udp_full_cell, n=n, key="loss_pct", digits=2)),
            (f"UDP full rate, {n} B: drops (where)", functools.partial(_udp_full_drops, n=n)),
        ]  # fmt: skip
    k = plan["parallel_streams"]
    rows += [
        (f"iperf3 TCP -P {k}, {plan['parallel_seconds']} s x{runs}: Gbit/s",
         lambda d: _fmt(d["tcp_parallel"]["gbit_s"], digits=3)),
        (f"iperf3 TCP -P {k}: retransmits", lambda d: _fmt(d["tcp_parallel"]["retransmits"], digits=0)),
    ]  # fmt: skip
    return rows


def _load_note(plan: dict[str, Any]) -> list[str]:
    if not plan.get("load"):
        return []
    m = plan["ping_load_margin"]
    return [
        "",
        "Load rows, run last on each path (after the CPU and memory figures above are taken): a ping "
        f"every {plan['ping_load_interval']:g} s from host A to host B from {m:g} s after the start of "
        f"an iperf3 TCP transfer from A to B to {m:g} s before its end (at most a quarter of it at each "
        "end), the runs' pings pooled as one summary (avg, with min-max over the packets); iperf3 UDP "
        "with `-b 0` (as fast as the sender writes), received = the datagrams that reached host B's "
        "iperf3, per second of its receiving, and the loss of those sent; iperf3 TCP with "
        f"`-P {plan['parallel_streams']}`. Drops: the counters that grew during the runs (as above, "
        "and per interface: `rx_dropped` and `tx_dropped` of /proc/net/dev).",
    ]


def _processes(d: dict[str, Any]) -> str:
    return "-" if not d["host"] else f"{d['host']['processes']['a']} + {d['host']['processes']['b']}"


def _start_end(d: dict[str, Any], key: str) -> str:
    return f"{d['host'][key + '_start']:.1f} -> {d['host'][key + '_end']:.1f}"


def _host_rows() -> list[tuple[str, Cell]]:
    """Tunnel processes, CPU, memory, and the error count."""
    return [
        ("tunnel processes (gateway A + B)", _processes),
        ("CPU s per GB, iperf3 TCP (user+system)", lambda d: _num(d["host"]["cpu_s_per_gb_tcp"], 1)),
        ("CPU s per GB, whole run", lambda d: _num(d["host"]["cpu_s_per_gb_all"], 1)),
        ("CPU s, whole run (user / system)",
         lambda d: f"{d['host']['cpu_all']['user_s']:.1f} / {d['host']['cpu_all']['system_s']:.1f}"),
        ("private MB per gateway (max of A, B): start -> end",
         functools.partial(_start_end, key="private_mb_per_gateway")),
        ("sum of USS MB per gateway (max of A, B): start -> end",
         functools.partial(_start_end, key="uss_mb_per_gateway")),
        ("sum of PSS MB per gateway (max of A, B), end",
         lambda d: _num(d["host"]["pss_mb_per_gateway_end"], 1)),
        ("peak RSS MB, both gateways", lambda d: _num(d["host"]["peak_rss_mb_both"], 1)),
        ("errors", lambda d: str(len(d["errors"]))),
    ]  # fmt: skip


def _rotation_section(results: dict[str, Any]) -> list[str]:
    rot = results.get("rotation")
    if not rot:
        return []
    lines = [
        "",
        "## MT6D rotation cost (one rehash cycle for all streams)",
        "",
        "In process: `RouteList.advance` of every stream (the hashing). Running supervisors: the "
        "supervisor's `event=rotated seconds=` debug line, i.e. hashing plus binding and releasing "
        f"addresses, firewall rules and bus messages (labs with rotation every "
        f"{results['plan']['rotation_system_time']:g} s; both gateways' rotations pooled, the start-up "
        "rotation left out).",
        "",
        "| streams | in process, us | running supervisors, ms | rotations measured |",
        "|---|---|---|---|",
    ]
    sysd = {r["streams"]: r for r in rot["system"]}
    for r in rot["in_process"]:
        s = sysd.get(r["streams"], {})
        lines.append(
            f"| {r['streams']} | {_fmt(r['seconds'], 1e6, 1)} | {_fmt(s.get('seconds'), 1e3, 2)} | "
            f"{s.get('samples', '-')} |"
        )
    return lines


def _ms(s: dict[str, Any] | None, key: str) -> str:
    return "-" if not s else f"{s[key] * 1e3:.2f}"


def _pct(s: dict[str, Any] | None) -> str:
    """A summary of ratios as per cent: median (min-max)."""
    if not s:
        return "-"
    med, lo, hi = (round(s[k] * 100) for k in ("median", "min", "max"))
    return f"{med} % ({lo}-{hi})" if s.get("n", 1) > 1 else f"{med} %"


def _counters(c: dict[str, int] | None) -> str:
    """The exchange counters that grew, but for those every exchange moves (sent messages, starts,
    answers, rekeys): the retries, collisions, failures and expiries."""
    routine = {"rekeys", "keyx_started", "keyx_answered"}
    odd = {k: v for k, v in (c or {}).items() if k not in routine and not k.startswith("keyx_sent_")}
    return ", ".join(f"{k} {v}" for k, v in odd.items()) if odd else "none"


def _handshake_rows(rk: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None, str | None]]:
    """(path, what is timed, seconds summary, error) of every timed exchange or handshake."""
    rows: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
    m = rk.get("mt6d")
    if m:
        err = "; ".join(m["errors"]) or None
        rows += [
            ("MT6D", "rekey: first INIT to commit (status `keyx_last_seconds`), no traffic",
             dig(m, "exchange", "idle"), err),
            ("MT6D", "rekey: the same, during the iperf3 TCP transfers", dig(m, "exchange", "load"), err),
        ]  # fmt: skip
    o = rk.get("openvpn")
    if o:
        rows += [
            ("OpenVPN", f"renegotiation (`--reneg-sec {o['reneg_sec']}`): `TLS: soft reset` to the new key "
             "state active (`Control Channel:`), in the log of the gateway that starts it",
             o["renegotiation_s"], o["error"]),
            ("OpenVPN", "first handshake: `TLS: Initial packet from` to `Peer Connection Initiated`",
             o["handshake_s"], o["error"]),
            ("OpenVPN", "start-up: first log line to `Initialization Sequence Completed`",
             o["startup_s"], o["error"]),
        ]  # fmt: skip
    w = rk.get("wireguard-go")
    if w:
        rows.append(
            ("wireguard-go", "handshake of a peer set afresh (control socket) to its last handshake time",
             w["handshake_s"], w["error"])
        )  # fmt: skip
    return rows


def _rekey_section(results: dict[str, Any]) -> list[str]:
    rk = results.get("rekey")
    if not rk:
        return []
    lines = ["", "## Rekey cost", ""]
    m = rk.get("mt6d")
    if m:
        lines += [
            f"MT6D: two labs side by side, rotation every {m['rotation_time']:g} s: one with "
            f"`crypto.regen_interval = {m['regen_interval']:g}` and `regen_window = "
            f"{m['regen_window']:g}` (a rekey every {m['regen_interval']:g}-"
            f"{m['regen_interval'] + m['regen_window']:g} s), one with `crypto.regen_interval = 0` (only "
            "the exchange at start) as the baseline. An exchange's time is what its initiator reports "
            "in `mt6dctl status` (both gateways polled every 0.2 s, pooled); the rekeys during a "
            "transfer are the supervisors' `event=key_phase_committed` log lines (one per new phase, "
            "at its first commit). OpenVPN and wireguard-go: labs of their own, set up as their paths.",
            "",
        ]
    lines += ["| path | what is timed | median ms | max ms | measured |", "|---|---|---|---|---|"]
    for path, what, s, err in _handshake_rows(rk):
        if s:
            lines.append(f"| {path} | {what} | {_ms(s, 'median')} | {_ms(s, 'max')} | {s['n']} |")
        else:
            lines.append(f"| {path} | {what} | not measured: {err or 'no sample'} | | 0 |")
    if m and (m["baseline"]["runs"] or m["rekeying"]["runs"]):
        b, r = m["baseline"], m["rekeying"]
        plan = results["plan"]
        source = next((x["interval_source"] for x in m["runs"] if x["interval_source"]), "-")
        lines += [
            "",
            f"| iperf3 TCP {plan['rekey_seconds']} s x{plan['rekey_runs']} per lab, "
            f"{m['iperf_interval_s']:g} s intervals ({source}) | `regen_interval = 0` | "
            f"`regen_interval = {m['regen_interval']:g}` |",
            "|---|---|---|",
            f"| mean, Gbit/s | {_fmt(b['gbit_s'], digits=3)} | {_fmt(r['gbit_s'], digits=3)} |",
            f"| median interval, Gbit/s | {_fmt(b['median_interval_gbit_s'], digits=3)} | "
            f"{_fmt(r['median_interval_gbit_s'], digits=3)} |",
            f"| rekeys during the transfers | {b['rekeys']} | {r['rekeys']} |",
            f"| lowest interval within {m['dip_window_s']:g} s after a rekey, Gbit/s; of the median | - | "
            f"{_fmt(r['dip_gbit_s'], digits=3)}; {_pct(r['dip_ratio'])} |",
            f"| lowest interval away from rekeys, Gbit/s; of the median | "
            f"{_fmt(b['lowest_elsewhere_gbit_s'], digits=3)}; {_pct(b['lowest_elsewhere_ratio'])} | "
            f"{_fmt(r['lowest_elsewhere_gbit_s'], digits=3)}; {_pct(r['lowest_elsewhere_ratio'])} |",
            f"| exchange retries, collisions, failures, expiries during the transfers | "
            f"{_counters(b['counters'])} | {_counters(r['counters'])} |",
            "",
            "Per rekey the lowest interval overlapping the second after its first commit (both gateways send "
            "on the new phase within the hold after it), against the transfer's median interval; the first "
            "and last interval of a transfer left out. The intervals are placed from the start of the "
            "iperf3 client; the test starts at most "
            f"{_ms(stats([dig(x, 'start_slack_s', 'max') for x in (b, r)]), 'max')} ms later.",
        ]
    if rk.get("openvpn") or rk.get("wireguard-go"):
        lines += [
            "",
            "Not measured: the tunnels' throughput across their own rekeys (OpenVPN's renegotiation and "
            "wireguard-go's handshake are timed on idle tunnels); wireguard-go's own rekey, which comes "
            "only after two minutes and which its control socket cannot bring forward (a peer set afresh "
            "is timed instead).",
        ]
    return lines


def _targets_section(results: dict[str, Any]) -> list[str]:
    tg = results.get("targets") or []
    if not tg:
        return []
    lines = [
        "",
        "## Targets, from this run",
        "",
        "| target | MT6D | reference | met |",
        "|---|---|---|---|",
    ]
    for t in tg:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(
            f"| {t['target']} | {_num(t['mt6d'], 3)} {t['unit']} | "
            f"{_num(t['reference'], 3)} {t['unit']} | {met} |"
        )
    return lines
