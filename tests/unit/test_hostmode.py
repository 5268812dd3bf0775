"""What the supervisor adds per stream in host mode (mt6d_mp/hostmode.py), against a stand-in
for Netlink: the checks that the profile is this machine's, and the route to the remote host."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp import hostmode
from mt6d_mp.core import config as cfg
from mt6d_mp.errors import SystemSetupError
from mt6d_mp.keygen import write_key

CONF = Path(__file__).resolve().parents[2] / "conf"


class FakeNetlink:
    def __init__(self, addresses: dict[str, str], mac: bytes) -> None:
        self.addresses, self._mac = addresses, mac
        self.calls: list[tuple[str, Any, ...]] = []

    def interface_of(self, addr: Any) -> str | None:
        return self.addresses.get(str(addr))

    def mac(self, name: str) -> bytes:
        return self._mac

    def add_host_route(self, ifname: str, addr: bytes, *, mtu: int = 0,
                       source: bytes | None = None) -> None:
        self.calls.append(("add", ifname, addr, mtu, source))

    def remove_host_route(self, ifname: str, addr: bytes) -> bool:
        self.calls.append(("remove", ifname, addr))
        return True


@pytest.fixture
def host(tmp_path: Path) -> cfg.Config:
    d = tmp_path / "host"
    shutil.copytree(CONF / "host-a", d)
    write_key(str(d / "keys" / "host-a-host-b.key"))
    return cfg.load(d / "mt6d.toml")


def test_the_remote_host_is_routed_from_the_local_true_address(host: cfg.Config) -> None:
    (s,) = host.streams
    nl = FakeNetlink({str(s.local.address): "eth0"}, s.local.mac)
    hostmode.add_stream_system(nl, host, s, 1452)  # type: ignore[arg-type]
    assert nl.calls == [("add", "eth0", s.remote.address.packed, 1452, s.local.address.packed)]
    hostmode.remove_stream_system(nl, host, s)  # type: ignore[arg-type]
    assert nl.calls[-1] == ("remove", "eth0", s.remote.address.packed)


def test_a_profile_of_another_machine_is_refused(host: cfg.Config) -> None:
    (s,) = host.streams
    with pytest.raises(SystemSetupError, match=r"local host mt6d-host-a .* is not an address of "
                                                r"this machine"):
        hostmode.add_stream_system(FakeNetlink({}, s.local.mac), host, s, 1452)  # type: ignore[arg-type]
    both = {str(s.local.address): "eth0", str(s.remote.address): "eth0"}
    with pytest.raises(SystemSetupError, match=r"remote host mt6d-host-b .* is an address of "
                                                r"this machine"):
        hostmode.add_stream_system(FakeNetlink(both, s.local.mac), host, s, 1452)  # type: ignore[arg-type]
