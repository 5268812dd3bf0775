"""The supervisor's rotation step, with a fake clock and recording stand-ins for netlink,
the firewall and the bus (pure ordering logic; the real adapters are tested in tests/netns).

Two properties the lab showed to matter (a ping lost to a Port Unreachable after start-up):
- a boundary crossed between a rotation and the next look at the clock is never skipped, so
  the newest route is always installed one rotation before it is used;
- a hashed address exists only while its guard rule does: bound after the firewall commit that
  adds its rules, unbound before the commit that removes them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import supervisor as supmod
from mt6d_mp.core import config as cfg
from mt6d_mp.core.messages import RouteUpdate
from mt6d_mp.core.phases import StreamKeys
from mt6d_mp.core.routes import StreamIdentity
from mt6d_mp.keygen import write_key

CONF = Path(__file__).resolve().parents[2] / "conf"


class Recorder:
    """Stands in for Netlink, Firewall and BusServer; appends every call to one shared log."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.stats: dict[str, Any] = {}  # BusServer's, per stream

    def add_address(self, dev: str, addr: bytes) -> bool:
        self.log.append(("bind", bytes(addr)))
        return True

    def remove_address(self, dev: str, addr: bytes) -> None:
        self.log.append(("unbind", bytes(addr)))

    def add_addresses(self, dev: str, addrs: list[bytes]) -> int:
        for a in addrs:
            self.add_address(dev, a)
        return len(addrs)

    def remove_addresses(self, dev: str, addrs: list[bytes]) -> int:
        for a in addrs:
            self.remove_address(dev, a)
        return len(addrs)

    # The hashed addresses are local routes (docs/KERNEL.md): "bind" and "unbind" here.
    def add_local_routes(self, addrs: list[bytes]) -> int:
        return self.add_addresses("lo", addrs)

    def remove_local_routes(self, addrs: list[bytes]) -> int:
        return self.remove_addresses("lo", addrs)

    def on_link(self, addr: bytes) -> bool:
        return True

    def resolve_neighbours(self, dev: str, addrs: list[bytes]) -> int:
        self.log.append(("resolve", tuple(addrs)))
        return len(addrs)

    def pin_neighbours(self, dev: str, addrs: list[bytes]) -> int:
        self.log += [("pin", a) for a in addrs]
        return len(addrs)

    def unpin_neighbours(self, dev: str, addrs: list[bytes]) -> int:
        self.log += [("unpin", a) for a in addrs]
        return len(addrs)

    def remove_stream(self, name: str) -> None:  # Firewall's
        self.log.append(("remove_stream", name))

    def remove_host_route(self, dev: str, addr: bytes) -> None:
        self.log.append(("remove_host_route", bytes(addr)))

    def remove_neighbour(self, dev: str, addr: bytes) -> None:
        self.log.append(("remove_neighbour", bytes(addr)))

    def change_routes(self, add: list[tuple[Any, ...]], remove: list[tuple[str, int]]) -> int:
        self.log.append(("commit", {a[3]: a[1] for a in add}, tuple(r[1] for r in remove)))
        return len(add) + len(remove)

    def publish(self, msg: Any) -> None:
        if isinstance(msg, RouteUpdate):
            (self.log if self.held is None else self.held).append(("publish", msg.state, msg.epoch))

    def publish_routes(self, msgs: Iterable[RouteUpdate]) -> None:
        for m in msgs:
            self.publish(m)

    held: list[tuple[Any, ...]] | None = None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """BusServer.batch: what is published inside goes out (is logged) at the end."""
        if self.held is not None:
            yield
            return
        self.held = []
        try:
            yield
        finally:
            self.log += self.held
            self.held = None


@pytest.fixture
def sup(tmp_path: Path) -> tuple[supmod.Supervisor, list[tuple[Any, ...]], list[float]]:
    d = tmp_path / "gw"
    shutil.copytree(CONF / "gateway-a", d)
    write_key(str(d / "keys" / "host-a-host-b.key"))
    config = cfg.load(d / "mt6d.toml")
    now = [0.0]
    s = supmod.Supervisor(config, clock=lambda: now[0])
    log: list[tuple[Any, ...]] = []
    rec = Recorder(log)
    s.nl = s.fw = s.bus = rec  # type: ignore[assignment]
    (st,) = config.streams
    ident = StreamIdentity(st.name, st.local.address.packed, st.local.mac,
                           st.remote.address.packed, st.remote.mac, config.hash_type)
    s.route_lists[st.name] = StreamKeys(ident, st.key.secret, config.rotation_time,
                                        config.route_lifetime, supmod.rekey_policy(config), 0.0)
    s.queues[st.name], s.lanes[st.name] = st.queue, 1
    return s, log, now


