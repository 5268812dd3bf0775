"""MT6D at scale: 1, 32, 256 and 1024 streams on one pair of gateways (``mt6d-bench --scale``).

Flow of :func:`bench_scale`: for each stream count, :func:`scale_point` builds a switched lab
whose hosts are addresses in one namespace per site (``Lab(hosts_as_addresses=True)``: a
namespace per host would cost more than the gateways being measured), with the streams spread
over a fixed number of shards (profiles sharing queue numbers: one worker per queue). It then

1. starts both supervisors (supervisor_debug.py: their own logger at debug level, for the
   ``event=rotated seconds=`` lines) and times start to ready (every worker bound) and to keyed
   (every stream's first key exchange done);
2. pings a sample of streams, each from its own host address, every 0.2 s for several rotations;
3. reads per gateway: addresses bound on the external interface, firewall rules (ours),
   route set members, worker processes, and the private memory of the supervisor and its
   workers as a group (mt6d_mp/procmem.py);
4. stops both supervisors and times the clean stop.

A rotation's cost is the supervisor's own ``event=rotated`` figures, the start-up rotation
left out: ``seconds``, the time its work took from start to end (hashing, addresses, set
members, bus messages), and ``cpu``, the processor time the supervisor used meanwhile (its own
and the kernel's on its behalf). On a machine whose cores both gateways and all their workers
share, the first includes the time spent waiting for a core, the second does not; per stream
is the first over the count.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mt6d_mp.bench.plan import Progress
from mt6d_mp.bench.results import stats, write_report
from mt6d_mp.io.bus import request
from mt6d_mp.lab import SUPERVISOR, Lab, random_prefix
from mt6d_mp.lab.gateway import start_supervisors, wait_keyed
from mt6d_mp.lab.info import LabInfo
from mt6d_mp.procmem import group_private_kb

COUNTS = (1, 8, 32, 256, 1024)  # 8: as many streams as shards, the memory baseline
QUICK_COUNTS = (1, 8)
SHARDS = 8  # worker processes per gateway (fewer when there are fewer streams)
SAMPLE = 8  # streams pinged
PING_INTERVAL = 0.2
ROTATION_TIME = 2.0
OBSERVE_ROTATIONS = 6

_ROTATED = re.compile(r"event=rotated seconds=([\d.]+).*? cpu=([\d.]+)")
_PING = re.compile(r"(\d+) packets transmitted, (\d+) received")


def _sample(n: int, k: int) -> list[int]:
    """``k`` stream indexes spread evenly over ``n`` (all of them if fewer)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _ns_lines(ns: str, argv: list[str]) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                         check=False)
    return out.stdout.splitlines()


def gateway_figures(info: LabInfo, prefix: str) -> dict[str, dict[str, Any]]:
    """Per gateway: addresses on ext0, our firewall rules, route set members, worker
    processes and the group's private memory (supervisor and workers)."""
    out: dict[str, dict[str, Any]] = {}
    for gw in (info.gateway_a, info.gateway_b):
        assert gw.runtime_dir
        st = request(Path(gw.runtime_dir), b"status", timeout=5.0)
        workers = sorted({w["pid"] for w in st.get("workers", []) if w.get("pid")})
        # Hashed addresses: local routes of ours (docs/KERNEL.md), and any global address of
        # ext0 (where versions before them bound the hashed addresses).
        addresses = sum(1 for line in _ns_lines(gw.name, ["ip", "-6", "-o", "addr", "show", "dev", "ext0"])
                        if " inet6 " in line and " scope global" in line)
        addresses += len(_ns_lines(gw.name, ["ip", "-6", "route", "show", "table", "local",
                                             "proto", "109"]))
        rules = sum(1 for line in _ns_lines(gw.name, ["ip6tables-legacy", "-S"])
                    if "mt6d" in line.lower())
        routes = sum(len(s.get("installed", [])) for s in st.get("streams", []))
        pids = [int(st["pid"]), *workers]
        out[gw.role] = {"hashed_addresses": addresses, "firewall_rules": rules,
                        "route_set_members": routes, "worker_processes": len(workers),
                        "private_kb": group_private_kb(pids)}
    return out


