"""Network namespaces by name: the commands that change them, and entering one.

The one place the lab and the root tests (tests/nsutil.py) make, list, delete and enter named
namespaces (``/run/netns/NAME``). Flow, in order:

- lab prefixes: :func:`random_prefix`, :func:`check_prefix`;
- :func:`run`: run a command; system changes are echoed (``[#] ...``, like wg-quick) at info
  level on the ``mt6d_mp.lab`` logger, read-only commands at debug level;
- :func:`add`, :func:`sysctl`, :func:`delete`, :func:`list_namespaces`,
  :func:`namespaces_with_prefix`;
- :func:`setns`: move the calling thread into a namespace (mt6d_mp/io/netns.py, shared with
  the supervisor's netlink).
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import subprocess
from collections.abc import Sequence

from mt6d_mp.io.netns import NETNS_RUN_DIR as NETNS_RUN_DIR
from mt6d_mp.io.netns import setns as setns
from mt6d_mp.lab.info import LabError, LabUsageError

log = logging.getLogger("mt6d_mp.lab")

MAX_PREFIX = 8
PREFIX_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_]{{0,{MAX_PREFIX - 1}}}$")


def random_prefix(stem: str = "m6") -> str:
    """A fresh lab prefix: ``stem`` followed by random hex, 6 characters for the default stem."""
    return stem + secrets.token_hex(max(1, (MAX_PREFIX - len(stem) - 2) // 2))


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise LabUsageError(
            f"bad lab prefix {prefix!r}: 1-{MAX_PREFIX} characters of letters, digits and '_', "
            "starting with a letter or digit"
        )
    return prefix


def run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0, change: bool = True,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (``stdin``: its input); ``change`` commands (system changes) are echoed at
    info level."""
    if change:
        log.info("[#] %s", shlex.join(cmd))
    else:
        log.debug("[>] %s", shlex.join(cmd))
    try:
        if stdin is None:
            proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        else:
            proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                                  input=stdin)
    except FileNotFoundError as e:
        raise LabError(f"{cmd[0]}: command not found") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"command timed out after {timeout:g} s: {shlex.join(cmd)}") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"command failed (exit {proc.returncode}): {shlex.join(cmd)}: {detail}")
    return proc


def add(name: str) -> None:
    """Create namespace ``name`` (``ip netns add``)."""
    run(["ip", "netns", "add", name])


def sysctl(name: str, settings: Sequence[str], *, ignore_missing: bool = False) -> None:
    """Set ``KEY=VALUE`` sysctls inside namespace ``name`` (``-e``: keys that do not exist pass)."""
    run(["ip", "netns", "exec", name, "sysctl", "-q", *(["-e"] if ignore_missing else []), "-w", *settings])


def delete(name: str, *, check: bool = True) -> None:
    """Delete namespace ``name``; its veth ends go with it."""
    run(["ip", "netns", "del", name], check=check)


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], change=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespaces_with_prefix(prefix: str) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(prefix + "-")]


