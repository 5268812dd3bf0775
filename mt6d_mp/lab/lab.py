"""The lab: one namespace network of two or three gateways, named by its prefix, built and
removed as a whole.

Topology (``P`` is the lab's prefix)::

    switched:  P-ha[i] --eth0|int0-- P-ga --ext0|ga-- P-sw(br0) --gb|ext0-- P-gb --int0|eth0-- P-hb[i]
    routed:    P-ha[i] --eth0|int0-- P-ga --ext0|ga-- P-rt --gb|ext0-- P-gb --int0|eth0-- P-hb[i]
    three-sites: switched, and a third site on the same switch:
                                                    P-sw(br0) --gc|ext0-- P-gc --int0|eth0-- P-hc[i]

With ``hosts_as_addresses`` every host of a site is an address of one namespace (``P-ha``,
``P-hb``; one veth, one MAC), for hundreds of streams; ``shards`` spreads the streams over that
many queue numbers, so that each gateway runs that many stream workers.
With several streams (hosts per site), ``int0`` is a bridge inside the gateway with one veth port
``h<i>`` per host. In a three-site lab each gateway is a peer of the two others: host ``i`` of
each site is in a stream with host ``i`` of each other site (A-B, A-C, B-C), so each gateway
carries two streams per host.
The host-mode topologies (``host-gateway``, ``host-host``: MT6D on a host itself, one stream)
are drawn in hostplan.py.

Flow of :meth:`Lab.up`: claim the prefix (refuse a live lab or foreign namespaces, start a
fresh ``/run/mt6d-lab/P/state.json``), make the plan (plan.py) and its :class:`LabInfo`, carry
the plan out (network.py: every namespace recorded in the state file as soon as it exists), write
the gateways' MT6D files and start their supervisors (gateway.py), then store the info with the
PIDs. Any failure (also Ctrl-C) rolls back what was done and re-raises. :meth:`Lab.down` (or
``mt6d-lab down --prefix P``, or :func:`down` from any process) kills the recorded processes by
PID (checked against their start time, processes.py) and deletes the recorded namespaces.
In order: :class:`Lab` (attach, plan, up, processes and services inside the lab, down), then the
module-level :func:`up`, :func:`down` and :func:`load`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from mt6d_mp.lab import gateway, netns, network, webserver
from mt6d_mp.lab.info import LabError, LabInfo, LabPrivilegeError, LabUsageError
from mt6d_mp.lab.netns import check_prefix, namespaces_with_prefix
from mt6d_mp.lab.plan import TOPOLOGIES, NetworkPlan, Shape, build_info, make_plan, ns_name
from mt6d_mp.lab.processes import TERM_TIMEOUT, ProcessTable, StateFile, mkdir

log = logging.getLogger("mt6d_mp.lab")

LAB_ROOT = Path("/run/mt6d-lab")
MAX_STREAMS = 50  # a namespace per host
MAX_ADDRESS_HOSTS = 4096  # hosts as addresses of one namespace per site


class Lab:
    """One lab, named by its prefix. ``up()`` builds it, ``down()`` removes what was recorded."""

    def __init__(
        self,
        prefix: str,
        topology: str = "switched",
        *,
        streams: int = 1,
        rotation_time: float = 2.0,
        mt6d: bool = True,
        router_mtu: int = 1500,
        encrypt: bool = True,
        settings: Sequence[str] = (),
        ready_timeout: float = 20.0,
        start_supervisors: bool = True,
        host_accept_ra: bool = False,
        hosts_as_addresses: bool = False,
        shards: int = 0,
        root: Path = LAB_ROOT,
    ) -> None:
        self.prefix = check_prefix(prefix)
        if topology not in TOPOLOGIES:
            raise LabUsageError(f"unknown topology {topology!r}: expected one of {TOPOLOGIES}")
        most = MAX_ADDRESS_HOSTS if hosts_as_addresses else MAX_STREAMS
        if not 1 <= streams <= most:
            raise LabUsageError(f"--streams must be 1..{most}"
                                + ("" if hosts_as_addresses else " (more with --hosts-as-addresses)")
                                + f", not {streams}")
        if hosts_as_addresses and topology not in ("switched", "routed"):
            raise LabUsageError("--hosts-as-addresses: switched or routed topology only")
        if shards < 0 or (shards and topology == "three-sites"):
            raise LabUsageError("--shards: a number >= 1, two-site topologies only")
        if topology.startswith("host-") and streams != 1:
            raise LabUsageError(f"--topology {topology}: one host per end, so one stream")
        if rotation_time <= 0:
            raise LabUsageError("--rotation-time must be positive")
        if not 1280 <= router_mtu <= 65535:
            raise LabUsageError("--router-mtu must be 1280..65535 (IPv6 minimum MTU is 1280)")
        self.topology = topology
        self.streams = streams
        self.rotation_time = float(rotation_time)
        self.mt6d = mt6d
        self.router_mtu = router_mtu
        self.encrypt = encrypt
        self.settings = list(settings)  # supervisor --set SECTION.KEY=VALUE, both gateways
        self.ready_timeout = ready_timeout
        self.start_supervisors = start_supervisors
        self.host_accept_ra = host_accept_ra
        self.hosts_as_addresses = hosts_as_addresses
        self.shards = shards
        self.dir = root / prefix
        self.state = StateFile(self.dir / "state.json")
        self.procs = ProcessTable(self.prefix, self.state)
        self._info: LabInfo | None = None
        self.claimed = False  # this object started the current state file (up() got going)

    # -- attaching to a lab made elsewhere (another process, the CLI) --

    @classmethod
    def attach(cls, prefix: str, root: Path = LAB_ROOT) -> Lab:
        """A handle on an existing lab (made by ``mt6d-lab up``), to spawn processes or ``down``."""
        lab = cls(check_prefix(prefix), root=root)
        data = lab.state.load()
        if data is None:
            raise LabError(f"no lab with prefix {prefix} (no {lab.state.path})")
        if data.get("info"):
            info = LabInfo.from_dict(data["info"])
            lab._info = info
            lab.topology, lab.mt6d, lab.rotation_time = info.topology, info.mt6d, info.rotation_time
            lab.streams = len(info.sites[0].hosts) if info.sites else len(info.streams)
        return lab

    @property
    def info(self) -> LabInfo:
        if self._info is None:
            raise LabError(f"lab {self.prefix} is not up")
        return self._info

    def __enter__(self) -> LabInfo:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def ns_name(self, role: str) -> str:
        return ns_name(self.prefix, role)

    # -- building --

    @property
    def shape(self) -> Shape:
        return Shape(
            prefix=self.prefix,
            topology=self.topology,
            streams=self.streams,
            mt6d=self.mt6d,
            router_mtu=self.router_mtu,
            host_accept_ra=self.host_accept_ra,
            hosts_as_addresses=self.hosts_as_addresses,
            shards=self.shards,
        )

    def plan(self) -> NetworkPlan:
        return make_plan(self.shape)

    def _build_info(self, plan: NetworkPlan) -> LabInfo:
        return build_info(
            plan, self.shape, rotation_time=self.rotation_time, lab_dir=self.dir, state_file=self.state.path
        )

    def up(self) -> LabInfo:
        """Build the lab; on any failure (also Ctrl-C) roll back what was done and re-raise."""
        if os.geteuid() != 0:
            raise LabPrivilegeError("the lab needs root (network namespaces)")
        self._claim()
        plan = self.plan()
        info = self._build_info(plan)
        try:
            network.create_namespaces(plan, self._record_namespace)
            network.create_links(plan)
            network.set_links_up(plan)
            network.add_addresses(plan)
            network.add_routes(plan)
            network.add_proxies(plan)
            network.wait_links_up(plan)
            if self.mt6d:
                gateway.write_configs(info, encrypt=self.encrypt)
                if self.start_supervisors:
                    gateway.start_supervisors(
                        self.procs, info, settings=self.settings, ready_timeout=self.ready_timeout
                    )
            with self.state.edit() as st:
                pids = {p["name"]: p["pid"] for p in st.get("pids", [])}
                info = LabInfo(**{**info.__dict__, "pids": pids})
                st["status"] = "up"
                st["info"] = info.to_dict()
        except BaseException as e:
            log.error("lab %s: setup failed (%s); rolling back", self.prefix, str(e) or type(e).__name__)
            try:
                self._teardown(keep_files=True)
            except Exception as e2:  # report, but the original error is what matters
                log.error("lab %s: rollback incomplete: %s", self.prefix, e2)
            raise
        self._info = info
        log.info("lab %s is up (%s, %s)", self.prefix, self.topology, "MT6D" if self.mt6d else "no MT6D")
        return info

    def _claim(self) -> None:
        """Refuse to build over a live lab of the same prefix; start a fresh state file."""
        old = self.state.load()
        if old and (old.get("namespaces") or old.get("pids")):
            raise LabError(
                f"lab {self.prefix} already exists ({self.state.path}); "
                f"run: mt6d-lab down --prefix {self.prefix}"
            )
        clash = namespaces_with_prefix(self.prefix)
        if clash:
            raise LabError(
                f"namespaces with prefix {self.prefix}- already exist and are not ours: "
                f"{' '.join(clash)}; choose another prefix"
            )
        if self.dir.exists():
            shutil.rmtree(self.dir)
        mkdir(self.dir, 0o755)
        with self.state.edit() as st:
            st.clear()
            st.update(
                prefix=self.prefix,
                topology=self.topology,
                status="starting",
                created=time.time(),
                owner_pid=os.getpid(),
                namespaces=[],
                pids=[],
                info=None,
            )
        self.claimed = True

    def _record_namespace(self, name: str) -> None:
        with self.state.edit() as st:
            st["namespaces"].append(name)

    # -- processes inside the lab (processes.py) --

    def exec(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in namespace ``ns`` and wait for it (output captured as text)."""
        return netns.run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout, change=False)

    def spawn(self, ns: str, argv: Sequence[str], *, name: str, log_path: Path | None = None) -> int:
        """Start a background process in ``ns``; its PID is recorded so that ``down`` kills it.

        It runs in a session of its own (its PID is its process group), so a terminal's Ctrl-C
        does not reach it and ``stop`` can clean up children it leaves behind.
        """
        return self.procs.spawn(ns, argv, name=name, log_path=log_path)

    def pids(self) -> dict[str, int]:
        """Name to PID of every process recorded in the state file."""
        return self.procs.pids()

    def alive(self, pid: int, start: int | None = None) -> bool:
        """Whether process ``pid`` (one this lab started, or ``start`` ticks old) still runs."""
        return self.procs.alive(pid, start)

    def exit_code(self, pid: int) -> int | None:
        """The exit code of a process this object started and that has ended, else None."""
        return self.procs.exit_code(pid)

    def stop(self, pid: int, timeout: float = TERM_TIMEOUT) -> None:
        """Stop a process this lab started (SIGTERM, then SIGKILL to its process group)."""
        self.procs.stop(pid, timeout)

    # -- services for tests, the demo and the benchmark --

    def start_http_server(self, ns: str, root: Path, address: str, port: int = 80) -> int:
        """Serve ``root`` over HTTP on ``[address]:port`` in ``ns`` (nginx, else http.server)."""
        work = mkdir(self.dir / ns.rsplit("-", 1)[1] / f"http-{port}", 0o755)
        argv, name = webserver.command(work, ns, root, address, port)
        out = work / "server.out"
        pid = self.spawn(ns, argv, name=name, log_path=out)
        self.wait_listening(pid, port, what=f"HTTP server in {ns} (see {out})")
        return pid

    def wait_listening(self, pid: int, port: int, *, timeout: float = 10.0, what: str = "") -> None:
        """Wait until process ``pid``'s namespace has a TCP socket listening on ``port``."""
        deadline = time.monotonic() + timeout
        needle = f":{port:04X} "
        while True:
            if not self.alive(pid):
                raise LabError(f"{what or f'process {pid}'} exited before listening on {port}")
            with contextlib.suppress(OSError):
                for table in ("tcp6", "tcp"):
                    for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                        cols = line.split()
                        if (cols[1] + " ").endswith(needle) and cols[3] == "0A":
                            return
            if time.monotonic() > deadline:
                raise LabError(f"{what or f'process {pid}'} not listening on {port} in {timeout:g}s")
            time.sleep(0.05)

    # -- tearing down --

    def down(self, *, keep_files: bool = False) -> bool:
        """Kill the recorded processes, delete the recorded namespaces. False if none recorded."""
        return self._teardown(keep_files=keep_files)

    def _teardown(self, *, keep_files: bool) -> bool:
        st = self.state.load()
        if st is None:
            return False
        problems: list[str] = []
        for rec in reversed(st.get("pids", [])):
            try:
                self.procs.kill(int(rec["pid"]), rec.get("start"), TERM_TIMEOUT)
            except Exception as e:
                problems.append(f"pid {rec['pid']} ({rec.get('name')}): {e}")
        with self.state.edit() as s:
            s["pids"] = []
        existing = set(netns.list_namespaces())
        left: list[str] = []
        for ns in reversed(st.get("namespaces", [])):
            if ns not in existing:
                continue
            try:
                netns.delete(ns)
            except LabError as e:
                problems.append(str(e))
                left.append(ns)
        with self.state.edit() as s:
            s["namespaces"] = [n for n in s.get("namespaces", []) if n in left]
            s["status"] = "down"
        if problems:
            raise LabError(f"lab {self.prefix} not fully removed: " + "; ".join(problems))
        if not keep_files:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._info = None
        return True


