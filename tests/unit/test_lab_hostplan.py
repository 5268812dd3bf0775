"""The host-mode lab topologies' plan (mt6d_mp/lab/hostplan.py) and the MT6D files the lab
writes for them, without building anything (tests/lab/test_host_mode.py builds them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt6d_mp.core import config
from mt6d_mp.lab import Lab, LabUsageError, gateway
from mt6d_mp.lab.info import LabInfo
from mt6d_mp.lab.plan import Shape, build_info, make_plan


def lab_info(topology: str, tmp_path: Path) -> LabInfo:
    shape = Shape("tq1", topology, 1, True, 1400, False)
    return build_info(make_plan(shape), shape, rotation_time=1.0, lab_dir=tmp_path,
                      state_file=tmp_path / "state.json")


@pytest.mark.parametrize("topology,ends", [("host-gateway", ["host-a", "gateway-b"]),
                                           ("host-host", ["host-a", "host-b"])])
def test_host_mode_ends_get_host_mode_configurations(topology: str, ends: list[str],
                                                     tmp_path: Path) -> None:
    info = lab_info(topology, tmp_path)
    assert [n.role for n in info.gateways] == ends
    assert info.gateway("a").role == "host-a" and info.gateway("b").role == ends[1]
    assert info.capture_ns == "tq1-rt" and info.capture_if == "ga"
    (s,) = info.streams
    assert (s.host_a_address, s.host_b_address) == ("2001:db8:a::a1", "2001:db8:b::b1")
    gateway.write_configs(info, encrypt=True)
    loaded = {n.role: config.load(n.config or "") for n in info.gateways}
    a = loaded["host-a"]
    assert a.host_mode and a.external == "eth0" and a.internal == ""
    assert a.streams[0].local.mac.hex(":") == info.host_a().mac  # the host's eth0, as ethers says
    b = loaded[ends[1]]
    assert b.host_mode == (ends[1] == "host-b")
    assert a.streams[0].key == b.streams[0].key
    assert a.streams[0].local == b.streams[0].remote


def test_host_topologies_are_routed_and_carry_one_stream(tmp_path: Path) -> None:
    info = lab_info("host-host", tmp_path)
    assert [n.role for n in info.namespaces] == ["host-a", "router", "host-b"]
    router = info.ns("router")
    assert {i.name: i.mtu for i in router.interfaces} == {"ga": 1500, "gb": 1400}
    with pytest.raises(LabUsageError, match="one stream"):
        Lab("tq2", "host-gateway", streams=2)
