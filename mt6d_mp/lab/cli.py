"""``mt6d-lab``: the command line of the namespace lab.

Flow: :func:`main` parses the arguments (:func:`_parser`), sends the lab's log (the echoed
system changes) to stderr at the level asked, turns SIGTERM into KeyboardInterrupt so that a
killed ``up`` or ``demo`` still rolls back, checks for root, and runs the subcommand::

    mt6d-lab up --prefix P --topology switched|routed|three-sites|host-gateway|host-host
                [--streams N] [--rotation-time S] [--json]
                [--no-mt6d] [--router-mtu M] [--ready-timeout S] [--set SECTION.KEY=VALUE]
    mt6d-lab down --prefix P [--keep-files]
    mt6d-lab info --prefix P
    mt6d-lab demo [--topology T] [--prefix P] [--rotation-time S] [--no-mt6d]
    mt6d-lab metrics [--out FILE.png] [--seconds S] [--rate R] [--prefix P] [--rotation-time S]

Errors of the lab end it with their exit code and one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from mt6d_mp.errors import Mt6dError
from mt6d_mp.lab import timeline
from mt6d_mp.lab.demo import demo
from mt6d_mp.lab.info import LabInfo, LabPrivilegeError
from mt6d_mp.lab.lab import LAB_ROOT, down, load, up
from mt6d_mp.lab.netns import MAX_PREFIX, log
from mt6d_mp.lab.plan import TOPOLOGIES


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="also show read-only commands")
    common.add_argument("-q", "--quiet", action="store_true", help="do not echo system changes")
    ap = argparse.ArgumentParser(prog="mt6d-lab",
                                 description="Network namespace lab for MT6D: two gateways, or three "
                                 "that are each other's peers (--topology three-sites).")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", parents=[common], help="build a lab")
    p.add_argument("--prefix", required=True, help=f"namespace prefix (max {MAX_PREFIX} chars)")
    p.add_argument("--topology", choices=TOPOLOGIES, default="switched",
                   help="three-sites: sites A, B, C on one switch, each gateway a peer of the others")
    p.add_argument("--streams", type=int, default=1,
                   help="host pairs (default 1); three-sites: hosts per site, each in a stream with "
                        "its namesake at each other site")
    p.add_argument("--hosts-as-addresses", action="store_true",
                   help="every host of a site an address in one namespace (P-ha, P-hb), for "
                        "hundreds of streams")
    p.add_argument("--shards", type=int, default=0,
                   help="spread the streams over N queues, one worker each (default: a queue "
                        "per stream)")
    p.add_argument("--rotation-time", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--json", action="store_true", help="print the lab description as JSON")
    p.add_argument("--no-mt6d", action="store_true", help="plain forwarding baseline, no MT6D")
    p.add_argument("--router-mtu", type=int, default=1500, help="routed: MTU router<->gb")
    p.add_argument("--ready-timeout", type=float, default=20.0, help="supervisor start (s)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="configuration override for both supervisors (repeatable)")

    p = sub.add_parser("down", parents=[common], help="remove a lab")
    p.add_argument("--prefix", required=True)
    p.add_argument("--keep-files", action="store_true", help=f"keep {LAB_ROOT}/PREFIX")

    p = sub.add_parser("info", parents=[common], help="print a running lab's JSON description")
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("demo", parents=[common], help="build, demonstrate, remove")
    p.add_argument("--topology", choices=TOPOLOGIES, default="switched")
    p.add_argument("--prefix", default=None, help="default: m6 + 4 random hex digits")
    p.add_argument("--rotation-time", type=float, default=2.0)
    p.add_argument("--no-mt6d", action="store_true", help="run the demo on the baseline")

    p = sub.add_parser("metrics", parents=[common],
                       help="build a lab with metrics on, send traffic, draw throughput, drops and "
                            "rotations to a PNG, remove the lab")
    p.add_argument("--out", type=Path, default=Path("mt6d-metrics.png"), help="PNG to write")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--rate", default="20M", help="UDP rate for iperf3 -b (default 20M)")
    p.add_argument("--prefix", default=None, help="default: m6 + 4 random hex digits")
    p.add_argument("--rotation-time", type=float, default=2.0)
    return ap


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    default = logging.WARNING if args.cmd in ("demo", "metrics") else logging.INFO
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else default
    if args.cmd in ("demo", "metrics") and args.verbose:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if os.geteuid() != 0:
            raise LabPrivilegeError("mt6d-lab needs root (network namespaces)")
        if args.cmd == "up":
            info = up(
                args.prefix,
                args.topology,
                streams=args.streams,
                rotation_time=args.rotation_time,
                mt6d=not args.no_mt6d,
                router_mtu=args.router_mtu,
                settings=args.set,
                ready_timeout=args.ready_timeout,
                hosts_as_addresses=args.hosts_as_addresses,
                shards=args.shards,
            )
            if args.json:
                print(info.to_json())
            else:
                _print_summary(info)
            return 0
        if args.cmd == "down":
            if not down(args.prefix, keep_files=args.keep_files):
                log.warning("no lab with prefix %s", args.prefix)
            return 0
        if args.cmd == "info":
            print(load(args.prefix).to_json())
            return 0
        if args.cmd == "metrics":
            return timeline.run(args.out, prefix=args.prefix, seconds=args.seconds, rate=args.rate,
                                rotation_time=args.rotation_time)
        return demo(args.topology, args.prefix, rotation_time=args.rotation_time, mt6d=not args.no_mt6d)
    except Mt6dError as e:
        print(f"mt6d-lab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mt6d-lab: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
        log.removeHandler(handler)


def _print_summary(info: LabInfo) -> None:
    print(f"lab {info.prefix}: {info.topology}, {'MT6D' if info.mt6d else 'no MT6D'}")
    for n in info.namespaces:
        addrs = ", ".join(a for i in n.interfaces for a in i.addresses)
        print(f"  {n.role:10} {n.name:14} {' '.join(i.name for i in n.interfaces):24} {addrs}")
    for s in info.streams:
        print(f"  stream {s.name}: {s.host_a_address} <-> {s.host_b_address} queue {s.queue}")
    if info.mt6d:
        print(f"  configs: {' '.join(str(gw.config) for gw in info.gateways)}")
    print(f"  remove with: mt6d-lab down --prefix {info.prefix}")