def scale_point(streams: int, shards: int, observe: float, progress: Progress) -> dict[str, Any]:
    """One stream count: see the module docstring."""
    prefix = random_prefix("sc")
    shards = max(1, min(shards, streams))
    lab = Lab(prefix, "switched", streams=streams, rotation_time=ROTATION_TIME,
              start_supervisors=False, hosts_as_addresses=True, shards=shards,
              ready_timeout=60 + streams / 8)
    res: dict[str, Any] = {"streams": streams, "shards": shards, "lab": prefix,
                           "rotation_time": ROTATION_TIME, "error": None}
    try:
        info = lab.up()
        t0 = time.monotonic()
        pids = start_supervisors(lab.procs, info, settings=(), ready_timeout=lab.ready_timeout,
                                 argv=[sys.executable, "-m", "mt6d_mp.bench.supervisor_debug",
                                       str(SUPERVISOR.parent)])
        res["start_ready_s"] = time.monotonic() - t0
        deadline = time.monotonic() + lab.ready_timeout
        for gw, pid in zip((info.gateway_a, info.gateway_b), pids, strict=True):
            wait_keyed(lab.procs, gw, pid, deadline, lab.ready_timeout)
        res["start_keyed_s"] = time.monotonic() - t0
        chosen = [info.streams[i] for i in _sample(streams, SAMPLE)]
        count = int(observe / PING_INTERVAL)
        logs = []
        for s in chosen:
            log_path = lab.dir / f"ping-{s.index}.out"
            lab.spawn(s.host_a_ns, ["ping", "-6", "-n", "-i", str(PING_INTERVAL), "-c", str(count),
                                    "-I", s.host_a_address, s.host_b_address],
                      name=f"ping-{s.index}", log_path=log_path)
            logs.append(log_path)
        time.sleep(observe + 2.0)
        sent = got = 0
        for path in logs:
            m = _PING.search(path.read_text(errors="replace"))
            if m:
                sent, got = sent + int(m.group(1)), got + int(m.group(2))
            else:
                sent += count
        res["ping"] = {"streams": len(chosen), "sent": sent, "received": got,
                       "loss": (sent - got) / sent if sent else None}
        res["gateways"] = gateway_figures(info, prefix)
        t1 = time.monotonic()
        for pid in pids:
            lab.stop(pid, timeout=60.0)
        res["stop_s"] = time.monotonic() - t1
        samples: list[float] = []
        cpu: list[float] = []
        for gw in (info.gateway_a, info.gateway_b):
            assert gw.log_file
            found = list(_ROTATED.finditer(Path(gw.log_file).read_text(errors="replace")))
            samples += [float(m.group(1)) for m in found[1:]]  # the first installs the window
            cpu += [float(m.group(2)) for m in found[1:]]
        res["rotations"] = len(samples)
        res["rotation_s"] = stats(samples)
        res["rotation_cpu_s"] = stats(cpu)
        res["per_stream_ms"] = ({k: v * 1e3 / streams for k, v in res["rotation_s"].items()
                                 if k in ("median", "max", "min", "mean")}
                                if res["rotation_s"] else None)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        if lab.claimed:
            lab.down()
    progress(_line(res))
    return res


