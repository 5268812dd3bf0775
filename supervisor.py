"""The MT6D supervisor: owns rehash, firewall and address state; runs the workers.

One supervisor per gateway (thesis 3.2.1-3.2.2, with threads replaced by processes):

1. Load and validate the whole configuration; nothing touches the system before it is valid.
2. Remove what a killed earlier run left (MT6D's chains and rules, addresses and routes tagged
   with MT6D's netlink protocol number), then set up the firewall chains and, per stream, the
   remote host's true address on the internal interface, a permanent neighbour entry and a
   /128 route for the local host, and the stream rule.
3. Make the routes of the current window (make-before-break, see mt6d_mp.core.routes), bind
   each route's hashed source address and add its rule, then publish everything on the bus.
4. Start one worker per stream queue and one ICMP worker; write ``ready`` in the runtime
   directory once every worker has bound its queue.
5. At every epoch boundary: bind + filter in the newest route, expire, and release the route
   that expired one rotation ago; publish each change.
6. On SIGTERM or SIGINT: stop the workers and remove every rule, chain, address, route and
   neighbour entry it added, and nothing else.

Usage: ``mt6d-supervisor --config /etc/mt6d/mt6d.toml [--set section.key=value ...]
[--check-config]``. Exit codes follow LSB: 0 fine, 1 failed, 2 bad arguments,
4 not root, 6 invalid configuration.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mt6d_mp.core import config as cfgmod
from mt6d_mp.core.crypto import derive_direction_key
from mt6d_mp.core.messages import RouteUpdate, StreamState
from mt6d_mp.core.packet import tunnel_overhead
from mt6d_mp.core.routes import Route, RouteChanges, RouteList, StreamIdentity, next_boundary
from mt6d_mp.errors import EXIT_GENERIC, EXIT_PRIVILEGE, Mt6dError
from mt6d_mp.io.bus import BusServer
from mt6d_mp.io.firewall import Firewall
from mt6d_mp.io.netlink import Netlink
from mt6d_mp.logs import setup_logging

log = logging.getLogger("mt6d.supervisor")

READY_TIMEOUT = 20.0
STOP_GRACE = 3.0
MAX_BACKOFF = 30.0
REPO = Path(__file__).resolve().parent


@dataclass
class WorkerProcess:
    """One worker: how to start it and what it is doing (the full lifecycle is issue #5)."""

    name: str
    queue: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, config: cfgmod.Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.running = True
        self.runtime_dir = config.runtime_dir
        self.nl: Netlink | None = None
        self.fw: Firewall | None = None
        self.bus: BusServer | None = None
        self.route_lists: dict[str, RouteList] = {}
        self.stream_states: dict[str, StreamState] = {}
        self.streams_done: list[cfgmod.StreamConfig] = []
        self.bound_routes: dict[tuple[str, int], Route] = {}
        self.workers: dict[str, WorkerProcess] = {}
        self.tunnel_mtu = 0

    # --- set-up -------------------------------------------------------------------------------

    def prepare_runtime_dir(self) -> None:
        d = self.runtime_dir
        log.info("action=create_runtime_dir path=%s mode=0700", d)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)  # sockets and state inside; only root may enter
        (d / "ready").unlink(missing_ok=True)
        (d / "supervisor.pid").write_text(f"{os.getpid()}\n")

    def cleanup_leftovers(self) -> None:
        """Remove what a run that died without tearing down left behind (by owner tag)."""
        assert self.nl is not None
        from mt6d_mp.io import firewall

        for line in firewall.cleanup():
            log.info("event=leftover_removed what=firewall detail=%s", line)
        for ifname, addr in self.nl.owned_addresses():
            log.info("event=leftover_removed what=address dev=%s address=%s", ifname, addr)
            self.nl.remove_address(ifname, addr.address, addr.prefixlen)
        for ifname, dst, plen in self.nl.owned_routes():
            if plen == 128 and ifname != "?":
                self.nl.remove_host_route(ifname, dst)

    def setup(self) -> None:
        c = self.config
        self.prepare_runtime_dir()
        self.nl = Netlink()
        self.cleanup_leftovers()
        link_mtu = c.link_mtu or self.nl.mtu(c.external)
        self.tunnel_mtu = link_mtu - tunnel_overhead_for(c)
        int_index, ext_index = self.nl.ifindex(c.internal), self.nl.ifindex(c.external)
        if c.firewall:
            self.fw = Firewall()
            self.fw.setup(c.icmp_queue, c.internal, c.external)
        self.bus = BusServer(self.runtime_dir)
        self.bus.handlers[b"status"] = self.status
        for s in c.streams:
            self.add_stream(s, int_index, ext_index)

    def add_stream(self, s: cfgmod.StreamConfig, int_index: int, ext_index: int) -> None:
        c = self.config
        assert self.nl is not None and self.bus is not None
        local, remote = s.local.address.packed, s.remote.address.packed
        if c.routes:
            # Thesis 3.2.2: the remote host's address on the internal interface makes the local
            # host's packets to it local (INPUT); the permanent neighbour entry and the /128 route
            # reach the local host on the internal side although the same /64 is outside too.
            self.nl.add_address(c.internal, remote)
            self.nl.add_neighbour(c.internal, local, s.local.mac)
            self.nl.add_host_route(c.internal, local)
        self.streams_done.append(s)
        if self.fw is not None:
            self.fw.add_stream(s.name, local, remote, s.queue)
        secret = s.key.secret
        state = StreamState(
            name=s.name, queue=s.queue, local=local, remote=remote, crypt=c.effective_crypt,
            tx_key=derive_direction_key(secret, local, remote),
            rx_key=derive_direction_key(secret, remote, local),
            key_phase=0, internal_ifindex=int_index, external_ifindex=ext_index,
            tunnel_mtu=self.tunnel_mtu, rotation_time=c.rotation_time,
        )
        self.stream_states[s.name] = state
        self.bus.publish(state)
        identity = StreamIdentity(s.name, local, s.local.mac, remote, s.remote.mac, c.hash_type)
        self.route_lists[s.name] = RouteList(
            identity, constant_key(secret), c.rotation_time, c.route_lifetime
        )

    # --- routes -------------------------------------------------------------------------------

    def rotate(self) -> None:
        """Bring every stream's routes to the current epoch (called at each boundary)."""
        now = self.clock()
        t0 = time.perf_counter()
        for name, routes in self.route_lists.items():
            self.apply(name, routes.advance(now))
        log.debug("event=rotated seconds=%.6f", time.perf_counter() - t0)

    def apply(self, stream: str, changes: RouteChanges) -> None:
        c = self.config
        assert self.nl is not None and self.bus is not None
        queue = self.stream_states[stream].queue
        for r in changes.added:  # make: bind and filter in before anyone sends on it
            if c.routes:
                self.nl.add_address(c.bridging, r.local.address)
            self.bound_routes[(stream, r.epoch)] = r
            if self.fw is not None:
                self.fw.add_route(stream, r.epoch, r.remote.address, r.local.address, queue)
            self.bus.publish(route_update(r, "accepted"))
        for r in changes.expired:
            self.bus.publish(route_update(r, "expired"))
        for r in changes.released:  # break: workers first, then the system
            self.bus.publish(route_update(r, "released"))
            self.release(stream, r)

    def release(self, stream: str, r: Route) -> None:
        assert self.nl is not None
        if self.fw is not None:
            self.fw.remove_route(stream, r.epoch)
        if self.config.routes:
            self.nl.remove_address(self.config.bridging, r.local.address)
        self.bound_routes.pop((stream, r.epoch), None)

    # --- workers ------------------------------------------------------------------------------

    def worker_argv(self, name: str, queue: int, module: str, *extra: str) -> list[str]:
        c = self.config
        return [sys.executable, "-m", module, "--runtime-dir", str(self.runtime_dir),
                "--name", name, "--queue", str(queue), "--log-level", c.log_level,
                "--log-file", c.log_file if "file" in c.log_handlers else "", *extra]

    def plan_workers(self) -> None:
        c = self.config
        if not c.packets:
            return
        for s in c.streams:
            self.workers[s.name] = WorkerProcess(
                s.name, s.queue, self.worker_argv(s.name, s.queue, "workers.stream"))
        self.workers["icmp"] = WorkerProcess(
            "icmp", c.icmp_queue,
            self.worker_argv("icmp", c.icmp_queue, "workers.icmp", "--internal", c.internal,
                             "--external", c.external, "--overhead",
                             str(tunnel_overhead_for(c))))

    def start_worker(self, w: WorkerProcess) -> None:
        log.info("action=start_worker worker=%s queue=%d", w.name, w.queue)
        w.proc = subprocess.Popen(w.argv, cwd=REPO, stdin=subprocess.DEVNULL)
        w.started_at = time.monotonic()
        log.info("event=worker_spawned worker=%s pid=%d", w.name, w.proc.pid)

    def check_workers(self) -> None:
        """Restart a worker that exited, with a growing backoff (1, 2, 4 ... 30 s)."""
        now = time.monotonic()
        for w in self.workers.values():
            if w.proc is not None and w.proc.poll() is not None:
                code = w.proc.returncode
                w.exits.append(code)
                w.proc = None
                if self.bus is not None:
                    self.bus.ready.discard(w.name)
                quick = now - w.started_at < 5.0
                w.restarts = w.restarts + 1 if quick else 0
                delay = min(MAX_BACKOFF, 2.0 ** w.restarts) if quick else 0.0
                w.next_start = now + delay
                log.warning("event=worker_exited worker=%s code=%s restart_in=%.0fs",
                            w.name, code, delay)
            if w.proc is None and now >= w.next_start and self.running:
                self.start_worker(w)

    def stop_workers(self) -> None:
        procs = [w.proc for w in self.workers.values() if w.proc is not None]
        for p in procs:
            log.info("action=stop_worker pid=%d", p.pid)
            p.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("action=kill_worker pid=%d reason=no_exit_after_sigterm", p.pid)
                p.kill()
                p.wait()
        for w in self.workers.values():
            w.proc = None

    # --- main loop ----------------------------------------------------------------------------

    def run(self) -> int:
        c = self.config
        if c.effective_crypt == "none":
            log.warning("event=encryption_off note=tunnel payloads travel in clear and unauthenticated")
        try:
            self.setup()
            self.rotate()
            self.plan_workers()
            for w in self.workers.values():
                self.start_worker(w)
            self.loop()
            return 0
        finally:
            self.teardown()

    def loop(self) -> None:
        assert self.bus is not None
        c = self.config
        boundary = next_boundary(self.clock(), c.rotation_time)
        ready_written = False
        while self.running:
            wait = max(0.0, min(0.5, boundary - self.clock()))
            if self.bus.control.poll(int(wait * 1000) + 1):
                self.bus.handle_control()
            if self.clock() >= boundary:
                self.rotate()
                boundary = next_boundary(self.clock(), c.rotation_time)
            self.check_workers()
            if not ready_written and set(self.workers) <= self.bus.ready:
                (self.runtime_dir / "ready").write_text(f"{os.getpid()}\n")
                log.info("event=ready workers=%d streams=%d", len(self.workers), len(c.streams))
                ready_written = True

    def teardown(self) -> None:
        """Undo everything this run added, in reverse order; each step runs even if one fails."""
        (self.runtime_dir / "ready").unlink(missing_ok=True)
        steps: list[tuple[str, Callable[[], Any]]] = [("stop workers", self.stop_workers)]
        if self.fw is not None:
            steps.append(("firewall", self.fw.teardown))
        if self.nl is not None:
            nl, c = self.nl, self.config
            if c.routes:
                for (stream, _epoch), r in list(self.bound_routes.items()):
                    steps.append((f"route {stream}",
                                  functools.partial(nl.remove_address, c.bridging, r.local.address)))
                for s in reversed(self.streams_done):
                    steps.append((f"stream {s.name}",
                                  functools.partial(self.remove_stream_system, s)))
        if self.bus is not None:
            steps.append(("bus", self.bus.close))
        if self.nl is not None:
            steps.append(("netlink", self.nl.close))
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("event=teardown_step_failed step=%s", what)
        (self.runtime_dir / "supervisor.pid").unlink(missing_ok=True)
        log.info("event=stopped")

    def remove_stream_system(self, s: cfgmod.StreamConfig) -> None:
        assert self.nl is not None
        c = self.config
        self.nl.remove_host_route(c.internal, s.local.address.packed)
        self.nl.remove_neighbour(c.internal, s.local.address.packed)
        self.nl.remove_address(c.internal, s.remote.address.packed)

    def status(self, args: list[bytes]) -> dict[str, Any]:
        """Control command ``status``: workers with their counters, streams with their routes."""
        assert self.bus is not None
        now = self.clock()
        workers = []
        for w in self.workers.values():
            running = w.proc is not None and w.proc.poll() is None
            workers.append({
                "name": w.name, "queue": w.queue, "pid": w.proc.pid if w.proc else None,
                "state": ("running" if w.name in self.bus.ready else "starting") if running
                else "backoff",
                "restarts": len(w.exits), "exits": w.exits[-5:],
                "counters": self.bus.stats.get(w.name, {}),
            })
        streams = []
        for name, routes in self.route_lists.items():
            active = routes.active(now)
            streams.append({
                "name": name, "queue": self.stream_states[name].queue,
                "active": _route_dict(active) if active else None,
                "installed": [_route_dict(r) for r in routes.installed()],
                "next_rotation": next_boundary(now, self.config.rotation_time),
            })
        return {"pid": os.getpid(), "config": str(self.config.path), "workers": workers,
                "streams": streams, "tunnel_mtu": self.tunnel_mtu}

    def stop(self, signum: int, frame: Any) -> None:
        log.info("event=signal signal=%s", signal.Signals(signum).name)
        self.running = False


