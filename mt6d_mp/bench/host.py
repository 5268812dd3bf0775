"""The machine and the tunnel processes: what ran the benchmark, and what the tunnels cost it.

Flow: :func:`machine` describes the machine once per run (CPU, memory, kernel, tool versions).
For each path, :class:`TunnelProcesses` names the tunnel's processes on both gateways (with
their children for MT6D); the runner takes CPU snapshots (:meth:`TunnelProcesses.cpu`, from
/proc/PID/stat) and memory readings (:meth:`TunnelProcesses.memory`: group private memory,
USS, PSS, RSS, peak RSS) before and after, and :func:`host_metrics` turns them into CPU seconds
per GB carried and private memory per gateway.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt6d_mp.bench.plan import SIDES, Plan
from mt6d_mp.procmem import group_private_kb

CLK_TCK = os.sysconf("SC_CLK_TCK")
GB = 1e9


def _tool_version(argv: Sequence[str]) -> str | None:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    os_name = None
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "os": os_name,
        "kernel": platform.release(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_mb": round(mem_kb / 1024) if mem_kb else None,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
        "tools": {
            "openvpn": _tool_version(["openvpn", "--version"]),
            "wireguard-go": _tool_version(["wireguard-go", "--version"]),
            "iperf3": _tool_version(["iperf3", "--version"]),
            "curl": _tool_version(["curl", "--version"]),
            "nginx": _tool_version(["nginx", "-v"]),
            "ping": _tool_version(["ping", "-V"]),
        },
    }


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # [0] is field 3 (state)


def descendants(roots: Sequence[int]) -> list[int]:
    """``roots`` and every live process below them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            f = _stat_fields(int(entry.name))
            if f is not None and f[0] not in ("Z", "X"):
                children.setdefault(int(f[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [r for r in roots if _stat_fields(r) is not None]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo.extend(children.get(pid, []))
    return sorted(out)


CpuSnapshot = dict[tuple[int, int], tuple[str, float, float]]  # (pid, start) -> (side, user, sys)


@dataclass
class TunnelProcesses:
    """The processes of one tunnel, per gateway side; children are included when asked."""

    roots: dict[str, list[int]]
    with_children: bool = False

    def pids(self) -> dict[str, list[int]]:
        return {
            side: descendants(r) if self.with_children else [p for p in r if _stat_fields(p) is not None]
            for side, r in self.roots.items()
        }

    def cpu(self) -> CpuSnapshot:
        snap: CpuSnapshot = {}
        for side, pids in self.pids().items():
            for pid in pids:
                f = _stat_fields(pid)
                if f is not None:
                    snap[(pid, int(f[19]))] = (side, int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK)
        return snap

    def memory(self) -> dict[str, dict[str, int]]:
        """Per side, in kB: the side's private memory as a group (``group_kb``: resident pages
        that only its processes map, mt6d_mp/procmem.py), and USS, PSS, RSS and peak RSS (VmHWM)
        summed over the processes."""
        out: dict[str, dict[str, int]] = {}
        for side, pids in self.pids().items():
            tot = {"group_kb": group_private_kb(pids) or 0, "uss_kb": 0, "pss_kb": 0, "rss_kb": 0,
                   "peak_rss_kb": 0, "processes": 0}
            for pid in pids:
                try:
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                kv = _kv_kb(rollup)
                tot["uss_kb"] += kv.get("Private_Clean", 0) + kv.get("Private_Dirty", 0)
                tot["pss_kb"] += kv.get("Pss", 0)
                tot["rss_kb"] += kv.get("Rss", 0)
                tot["peak_rss_kb"] += _kv_kb(status).get("VmHWM", 0)
                tot["processes"] += 1
            out[side] = tot
        return out


def _kv_kb(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s+(\d+) kB", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """User and system seconds spent between two snapshots (new processes count in full)."""
    user = system = 0.0
    for key, (_side, u, s) in after.items():
        _s0, u0, s0 = before.get(key, ("", 0.0, 0.0))
        user += u - u0
        system += s - s0
    return {"user_s": user, "system_s": system, "total_s": user + system}


def host_metrics(
    procs: TunnelProcesses,
    mem0: dict[str, dict[str, int]],
    cpu0: CpuSnapshot,
    tcp0: CpuSnapshot,
    tcp1: CpuSnapshot,
    res: dict[str, Any],
    plan: Plan,
) -> dict[str, Any]:
    mem1 = procs.memory()
    total = cpu_delta(cpu0, procs.cpu())
    tcp = cpu_delta(tcp0, tcp1)
    tcp_bytes = res["tcp"]["bytes"] if res["tcp"] else 0
    carried = tcp_bytes + (res["udp"]["bytes"] if res["udp"] else 0)
    for h in res["http"]:
        carried += h["size"] * len(h["runs"])
    if res["ping"]:
        carried += 2 * 104 * res["ping"]["received"]  # 56 data + 8 ICMPv6 + 40 IPv6, both ways
    for f in res["flood"]:
        carried += 2 * 104 * (f["received"] or 0)
    growth = [mem1[s]["group_kb"] - mem0[s]["group_kb"] for s in SIDES]
    uss_growth = [mem1[s]["uss_kb"] - mem0[s]["uss_kb"] for s in SIDES]
    return {
        "processes": {s: len(procs.pids()[s]) for s in SIDES},
        "cpu_all": total,
        "bytes_all": carried,
        "cpu_s_per_gb_all": total["total_s"] / (carried / GB) if carried else None,
        "cpu_tcp": tcp,
        "bytes_tcp": tcp_bytes,
        "cpu_s_per_gb_tcp": tcp["total_s"] / (tcp_bytes / GB) if tcp_bytes else None,
        "memory_start": mem0,
        "memory_end": mem1,
        "private_mb_per_gateway_start": max(mem0[s]["group_kb"] for s in SIDES) / 1024,
        "private_mb_per_gateway_end": max(mem1[s]["group_kb"] for s in SIDES) / 1024,
        "private_growth_mb_max": max(growth) / 1024,
        "uss_mb_per_gateway_start": max(mem0[s]["uss_kb"] for s in SIDES) / 1024,
        "uss_mb_per_gateway_end": max(mem1[s]["uss_kb"] for s in SIDES) / 1024,
        "pss_mb_per_gateway_end": max(mem1[s]["pss_kb"] for s in SIDES) / 1024,
        "uss_growth_mb_max": max(uss_growth) / 1024,
        "peak_rss_mb_both": sum(mem1[s]["peak_rss_kb"] for s in SIDES) / 1024,
    }