def test_a_boundary_crossed_after_a_rotation_is_not_skipped(
    sup: tuple[supmod.Supervisor, list[tuple[Any, ...]], list[float]]
) -> None:
    s, _log, now = sup
    rt = s.config.rotation_time
    e = 179570375
    now[0] = (e + 1) * rt - 0.01  # the first rotation runs just before a boundary ...
    s.rotate()
    assert s.next_rotation == (e + 1) * rt
    now[0] = (e + 1) * rt + 0.003  # ... and the loop looks at the clock just after it
    assert now[0] >= s.next_rotation, "the rotation for epoch e+1 is due at once"
    s.rotate()
    newest = max(r.epoch for r in s.route_lists[next(iter(s.route_lists))].installed())
    assert newest == e + 2, "the newest route is one epoch ahead of the active one"
    assert s.next_rotation == (e + 2) * rt


def test_hashed_addresses_exist_only_behind_their_guards(
    sup: tuple[supmod.Supervisor, list[tuple[Any, ...]], list[float]]
) -> None:
    s, log, now = sup
    rt = s.config.rotation_time
    for k in range(8):
        now[0] = (1000 + k) * rt + 0.5
        s.rotate()
    commits = [i for i, ev in enumerate(log) if ev[0] == "commit"]
    assert len(commits) == 8
    address_of = {epoch: addr for i in commits for addr, epoch in log[i][1].items()}
    bound: set[bytes] = set()
    released = 0
    for i, ev in enumerate(log):
        if ev[0] == "bind":
            guard = max(c for c in commits if c < i)
            assert ev[1] in log[guard][1], "bound after the commit that adds its guard"
            bound.add(ev[1])
        elif ev[0] == "unbind":
            released += 1
            nxt = min(c for c in commits if c > i)
            assert log[nxt][2], "unbound before the commit that removes its rules"
            bound.discard(ev[1])
        elif ev[0] == "publish" and ev[1] == "accepted":
            assert address_of[ev[2]] in bound, "workers learn a route only once it is bound"
    assert released >= 4
    routes = s.route_lists[next(iter(s.route_lists))].phases[0].routes  # no exchange here
    assert len(routes.installed()) == routes.lifetime + 3  # accepted e-L..e+1, and lingering


def test_the_peers_addresses_are_pinned_while_their_routes_are_bound(
    sup: tuple[supmod.Supervisor, list[tuple[Any, ...]], list[float]]
) -> None:
    """Every bound route's remote address has a pinned neighbour entry (Netlink.pin_neighbours,
    outside the kernel's table limit), asked to resolve only after it is pinned; a released
    route's entry goes with it; what stays pinned is exactly what the bound routes name."""
    s, log, now = sup
    rt = s.config.rotation_time
    for k in range(8):
        now[0] = (1000 + k) * rt + 0.5
        s.rotate()
        now[0] += 1.0
        s.resolve_due()
    pins = [ev[1] for ev in log if ev[0] == "pin"]
    unpins = [ev[1] for ev in log if ev[0] == "unpin"]
    assert len(pins) == len(set(pins)), "each address pinned once"
    assert unpins and set(unpins) <= set(pins)
    bound = {r.remote.address for r in s.bound_routes.values()}
    assert set(s.pinned) == bound == set(pins) - set(unpins)
    for i, ev in enumerate(log):
        if ev[0] == "resolve":
            for a in ev[1]:
                assert ("pin", a) in log[:i], "resolved only once pinned"
    s.remove_stream(s.config.streams[0])
    assert not s.pinned, "a removed stream's entries go with it"


def test_key_changes_inside_a_batch_are_applied_once_at_its_end(
    sup: tuple[supmod.Supervisor, list[tuple[Any, ...]], list[float]]
) -> None:
    """Exchange messages that arrive together are settled together (Supervisor.settling): no
    route is applied while the batch runs, one apply for all of it at the end; outside a
    batch a settle applies at once."""
    s, log, now = sup
    name = next(iter(s.route_lists))
    keys = s.route_lists[name]
    published: list[str] = []
    s.publish_state = published.append  # type: ignore[method-assign]
    now[0] = 1000 * s.config.rotation_time + 0.5
    with s.settling():
        for _ in range(3):
            keys.changed = True
            s.settle(name, keys, [])
        assert not [ev for ev in log if ev[0] == "commit"], "nothing applied inside the batch"
    assert len([ev for ev in log if ev[0] == "commit"]) == 1
    assert published == [name]
    keys.changed = True
    s.settle(name, keys, [])
    assert published == [name, name], "outside a batch: at once"
