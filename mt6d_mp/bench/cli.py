"""``mt6d-bench``: the command line of the benchmark.

Flow of :func:`main`: parse the arguments (:func:`parser`) into a :class:`Plan`
(:func:`_plan_from_args`), check for root and the programs the paths need, turn SIGTERM into
KeyboardInterrupt so that labs are removed, run (runner.py), write the files, print the report
and exit 1 when any measurement failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from mt6d_mp.bench.plan import FULL, PATHS, QUICK, Progress
from mt6d_mp.bench.report import markdown
from mt6d_mp.bench.results import clean, rekey_errors
from mt6d_mp.bench.runner import run, write
from mt6d_mp.core.config import parse_override
from mt6d_mp.errors import EXIT_BAD_ARGS, EXIT_NOT_INSTALLED, EXIT_PRIVILEGE, ConfigError
from mt6d_mp.lab import MAX_STREAMS
from mt6d_mp.lab.lab import MAX_ADDRESS_HOSTS


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None
    if any(v < 1 or v > MAX_STREAMS for v in vals):
        raise argparse.ArgumentTypeError(f"stream counts must be 1..{MAX_STREAMS}")
    return vals


def _csv_paths(text: str) -> tuple[str, ...]:
    want = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in want if x not in PATHS]
    if bad or not want:
        raise argparse.ArgumentTypeError(f"paths are a comma-separated subset of {','.join(PATHS)}")
    return tuple(p for p in PATHS if p in want)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mt6d-bench",
        description="MT6D against no tunnel, OpenVPN and wireguard-go in the namespace lab (needs root).",
    )
    ap.add_argument("--quick", action="store_true", help="short mode (under 3 minutes)")
    ap.add_argument("--out", type=Path, default=Path("results"), help="output directory (default results/)")
    ap.add_argument("--paths", type=_csv_paths, default=PATHS, help=f"subset of {','.join(PATHS)}")
    ap.add_argument("--rotation-time", type=float, default=None, help="MT6D rotation time, s (default 2)")
    ap.add_argument(
        "--rotation-streams",
        type=_csv_ints,
        default=None,
        help="stream counts for the rotation cost (default 1,8,32)",
    )
    ap.add_argument("--no-rotation", action="store_true", help="skip the rotation cost")
    ap.add_argument(
        "--no-rekey", action="store_true", help="skip the rekey cost (MT6D) and the tunnels' handshakes"
    )
    ap.add_argument(
        "--ping-count", type=int, default=None, help="standard ping count (default 300, quick 50)"
    )
    ap.add_argument(
        "--no-load",
        action="store_true",
        help="skip the load rows (ping during TCP, UDP at full rate, TCP with parallel streams)",
    )
    ap.add_argument(
        "--seconds",
        type=int,
        default=None,
        help="length of every iperf3 run but the rekey's (default 10; quick 3, the load rows 2 and 1)",
    )
    ap.add_argument(
        "--scale",
        nargs="?",
        const="1,8,32,256,1024",
        default=None,
        metavar="COUNTS",
        help="only the scale section: streams on one gateway pair (default 1,8,32,256,1024; "
        "quick 1,8), written to scale.json and scale.md",
    )
    ap.add_argument("--set", dest="settings", action="append", default=[],
                    metavar="SECTION.KEY=VALUE",
                    help="MT6D configuration override for the battery's gateways (repeatable), "
                    "e.g. tunnel.receive_buffer_kb=256")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return ap


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _scale(args: argparse.Namespace, progress: Progress) -> int:
    """``--scale``: see mt6d_mp/bench/scale.py."""
    from mt6d_mp.bench import scale

    try:
        counts = tuple(int(x) for x in args.scale.split(",") if x.strip())
    except ValueError:
        print(f"mt6d-bench: --scale takes stream counts separated by commas, not {args.scale!r}",
              file=sys.stderr)
        return EXIT_BAD_ARGS
    if not counts or any(not 1 <= c <= MAX_ADDRESS_HOSTS for c in counts):
        print(f"mt6d-bench: --scale stream counts must be 1..{MAX_ADDRESS_HOSTS}", file=sys.stderr)
        return EXIT_BAD_ARGS
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        res = scale.bench_scale(progress, quick=args.quick,
                                counts=None if args.quick and args.scale == "1,8,32,256,1024" else counts)
        scale.write(res, args.out, progress)
    except KeyboardInterrupt:
        print("mt6d-bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    return 1 if any(p.get("error") for p in res["points"]) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = replace(plan, paths=args.paths)
    if args.rotation_time is not None:
        if args.rotation_time <= 0:
            print("mt6d-bench: --rotation-time must be positive", file=sys.stderr)
            return EXIT_BAD_ARGS
        plan = replace(plan, rotation_time=args.rotation_time)
    if args.rotation_streams is not None:
        plan = replace(plan, rotation_streams=args.rotation_streams)
    if args.no_rotation:
        plan = replace(plan, rotation_streams=())
    if args.no_rekey:
        plan = replace(plan, rekey=False)
    if args.no_load:
        plan = replace(plan, load=False)
    if args.settings:
        try:
            for assignment in args.settings:
                parse_override(assignment)
        except ConfigError as e:
            print(f"mt6d-bench: --set: {e}", file=sys.stderr)
            return EXIT_BAD_ARGS
        plan = replace(plan, mt6d_settings=tuple(args.settings))
    if args.ping_count is not None:
        if args.ping_count < 1:
            print("mt6d-bench: --ping-count must be at least 1", file=sys.stderr)
            return EXIT_BAD_ARGS
        plan = replace(plan, ping_count=args.ping_count)
    if args.seconds is not None:
        if args.seconds < 1:
            print("mt6d-bench: --seconds must be at least 1", file=sys.stderr)
            return EXIT_BAD_ARGS
        plan = replace(plan, tcp_seconds=args.seconds, udp_seconds=args.seconds,
                       ping_load_seconds=args.seconds, udp_full_seconds=args.seconds,
                       parallel_seconds=args.seconds)  # fmt: skip
    if os.geteuid() != 0:
        print("mt6d-bench: needs root (network namespaces)", file=sys.stderr)
        return EXIT_PRIVILEGE
    missing = [t for t in ("ip", "ping", "curl", "iperf3", "nginx") if shutil.which(t) is None]
    missing += [
        t
        for p, t in (("openvpn", "openvpn"), ("wireguard-go", "wireguard-go"), ("wireguard-go", "wg"))
        if p in plan.paths and shutil.which(t) is None
    ]
    if missing:
        print(f"mt6d-bench: missing programs: {' '.join(missing)} (run scripts/bootstrap)", file=sys.stderr)
        return EXIT_NOT_INSTALLED
    progress = Progress(args.quiet)
    if args.scale is not None:
        return _scale(args, progress)
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        results = run(plan, args.out, progress)
        write(results, args.out, progress)
    except KeyboardInterrupt:
        print("mt6d-bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    errors = sum(len(p["errors"]) for p in results["paths"].values())
    errors += sum(1 for r in (results["rotation"] or {}).get("system", []) if r.get("error"))
    errors += len(rekey_errors(results))
    if not args.quiet:
        print(markdown(clean(results)))
    if errors:
        print(f"mt6d-bench: {errors} measurement(s) failed; see {args.out / 'bench.md'}", file=sys.stderr)
        return 1
    return 0