def up(
    prefix: str,
    topology: str = "switched",
    *,
    streams: int = 1,
    rotation_time: float = 2.0,
    mt6d: bool = True,
    router_mtu: int = 1500,
    settings: Sequence[str] = (),
    ready_timeout: float = 20.0,
    start_supervisors: bool = True,
    hosts_as_addresses: bool = False,
    shards: int = 0,
    root: Path = LAB_ROOT,
) -> LabInfo:
    """Build lab ``prefix``; see :class:`Lab`."""
    return Lab(
        prefix,
        topology,
        streams=streams,
        rotation_time=rotation_time,
        mt6d=mt6d,
        router_mtu=router_mtu,
        settings=settings,
        ready_timeout=ready_timeout,
        start_supervisors=start_supervisors,
        hosts_as_addresses=hosts_as_addresses,
        shards=shards,
        root=root,
    ).up()


def down(prefix: str, *, keep_files: bool = False, root: Path = LAB_ROOT) -> bool:
    """Remove lab ``prefix``: kill its recorded PIDs, delete its recorded namespaces.

    Returns False when there is no state file for ``prefix`` (nothing to do).
    """
    lab = Lab(check_prefix(prefix), root=root)
    done = lab.down(keep_files=keep_files)
    if not done:
        stray = namespaces_with_prefix(prefix)
        if stray:
            log.warning(
                "no state for lab %s, but these namespaces exist (not touched): %s",
                prefix,
                " ".join(stray),
            )
    return done


def load(prefix: str, root: Path = LAB_ROOT) -> LabInfo:
    """The LabInfo of a lab that is up (from its state file)."""
    return Lab.attach(prefix, root).info
