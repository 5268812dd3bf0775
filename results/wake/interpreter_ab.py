"""The same MT6D code under two Python interpreters, each in fresh labs, alternating.

For each virtual environment given (its interpreter runs the lab's supervisors and workers):
bring up a routed lab (rotation every 2 s), then measure a standard ping (``-i 0.2``), a flood
ping, iperf3 TCP, and the private memory of each gateway's MT6D processes (the pages only they
map, ``mt6d_mp.procmem``). Measures; asserts nothing.

Run from the repository root, as root, alone on the machine, e.g. with a second environment
made from Debian's own interpreter (``/usr/bin/python3.11 -m venv /tmp/deb && /tmp/deb/bin/pip
install -e .``):
``.venv/bin/python results/wake/interpreter_ab.py .venv /tmp/deb --rounds 3``.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import subprocess
import time
from typing import Any

from mt6d_mp.procmem import group_private_kb

HOST_B = "2001:db8:b::b1"  # the routed lab's host B


def sh(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def pids_of(venv: str, prefix: str, gw: str) -> list[int]:
    out = sh(f"{venv}/bin/mt6dctl", "--json", "-c", f"/run/mt6d-lab/{prefix}/{gw}/mt6d.toml", "status")
    st = json.loads(out.stdout)
    return [st["pid"], *(w["pid"] for w in st["workers"])]


def ping(prefix: str, *args: str) -> float:
    out = sh("ip", "netns", "exec", f"{prefix}-ha", "ping", "-6", "-n", "-q", *args, HOST_B,
             timeout=300).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(m.group(1)) if m else float("nan")


def one_lab(venv: str, pings: int) -> dict[str, Any]:
    prefix = "ab" + secrets.token_hex(2)
    up = sh(f"{venv}/bin/mt6d-lab", "up", "-q", "--prefix", prefix, "--topology", "routed",
            "--rotation-time", "2")
    if up.returncode != 0:
        raise SystemExit(f"lab up failed: {up.stderr}")
    try:
        ping(prefix, "-c", "20", "-i", "0.05")  # routes and neighbours settled
        got: dict[str, Any] = {"ping_ms": ping(prefix, "-c", str(pings), "-i", "0.2"),
                               "flood_ms": ping(prefix, "-f", "-c", "5000")}
        server = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-hb", "iperf3", "-s", "-1",
                                   "-B", HOST_B], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        out = sh("ip", "netns", "exec", f"{prefix}-ha", "iperf3", "-J", "-t", "5", "-c", HOST_B)
        server.wait(timeout=30)
        got["tcp_gbit"] = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        got["memory_mb"] = max(group_private_kb(pids_of(venv, prefix, gw)) or 0
                               for gw in ("ga", "gb")) / 1024
        return got
    finally:
        sh(f"{venv}/bin/mt6d-lab", "down", "-q", "--prefix", prefix)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("venvs", nargs="+")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pings", type=int, default=150)
    a = p.parse_args()
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in a.venvs}
    for r in range(a.rounds):
        for venv in a.venvs:
            got = one_lab(venv, a.pings)
            results[venv].append(got)
            print(f"round {r + 1} {venv}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()),
                  flush=True)
    for venv, runs in results.items():
        keys = runs[0].keys()
        print(venv, {k: sorted(round(x[k], 3) for x in runs) for k in keys})


if __name__ == "__main__":
    main()
