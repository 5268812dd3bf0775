"""A stand-in worker module for tests/unit/test_spawner.py: ``run(argv)`` as the workers have."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def run(argv: list[str] | None = None) -> int:
    args = list(argv or [])
    out = args[args.index("--out") + 1]
    with open(out, "w") as f:
        json.dump({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
                   "argv0": sys.argv[0], "comm": Path("/proc/self/comm").read_text().strip(),
                   "cmdline": Path("/proc/self/cmdline").read_bytes().decode().split("\0"),
                   "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                   "stdin": os.readlink("/proc/self/fd/0")}, f)
    if "--sleep" in args:
        time.sleep(float(args[args.index("--sleep") + 1]))
    if "--exit" in args:
        sys.exit(int(args[args.index("--exit") + 1]))
    return 7
