"""Network namespace helpers for root tests: make, wire, enter and delete namespaces.

Plain functions so that namespace tests, lab tests and scripts can share them. Every namespace
is named by the caller (use a unique prefix per run) and must be deleted with :func:`delete_ns`.
Making, listing, deleting and entering (``setns``) a namespace is the lab's own code
(mt6d_mp/lab/netns.py); what is here is for tests only: running commands that raise
RuntimeError, veth pairs, and :func:`call_in` (a function run in a child inside a namespace).

Kernel facts relied on (docs/KERNEL.md has those of the gateway itself):
- an interface copies ``net.ipv6.conf.default.*`` when it is created, so ``accept_dad=0`` must be
  set in ``all`` and ``default`` *before* the veths exist, or addresses start out tentative;
- veth carrier comes up 0.6-0.7 s after ``ip link set up``; packets sent before are lost.
"""

from __future__ import annotations

import os
import pickle
import secrets
import select
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mt6d_mp.lab import netns
from mt6d_mp.lab.netns import setns as setns  # re-exported: tests enter namespaces through nsutil

T = TypeVar("T")


def unique_prefix() -> str:
    """``t`` + 6 random hex digits: short enough to leave room in 15-character names."""
    return "t" + secrets.token_hex(3)


def run(argv: Sequence[str], check: bool = True, timeout: float = 30) -> str:
    """Run a command, return its stdout; raise with stderr on failure when ``check``."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def run_in(ns: str, argv: Sequence[str], check: bool = True, timeout: float = 30) -> str:
    """Run ``argv`` inside namespace ``ns`` (``ip netns exec`` also remounts /sys for it)."""
    return run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout)


def sysctl_in(ns: str, key: str, value: str) -> None:
    netns.sysctl(ns, [f"{key}={value}"])


def make_ns(name: str, forwarding: bool = True) -> str:
    """Create namespace ``name`` with DAD off (all/default) and IPv6 forwarding as asked.

    Both are set before any interface exists so that the interfaces inherit them.
    """
    netns.add(name)
    try:
        netns.sysctl(name, [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            f"net.ipv6.conf.all.forwarding={int(forwarding)}",
        ])  # fmt: skip
        run_in(name, ["ip", "link", "set", "lo", "up"])
    except BaseException:
        delete_ns(name)
        raise
    return name


def delete_ns(name: str) -> None:
    """Delete a namespace (its veth ends go with it); no error if it is already gone."""
    netns.delete(name, check=False)


def list_ns(prefix: str) -> list[str]:
    return [name for name in netns.list_namespaces() if name.startswith(prefix)]


def veth(ns1: str, if1: str, ns2: str, if2: str, timeout: float = 5.0) -> None:
    """Create a veth pair ``ns1:if1 <-> ns2:if2``, bring both up, wait until the carrier is up."""
    run(["ip", "-n", ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2])
    run(["ip", "-n", ns1, "link", "set", if1, "up"])
    run(["ip", "-n", ns2, "link", "set", if2, "up"])
    wait_operstate_up(ns1, if1, timeout)
    wait_operstate_up(ns2, if2, timeout)


def wait_operstate_up(ns: str, ifname: str, timeout: float = 5.0) -> None:
    """Wait until the interface's operstate reads ``up`` (``ip`` reports ``state UP``)."""
    deadline = time.monotonic() + timeout
    while True:
        out = run(["ip", "-n", ns, "-o", "link", "show", "dev", ifname])
        if " state UP " in out:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ns}:{ifname} not up after {timeout}s: {out.strip()}")
        time.sleep(0.05)


class ChildError(RuntimeError):
    """An exception raised in :func:`call_in`'s child, with the child's traceback."""


def call_in(ns: str, fn: Callable[..., T], *args: Any, timeout: float = 60.0) -> T:
    """Run ``fn(*args)`` in a forked child that entered namespace ``ns``; return its result.

    The child's result (or exception) comes back pickled over a pipe. Code that binds to the
    namespace of the calling process (python-iptables, IPRoute()) thus runs inside ``ns`` while
    the test process itself never leaves the root namespace.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        status = 0
        try:
            setns(ns)
            payload = pickle.dumps(("ok", fn(*args)))
        except BaseException as exc:
            status = 1
            detail = "".join(traceback.format_exception(exc))
            payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}\n{detail}"))
        try:
            with os.fdopen(wfd, "wb") as out:
                out.write(payload)
        finally:
            os._exit(status)
    os.close(wfd)
    deadline = time.monotonic() + timeout
    chunks = []
    with os.fdopen(rfd, "rb", buffering=0) as inp:
        while True:  # until EOF: the child closed its end (or died)
            left = deadline - time.monotonic()
            ready = select.select([inp], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                os.kill(pid, signal.SIGKILL)  # our own child, by its PID
                os.waitpid(pid, 0)
                raise TimeoutError(f"child {pid} in {ns} gave no result in {timeout}s")
            chunk = inp.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(pid, 0)
    data = b"".join(chunks)
    if not data:
        raise ChildError(f"child {pid} in {ns} died without a result")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise ChildError(value)
    return value  # type: ignore[no-any-return]


def ip6tables_save(ns: str) -> list[str]:
    """``ip6tables-legacy -S`` inside ``ns``, one rule per item."""
    return run_in(ns, ["ip6tables-legacy", "-S"]).splitlines()