def tunnel_overhead_for(c: cfgmod.Config) -> int:
    from mt6d_mp.core.crypto import CRYPT_TYPES

    return tunnel_overhead(CRYPT_TYPES[c.effective_crypt])


def constant_key(secret: bytes) -> Callable[[int], tuple[bytes, int]]:
    """The key schedule without in-band rekeying: one key, phase 0, for every epoch."""

    def schedule(epoch: int) -> tuple[bytes, int]:
        return secret, 0

    return schedule


def _route_dict(r: Route) -> dict[str, Any]:
    return {"epoch": r.epoch, "local": str(ipaddress.IPv6Address(r.local.address)),
            "local_port": r.local.port, "remote": str(ipaddress.IPv6Address(r.remote.address)),
            "remote_port": r.remote.port, "key_phase": r.key_phase}


def route_update(r: Route, state: str) -> RouteUpdate:
    return RouteUpdate(r.stream, r.epoch, state, r.local.address, r.local.port,
                       r.remote.address, r.remote.port, r.key_phase)


@contextmanager
def _signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mt6d-supervisor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default="/etc/mt6d/mt6d.toml", help="main configuration file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a configuration key (repeatable)")
    p.add_argument("--rotation-time", type=float, help="same as --set rotation.rotation_time=S")
    p.add_argument("--log-level", choices=cfgmod.LOG_LEVELS, help="same as --set log.level=L")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration and exit (0 valid, 6 invalid)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = dict(cfgmod.parse_override(a) for a in args.set)
        if args.rotation_time is not None:
            overrides["rotation.rotation_time"] = args.rotation_time
            overrides.setdefault("rotation.route_lifetime", args.rotation_time)
        if args.log_level:
            overrides["log.level"] = args.log_level
        config = cfgmod.load(args.config, overrides)
    except Mt6dError as e:
        print(f"mt6d-supervisor: invalid configuration:\n{e}", file=sys.stderr)
        return e.exit_code
    if args.check_config:
        print(f"{args.config}: configuration valid ({len(config.streams)} streams)")
        return 0
    if os.geteuid() != 0:
        print("mt6d-supervisor: must run as root (netfilter queues, firewall, addresses)",
              file=sys.stderr)
        return EXIT_PRIVILEGE
    setup_logging(config.log_level, config.log_handlers, config.log_file, "supervisor")
    sup = Supervisor(config)
    with _signals(sup.stop):
        try:
            return sup.run()
        except Mt6dError as e:
            log.error("event=failed error=%s", e)
            print(f"mt6d-supervisor: {e}", file=sys.stderr)
            return e.exit_code
        except Exception:
            log.exception("event=crashed")
            return EXIT_GENERIC


if __name__ == "__main__":
    sys.exit(main())
