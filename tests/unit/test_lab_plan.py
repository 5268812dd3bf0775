"""The lab's plan and description without building anything (mt6d_mp/lab/plan.py, info.py,
gateway.py's files): the three-site topology, and the lookups tests use on it.

The labs themselves are built in tests/lab (root); here only what they are planned to be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mt6d_mp.core import config as cfg
from mt6d_mp.lab import LabInfo
from mt6d_mp.lab.gateway import write_configs
from mt6d_mp.lab.plan import Shape, build_info, make_plan


def info_of(topology: str, streams: int = 1, mt6d: bool = True, lab_dir: Path = Path("/x")) -> LabInfo:
    shape = Shape("t1", topology, streams, mt6d, 1500, False)
    return build_info(make_plan(shape), shape, rotation_time=1.0, lab_dir=lab_dir,
                      state_file=lab_dir / "state.json")


def test_three_sites_share_one_switch_and_pair_every_site_with_every_other() -> None:
    info = info_of("three-sites", streams=2)
    assert [g.role for g in info.gateways] == ["gateway-a", "gateway-b", "gateway-c"]
    assert [g.name for g in info.gateways] == ["t1-ga", "t1-gb", "t1-gc"]
    switch = info.ns("switch")
    assert switch.iface("br0").ports == ("ga", "gb", "gc")
    assert info.capture_ns == "t1-sw" and info.capture_if == "br0" and info.router_mtu is None
    assert [(s.name, s.gateway, s.hosts) for s in info.sites] == [
        ("a", "t1-ga", ("t1-ha", "t1-ha2")),
        ("b", "t1-gb", ("t1-hb", "t1-hb2")),
        ("c", "t1-gc", ("t1-hc", "t1-hc2")),
    ]
    assert info.host("c", 2).address == "2001:db8:100::c2"
    assert [(s.name, s.queue) for s in info.streams] == [
        ("host-a-host-b", 2), ("host-a2-host-b2", 3),
        ("host-a-host-c", 4), ("host-a2-host-c2", 5),
        ("host-b-host-c", 6), ("host-b2-host-c2", 7),
    ]
    # every host is in two streams, one to each other site
    for h in (n for n in info.namespaces if n.address):
        ends = [s for s in info.streams if h.name in (s.host_a_ns, s.host_b_ns)]
        assert len(ends) == 2, h.name
    (bc, _) = info.streams_between("c", "b")
    assert bc.name == "host-b-host-c" and bc.reverse_name == "host-c-host-b"
    assert [g.name for g in info.stream_gateways(bc)] == ["t1-gb", "t1-gc"]
    assert bc.name_at("t1-hc") == "host-c-host-b"
    # each gateway carries the streams of its own hosts, named with its own host first
    assert [name for _, name in info.streams_of(info.gateway("c"))] == [
        "host-c-host-a", "host-c2-host-a2", "host-c-host-b", "host-c2-host-b2"]
    macs = [i.mac for n in info.namespaces for i in n.interfaces]
    assert len(macs) == len(set(macs))


def test_two_site_labs_are_described_as_before() -> None:
    for topology in ("switched", "routed"):
        info = info_of(topology, streams=2)
        assert [g.name for g in info.gateways] == ["t1-ga", "t1-gb"]
        assert info.gateway_a.name == "t1-ga" and info.gateway_b.name == "t1-gb"
        assert [s.name for s in info.streams] == ["host-a-host-b", "host-a2-host-b2"]
        assert [s.queue for s in info.streams] == [2, 3] and [s.index for s in info.streams] == [1, 2]
        assert info.streams_between("a", "b") == info.streams
        for s in info.streams:
            assert info.stream_gateways(s) == (info.gateway_a, info.gateway_b)
    routed = info_of("routed")
    assert [s.net for s in routed.sites] == ["2001:db8:a::/64", "2001:db8:b::/64"]
    assert routed.capture_if == "ga"


def test_the_description_round_trips_and_reads_a_state_file_without_sites() -> None:
    info = info_of("three-sites")
    assert LabInfo.from_dict(info.to_dict()) == info
    old = info_of("switched").to_dict()
    del old["sites"]  # what a lab made before sites were recorded stored
    back = LabInfo.from_dict(old)
    assert back.sites == () and back.stream_gateways(back.streams[0]) == (back.gateway_a, back.gateway_b)
    assert [name for _, name in back.streams_of(back.gateway_b)] == ["host-b-host-a"]


@pytest.mark.parametrize("streams", [1, 2])
def test_each_gateway_of_three_sites_gets_the_profiles_and_keys_of_its_own_streams(
    tmp_path: Path, streams: int
) -> None:
    info = info_of("three-sites", streams=streams, lab_dir=tmp_path)
    write_configs(info, encrypt=True)
    for gw in info.gateways:
        assert gw.config and gw.dir
        c = cfg.load(gw.config)  # the supervisor's own loading accepts a host in two streams
        mine = info.streams_of(gw)
        assert [s.name for s in c.streams] == [name for _, name in mine]
        assert len({s.queue for s in c.streams}) == len(c.streams) == 2 * streams
        keys = sorted(p.name for p in (Path(gw.dir) / "keys").iterdir())
        assert keys == sorted(f"{s.name}.key" for s, _ in mine), "no key of another pair's stream"
    for s in info.streams:  # the two ends of a stream hold the same key
        x, y = info.stream_gateways(s)
        assert (Path(x.dir or "") / s.key_file).read_text() == (Path(y.dir or "") / s.key_file).read_text()


def test_hosts_as_addresses_share_one_namespace_per_site_and_streams_share_shards(
    tmp_path: Path,
) -> None:
    """The scale lab (mt6d_mp/bench/scale.py): 300 hosts a site as addresses of one namespace,
    one veth, no bridge; the streams spread over 4 queues; the gateways' files load."""
    shape = Shape("t1", "switched", 300, True, 1500, False, hosts_as_addresses=True, shards=4)
    plan = make_plan(shape)
    info = build_info(plan, shape, rotation_time=1.0, lab_dir=tmp_path,
                      state_file=tmp_path / "state.json")
    assert [n.name for n in info.namespaces] == ["t1-ha", "t1-ga", "t1-sw", "t1-gb", "t1-hb"]
    assert not plan.bridges[:-1] and [b.name for b in plan.bridges] == ["br0"]  # the switch only
    assert len(plan.addresses) == 2 * 300 + 2  # every host address, and each gateway's int0
    assert len({h.mac for h in plan.side("a")}) == 1
    assert len({h.address for h in plan.hosts}) == 600
    assert {s.queue for s in info.streams} == {2, 3, 4, 5}
    write_configs(info, encrypt=True)
    for gw in info.gateways:
        assert gw.config
        c = cfg.load(gw.config)
        assert len(c.streams) == 300 and len({s.queue for s in c.streams}) == 4
