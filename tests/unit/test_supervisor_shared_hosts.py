"""A host in several streams (a gateway with several peers): the entries the supervisor makes on
the internal interface for a stream (the remote host's address; the local host's permanent
neighbour entry and /128 route) are shared by every stream of that host, and go only with the
last of them (supervisor.py, ``host_users``).

Netlink is a stand-in that keeps the kernel's state as sets and answers like the kernel
(mt6d_mp/io/netlink.py: an address already there or not there is no error); the firewall is
off, the bus records nothing. ``state.json`` is the real file in a temporary runtime directory:
what a crash would leave for the next start to remove (each neighbour entry once, while any
stream uses it).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import supervisor as supmod
from mt6d_mp.core import config as cfg
from mt6d_mp.errors import SystemSetupError
from mt6d_mp.keygen import write_key

CONF = Path(__file__).resolve().parents[2] / "conf"
INT = "eth1"  # conf/gateway-a/mt6d.toml's internal interface

HOSTS = {  # name: (address, MAC)
    "host-a": ("2001:db8:100::a1", "02:00:00:00:0a:01"),
    "host-a2": ("2001:db8:100::a2", "02:00:00:00:0a:02"),
    "host-b": ("2001:db8:100::b1", "02:00:00:00:0b:01"),
    "host-c": ("2001:db8:100::c1", "02:00:00:00:0c:01"),
}
# Gateway A with two peers: host-a talks to host-b (behind B) and host-c (behind C); host-a2
# talks to host-b too, so host-b's address on the internal interface is shared as well.
STREAMS = (("host-a", "host-b", 2), ("host-a", "host-c", 3), ("host-a2", "host-b", 4))


def packed(name: str) -> bytes:
    return ipaddress.IPv6Address(HOSTS[name][0]).packed


class Kernel:
    """Stands in for Netlink: the internal interface's addresses, neighbours and routes."""

    def __init__(self) -> None:
        self.addresses: set[tuple[str, bytes]] = set()
        self.neighbours: dict[tuple[str, bytes], str] = {}
        self.routes: set[tuple[str, bytes]] = set()
        self.fail_neighbour = False

    def add_address(self, dev: str, addr: bytes, prefixlen: int = 128) -> bool:
        if (dev, bytes(addr)) in self.addresses:
            return False
        self.addresses.add((dev, bytes(addr)))
        return True

    def remove_address(self, dev: str, addr: bytes, prefixlen: int = 128) -> bool:
        if (dev, bytes(addr)) not in self.addresses:
            return False
        self.addresses.discard((dev, bytes(addr)))
        return True

    def add_neighbour(self, dev: str, addr: bytes, mac: bytes | str) -> None:
        if self.fail_neighbour:
            raise SystemSetupError("netlink: neighbour refused (test)")
        self.neighbours[(dev, bytes(addr))] = bytes(mac).hex() if isinstance(mac, bytes) else mac

    def remove_neighbour(self, dev: str, addr: bytes) -> bool:
        return self.neighbours.pop((dev, bytes(addr)), None) is not None

    def add_host_route(self, dev: str, addr: bytes) -> None:
        self.routes.add((dev, bytes(addr)))

    def remove_host_route(self, dev: str, addr: bytes) -> bool:
        if (dev, bytes(addr)) not in self.routes:
            return False
        self.routes.discard((dev, bytes(addr)))
        return True

    # what a test asks
    def has_local(self, name: str) -> bool:
        n, r = (INT, packed(name)) in self.neighbours, (INT, packed(name)) in self.routes
        assert n == r, f"{name}: neighbour entry {n} but route {r}"
        return n

    def has_remote(self, name: str) -> bool:
        return (INT, packed(name)) in self.addresses


class Bus:
    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}

    def publish(self, msg: Any) -> None:
        pass