def _line(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"scale, {r['streams']} stream(s): FAILED {r['error']}"
    rot, ping = r["rotation_s"] or {}, r["ping"]
    mem = r["gateways"]["gateway-a"]["private_kb"] or 0
    cpu = r.get("rotation_cpu_s") or {}
    return (f"scale, {r['streams']} stream(s) on {r['shards']} shard(s): rotation median "
            f"{rot.get('median', 0) * 1e3:.1f} ms (max {rot.get('max', 0) * 1e3:.1f}, "
            f"processor {cpu.get('median', 0) * 1e3:.1f}), "
            f"start {r['start_keyed_s']:.1f} s, stop {r['stop_s']:.1f} s, gateway A "
            f"{mem / 1024:.1f} MB, ping {ping['received']}/{ping['sent']}")


def bench_scale(progress: Progress, quick: bool = False,
                counts: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Every stream count in turn (the largest last), with the ratio of the per-stream cost of
    the largest count to that of 32 streams, and its memory to that of one stream per shard."""
    chosen = counts or (QUICK_COUNTS if quick else COUNTS)
    observe = OBSERVE_ROTATIONS * ROTATION_TIME
    points = [scale_point(n, SHARDS, observe, progress) for n in chosen]
    by = {p["streams"]: p for p in points if not p.get("error") and p.get("per_stream_ms")}
    ratio = memory = None
    top = max(by) if by else 0
    if 32 in by and top > 32:
        ratio = by[top]["per_stream_ms"]["median"] / by[32]["per_stream_ms"]["median"]
    if SHARDS in by and top > SHARDS:
        kb = [by[n]["gateways"]["gateway-a"]["private_kb"] for n in (top, SHARDS)]
        memory = kb[0] / kb[1] if all(kb) else None
    return {"shards": SHARDS, "points": points, "per_stream_ratio_to_32": ratio,
            "memory_ratio_to_one_stream_per_shard": memory}


# --- the files ------------------------------------------------------------------------------


def markdown(res: dict[str, Any], charts: list[str]) -> str:
    """results/scale.md: one row per stream count, then the targets."""
    rows = ["# MT6D at scale: streams on one pair of gateways", "",
            f"Switched lab, hosts as addresses of one namespace per site, streams spread over "
            f"{res['shards']} shards (queues, one worker each), rotation every {ROTATION_TIME:g} s; "
            f"`mt6d-bench --scale` (mt6d_mp/bench/scale.py). Per gateway figures are gateway A's.",
            "",
            "A rotation's work is measured twice: from its start to its end, and as the processor "
            "time the supervisor used meanwhile (its own and the kernel's on its behalf). Both "
            "gateways rotate at the same moment on the machine's cores, with their workers, so "
            "the first includes waiting for a core.",
            "",
            "| streams | shards | rotation median / max, ms | processor time per rotation, "
            "median, ms | per stream, ms | hashed addresses "
            "| our firewall rules | route set members | workers | private MB | start to keyed, s "
            "| stop, s | ping received / sent |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in res["points"]:
        if p.get("error"):
            first = str(p["error"]).splitlines()[0] if p["error"] else ""
            rows.append(f"| {p['streams']} | {p['shards']} | failed: {first} |" + " |" * 10)
            continue
        rot, g = p["rotation_s"] or {}, p["gateways"]["gateway-a"]
        per, cpu = p["per_stream_ms"] or {}, p.get("rotation_cpu_s") or {}
        rows.append(
            f"| {p['streams']} | {p['shards']} | {rot.get('median', 0) * 1e3:.1f} / "
            f"{rot.get('max', 0) * 1e3:.1f} | {cpu.get('median', 0) * 1e3:.1f} "
            f"| {per.get('median', 0):.3f} | {g['hashed_addresses']} "
            f"| {g['firewall_rules']} | {g['route_set_members']} | {g['worker_processes']} "
            f"| {(g['private_kb'] or 0) / 1024:.1f} | {p['start_keyed_s']:.1f} | {p['stop_s']:.1f} "
            f"| {p['ping']['received']} / {p['ping']['sent']} |")
    ratio = res.get("per_stream_ratio_to_32")
    memory = res.get("memory_ratio_to_one_stream_per_shard")
    rows += ["", "Per-stream rotation cost, largest count over 32 streams: "
             + (f"{ratio:.2f}" if ratio is not None else "n/a") + "; private memory of gateway A, "
             f"largest count over {res['shards']} streams (one per shard): "
             + (f"{memory:.2f}" if memory is not None else "n/a"), ""]
    rows += [f"![{c}]({c})" for c in charts]
    return "\n".join(rows) + "\n"


def chart(res: dict[str, Any], out: Path) -> list[str]:
    """scale.png: rotation cost per stream and private memory against the stream count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in res["points"] if not p.get("error") and p.get("per_stream_ms")]
    if not ok:
        return []
    n = [p["streams"] for p in ok]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(n, [p["rotation_s"]["median"] * 1e3 for p in ok], "o-", label="rotation, median")
    a.plot(n, [p["rotation_s"]["max"] * 1e3 for p in ok], "s--", label="rotation, max")
    a.plot(n, [(p.get("rotation_cpu_s") or {}).get("median", 0) * 1e3 for p in ok], "^-",
           label="processor time, median")
    a.axhline(0.1 * ROTATION_TIME * 1e3, color="grey", linestyle=":", label="10 % of a rotation")
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("streams")
    a.set_ylabel("supervisor work per rotation, ms")
    a.legend()
    b.plot(n, [(p["gateways"]["gateway-a"]["private_kb"] or 0) / 1024 for p in ok], "o-")
    b.set_xscale("log", base=2)
    b.set_ylim(bottom=0)
    b.set_xlabel("streams")
    b.set_ylabel("private memory of gateway A, MB")
    fig.suptitle(f"MT6D at scale ({res['shards']} shards, {ROTATION_TIME:g} s rotation)")
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=100)
    plt.close(fig)
    return ["scale.png"]


def write(res: dict[str, Any], out: Path, progress: Progress) -> None:
    write_report(res, out, "scale", chart, markdown, progress)
