"""The MT6D supervisor: owns rehash, firewall and address state; runs the workers.

One supervisor per gateway (thesis 3.2.1-3.2.2, with threads replaced by processes):

1. Load and validate the whole configuration; nothing touches the system before it is valid.
2. Remove what a killed earlier run left (MT6D's chains and rules, addresses and routes tagged
   with MT6D's netlink protocol number), then set up the firewall chains and, per stream, the
   remote host's true address on the internal interface, a permanent neighbour entry and a
   /128 route for the local host (shared by the streams of a host: a gateway with several
   peers has a stream per peer for each host), and the stream rule. In host mode (MT6D on the
   protected host itself) a route to the remote host's true address instead:
   :mod:`mt6d_mp.hostmode`.
3. Make the routes of the current window (make-before-break, see mt6d_mp.core.routes), bind
   each route's hashed source address and add its rule, then publish everything on the bus.
4. Start one worker per stream queue and one ICMP worker; write ``ready`` in the runtime
   directory once every worker has bound its queue.
5. At every epoch boundary: bind + filter in the newest route, expire, and release the route
   that expired one rotation ago; publish each change.
6. On SIGTERM or SIGINT: stop the workers and remove every rule, chain, address, route and
   neighbour entry it added, and nothing else. SIGHUP re-reads the configuration (``reload``).

This file is the process and its wiring; the pieces with a life of their own are modules:
:mod:`mt6d_mp.runtime` (the runtime directory's lock, pid file, ``state.json`` and ``ready``),
:mod:`mt6d_mp.pool` (the worker processes, each driven by the state machine of
:mod:`mt6d_mp.core.lifecycle`) and :mod:`mt6d_mp.commands` (what each ``mt6dctl`` command does
here, registered on the bus's control socket; the client is :mod:`mt6d_mp.ctl`, never imported
here). What stays: set-up and crash recovery, the streams (add, remove, ``reload``), the routes
(rotation, ``rehash``), the loop, and teardown: about 600 lines, kept in one class because
they share the system state they change (netlink, firewall, route lists). Neighbour entries
carry no owner tag, so each is recorded in ``state.json`` *before* it is added; the next start
removes what a killed run recorded there, and everything tagged as MT6D's (firewall comment
marker, netlink protocol 109), before it sets up.

Usage: ``mt6d-supervisor --config /etc/mt6d/mt6d.toml [--set section.key=value ...]
[--check-config]``. Exit codes follow LSB: 0 fine, 1 failed (also: already running with this
runtime directory), 2 bad arguments, 4 not root, 6 invalid configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import ipaddress
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mt6d_mp import hostmode
from mt6d_mp.commands import CommandError, handlers, routes_reply, stream_rows
from mt6d_mp.core import config as cfgmod
from mt6d_mp.core.addressing import mac_text
from mt6d_mp.core.epochs import next_boundary
from mt6d_mp.core.messages import KeyxSend, PhaseKeys, RouteUpdate, StreamState
from mt6d_mp.core.packet import tunnel_overhead
from mt6d_mp.core.phases import Outgoing, Policy, StreamKeys
from mt6d_mp.core.routes import Route, RouteChanges, StreamIdentity, lifetime_epochs
from mt6d_mp.errors import EXIT_GENERIC, EXIT_PRIVILEGE, ConfigError, Mt6dError, SystemSetupError
from mt6d_mp.io.bus import BusServer
from mt6d_mp.io.firewall import Firewall
from mt6d_mp.io.netlink import Netlink
from mt6d_mp.logs import setup_logging
from mt6d_mp.pool import WorkerOptions, WorkerPool
from mt6d_mp.runtime import DEFAULT_CONFIG, RuntimeDir

if TYPE_CHECKING:
    from mt6d_mp.metrics import MetricsServer

log = logging.getLogger("mt6d.supervisor")

# Config fields a reload may change (the streams); any other change needs a restart.
RELOADABLE = {"path", "streams", "users_path", "ethers_path", "profiles_path"}
# Seconds (at most half a rotation) before a new route's neighbour discovery: the peer's
# supervisor adds the same route at the same boundary, but a rotation of a thousand streams
# takes it a good part of a second to tell its ICMP worker.
RESOLVE_AFTER = 1.0
ON_LINK_FOR = 60.0  # seconds a /64's "on the external link" answer is kept
# Seconds between two looks at every stream's exchange timers (retries start at 0.5 s, and an
# idle loop looks every 0.2 s): a busy loop, one turn per bus message, would otherwise walk a
# thousand streams' timers a thousand times a second.
KEYS_TICK = 0.05
# Exchanges this gateway starts at once; the others wait for a later look. A thousand streams
# starting together (every start of the supervisor) flood both supervisors with messages
# that then wait long enough to grow stale and be retried, which floods them more.
KEYX_AT_ONCE = 64
# Streams a rotation applies before it answers the control socket again. Each chunk costs a
# bus message per shard and step, a netlink batch and a set change: at 1024 streams, chunks of
# 512 took less of the supervisor's processor time than chunks of 128 (results/scale.md), and
# an exchange message waits at most one chunk (about 80 ms of work) for its answer.
ROTATION_CHUNK = 512


class Supervisor:
    def __init__(
        self,
        config: cfgmod.Config,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.monotonic = monotonic
        self.overrides = dict(overrides or {})
        self.running = True
        self.reload_pending = False
        self.started = monotonic()
        self.runtime_dir = config.runtime_dir
        self.rundir = RuntimeDir(config.runtime_dir)
        self.nl: Netlink | None = None
        self.fw: Firewall | None = None
        self.bus: BusServer | None = None
        self.metrics: MetricsServer | None = None
        self.route_lists: dict[str, StreamKeys] = {}  # per stream: its key phases and routes
        self.stream_states: dict[str, StreamState] = {}
        self.lanes: dict[str, int] = {}  # per stream: the sender lane of its worker's last start
        self.queues: dict[str, int] = {}
        self.streams_done: list[cfgmod.StreamConfig] = []
        self.bound_routes: dict[tuple[str, int, int], Route] = {}  # (stream, phase, epoch)
        # The peer's hashed addresses of new data routes, whose neighbour discovery starts a
        # moment after they were added (resolve_due); and whether a /64 is on a link.
        self.to_resolve: list[tuple[float, list[bytes]]] = []
        self.on_link: dict[bytes, tuple[bool, float]] = {}
        # The peer's hashed addresses on the external link with a neighbour entry of ours
        # (Netlink.pin_neighbours), and how many bound routes use each.
        self.pinned: Counter[bytes] = Counter()
        self.next_keys_tick = 0.0  # monotonic
        # Exchange messages and key changes waiting for the end of a batch (settling).
        self.unsettled: dict[str, list[Outgoing]] = {}
        self.deferring = False
        self.pool = WorkerPool(
            WorkerOptions(config.runtime_dir, config.log_level,
                          config.log_file if "file" in config.log_handlers else "",
                          config.keep_warm_ms, config.clock_offset, config.receive_buffer_kb,
                          config.queue_target_ms, config.queue_interval_ms),
            keep_up=lambda: self.running, monotonic=monotonic)
        self.pool.before_spawn = self.new_lane
        self.neighbours: list[tuple[str, str]] = []  # (dev, address) we added: state.json
        # What streams share on the internal interface, and which streams use it: a local host's
        # neighbour entry and /128 route (("local", address)), a remote host's address
        # (("remote", address)). Two streams of one host (a gateway with several peers) share
        # them; they go when the last stream that uses them does (see host_entry_released).
        self.host_users: dict[tuple[str, str], set[str]] = {}
        self.tunnel_mtu = 0
        self.int_index = self.ext_index = 0
        # When the next rotation is due: the boundary after the epoch the last rotation brought
        # the routes to (not after "now" when the loop gets there: a start or a slow step that
        # crosses a boundary must rotate at once, or the newest route is not ready in time).
        self.next_rotation = 0.0

    # --- set-up -------------------------------------------------------------------------------

    def save_state(self) -> None:
        self.rundir.save_state(self.config.path, self.neighbours)

    def cleanup_leftovers(self) -> None:
        """Remove what a run that died without tearing down left behind.

        By owner: MT6D's firewall chains and marked rules, addresses and routes with netlink
        protocol 109; and the neighbour entries the dead run recorded in ``state.json`` (a
        neighbour entry has no owner field, so the record is the only way to know it is ours).
        """
        assert self.nl is not None
        from mt6d_mp.io import firewall

        old = self.rundir.load_state()
        for dev, addr in old.get("neighbours", []):
            log.info("event=leftover_removed what=neighbour dev=%s address=%s pid=%s", dev, addr,
                     old.get("pid"))
            try:
                self.nl.remove_neighbour(dev, addr)
            except Mt6dError as e:  # the interface may be gone: nothing to remove then
                log.warning("event=leftover_not_removed what=neighbour dev=%s error=%s", dev, e)
        pinned: dict[str, list[bytes]] = {}
        for dev, addr in self.nl.owned_neighbours():  # Netlink.pin_neighbours, by protocol
            pinned.setdefault(dev, []).append(addr)
        for dev, addrs in pinned.items():
            log.info("event=leftover_removed what=neighbours dev=%s count=%d", dev, len(addrs))
            try:
                self.nl.unpin_neighbours(dev, addrs)
            except Mt6dError as e:
                log.warning("event=leftover_not_removed what=neighbours dev=%s error=%s", dev, e)
        # The hashed addresses first, while their guards still stand: a peer may still be
        # sending to them, and an unguarded address would answer with Port Unreachable.
        hashed = self.nl.owned_local_routes()
        if hashed:
            log.info("event=leftover_removed what=local_routes count=%d", len(hashed))
            self.nl.remove_local_routes(hashed)
        owned = list(self.nl.owned_addresses())  # hashed addresses of versions that bound them
        for ifname, addr in owned:
            if ifname == self.config.bridging:
                log.info("event=leftover_removed what=address dev=%s address=%s", ifname, addr)
                self.nl.remove_address(ifname, addr.address, addr.prefixlen)
        if self.config.firewall:
            for line in firewall.cleanup():
                log.info("event=leftover_removed what=firewall detail=%s", line)
        for ifname, addr in owned:
            if ifname != self.config.bridging:
                log.info("event=leftover_removed what=address dev=%s address=%s", ifname, addr)
                self.nl.remove_address(ifname, addr.address, addr.prefixlen)
        for ifname, dst, plen in self.nl.owned_routes():
            if plen == 128 and ifname != "?":
                log.info("event=leftover_removed what=route dev=%s dst=%s/128", ifname,
                         ipaddress.IPv6Address(dst))
                self.nl.remove_host_route(ifname, dst)
        self.save_state()

    def setup(self) -> None:
        c = self.config
        self.rundir.acquire()
        self.nl = Netlink()
        self.cleanup_leftovers()
        link_mtu = c.link_mtu or self.nl.mtu(c.external)
        self.tunnel_mtu = link_mtu - tunnel_overhead_for(c)
        # Host mode: the stream workers deliver to this machine's own stack, through loopback.
        self.int_index = self.nl.ifindex(c.internal or hostmode.LOOPBACK)
        self.ext_index = self.nl.ifindex(c.external)
        if c.firewall:
            self.fw = Firewall()
            self.fw.setup(c.icmp_queue, c.internal, c.external, c.host_mode)
        self.bus = BusServer(self.runtime_dir)
        self.pool.ready = self.bus.ready  # the bus records each worker's "ready"; the pool reads it
        if c.metrics_listen:
            from mt6d_mp.metrics import MetricsServer  # http.server: 1 MB, paid only when on

            try:
                self.metrics = MetricsServer(c.metrics_listen)
            except OSError as e:
                raise SystemSetupError(f"metrics: cannot listen on {c.metrics_listen}: {e}") from e
            self.metrics.start()
        self.bus.handlers.update(handlers(self))  # mt6dctl's commands (mt6d_mp.commands)
        self.bus.handlers[b"keyx"] = self.keyx_received  # exchange messages from the workers
        if self.fw is not None:  # every stream's rules in one commit, before any address is bound
            self.fw.add_streams([(s.name, s.local.address.packed, s.remote.address.packed,
                                  s.queue, mac_text(s.local.mac)) for s in c.streams])
        with self.bus.batch():
            for s in c.streams:
                self.add_stream(s, firewall=False)

    def add_stream(self, s: cfgmod.StreamConfig, firewall: bool = True) -> None:
        """The stream's rules (unless the caller added them: start-up), system state, keys and
        bus state."""
        c = self.config
        assert self.nl is not None and self.bus is not None
        local, remote = s.local.address.packed, s.remote.address.packed
        self.streams_done.append(s)  # first: teardown undoes whatever part got done
        if firewall and self.fw is not None:  # the guards before the addresses they guard
            self.fw.add_stream(s.name, local, remote, s.queue, mac_text(s.local.mac))
        if c.host_mode:  # the route to the remote host is shared as the entries below are
            self.host_users.setdefault(("route", str(s.remote.address)), set()).add(s.name)
            hostmode.add_stream_system(self.nl, c, s, self.tunnel_mtu)
        elif c.routes:
            # Thesis 3.2.2: the remote host's address on the internal interface makes the local
            # host's packets to it local (INPUT); the permanent neighbour entry and the /128 route
            # reach the local host on the internal side although the same /64 is outside too.
            # Another stream of the same host may have made them already: each is made again
            # (the kernel calls are idempotent: an existing address is left, the neighbour
            # entry and the route are replaced by the same ones) and this stream counted as
            # one of their users first, so that removing either stream leaves them to the other.
            self.host_users.setdefault(("remote", str(s.remote.address)), set()).add(s.name)
            self.host_users.setdefault(("local", str(s.local.address)), set()).add(s.name)
            self.nl.add_address(c.internal, remote)
            entry = (c.internal, str(s.local.address))
            if entry not in self.neighbours:
                self.neighbours.append(entry)
                self.save_state()  # recorded before it exists: a crash in between leaks nothing
            self.nl.add_neighbour(c.internal, local, s.local.mac)
            self.nl.add_host_route(c.internal, local)
        identity = StreamIdentity(s.name, local, s.local.mac, remote, s.remote.mac, c.hash_type)
        self.route_lists[s.name] = StreamKeys(
            identity, s.key.secret, c.rotation_time, c.route_lifetime, rekey_policy(c),
            self.clock())
        self.lanes.setdefault(s.name, 0)
        self.queues[s.name] = s.queue
        self.publish_state(s.name)

    def publish_state(self, name: str) -> None:
        """The stream's keys, sending phase and lane to its workers (never logged)."""
        assert self.bus is not None
        c, keys = self.config, self.route_lists[name]
        ident = keys.identity
        state = StreamState(
            name=name, queue=self.queues[name], local=ident.local_address,
            remote=ident.remote_address, crypt=c.effective_crypt,
            phases=tuple(PhaseKeys(p.number, p.tx_key, p.rx_key) for p in keys.data_phases()),
            send_phase=-1 if keys.send_phase is None else keys.send_phase,
            lane=self.lanes[name], internal_ifindex=self.int_index,
            external_ifindex=self.ext_index, tunnel_mtu=self.tunnel_mtu,
            rotation_time=c.rotation_time, flow_label=c.flow_label, host_mode=c.host_mode,
        )
        self.stream_states[name] = state
        self.bus.publish(state)
        keys.changed = False

    def new_lane(self, worker: str) -> None:
        """A stream worker is about to start: give each of its streams a sender lane no start
        before it used, so that its counters, which start at 0, never repeat a nonce under a
        phase's key."""
        w = self.pool.workers.get(worker)
        for name in w.streams if w is not None else []:
            self.next_lane(name)

    def next_lane(self, name: str) -> None:
        if name not in self.route_lists:
            return
        lane = self.lanes[name] + 1
        if lane > 0xFFFF:  # 65535 starts within one phase's life: take new keys instead
            lane = 1
            self.route_lists[name].request_rekey(self.clock())
        self.lanes[name] = lane
        self.publish_state(name)

    def remove_stream(self, s: cfgmod.StreamConfig) -> None:
        """Undo :meth:`add_stream` and the stream's routes and worker; idempotent, so it also
        rolls back a half-done add."""
        assert self.nl is not None and self.bus is not None
        c = self.config
        self.pool.remove_stream(s.name)  # its worker too, if it was the shard's last stream
        if self.fw is not None:
            self.fw.remove_stream(s.name)  # its stream and route rules, in one commit
        if s.name in self.stream_states or s.name in self.route_lists:
            self.bus.publish(s.name)  # workers forget the stream and its routes
        for key in [k for k in self.bound_routes if k[0] == s.name]:
            r = self.bound_routes.pop(key)
            if c.routes:
                self.nl.remove_local_routes([r.local.address])
                self.unpin([r])
        if c.routes:
            self.undo_stream_system(s)
        self.route_lists.pop(s.name, None)
        self.stream_states.pop(s.name, None)
        self.lanes.pop(s.name, None)
        self.queues.pop(s.name, None)
        self.bus.stats.pop(s.name, None)
        self.streams_done = [d for d in self.streams_done if d.name != s.name]

    # --- routes -------------------------------------------------------------------------------

    def rotate(self) -> None:
        """Bring every stream's routes to the current epoch (called at each boundary).

        The streams go in chunks of ROTATION_CHUNK, and between two chunks the loop answers
        what waits on the control socket (exchange messages, status): a rotation of a thousand
        streams takes a good part of a second, and exchange messages held that long grow
        stale. What the messages change is settled after the last chunk (settling), so every
        stream's changes are still applied in the order they were made."""
        assert self.bus is not None
        now = self.clock()
        t0, cpu0 = time.perf_counter(), time.process_time()
        changes = {name: routes.advance(now) for name, routes in self.route_lists.items()}
        hashing = work = time.perf_counter() - t0
        names = list(changes)
        with self.settling():
            for start in range(0, len(names), ROTATION_CHUNK):
                t = time.perf_counter()
                self.apply({n: changes[n] for n in names[start:start + ROTATION_CHUNK]})
                work += time.perf_counter() - t
                if start + ROTATION_CHUNK < len(names):
                    self.bus.handle_control()
            t = time.perf_counter()
            with self.bus.batch():
                for name, keys in self.route_lists.items():
                    if keys.changed and name not in self.unsettled:  # a phase went with its last route
                        self.publish_state(name)
            work += time.perf_counter() - t
        self.next_rotation = next_boundary(now, self.config.rotation_time)
        # seconds: the rotation's own work, without the requests answered between its chunks;
        # cpu: the processor time the supervisor spent (its own and the kernel's on its behalf,
        # requests included), which waiting for a core shared with the workers does not swell
        log.debug("event=rotated seconds=%.6f hash=%.6f elapsed=%.6f cpu=%.6f", work, hashing,
                  time.perf_counter() - t0, time.process_time() - cpu0)

    # --- keys (mt6d_mp.core.phases; the messages travel through the stream's worker) ---------

    def keys_tick(self) -> None:
        """The exchanges' timers, at most every KEYS_TICK."""
        if self.monotonic() < self.next_keys_tick:
            return
        self.next_keys_tick = self.monotonic() + KEYS_TICK
        now = self.clock()
        running = sum(1 for keys in self.route_lists.values() if keys.initiated is not None)
        for name, keys in list(self.route_lists.items()):
            idle = keys.initiated is None
            out = keys.tick(now, may_start=running < KEYX_AT_ONCE)
            running += idle and keys.initiated is not None
            self.settle(name, keys, out)

    def settle(self, name: str, keys: StreamKeys, out: list[Outgoing]) -> None:
        """After the keys changed: routes first (bound and filtered, so that the peer's first
        packet of a new phase finds them), then the state, then the messages. Inside
        :meth:`settling` this waits for the end of the batch."""
        self.unsettled.setdefault(name, []).extend(out)
        if not self.deferring:
            self.settle_all()

    @contextmanager
    def settling(self) -> Iterator[None]:
        """Settle every stream whose keys changed inside the block at its end, in one
        :meth:`apply`: a thousand streams keying at once send thousands of exchange messages,
        and one netlink batch and one set change for all that arrived together cost little
        more than one for each."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
            self.settle_all()

    def settle_all(self) -> None:
        """:meth:`settle` for every stream waiting."""
        assert self.bus is not None
        if not self.unsettled:
            return
        waiting, self.unsettled = self.unsettled, {}
        now = self.clock()
        changed = [n for n in waiting if n in self.route_lists and self.route_lists[n].changed]
        if changed:
            self.apply({n: self.route_lists[n].advance(now) for n in changed})
        with self.bus.batch():  # the states before the messages, per shard
            for n in changed:
                self.publish_state(n)
            for name, out in waiting.items():
                keys = self.route_lists.get(name)
                if keys is None:
                    continue  # removed meanwhile (reload): its messages go nowhere
                for line in keys.events:
                    log.info("%s stream=%s", line, name)
                keys.events.clear()
                for m in out:
                    self.bus.publish(KeyxSend(name, m.route.local.address, m.route.local.port,
                                              m.options, m.payload))

    def keyx_received(self, args: list[bytes]) -> None:
        """``[b"keyx", stream, local_hashed16, port(2), options, payload]`` from a stream worker:
        an exchange message that arrived on one of the stream's routes."""
        if len(args) != 5 or len(args[1]) != 16 or len(args[2]) != 2:
            return None
        name = args[0].decode("utf-8", "replace")
        keys = self.route_lists.get(name)
        if keys is None:
            return None
        port = int.from_bytes(args[2], "big")
        route = next((r for r in keys.installed()
                      if r.local.address == args[1] and r.local.port == port), None)
        if route is None:
            keys.counters["keyx_unknown_route"] += 1
            return None
        self.settle(name, keys, keys.receive(self.clock(), route, args[3], args[4]))
        return None

    def rekey(self, names: list[str]) -> dict[str, Any]:
        """``mt6dctl rekey [STREAM...]``: start an exchange now."""
        unknown = [n for n in names if n not in self.route_lists]
        if unknown:
            raise CommandError(f"unknown stream: {', '.join(unknown)}")
        chosen = names or list(self.route_lists)
        now = self.clock()
        before = {}
        for n in chosen:
            keys = self.route_lists[n]
            before[n] = {"rekeys": keys.counters["rekeys"], "key_phase": keys.send_phase}
            keys.request_rekey(now)
            log.info("event=rekey_requested stream=%s", n)
        return {"rekeying": chosen, "before": before}

    def apply(self, all_changes: dict[str, RouteChanges]) -> None:
        """Apply one rotation's changes of every stream: make before break, one firewall commit.

        The order keeps every hashed address guarded for as long as it exists (an address with
        no rules would make the kernel answer stray datagrams with Port Unreachable):

        1. released routes: the workers forget them (their sockets closed when they expired),
           then their addresses go (local routes: docs/KERNEL.md, "Hashed addresses as local
           routes");
        2. the firewall's route sets gain the new routes and lose the released ones;
        3. the new addresses become local, already behind their guards;
        4. the bus tells the workers: new routes usable, expired ones no longer accepted.
        """
        c = self.config
        assert self.nl is not None and self.bus is not None
        t0 = time.perf_counter()
        add, remove, unbind, released = [], [], [], []
        with self.bus.batch():  # one message per shard, not one per route
            self.bus.publish_routes(route_update(r, "released")
                                    for changes in all_changes.values() for r in changes.released)
            for stream, changes in all_changes.items():
                for r in changes.released:
                    unbind.append(r.local.address)
                    if self.bound_routes.pop((stream, r.key_phase, r.epoch), None) is not None:
                        released.append(r)
                    remove.append((stream, r.epoch, r.key_phase))
                add += [(stream, r.epoch, r.remote.address, r.local.address, r.local.port,
                         r.key_phase) for r in changes.added]
        if c.routes:  # one netlink batch for all of them, not a round trip each
            self.nl.remove_local_routes(unbind)
            self.unpin(released)
        t1 = time.perf_counter()
        if self.fw is not None:
            self.fw.change_routes(add, remove)
        t2 = time.perf_counter()
        bind, bound = [], []
        for stream, changes in all_changes.items():
            keys = self.route_lists.get(stream)
            keyed = keys is not None and keys.send_phase is not None
            for r in changes.added:
                bind.append(r.local.address)
                # A keyed stream's bootstrap routes carry nothing but the odd retry after the
                # peer restarted: an ordinary neighbour entry does for those, and pinning them
                # would double the neighbour work of every rotation.
                if (stream, r.key_phase, r.epoch) not in self.bound_routes and (
                        r.key_phase or not keyed):
                    bound.append(r)
                self.bound_routes[(stream, r.key_phase, r.epoch)] = r
        if c.routes:
            self.nl.add_local_routes(bind)
            self.pin(bound)
            self.plan_resolution([r.remote.address for r in bound if r.key_phase])
        t3 = time.perf_counter()
        with self.bus.batch():
            for changes in all_changes.values():
                self.bus.publish_routes([*(route_update(r, "accepted") for r in changes.added),
                                         *(route_update(r, "expired") for r in changes.expired)])
        log.debug("event=routes_applied unbind=%.6f firewall=%.6f bind=%.6f publish=%.6f",
                  t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)

    def linked(self, remotes: list[bytes]) -> list[bytes]:
        """Those of the peer's addresses that are on the external link (a route with no
        gateway; asked once per /64 every ON_LINK_FOR seconds). Behind a router, the router is
        the one neighbour."""
        assert self.nl is not None
        now = self.monotonic()
        out = []
        for a in remotes:
            prefix = a[:8]
            known = self.on_link.get(prefix)
            if known is None or now > known[1]:
                known = self.on_link[prefix] = (self.nl.on_link(a), now + ON_LINK_FOR)
            if known[0]:
                out.append(a)
        return out

    def pin(self, routes: list[Route]) -> None:
        """Neighbour entries outside the table's limit for the peer's addresses of newly bound
        routes that are on the external link (Netlink.pin_neighbours): a thousand streams need
        thousands of entries, the kernel holds 1024 of the usual ones for the whole machine."""
        assert self.nl is not None
        new = []
        for a in self.linked([r.remote.address for r in routes]):
            self.pinned[a] += 1
            if self.pinned[a] == 1:
                new.append(a)
        try:
            self.nl.pin_neighbours(self.config.external, new)
        except Mt6dError as e:  # a packet to it makes an ordinary entry instead
            log.warning("event=pin_failed count=%d error=%s", len(new), e)

    def unpin(self, routes: list[Route]) -> None:
        """Undo :meth:`pin` for routes no longer bound; an entry goes with its last route."""
        assert self.nl is not None
        gone = []
        for r in routes:
            a = r.remote.address
            if a in self.pinned:
                self.pinned[a] -= 1
                if self.pinned[a] <= 0:
                    del self.pinned[a]
                    gone.append(a)
        try:
            self.nl.unpin_neighbours(self.config.external, gone)
        except Mt6dError as e:
            log.warning("event=unpin_failed count=%d error=%s", len(gone), e)

    def plan_resolution(self, remotes: list[bytes]) -> None:
        """Neighbour discovery for the peer's addresses of new data routes starts RESOLVE_AFTER
        from now (the peer's ICMP worker has learned its own new routes by then, and answers),
        a rotation before their first packet, so that it does not wait in the neighbour queue,
        where packets sent while the answer comes overtake the queued ones (docs/KERNEL.md,
        "Hashed addresses as local routes")."""
        linked = self.linked(remotes)
        if linked:
            self.to_resolve.append((self.monotonic() + min(RESOLVE_AFTER,
                                                           self.config.rotation_time / 2), linked))

    def resolve_due(self) -> None:
        assert self.nl is not None
        now = self.monotonic()
        while self.to_resolve and self.to_resolve[0][0] <= now:
            _, planned = self.to_resolve.pop(0)
            addrs = [a for a in planned if a in self.pinned]  # not those whose route went
            try:
                self.nl.resolve_neighbours(self.config.external, addrs)
            except Mt6dError as e:  # a first packet will ask again
                log.warning("event=resolve_failed count=%d error=%s", len(addrs), e)

    # --- workers (planned here, run by mt6d_mp.pool) ------------------------------------------

    def plan_stream_worker(self, s: cfgmod.StreamConfig) -> None:
        """The stream into the shard of its queue; a shard's running worker takes it from the
        bus, with a lane of its own from the start."""
        if self.config.packets and not self.pool.add_stream(s.name, s.queue):
            self.next_lane(s.name)

    def plan_workers(self) -> None:
        c = self.config
        if not c.packets:
            return
        for s in c.streams:
            self.plan_stream_worker(s)
        self.pool.add_icmp(c.icmp_queue, *self.icmp_interface_args(),
                           "--overhead", str(tunnel_overhead_for(c)))

    def icmp_interface_args(self) -> list[str]:
        """What the ICMP worker needs of the interfaces, looked up here so that the worker does
        not import pyroute2 (17 MB of private memory per process, measured)."""
        assert self.nl is not None
        c = self.config
        args = []
        # Host mode: no internal interface (the worker then handles only errors).
        sides = (("internal", c.internal), ("external", c.external)) if c.internal else (
            ("external", c.external),)
        for side, ifname in sides:
            ll = self.nl.link_local(ifname)
            args += [f"--{side}-index", str(self.nl.ifindex(ifname)),
                     f"--{side}-mac", self.nl.mac(ifname).hex(),
                     f"--{side}-ll", ll.hex() if ll else ""]
        return args

    def control_workers(self, action: str, names: list[str]) -> dict[str, Any]:
        return self.pool.control(action, names)

    # --- what the control commands ask of the supervisor (mt6d_mp.commands.Controlled) --------

    def reload(self) -> dict[str, Any]:
        """Re-read the configuration; apply stream changes, or refuse and keep the old one."""
        log.info("event=reload_requested config=%s", self.config.path)
        new = self.reloadable_config()
        old = {s.name: s for s in self.config.streams}
        want = {s.name: s for s in new.streams}
        same = [n for n in old if n in want and _same_stream(old[n], want[n])]
        removed = [old[n] for n in old if n not in same]
        added = [want[n] for n in want if n not in same]
        done_removed: list[cfgmod.StreamConfig] = []
        done_added: list[cfgmod.StreamConfig] = []
        try:
            for s in removed:
                log.info("event=reload_remove_stream stream=%s", s.name)
                self.remove_stream(s)
                done_removed.append(s)
            self.config = dataclasses.replace(self.config, streams=tuple(
                s for s in self.config.streams if s.name in same))
            for s in added:
                log.info("event=reload_add_stream stream=%s queue=%d", s.name, s.queue)
                done_added.append(s)
                self.bring_up_stream(s)
        except Mt6dError as e:
            log.error("event=reload_failed error=%s action=rollback", e)
            self.rollback(done_added, done_removed)
            raise CommandError(f"reload failed and was rolled back: {e}") from None
        self.config = new
        self.save_state()
        log.info("event=reloaded added=%s removed=%s unchanged=%d",
                 ",".join(s.name for s in added) or "-", ",".join(s.name for s in removed) or "-",
                 len(same))
        return {"added": [s.name for s in added], "removed": [s.name for s in removed],
                "unchanged": same}

    def reloadable_config(self) -> cfgmod.Config:
        """The configuration file as it is now, if a reload can apply it (else CommandError)."""
        try:
            new = cfgmod.load(self.config.path, self.overrides)
        except ConfigError as e:
            log.error("event=reload_refused reason=invalid_config problems=%d", len(e.problems))
            for p in e.problems:
                log.error("event=config_problem detail=%s", p)
            raise CommandError("invalid configuration, the running one is kept:\n" + str(e),
                               e.exit_code) from None
        changed = [f.name for f in dataclasses.fields(cfgmod.Config)
                   if f.name not in RELOADABLE
                   and getattr(new, f.name) != getattr(self.config, f.name)]
        if changed:
            log.error("event=reload_refused reason=needs_restart changed=%s", ",".join(changed))
            raise CommandError("reload only adds and removes streams; these settings need a "
                               f"restart: {', '.join(changed)} (running configuration kept)")
        return new

    def bring_up_stream(self, s: cfgmod.StreamConfig) -> None:
        self.add_stream(s)
        self.apply({s.name: self.route_lists[s.name].advance(self.clock())})
        self.config = dataclasses.replace(self.config, streams=(*self.config.streams, s))
        self.plan_stream_worker(s)
        self.pool.supervise()

    def rollback(self, added: list[cfgmod.StreamConfig], removed: list[cfgmod.StreamConfig]) -> None:
        for s in reversed(added):
            try:
                self.remove_stream(s)
            except Mt6dError:
                log.exception("event=rollback_step_failed stream=%s", s.name)
        self.config = dataclasses.replace(self.config, streams=tuple(
            s for s in self.config.streams if s.name not in {a.name for a in added}))
        for s in removed:
            try:
                self.bring_up_stream(s)
            except Mt6dError:
                log.exception("event=rollback_step_failed stream=%s", s.name)
        self.save_state()

    def routes_data(self) -> dict[str, Any]:
        return routes_reply(self.route_lists, self.clock(), self.config.rotation_time)

    def rehash(self) -> dict[str, Any]:
        """Run the rotation step now, repair missing route addresses, republish everything."""
        assert self.bus is not None and self.nl is not None
        log.info("event=rehash_requested")
        now = self.clock()
        all_changes = {name: routes.advance(now) for name, routes in self.route_lists.items()}
        added = sum(len(changes.added) for changes in all_changes.values())
        self.apply(all_changes)
        rebound = []
        if self.config.routes:
            for r in self.bound_routes.values():
                if self.nl.add_local_routes([r.local.address]):
                    rebound.append(str(ipaddress.IPv6Address(r.local.address)))
        for a in rebound:
            log.warning("event=rehash_rebound address=%s", a)
        diff = self.fw.verify() if self.fw is not None else []
        for line in diff:
            log.warning("event=firewall_differs line=%s", line)
        published = 0
        for name, routes in self.route_lists.items():
            self.bus.publish(self.stream_states[name])
            accepted = {(r.key_phase, r.epoch) for r in routes.accepted(now)}
            for r in sorted(routes.installed(), key=lambda r: r.epoch):
                self.bus.publish(route_update(
                    r, "accepted" if (r.key_phase, r.epoch) in accepted else "expired"))
                published += 1
            published += 1
        return {"added": added, "rebound": rebound, "firewall_diff": diff, "published": published}

    # --- main loop ----------------------------------------------------------------------------

    def run(self) -> int:
        c = self.config
        if c.effective_crypt == "none":
            log.warning("event=encryption_off note=tunnel payloads travel in clear and unauthenticated")
        try:
            self.setup()
            self.rotate()
            self.plan_workers()
            self.pool.supervise()
            # What setup built lives as long as the supervisor: out of the cyclic collector's
            # way. At 1024 streams a full collection walked it every few rotations for 54-95
            # ms of processor time; with it frozen, 24-56 (results/HISTORY.md). A frozen object
            # that later becomes garbage inside a reference cycle is never collected: the cost
            # of a stream removed by a reload, if its state held a cycle.
            gc.freeze()
            self.loop()
            return 0
        finally:
            self.teardown()

    def loop(self) -> None:
        assert self.bus is not None
        c = self.config
        ready_written = False
        next_metrics = 0.0
        while self.running:
            wait = max(0.0, min(0.2, self.next_rotation - self.clock(),
                                 *(t - self.monotonic() for t, _ in self.to_resolve[:1])))
            with self.settling():
                if self.bus.control.poll(int(wait * 1000) + 1):
                    self.bus.handle_control()
            if self.clock() >= self.next_rotation:
                self.rotate()
            with self.settling():
                self.keys_tick()
            self.resolve_due()
            if self.reload_pending:
                self.reload_pending = False
                with contextlib.suppress(Mt6dError):  # refused: logged; the old config stays
                    self.reload()
            self.pool.supervise()
            if self.metrics is not None and self.monotonic() >= next_metrics:
                next_metrics = self.monotonic() + 1.0
                self.metrics.update(self.status_data())
            if not ready_written and self.pool.all_running():
                self.rundir.mark_ready()
                log.info("event=ready workers=%d streams=%d", len(self.pool.workers),
                         len(c.streams))
                ready_written = True

    def teardown(self) -> None:
        """Undo everything this run added, in reverse order; each step runs even if one fails."""
        if not self.rundir.held:
            return  # refused (another supervisor holds the directory) or failed before: none ours
        self.rundir.mark_ready(False)
        steps: list[tuple[str, Callable[[], Any]]] = [("stop workers", self.pool.stop_all)]
        nl, c = self.nl, self.config
        if nl is not None and c.routes:
            # Hashed addresses go while their guards still stand (see apply).
            steps.append(("routes", functools.partial(
                nl.remove_local_routes, [r.local.address for r in self.bound_routes.values()])))
            steps.append(("neighbours", functools.partial(
                nl.unpin_neighbours, c.external, list(self.pinned))))
        if self.fw is not None:
            steps.append(("firewall", self.fw.teardown))
        if nl is not None and c.routes:
            for s in reversed(self.streams_done):
                steps.append((f"stream {s.name}", functools.partial(self.undo_stream_system, s)))
        if self.metrics is not None:
            steps.append(("metrics", self.metrics.close))
        if self.bus is not None:
            steps.append(("bus", self.bus.close))
        if self.nl is not None:
            steps.append(("netlink", self.nl.close))
        failed = 0
        for what, step in steps:
            try:
                step()
            except Exception:
                failed += 1
                log.exception("event=teardown_step_failed step=%s", what)
        self.rundir.release(keep_state=self.nl is None or bool(failed))
        log.info("event=stopped failed_steps=%d", failed)

    def remove_stream_system(self, s: cfgmod.StreamConfig) -> None:
        """Undo what :meth:`add_stream` made on the internal interface for ``s``, but only what
        no other stream still uses (a host in two streams keeps its entries until both are gone).
        Idempotent: a stream that was never counted, or already removed, removes what no stream
        uses (a half-done add leaves nothing behind)."""
        assert self.nl is not None
        c = self.config
        local = str(s.local.address)
        if self.host_entry_released("local", local, s.name):
            self.nl.remove_host_route(c.internal, s.local.address.packed)
            self.nl.remove_neighbour(c.internal, s.local.address.packed)
            if (c.internal, local) in self.neighbours:
                self.neighbours.remove((c.internal, local))
                self.save_state()
        else:
            log.info("event=kept what=neighbour,route dev=%s address=%s stream=%s users=%s",
                     c.internal, local, s.name, ",".join(sorted(self.host_users[("local", local)])))
        remote = str(s.remote.address)
        if self.host_entry_released("remote", remote, s.name):
            self.nl.remove_address(c.internal, s.remote.address.packed)
        else:
            log.info("event=kept what=address dev=%s address=%s stream=%s users=%s", c.internal,
                     remote, s.name, ",".join(sorted(self.host_users[("remote", remote)])))

    def host_entry_released(self, kind: str, address: str, stream: str) -> bool:
        """``stream`` no longer uses the ``kind`` entry of ``address``; True when no stream
        does any more (then it is to be removed)."""
        users = self.host_users.get((kind, address), set())
        users.discard(stream)
        if users:
            return False
        self.host_users.pop((kind, address), None)
        return True

    def undo_stream_system(self, s: cfgmod.StreamConfig) -> None:
        """What add_stream added to the system for ``s``, by mode."""
        assert self.nl is not None
        if self.config.host_mode:
            if self.host_entry_released("route", str(s.remote.address), s.name):
                hostmode.remove_stream_system(self.nl, self.config, s)
        else:
            self.remove_stream_system(s)

    def status_data(self) -> dict[str, Any]:
        """Daemon half of ``mt6dctl status`` (wire format: mt6d_mp.commands.Status); also the
        metrics' source."""
        assert self.bus is not None
        now = self.clock()
        workers = self.pool.status(self.bus.stats, self.config.icmp_queue)
        streams = stream_rows(self.route_lists, {n: st.queue for n, st in self.stream_states.items()},
                              now, self.config.rotation_time)
        firewall_drops: dict[str, int] = {}
        if self.fw is not None:
            try:
                firewall_drops = self.fw.drop_counts()
            except SystemSetupError as e:  # a status must not fail because the table is busy
                log.warning("event=firewall_counters_unreadable error=%s", e)
        return {"pid": os.getpid(), "config": str(self.config.path), "workers": workers,
                "streams": streams, "tunnel_mtu": self.tunnel_mtu,
                "firewall_drops": firewall_drops, "uptime": self.monotonic() - self.started}

    def stop(self, signum: int, frame: Any) -> None:
        log.info("event=signal signal=%s", signal.Signals(signum).name)
        self.running = False

    def hangup(self, signum: int, frame: Any) -> None:
        log.info("event=signal signal=SIGHUP action=reload")
        self.reload_pending = True


