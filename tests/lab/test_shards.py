"""Shards: several streams on one queue and one worker process (``mt6d-lab --hosts-as-addresses
--shards N``: every host of a site an address of one namespace, the streams spread over N
queues).

One lab of six streams on two shards, rotating every second with a rekey every 3 s: every
stream carries pings at once, each from its own host address, across rotations and rekeys, with
no loss; each gateway runs two stream workers, the status reports every stream with its own
counters; ``mt6dctl restart`` named by one stream restarts its whole shard (every stream of it
gets a new worker, the other shard's keeps its own), and traffic flows again on every stream.
The capture of the external link shows no true address and no host MAC.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from mt6d_mp.lab import Lab, LabInfo, StreamInfo, random_prefix
from tests.lab.test_mt6d import capture, check_external_capture
from tests.lab.test_ops import received
from tests.lab.test_peers import REKEY, ctl, ping, status, wait_worker

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

STREAMS, SHARDS = 6, 2


@pytest.fixture(scope="module")
def shardlab() -> Iterator[tuple[Lab, LabInfo]]:
    lab = Lab(random_prefix("sh"), "switched", streams=STREAMS, rotation_time=1.0,
              hosts_as_addresses=True, shards=SHARDS, settings=REKEY, ready_timeout=60)
    try:
        yield lab, lab.up()
    finally:
        lab.down()


def ping_eventually(lab: Lab, s: StreamInfo, timeout: float = 30.0) -> None:
    """Until one ping from the stream's host address comes back (its first key exchange first)."""
    deadline = time.monotonic() + timeout
    while ping(lab, s.host_a_ns, s.host_b_address, "-c", "1", "-W", "1",
               "-I", s.host_a_address).returncode != 0:
        assert time.monotonic() < deadline, f"no ping reply on {s.name}"


def pings_all(lab: Lab, info: LabInfo, count: int) -> dict[str, tuple[int, int]]:
    """``count`` pings every 0.1 s on every stream at once, each from its own host address:
    (sent, received) by stream."""
    pids = {}
    for s in info.streams:
        out = lab.dir / f"ping-{s.name}-{count}.out"
        pids[s.name] = (lab.spawn(s.host_a_ns, ["ping", "-6", "-n", "-i", "0.1", "-c", str(count),
                                                "-W", "2", "-I", s.host_a_address, s.host_b_address],
                                  name=f"ping-{s.name}", log_path=out), out)
    result = {}
    deadline = time.monotonic() + count * 0.1 + 30
    for name, (pid, out) in pids.items():
        while lab.alive(pid):
            assert time.monotonic() < deadline, f"ping of {name} did not end"
            time.sleep(0.2)
        result[name] = received(out.read_text())
    return result


def test_streams_of_a_shard_share_a_worker_and_each_carries_its_own_traffic(
    shardlab: tuple[Lab, LabInfo],
) -> None:
    lab, info = shardlab
    assert {s.host_a_ns for s in info.streams} == {info.streams[0].host_a_ns}  # one namespace
    for s in info.streams:
        ping_eventually(lab, s)
    with capture(lab, info.capture_ns, info.capture_if, lab.dir / "shards.pcap") as cap:
        got = pings_all(lab, info, 40)  # 4 s: four rotations and a rekey
    assert all(r == (40, 40) for r in got.values()), got
    summary = check_external_capture(info, cap)
    assert summary["tunnel"] >= 2 * 40 * STREAMS and len(summary["epochs"]) >= 4, summary
    time.sleep(1.5)  # workers report their counters every second
    for gw in (info.gateway_a, info.gateway_b):
        st = status(gw)
        # The hashed addresses are local routes, not addresses of ext0 (docs/KERNEL.md), and
        # the ICMP worker answered the peer's neighbour solicitations for them.
        assert "scope global" not in lab.exec(gw.name, ["ip", "-6", "addr", "show", "dev", "ext0"]).stdout
        local = lab.exec(gw.name, ["ip", "-6", "route", "show", "table", "local", "proto", "109"]).stdout
        assert len(local.splitlines()) >= 2 * STREAMS, local
        icmp = next(w for w in st["workers"] if w["name"] == "icmp")
        assert icmp["counters"].get("nd_answered", 0) > 0, icmp
        rows = {w["name"]: w for w in st["workers"] if w["name"] != "icmp"}
        assert set(rows) == {name for _, name in info.streams_of(gw)}
        assert len({w["pid"] for w in rows.values()}) == SHARDS
        assert {w["worker"] for w in rows.values()} == {f"q{q}" for q in (2, 3)}
        for w in rows.values():  # each stream's own counters, not its shard's sum
            assert w["packets_out"] >= 40 and w["packets_in"] >= 40, w
            assert w["packets_out"] < 40 * 3, w


def test_restart_by_a_stream_restarts_its_shard_and_traffic_resumes(
    shardlab: tuple[Lab, LabInfo],
) -> None:
    lab, info = shardlab
    ga = info.gateway_a
    before = {w["name"]: w for w in status(ga)["workers"] if w["name"] != "icmp"}
    first = info.streams[0]
    shard = before[first.name]["worker"]
    code, res = ctl(ga, "restart", first.name)
    assert code == 0, res
    mates = {n for n, w in before.items() if w["worker"] == shard}
    assert set(res["workers"]) == mates and len(mates) == STREAMS // SHARDS
    for name in mates:
        wait_worker(ga, name, not_pid=before[name]["pid"])
    after = {w["name"]: w for w in status(ga)["workers"] if w["name"] != "icmp"}
    for name, w in after.items():
        if name in mates:
            assert w["pid"] != before[name]["pid"] and w["restarts"] == before[name]["restarts"] + 1
        else:
            assert w["pid"] == before[name]["pid"], "the other shard keeps its worker"
    for s in info.streams:
        ping_eventually(lab, s)
    got = pings_all(lab, info, 20)
    assert all(r == (20, 20) for r in got.values()), got
    r = ping(lab, first.host_a_ns, first.host_b_address, "-c", "1", "-I", first.host_a_address)
    assert r.returncode == 0, r.stdout + r.stderr
