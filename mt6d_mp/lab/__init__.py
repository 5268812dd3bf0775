"""The network namespace lab (two gateways, or three peers) used by the tests, the demo and the
benchmark.

Every public name lives in one of the package's modules and is re-exported here, so that
``from mt6d_mp.lab import Lab`` works as it always did. The modules, in the order a lab is made:

- info.py: :class:`LabInfo` and its parts (what a lab looks like), the lab's errors;
- netns.py: named namespaces (prefixes, commands echoed like wg-quick, ``setns``), shared with
  tests/nsutil.py;
- plan.py: the address plan and :func:`make_plan`, everything ``up`` will create;
- network.py: carrying the plan out (namespaces, links, addresses, routes, proxies);
- processes.py: the state file and the processes a lab starts, stopped by recorded PID;
- gateway.py: the gateways' MT6D files and supervisors;
- webserver.py: the HTTP server inside a lab;
- lab.py: :class:`Lab` (``up``, ``down``, ``spawn``, ...) and the module-level ``up``/``down``/``load``;
- pcap.py: reading a capture of the external link (:func:`read_pcap`, :func:`analyse_capture`);
- demo.py: ``mt6d-lab demo``; cli.py: ``mt6d-lab`` (:func:`main`).
"""

from mt6d_mp.lab.cli import main
from mt6d_mp.lab.demo import THREAT_MODEL, demo
from mt6d_mp.lab.gateway import SUPERVISOR, log_tail
from mt6d_mp.lab.info import (
    InterfaceInfo,
    LabError,
    LabInfo,
    LabPrivilegeError,
    LabUsageError,
    NamespaceInfo,
    SiteInfo,
    StreamInfo,
)
from mt6d_mp.lab.lab import LAB_ROOT, MAX_STREAMS, Lab, down, load, up
from mt6d_mp.lab.netns import (
    MAX_PREFIX,
    check_prefix,
    list_namespaces,
    namespaces_with_prefix,
    random_prefix,
    setns,
)
from mt6d_mp.lab.pcap import CapturedPacket, CaptureReport, analyse_capture, read_pcap
from mt6d_mp.lab.plan import (
    GATEWAY_LL,
    ROUTER_A,
    ROUTER_B,
    SITE_A_NET,
    SITE_B_NET,
    SWITCHED_NET,
    TOPOLOGIES,
    link_local_of,
)
from mt6d_mp.lab.processes import proc_stat

__all__ = [
    "GATEWAY_LL",
    "LAB_ROOT",
    "MAX_PREFIX",
    "MAX_STREAMS",
    "ROUTER_A",
    "ROUTER_B",
    "SITE_A_NET",
    "SITE_B_NET",
    "SUPERVISOR",
    "SWITCHED_NET",
    "THREAT_MODEL",
    "TOPOLOGIES",
    "CaptureReport",
    "CapturedPacket",
    "InterfaceInfo",
    "Lab",
    "LabError",
    "LabInfo",
    "LabPrivilegeError",
    "LabUsageError",
    "NamespaceInfo",
    "SiteInfo",
    "StreamInfo",
    "analyse_capture",
    "check_prefix",
    "demo",
    "down",
    "link_local_of",
    "list_namespaces",
    "load",
    "log_tail",
    "main",
    "namespaces_with_prefix",
    "proc_stat",
    "random_prefix",
    "read_pcap",
    "setns",
    "up",
]
