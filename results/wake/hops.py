"""Where a lone ping's round trip goes, hop by hop, through MT6D and through the other tunnels.

For each path named, in a fresh routed lab set up as the bench sets it up: tcpdump on both
gateways' inner (int0) and outer (ext0) links, then pings from host A to host B at 0.2 s. All
the namespaces share one kernel and one clock, so the packets' capture times are comparable.
For each echo request and its reply it takes the first packet at each point and prints the
median of every segment:

    A out   gateway A, int0 in -> ext0 out (the request, into the tunnel)
    wire    gateway A ext0 -> router -> gateway B ext0
    B in    gateway B, ext0 in -> int0 out (out of the tunnel, to host B)
    host B  host B's kernel answers the echo request
    B out   gateway B, the reply into the tunnel
    wire    back through the router
    A in    gateway A, the reply out of the tunnel to host A

The captures cost every path the same few microseconds per hop. Measures; asserts nothing.
Run from the repository root, as root, alone on the machine:
``.venv/bin/python results/wake/hops.py mt6d,openvpn --pings 100``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mt6d_mp import bench
from mt6d_mp.lab import random_prefix

POINTS = (("ga", "int0"), ("ga", "ext0"), ("gb", "ext0"), ("gb", "int0"))
SEGMENTS = ("A out", "wire", "B in", "host B", "B out", "wire back", "A in", "round trip")


def read(pcap: Path) -> list[tuple[float, str]]:
    """(time, tcpdump's text of the packet) for every packet in the capture."""
    out = subprocess.run(["tcpdump", "-r", str(pcap), "-tt", "-n"], capture_output=True, text=True,
                         check=False).stdout
    return [(float(line.split(" ", 1)[0]), line) for line in out.splitlines() if line[:1].isdigit()]


def first_after(packets: list[tuple[float, str]], t: float, want: str) -> float | None:
    """Time of the first packet at or after ``t`` (within 0.1 s) whose text contains ``want``."""
    for ts, text in packets:
        if t <= ts < t + 0.1 and want in text:
            return ts
    return None


def one(path: str, pings: int, scratch: Path) -> None:
    plan = bench.FULL
    prefix = random_prefix("hp")
    with bench.path_lab(path, plan, scratch, lambda msg: None, prefix) as pl:
        run = bench.Runner(pl, plan, {}, lambda msg: None)
        run.warm_up()
        caps: dict[tuple[str, str], tuple[int, Path]] = {}
        for gw, dev in POINTS:
            ns = pl.info.ga if gw == "ga" else pl.info.gb
            pcap = pl.work / f"{gw}-{dev}.pcap"
            flt = "ip6 and ip6[6] != 58" if dev == "ext0" else "icmp6 and (ip6[40] == 128 or ip6[40] == 129)"
            pid = pl.lab.spawn(ns, ["tcpdump", "-i", dev, "-n", "-U", "-w", str(pcap), flt],
                               name=f"tcpdump-{gw}-{dev}", log_path=pl.work / f"{gw}-{dev}.log")
            caps[(gw, dev)] = (pid, pcap)
        time.sleep(2)  # tcpdump is listening
        r = pl.lab.exec(pl.info.ha, ["ping", "-6", "-n", "-q", "-c", str(pings), "-i", "0.2",
                                     pl.dst], timeout=pings * 0.2 + 30)
        time.sleep(1)
        for pid, _ in caps.values():
            pl.lab.stop(pid)
        pk = {point: read(pcap) for point, (_, pcap) in caps.items()}
    # The outer packets of A -> B come from site A's /64 (MT6D's hashed addresses are in it too);
    # on ext0 everything but ICMPv6 (neighbour discovery) is captured: MT6D's UDP follows a
    # destination options header, which tcpdump's "udp" does not match.
    a_to_b, b_to_a = "IP6 2001:db8:a:", "IP6 2001:db8:b:"
    segs: dict[str, list[float]] = {s: [] for s in SEGMENTS}
    for t_req, text in pk[("ga", "int0")]:
        if "echo request" not in text:
            continue
        t = [t_req]
        for point, want in ((("ga", "ext0"), a_to_b), (("gb", "ext0"), a_to_b),
                            (("gb", "int0"), "echo request"), (("gb", "int0"), "echo reply"),
                            (("gb", "ext0"), b_to_a), (("ga", "ext0"), b_to_a),
                            (("ga", "int0"), "echo reply")):
            ts = first_after(pk[point], t[-1], want)
            if ts is None:
                break
            t.append(ts)
        if len(t) != 8:
            continue
        for name, a, b in zip(SEGMENTS[:-1], t[:-1], t[1:], strict=True):
            segs[name].append(b - a)
        segs["round trip"].append(t[-1] - t[0])
    n = len(segs["round trip"])
    ping = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()
    print(f"{path}: {n} complete round trips of {pings}; ping says {ping}")
    for name in SEGMENTS:
        if segs[name]:
            print(f"   {name:10s} median {1e6 * statistics.median(segs[name]):7.1f} us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", help="comma-separated: mt6d, openvpn, wireguard-go, none")
    p.add_argument("--pings", type=int, default=100)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mt6d-hops-") as scratch:
        for _ in range(args.rounds):
            for path in args.paths.split(","):
                one(path, args.pings, Path(scratch))


if __name__ == "__main__":
    main()