@pytest.fixture
def gw(tmp_path: Path) -> tuple[supmod.Supervisor, Kernel, dict[str, cfg.StreamConfig]]:
    d = tmp_path / "gw"
    shutil.copytree(CONF / "gateway-a", d)
    (d / "users").write_text("".join(f"{a} {n}\n" for n, (a, _m) in HOSTS.items()))
    (d / "ethers").write_text("".join(f"{m} {a}\n" for a, m in HOSTS.values()))
    lines = []
    for local, remote, queue in STREAMS:
        write_key(str(d / "keys" / f"{local}-{remote}.key"))
        lines.append(f"{local} {remote} {queue} @keys/{local}-{remote}.key\n")
    (d / "profiles").write_text("".join(lines))
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    config = cfg.load(d / "mt6d.toml", {"runtime.dir": str(run), "switches.firewall": False,
                                        "log.handlers": ["console"]})
    s = supmod.Supervisor(config, clock=lambda: 1000.0)
    kernel = Kernel()
    s.nl = kernel  # type: ignore[assignment]
    s.bus = Bus()  # type: ignore[assignment]
    return s, kernel, {st.name: st for st in config.streams}


def recorded(s: supmod.Supervisor) -> list[tuple[str, str]]:
    """The neighbour entries ``state.json`` holds for the next start to remove after a crash."""
    data = json.loads((s.config.runtime_dir / "state.json").read_text())
    return [(e[0], e[1]) for e in data["neighbours"]]


def test_a_stream_removed_leaves_what_another_stream_of_its_host_uses(
    gw: tuple[supmod.Supervisor, Kernel, dict[str, cfg.StreamConfig]]
) -> None:
    s, kernel, streams = gw
    ab, ac, a2b = streams["host-a-host-b"], streams["host-a-host-c"], streams["host-a2-host-b"]
    for st in (ab, ac, a2b):
        s.add_stream(st)
    assert kernel.has_local("host-a") and kernel.has_local("host-a2")
    assert kernel.has_remote("host-b") and kernel.has_remote("host-c")
    a, a2 = HOSTS["host-a"][0], HOSTS["host-a2"][0]
    assert sorted(recorded(s)) == [(INT, a), (INT, a2)], "each neighbour entry recorded once"

    s.remove_stream(ac)  # host-a's other stream (to host-b) keeps host-a's entries
    assert kernel.has_local("host-a") and not kernel.has_remote("host-c")
    assert kernel.has_remote("host-b")
    assert sorted(recorded(s)) == [(INT, a), (INT, a2)]

    s.remove_stream(ab)  # host-a2's stream keeps host-b's address; host-a has none left
    assert not kernel.has_local("host-a") and kernel.has_remote("host-b")
    assert kernel.has_local("host-a2")
    assert recorded(s) == [(INT, a2)]

    s.remove_stream(ab)  # idempotent: nothing another stream uses goes
    assert kernel.has_remote("host-b") and kernel.has_local("host-a2")

    s.add_stream(ab)  # back, next to the stream that kept host-b's address
    s.add_stream(ac)
    assert kernel.has_local("host-a") and kernel.has_remote("host-b") and kernel.has_remote("host-c")
    assert sorted(recorded(s)) == [(INT, a), (INT, a2)]

    for st in reversed(s.streams_done):  # what teardown does, stream by stream
        s.remove_stream_system(st)
    assert not kernel.addresses and not kernel.neighbours and not kernel.routes
    assert recorded(s) == [] and s.host_users == {}


def test_a_half_done_add_rolled_back_leaves_the_other_stream_intact(
    gw: tuple[supmod.Supervisor, Kernel, dict[str, cfg.StreamConfig]]
) -> None:
    """The second stream of a host fails half way (as a reload's add may): its roll-back
    removes nothing the first stream uses; the first stream's removal then removes it all."""
    s, kernel, streams = gw
    ab, ac = streams["host-a-host-b"], streams["host-a-host-c"]
    s.add_stream(ab)
    kernel.fail_neighbour = True
    with pytest.raises(SystemSetupError):
        s.add_stream(ac)
    kernel.fail_neighbour = False
    s.remove_stream(ac)
    assert kernel.has_local("host-a") and kernel.has_remote("host-b")
    assert not kernel.has_remote("host-c")
    assert recorded(s) == [(INT, HOSTS["host-a"][0])]
    s.remove_stream(ab)
    assert not kernel.addresses and not kernel.neighbours and not kernel.routes
    assert recorded(s) == []
