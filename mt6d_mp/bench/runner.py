"""The whole mt6d-bench run: every path in a lab of its own, the rotation and rekey costs, then the files.

Flow of :func:`run`: describe the machine, make the HTTP test files (random, with their
SHA-256), run :func:`bench_path` for each path (a lab from tunnels.py, the battery from
battery.py, the host metrics from host.py around it, then the load rows from load.py), then
the MT6D rotation cost (rotation.py), the rekey cost (rekey.py; the tunnels' handshakes from
handshakes.py), and compute the targets (report.py). :func:`write` writes bench.json, the charts
(charts.py) and bench.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mt6d_mp.bench.battery import Runner
from mt6d_mp.bench.charts import charts
from mt6d_mp.bench.host import host_metrics, machine
from mt6d_mp.bench.load import load_tests
from mt6d_mp.bench.plan import SCHEMA, Plan, Progress
from mt6d_mp.bench.rekey import bench_rekey
from mt6d_mp.bench.report import markdown, targets
from mt6d_mp.bench.results import write_report
from mt6d_mp.bench.rotation import bench_rotation
from mt6d_mp.bench.tunnels import path_lab
from mt6d_mp.lab import random_prefix


def bench_path(
    path: str, plan: Plan, files: dict[int, tuple[Path, str]], scratch: Path, progress: Progress
) -> dict[str, Any]:
    """Every test on one path, in a lab of its own."""
    res: dict[str, Any] = {
        "path": path,
        "errors": [],
        "ping": None,
        "flood": [],
        "http": [],
        "tcp": None,
        "udp": None,
        "host": None,
        "ping_under_tcp": None,
        "tcp_parallel": None,
        "udp_full": [],
        "lab": random_prefix("bn"),
    }
    t0 = time.monotonic()
    try:
        with path_lab(path, plan, scratch, progress, res["lab"],
                      settings=plan.mt6d_settings if path == "mt6d" else ()) as pl:
            run = Runner(pl, plan, files, progress)
            procs = pl.procs
            mem0 = procs.memory() if procs else None
            cpu0 = procs.cpu() if procs else None
            run.warm_up()
            res["ping"] = run.ping()
            res["flood"] = [run.flood(n) for n in plan.floods]
            res["http"] = run.http()
            c0 = procs.cpu() if procs else None
            res["tcp"] = run.tcp()
            c1 = procs.cpu() if procs else None
            res["udp"] = run.udp()
            if procs and mem0 is not None and cpu0 is not None and c0 is not None and c1 is not None:
                res["host"] = host_metrics(procs, mem0, cpu0, c0, c1, res, plan)
                h = res["host"]
                progress(
                    f"{path}: CPU {h['cpu_s_per_gb_tcp'] or float('nan'):.1f} s/GB (TCP), "
                    f"private memory per gateway {h['private_mb_per_gateway_end']:.1f} MB"
                )
            if plan.load:  # after the host figures, which so cover the same tests as before
                load_tests(run, res)
            res["errors"] = run.errors
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a path that cannot be set up is reported, the others still run
        res["errors"].append(f"setup: {e}")
        progress(f"{path}: FAILED {e}")
    res["seconds"] = time.monotonic() - t0
    return res


def make_files(sizes: Sequence[int], directory: Path) -> dict[int, tuple[Path, str]]:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(directory.parent, 0o755)  # nginx reads it
    files: dict[int, tuple[Path, str]] = {}
    for size in sizes:
        path = directory / f"file-{size}.bin"
        h = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 1 << 20))
                f.write(block)
                h.update(block)
                left -= len(block)
        os.chmod(path, 0o644)
        files[size] = (path, h.hexdigest())
    return files


def run(plan: Plan, out: Path, progress: Progress) -> dict[str, Any]:
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "machine": machine(),
        "plan": asdict(plan),
        "paths": {},
        "rotation": None,
        "rekey": None,
        "targets": [],
        "duration_s": 0.0,
    }
    progress(f"mt6d-bench {plan.mode}: paths {', '.join(plan.paths)}; output in {out}")
    scratch = Path(tempfile.mkdtemp(prefix="mt6d-bench-"))
    try:
        files = make_files(plan.http_sizes, scratch / "www")
        for path in plan.paths:
            progress(f"== {path}")
            results["paths"][path] = bench_path(path, plan, files, scratch, progress)
        if "mt6d" in plan.paths and plan.rotation_streams:
            progress("== MT6D rotation cost")
            results["rotation"] = bench_rotation(plan, progress)
        if plan.rekey and set(plan.paths) & {"mt6d", "openvpn", "wireguard-go"}:
            progress("== rekey cost")
            results["rekey"] = bench_rekey(plan, scratch, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["duration_s"] = time.monotonic() - t0
    results["targets"] = targets(results)
    return results


def write(results: dict[str, Any], out: Path, progress: Progress) -> None:
    write_report(results, out, "bench", charts, markdown, progress)
