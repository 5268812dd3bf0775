"""mt6d-bench: the thesis's test battery through MT6D and the tunnels an operator would pick instead.

One invocation measures, each in a fresh routed namespace lab (``mt6d_mp.lab``, topology
``routed``: site A 2001:db8:a::/64 - gateway A - router - gateway B - site B 2001:db8:b::/64):

* ``none``: no tunnel, plain kernel forwarding between the gateways (the ceiling);
* ``mt6d``: MT6D with encryption on and a rotation every ``--rotation-time`` seconds (2 s), so
  every test crosses rotations;
* ``openvpn``: OpenVPN 2.6 between the gateways' external addresses, UDP over IPv6, tun,
  AES-256-GCM, TLS with two self-signed certificates pinned by ``--peer-fingerprint``;
* ``wireguard-go``: wireguard-go on a TUN device in each gateway (the kernel has no WireGuard).

For the two tunnels the lab is built without MT6D; each gateway gets an outer address on ext0
(``2001:db8:a::fe``, ``2001:db8:b::fe``), the tunnel runs between those across the router, and
the other site's /64 is routed into the tunnel (with a /128 exception for the peer's outer
address via the router). Only the gateway namespaces are changed.

Tests per path (table 4.1 of the thesis, scaled; ``--quick`` in brackets): standard ping, 300
[50] at 0.2 s; ping floods of 10k and 50k [2k]; HTTP downloads from nginx with curl of 500 kB,
1 MB, 10 MB and 50 MB [500 kB, 10 MB], three [two] times each, SHA-256 checked; iperf3 TCP 10 s
x3 [3 s x1]; iperf3 UDP at 100 Mbit/s with 1200-byte datagrams, 10 s x3 [3 s x1] (loss,
jitter). Under load (``--no-load`` skips it): a ping every 0.05 s during an iperf3 TCP
transfer, 10 s x3 [2 s x1]; iperf3 UDP at full offered rate (``-b 0``) with 200- and 1200-byte
datagrams, 10 s x3 [1 s x1] each (received Mbit/s and packets/s, loss); iperf3 TCP with 4
parallel streams, 10 s x3 [1 s x1]. Each ping, flood and UDP run and each load run also records
which drop counters grew while it ran, so a loss comes with where it happened. Host metrics of
each tunnel's processes on both gateways: CPU seconds per GB carried and private memory per
gateway. MT6D only: the cost of one rotation for 1, 8 and 32 streams, in process and on a
running supervisor. The rekey cost: MT6D's key exchange timed on running gateways rekeying
every 3-4 s (rotation 1 s), without traffic and during iperf3 TCP transfers in 0.5 s intervals,
against a lab that keys only at start (the transfers' mean and their lowest interval in the
second after each rekey); OpenVPN's renegotiation and first handshake and wireguard-go's
handshake, each in a lab of its own.

Writes ``bench.json``, ``bench.md`` and PNG charts (``latency.png``, ``loss.png``,
``throughput.png``, ``load.png``, ``host.png``, ``rotation.png``, ``rekey.png``) into
``--out``. Medians with min-max over the repeats. Needs root. Exit code 0 when every
measurement ran, 1 when some failed (the results are written either way), 2 for bad arguments,
4 without root, 5 when a program is missing.

Usage::

    mt6d-bench [--quick] [--out results/] [--paths none,mt6d,openvpn,wireguard-go]
               [--rotation-time S] [--rotation-streams 1,8,32] [--no-rotation] [--no-rekey]
               [--no-load] [--ping-count N] [--seconds S]

The modules, in the order a run uses them: plan.py (what to run), cli.py (``main``), runner.py
(the whole run), tunnels.py (a path's lab and its tunnel), host.py (the machine, CPU and memory
of the tunnel processes), battery.py (the tests), load.py (the load rows), drops.py (drop
counters), rotation.py with supervisor_debug.py (rotation cost), rekey.py with handshakes.py
(rekey cost), results.py (reading results), report.py (bench.md, targets), charts.py (PNG
charts). Every public name is re-exported here."""

from mt6d_mp.bench.battery import Runner, parse_ping, tcp_figures
from mt6d_mp.bench.charts import charts
from mt6d_mp.bench.cli import main, parser
from mt6d_mp.bench.drops import drop_counters, drops_between, drops_cell, kernel_drops, loss_drops
from mt6d_mp.bench.handshakes import (
    last_handshake,
    openvpn_handshakes,
    openvpn_times,
    parse_uapi,
    wireguard_handshakes,
)
from mt6d_mp.bench.host import TunnelProcesses, cpu_delta, descendants, host_metrics, machine
from mt6d_mp.bench.load import (
    load_tests,
    ping_schedule,
    ping_under_tcp,
    pool_pings,
    tcp_parallel,
    udp_figures,
    udp_full,
)
from mt6d_mp.bench.plan import FULL, PATHS, QUICK, SCHEMA, Plan, Progress
from mt6d_mp.bench.rekey import (
    KeyEvent,
    Poller,
    bench_rekey,
    counter_growth,
    dips,
    exchange_samples,
    interval_rates,
    key_events,
    mt6d_rekey,
    rekeys_in,
)
from mt6d_mp.bench.report import markdown, targets
from mt6d_mp.bench.results import rekey_errors, stats
from mt6d_mp.bench.rotation import bench_rotation, rotation_in_process, rotation_system
from mt6d_mp.bench.runner import bench_path, make_files, run, write
from mt6d_mp.bench.tunnels import PathLab, path_lab, setup_openvpn, setup_wireguard

__all__ = [
    "FULL",
    "PATHS",
    "QUICK",
    "SCHEMA",
    "KeyEvent",
    "PathLab",
    "Plan",
    "Poller",
    "Progress",
    "Runner",
    "TunnelProcesses",
    "bench_path",
    "bench_rekey",
    "bench_rotation",
    "charts",
    "counter_growth",
    "cpu_delta",
    "descendants",
    "dips",
    "drop_counters",
    "drops_between",
    "drops_cell",
    "exchange_samples",
    "host_metrics",
    "interval_rates",
    "kernel_drops",
    "key_events",
    "last_handshake",
    "load_tests",
    "loss_drops",
    "machine",
    "main",
    "make_files",
    "markdown",
    "mt6d_rekey",
    "openvpn_handshakes",
    "openvpn_times",
    "parse_ping",
    "parse_uapi",
    "parser",
    "path_lab",
    "ping_schedule",
    "ping_under_tcp",
    "pool_pings",
    "rekey_errors",
    "rekeys_in",
    "rotation_in_process",
    "rotation_system",
    "run",
    "setup_openvpn",
    "setup_wireguard",
    "stats",
    "targets",
    "tcp_figures",
    "tcp_parallel",
    "udp_figures",
    "udp_full",
    "wireguard_handshakes",
    "write",
]