def _same_stream(a: cfgmod.StreamConfig, b: cfgmod.StreamConfig) -> bool:
    """Equal apart from where the line is (removing one line renumbers the others)."""
    return dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


def tunnel_overhead_for(c: cfgmod.Config) -> int:
    from mt6d_mp.core.crypto import CRYPT_TYPES

    return tunnel_overhead(CRYPT_TYPES[c.effective_crypt])


def rekey_policy(c: cfgmod.Config) -> Policy:
    """The exchange's timers from ``[crypto]``; the clock tolerance is the routes' (one
    rotation ahead, ``L`` behind: PROTOCOL.md 0), so an INIT is refused as stale exactly when
    the clocks are too far apart for the routes anyway."""
    lifetime = lifetime_epochs(c.rotation_time, c.route_lifetime)
    return Policy(c.regen_interval, c.regen_window, c.effective_regen_limit,
                  (lifetime + 1) * c.rotation_time)


def route_update(r: Route, state: str) -> RouteUpdate:
    return RouteUpdate(r.stream, r.epoch, state, r.local.address, r.local.port,
                       r.remote.address, r.remote.port, r.key_phase)


@contextmanager
def _signals(handler: Callable[[int, Any], None],
             hangup: Callable[[int, Any], None]) -> Iterator[None]:
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mt6d-supervisor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="main configuration file")
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
    offset = config.clock_offset
    if offset:
        log.warning("event=clock_offset seconds=%g note=MT6D's clock is this machine's plus the "
                    "offset (for labs)", offset)
    sup = Supervisor(config, clock=(lambda: time.time() + offset) if offset else time.time,
                     overrides=overrides)
    with _signals(sup.stop, sup.hangup):
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
