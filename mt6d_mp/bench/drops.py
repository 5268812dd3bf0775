"""Where a test's packets were dropped, from counters the kernel and MT6D keep.

Flow: before and after each ping, flood and UDP run (and each load test, battery.py) the
battery reads :func:`drop_counters` (per namespace /proc/net/snmp6, the netfilter queues and
the interfaces' drop columns in /proc/net/dev, via :func:`kernel_drops`; for MT6D every
worker's ``drop_*`` counters over its control socket) and keeps :func:`drops_between` the two;
the report sums them per path (:func:`loss_drops`, :func:`drops_cell`). A loss figure then
comes with where it happened.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mt6d_mp import ctl
from mt6d_mp.bench.results import dig

if TYPE_CHECKING:
    from mt6d_mp.bench.tunnels import PathLab

# Where a test's packets were dropped, from counters that the kernel and MT6D keep: per namespace
# (/proc/net/snmp6), per netfilter queue (the kernel's queue_dropped and user_dropped), per
# interface (/proc/net/dev: a veth whose peer's backlog is full, a tun device whose reader falls
# behind) and, for MT6D, its workers' drop_* counters. A loss figure then comes with where it
# happened.
SNMP6_DROPS = ("Ip6InDiscards", "Ip6OutDiscards", "Udp6InErrors", "Udp6RcvbufErrors",
               "Udp6SndbufErrors", "Icmp6InErrors")


# The files kernel_drops reads, in one `cat` per namespace (nfnetlink_queue exists only while
# the module is loaded; cat prints the others either way).
PROC_FILES = ("/proc/net/snmp6", "/proc/net/netfilter/nfnetlink_queue", "/proc/net/dev")
# /proc/net/dev, after "<interface>:": 8 receive columns (bytes packets errs drop fifo frame
# compressed multicast), then 8 transmit columns (bytes packets errs drop fifo colls carrier
# compressed).
_DEV_DROPS = ((3, "rx_dropped"), (11, "tx_dropped"))


def kernel_drops(role: str, text: str) -> Counter[str]:
    """Drop counters in /proc/net/snmp6, /proc/net/netfilter/nfnetlink_queue and /proc/net/dev
    (any of them, in any order: the three formats do not overlap)."""
    found: Counter[str] = Counter()
    for line in text.splitlines():
        name, colon, rest = line.partition(":")
        if colon and name.strip() and " " not in name.strip():  # /proc/net/dev: "  ext0: 1 2 ..."
            cols = rest.split()
            if len(cols) >= 16 and all(c.isdigit() for c in cols):
                for i, what in _DEV_DROPS:
                    found[f"{role} {name.strip()} {what}"] += int(cols[i])
            continue
        f = line.split()
        if len(f) == 2 and f[0] in SNMP6_DROPS:
            found[f"{role} {f[0]}"] += int(f[1])
        elif len(f) >= 7 and f[0].isdigit():  # queue portid waiting mode range q_drop u_drop ...
            found[f"{role} nfqueue_dropped"] += int(f[5]) + int(f[6])
    return found


def drop_counters(pl: PathLab) -> Counter[str]:
    """Every drop counter of the lab, as ``"<namespace role> <counter>": value``."""
    found: Counter[str] = Counter()
    for n in pl.info.namespaces:
        text = pl.lab.exec(n.name, ["cat", *PROC_FILES], check=False).stdout
        found.update(kernel_drops(n.role, text))
    if pl.path == "mt6d":
        for gw in (pl.info.gateway_a, pl.info.gateway_b):
            assert gw.runtime_dir
            status = ctl.Ctl(Path(gw.runtime_dir), timeout=5).call(b"status")
            for w in status["workers"]:
                for key, value in w.get("counters", {}).items():
                    # aqm_: bulk messages the queue management dropped on purpose (a loss
                    # TCP sees and retransmits), listed with the rest so that none goes unseen.
                    if key.startswith(("drop_", "aqm_")):
                        found[f"{gw.role} {w['name']} {key}"] += int(value)
    return found


def drops_between(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in sorted(after) if after[k] > before[k]}


def summed_drops(tests: Iterable[dict[str, Any] | None]) -> dict[str, int] | None:
    """The drop counters that grew during the tests, summed; None if any reading is missing."""
    total: Counter[str] = Counter()
    for t in tests:
        if not t or t.get("drops") is None:
            return None
        total.update(t["drops"])
    return dict(total)


def loss_drops(d: dict[str, Any]) -> dict[str, int] | None:
    """The drop counters that grew during the path's loss tests, summed; None if unread."""
    return summed_drops([d.get("ping"), *d.get("flood", []), *(dig(d, "udp", "runs") or [])])


def _drops_list(drops: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))


def _cell(drops: dict[str, int] | None) -> str:
    return "-" if drops is None else _drops_list(drops) or "none"


def drops_cell(d: dict[str, Any]) -> str:
    return _cell(loss_drops(d))


def runs_drops_cell(tests: Sequence[dict[str, Any] | None]) -> str:
    """A table cell: the drop counters that grew during the tests, ``none``, or ``-`` if a reading
    is missing or there were no tests."""
    return _cell(summed_drops(tests) if tests else None)


def drops_text(drops: dict[str, int] | None) -> str:
    return "; dropped: " + _drops_list(drops) if drops else ""
