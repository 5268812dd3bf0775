"""MT6D's rotation cost: one rehash cycle for 1, 8 and 32 streams, in process and on running supervisors.

Flow of :func:`bench_rotation`: for each stream count, :func:`rotation_in_process` times
``RouteList.advance`` of every stream (the hashing alone); then :func:`rotation_system` builds a
lab with that many streams, starts both supervisors through supervisor_debug.py (their own
logger at debug level), lets them rotate for a while and reads the ``event=rotated seconds=``
lines of their logs (hashing plus addresses, firewall rules and bus messages), the start-up
rotation left out.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from mt6d_mp.bench.plan import TOPOLOGY, Plan, Progress
from mt6d_mp.bench.results import stats
from mt6d_mp.lab import SUPERVISOR, Lab, random_prefix
from mt6d_mp.lab.gateway import start_supervisors


def rotation_in_process(streams: int, cycles: int, rotation_time: float) -> dict[str, Any]:
    """Seconds for one rotation of ``streams`` route lists (RouteList.advance each), pure code."""
    from mt6d_mp.core.routes import RouteList, StreamIdentity

    secret = os.urandom(64)
    lists = []
    for i in range(streams):
        ident = StreamIdentity(
            f"s{i}",
            bytes.fromhex("20010db8000a0000") + os.urandom(8),
            bytes([2, 0x6D, 0, 0xA0, i & 0xFF, 0]),
            bytes.fromhex("20010db8000b0000") + os.urandom(8),
            bytes([2, 0x6D, 0, 0xB0, i & 0xFF, 0]),
        )
        lists.append(RouteList(ident, lambda _e: (secret, 0), rotation_time, rotation_time))
    t = 1_700_000_000.0
    for rl in lists:
        rl.advance(t)
    samples = []
    for _ in range(cycles):
        t += rotation_time
        t0 = time.perf_counter()
        for rl in lists:
            rl.advance(t)
        samples.append(time.perf_counter() - t0)
    return {"streams": streams, "cycles": cycles, "seconds": stats(samples)}


_ROTATED = re.compile(r"event=rotated seconds=([\d.]+)")


def rotation_system(streams: int, plan: Plan, progress: Progress) -> dict[str, Any]:
    """Rotations of two running supervisors with ``streams`` streams, from their debug logs.

    The first rotation of each supervisor installs the whole window at start-up and is left out.
    """
    prefix = random_prefix("bn")
    lab = Lab(
        prefix,
        TOPOLOGY,
        streams=streams,
        rotation_time=plan.rotation_system_time,
        mt6d=True,
        start_supervisors=False,
    )
    res: dict[str, Any] = {
        "streams": streams,
        "lab": prefix,
        "rotation_time": plan.rotation_system_time,
        "samples": 0,
        "seconds": None,
        "error": None,
    }
    try:
        info = lab.up()
        start_supervisors(
            lab.procs,
            info,
            settings=(),
            ready_timeout=30 + streams,
            argv=[sys.executable, "-m", "mt6d_mp.bench.supervisor_debug", str(SUPERVISOR.parent)],
        )
        time.sleep(plan.rotation_observe)
        samples: list[float] = []
        for gw in (info.gateway_a, info.gateway_b):
            assert gw.log_file
            found = [
                float(m.group(1)) for m in _ROTATED.finditer(Path(gw.log_file).read_text(errors="replace"))
            ]
            samples += found[1:]
        res["samples"] = len(samples)
        res["seconds"] = stats(samples)
        if not samples:
            res["error"] = "no rotation logged"
    except KeyboardInterrupt:
        raise
    except Exception as e:
        res["error"] = str(e)
    finally:
        if lab.claimed:
            lab.down()
    s = res["seconds"]
    progress(
        f"rotation, {streams} stream(s), running supervisors: "
        + (
            f"median {s['median'] * 1e3:.2f} ms over {res['samples']} rotations"
            if s
            else f"FAILED {res['error']}"
        )
    )
    return res


def bench_rotation(plan: Plan, progress: Progress) -> dict[str, Any]:
    inproc = []
    for n in plan.rotation_streams:
        r = rotation_in_process(n, plan.rotation_cycles, plan.rotation_time)
        s = r["seconds"]
        progress(f"rotation, {n} stream(s), in process: median {s['median'] * 1e6:.1f} us")
        inproc.append(r)
    system = [rotation_system(n, plan, progress) for n in plan.rotation_streams]
    return {"in_process": inproc, "system": system}
