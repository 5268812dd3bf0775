"""What one mt6d-bench run measures: the paths, the tests and their sizes (full and quick).

Flow: cli.py starts from :data:`FULL` or :data:`QUICK` and replaces what the command line asks
for; every other module reads the :class:`Plan` and the constants here (paths, the gateways'
outer addresses and the sites for the tunnels); :class:`Progress` prints timestamped lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from mt6d_mp.lab import ROUTER_A, ROUTER_B, SITE_A_NET, SITE_B_NET

SCHEMA = "mt6d-bench/1"
PATHS = ("none", "mt6d", "openvpn", "wireguard-go")
TOPOLOGY = "routed"
SIDES = ("a", "b")
OUTER = {"a": "2001:db8:a::fe", "b": "2001:db8:b::fe"}  # the gateways' ext0 addresses (tunnels)
ROUTER = {"a": ROUTER_A, "b": ROUTER_B}
SITE = {"a": SITE_A_NET + "/64", "b": SITE_B_NET + "/64"}


@dataclass(frozen=True)
class Plan:
    mode: str
    paths: tuple[str, ...]
    rotation_time: float
    ping_count: int
    ping_interval: float
    floods: tuple[int, ...]
    http_sizes: tuple[int, ...]
    http_repeats: int
    tcp_seconds: int
    tcp_runs: int
    udp_rate_mbit: int
    udp_len: int
    udp_seconds: int
    udp_runs: int
    load: bool  # the load rows (battery.py: Runner.ping_under_tcp, udp_full, tcp_parallel)
    load_runs: int  # repeats of each load row
    ping_load_seconds: int  # the iperf3 TCP transfer the ping runs under
    ping_load_interval: float  # ping -i during it
    ping_load_margin: float  # the ping starts this long after the transfer and ends as long before
    udp_full_lens: tuple[int, ...]  # datagram sizes of iperf3 UDP at full offered rate (-b 0)
    udp_full_seconds: int
    parallel_streams: int  # iperf3 TCP -P
    parallel_seconds: int
    rotation_streams: tuple[int, ...]
    rotation_cycles: int  # in process, per stream count
    rotation_observe: float  # seconds of a running supervisor's rotations, per stream count
    rotation_system_time: float  # rotation_time of those labs
    rekey: bool  # the rekey cost (rekey.py, handshakes.py)
    rekey_rotation_time: float  # rotation_time of the MT6D rekey labs
    rekey_interval: float  # crypto.regen_interval of the rekeying lab (the baseline's is 0)
    rekey_window: float  # its crypto.regen_window
    rekey_observe: float  # seconds of the rekeying lab without traffic, for the exchange's duration
    rekey_seconds: int  # iperf3 TCP run length, each lab
    rekey_runs: int  # runs per lab, the two labs taking turns
    reneg_sec: int  # OpenVPN --reneg-sec in its handshake lab
    reneg_observe: float  # seconds of that lab after it is up
    handshake_repeats: int  # wireguard-go handshakes
    # MT6D's configuration overrides (mt6d-bench --set), both gateways of the battery's lab
    mt6d_settings: tuple[str, ...] = ()


FULL = Plan(
    mode="full",
    paths=PATHS,
    rotation_time=2.0,
    ping_count=300,
    ping_interval=0.2,
    floods=(10_000, 50_000),
    http_sizes=(500_000, 1_000_000, 10_000_000, 50_000_000),
    http_repeats=3,
    tcp_seconds=10,
    tcp_runs=3,
    udp_rate_mbit=100,
    udp_len=1200,
    udp_seconds=10,
    udp_runs=3,
    load=True,
    load_runs=3,
    ping_load_seconds=10,
    ping_load_interval=0.05,
    ping_load_margin=0.5,
    udp_full_lens=(200, 1200),
    udp_full_seconds=10,
    parallel_streams=4,
    parallel_seconds=10,
    rotation_streams=(1, 8, 32),
    rotation_cycles=500,
    rotation_observe=13.0,
    rotation_system_time=2.0,
    rekey=True,
    rekey_rotation_time=1.0,
    rekey_interval=3.0,
    rekey_window=1.0,
    rekey_observe=20.0,
    rekey_seconds=20,
    rekey_runs=3,
    reneg_sec=4,
    reneg_observe=21.0,
    handshake_repeats=10,
)


QUICK = replace(
    FULL,
    mode="quick",
    ping_count=50,
    floods=(2_000,),
    http_sizes=(500_000, 10_000_000),
    http_repeats=2,
    tcp_seconds=3,
    tcp_runs=1,
    udp_seconds=3,
    udp_runs=1,
    # The load rows in about 6 s a path (about 37 s for the four paths at 3, 2 and 2 s):
    # 30 pings during a 2 s transfer, 1 s of UDP per datagram size and of TCP -P 4.
    load_runs=1,
    ping_load_seconds=2,
    ping_load_margin=0.25,
    udp_full_seconds=1,
    parallel_seconds=1,
    rotation_cycles=100,
    rotation_observe=5.0,
    rekey_observe=8.0,
    rekey_seconds=10,
    rekey_runs=1,
    reneg_observe=9.0,
    handshake_repeats=3,
)


class Progress:
    """Timestamped progress lines on stdout."""

    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.monotonic()
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)
