"""Carrying out a plan (plan.py): namespaces, links, addresses, routes, NDP proxies.

Flow: :meth:`Lab.up` calls these in order, each over the whole plan, then waits for every link:

- :func:`create_namespaces`: each namespace, reported to ``created`` as soon as it exists (the
  lab records it in its state file), with its sysctls set before any interface exists so that
  every interface inherits ``default``;
- :func:`create_links`: bridges, veth pairs, bridge ports;
- :func:`set_links_up`, :func:`add_addresses`, :func:`add_routes`, :func:`add_proxies`;
- :func:`wait_links_up`: until every interface reads operstate UP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from mt6d_mp.lab import netns
from mt6d_mp.lab.info import LabError
from mt6d_mp.lab.netns import run
from mt6d_mp.lab.plan import NetworkPlan

LINK_UP_TIMEOUT = 10.0


def create_namespaces(plan: NetworkPlan, created: Callable[[str], None]) -> None:
    bridge_nf = Path("/proc/sys/net/bridge").is_dir()
    for name, _role in plan.namespaces:
        netns.add(name)
        created(name)
        # before any interface exists, so that every interface inherits "default"
        netns.sysctl(name, plan.sysctls[name])
        if bridge_nf and name in plan.bridge_namespaces:
            # bridged frames must not go through this namespace's ip6tables
            netns.sysctl(
                name,
                [
                    "net.bridge.bridge-nf-call-ip6tables=0",
                    "net.bridge.bridge-nf-call-iptables=0",
                    "net.bridge.bridge-nf-call-arptables=0",
                ],
                ignore_missing=True,
            )
        run(["ip", "-n", name, "link", "set", "lo", "up"])


def create_links(plan: NetworkPlan) -> None:
    for b in plan.bridges:
        run(
            [
                "ip", "-n", b.ns, "link", "add", b.name, "address", b.mac, "type", "bridge",
                "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
            ]
        )  # fmt: skip
    for v in plan.veths:
        mtu = ["mtu", str(v.mtu)] if v.mtu != 1500 else []
        run(
            [
                "ip", "-n", v.ns, "link", "add", v.name, "address", v.mac, *mtu,
                "type", "veth", "peer", "name", v.peer_name, "address", v.peer_mac, *mtu,
                "netns", v.peer_ns,
            ]
        )  # fmt: skip
    for b in plan.bridges:
        for port in b.ports:
            run(["ip", "-n", b.ns, "link", "set", port, "master", b.name])


def set_links_up(plan: NetworkPlan) -> None:
    for b in plan.bridges:
        run(["ip", "-n", b.ns, "link", "set", b.name, "up"])
    for v in plan.veths:
        run(["ip", "-n", v.ns, "link", "set", v.name, "up"])
        run(["ip", "-n", v.peer_ns, "link", "set", v.peer_name, "up"])


def add_addresses(plan: NetworkPlan) -> None:
    """One ``ip -batch`` per namespace (a site of hundreds of host addresses takes one run)."""
    by_ns: dict[str, list[str]] = {}
    for ns, dev, cidr in plan.addresses:
        by_ns.setdefault(ns, []).append(f"addr add {cidr} dev {dev} nodad\n")
    for ns, lines in by_ns.items():
        run(["ip", "-n", ns, "-batch", "-"], stdin="".join(lines))


def add_routes(plan: NetworkPlan) -> None:
    for ns, args in plan.routes:
        run(["ip", "-n", ns, *args])


def add_proxies(plan: NetworkPlan) -> None:
    # answer proxied solicitations at once, not after a random delay of up to 0.8 s
    for ns, dev in dict.fromkeys((ns, dev) for ns, dev, _ in plan.proxies):
        run(["ip", "-n", ns, "ntable", "change", "name", "ndisc_cache", "dev", dev,
              "proxy_delay", "0"])  # fmt: skip
    for ns, dev, addr in plan.proxies:
        run(["ip", "-n", ns, "-6", "neigh", "add", "proxy", addr, "dev", dev])


def wait_links_up(plan: NetworkPlan) -> None:
    pending: dict[str, set[str]] = {}
    for v in plan.veths:
        pending.setdefault(v.ns, set()).add(v.name)
        pending.setdefault(v.peer_ns, set()).add(v.peer_name)
    for b in plan.bridges:
        pending.setdefault(b.ns, set()).add(b.name)
    deadline = time.monotonic() + LINK_UP_TIMEOUT
    while True:
        for ns in list(pending):
            out = run(["ip", "-n", ns, "-j", "link", "show"], change=False).stdout
            for link in json.loads(out):
                if link.get("operstate") == "UP":
                    pending[ns].discard(link.get("ifname", ""))
            if not pending[ns]:
                del pending[ns]
        if not pending:
            return
        if time.monotonic() > deadline:
            late = " ".join(f"{ns}/{i}" for ns, s in sorted(pending.items()) for i in sorted(s))
            raise LabError(f"links not up after {LINK_UP_TIMEOUT:g} s: {late}")
        time.sleep(0.05)

# -- MT6D configuration and supervisors --
