"""Ping latency and MT6D's CPU with keep-warm at different settings, each in a fresh lab.

For each ``tunnel.keep_warm_ms`` value given (``0`` is off): bring up a routed lab with that
setting, ping host B from host A (``-i 0.2``), and report the ping summary, the CPU of both
gateways' MT6D processes during the ping and in the 6 s after it (keep-warm stops 2 s after the
last packet), and how often gateway A's stream worker ran keep-warm. Measures; asserts nothing.

Run from the repository root, as root, alone on the machine:
``.venv/bin/python results/wake/keep_warm_ab.py 0,5 --rounds 2 --pings 100``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import time
from typing import Any

LAB = ".venv/bin/mt6d-lab"
CTL = ".venv/bin/mt6dctl"
HOST_B = "2001:db8:b::b1"  # the routed lab's host B


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def status(prefix: str, gw: str) -> Any:
    return json.loads(sh(CTL, "--json", "-c", f"/run/mt6d-lab/{prefix}/{gw}/mt6d.toml", "status").stdout)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def one(keep_warm_ms: int, pings: int) -> None:
    prefix = "kw" + secrets.token_hex(2)
    up = sh(LAB, "up", "-q", "--prefix", prefix, "--topology", "routed", "--rotation-time", "2",
            "--set", f"tunnel.keep_warm_ms={keep_warm_ms}")
    if up.returncode:
        print(up.stderr)
        return
    try:
        pids: list[int] = []
        for gw in ("ga", "gb"):
            st = status(prefix, gw)
            pids += [int(w["pid"]) for w in st["workers"]] + [int(st["pid"])]
        c0, t0 = cpu_seconds(pids), time.monotonic()
        ping = sh("ip", "netns", "exec", f"{prefix}-ha", "ping", "-q", "-c", str(pings), "-i", "0.2",
                  HOST_B).stdout.strip().splitlines()[-1]
        c1, t1 = cpu_seconds(pids), time.monotonic()
        time.sleep(3)
        c2 = cpu_seconds(pids)
        time.sleep(6)
        c3 = cpu_seconds(pids)
        runs = [w["counters"].get("keep_warm_runs", 0) for w in status(prefix, "ga")["workers"]]
        print(f"keep_warm_ms={keep_warm_ms}: {ping} | CPU during the ping "
              f"{100 * (c1 - c0) / (t1 - t0):.1f} % of a core, idle after {100 * (c3 - c2) / 6:.1f} % "
              f"| keep-warm runs (gateway A's workers) {runs}", flush=True)
    finally:
        sh(LAB, "down", "-q", "--prefix", prefix)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("settings", help="comma-separated keep_warm_ms values, e.g. 0,5")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pings", type=int, default=100)
    args = p.parse_args()
    for _ in range(args.rounds):
        for value in args.settings.split(","):
            one(int(value), args.pings)


if __name__ == "__main__":
    main()
