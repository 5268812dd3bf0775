"""Bus messages (pure) and the Clone pattern over real ZeroMQ ipc sockets (no root needed)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from mt6d_mp.core.messages import (
    VERSION,
    BusError,
    PhaseKeys,
    Replica,
    RouteUpdate,
    Snapshot,
    StreamState,
    Update,
)
from mt6d_mp.io.bus import BusClient, BusServer, pack, unpack

STREAM = StreamState(
    name="host-a-host-b", queue=2, local=b"\x20" * 16, remote=b"\x21" * 16, crypt="aes-256-gcm",
    phases=(PhaseKeys(1, b"\x01" * 32, b"\x02" * 32),), send_phase=1, lane=1, internal_ifindex=3,
    external_ifindex=4, tunnel_mtu=1452, rotation_time=2.0,
)


def route(epoch: int, state: str = "accepted") -> RouteUpdate:
    return RouteUpdate("host-a-host-b", epoch, state, bytes([epoch % 256]) * 16, 1024 + epoch,
                       b"\x99" * 16, 2000, 0)


def test_messages_round_trip_through_msgpack() -> None:
    for item in (STREAM, STREAM._replace(host_mode=True), route(7), "host-a-host-b"):
        u = Update(5, item, 7, 2)
        assert Update.from_wire(unpack(pack(u.to_wire()))) == u
    snap = Snapshot(9, (STREAM,), (route(1), route(2, "expired")), ((7, 9), (8, 0)))
    assert Snapshot.from_wire(unpack(pack(snap.to_wire()))) == snap


def test_stream_state_never_shows_keys() -> None:
    text = repr(STREAM)
    assert "01" * 8 not in text and "\\x01" not in text and "host-a-host-b" in text


@pytest.mark.parametrize("wire", [
    None, [], [2, 1, "route", []], [1, 1, "bogus", None], [1, 0, "route", route(1).to_wire()],
    [1, 1, "route", [1, "s", 1, "weird", b"x" * 16, 5, b"y" * 16, 6, 0]],
    [1, 1, "route", [1, "s", 1, "accepted", b"short", 5, b"y" * 16, 6, 0]],
    [1, 1, "stream", STREAM.to_wire()[:-1]],
    [VERSION, 3, "route", route(1).to_wire(), 2, 3],  # prev must be older than the update
    [VERSION, 3, "route", route(1).to_wire(), 70000, 0],  # topic is a queue number
])
def test_malformed_updates_are_bus_errors(wire: object) -> None:
    with pytest.raises(BusError):
        Update.from_wire(wire)


@given(st.binary(max_size=200))
def test_any_bytes_are_an_update_or_a_bus_error(data: bytes) -> None:
    with contextlib.suppress(BusError):  # anything else escaping fails the test
        Update.from_wire(unpack(data))


def test_replica_applies_in_order_and_detects_gaps() -> None:
    """Each topic (a queue) is a chain of updates, each naming the one before (prev): a
    replica of one topic never sees the others' sequence numbers, and a gap is a missing link."""
    r = Replica()
    assert r.apply(Update(1, STREAM, 5, 0)) and not r.synced  # before the snapshot: ignored
    r.apply_snapshot(Snapshot(3, (STREAM,), (route(1),), ((5, 2),)))
    assert r.apply(Update(2, route(9), 5, 1))  # older than the snapshot: ignored
    assert (STREAM.name, 0, 9) not in r.routes
    assert r.apply(Update(6, route(2), 5, 2)), "3-5 went to other topics: no gap"
    assert not r.apply(Update(9, route(3), 5, 8)), "a gap must be reported"
    assert r.seq == 6 and (STREAM.name, 0, 3) not in r.routes
    assert r.apply(Update(10, route(1, "released"), 5, 6))
    assert set(r.routes) == {(STREAM.name, 0, 2)}
    assert r.apply(Update(11, STREAM.name, 5, 10))
    assert not r.streams and not r.routes
    # Each topic is its own message (BusServer.batch): a replica of topics 5 and 7 may take
    # 5's newer updates before 7's older ones; only a topic's own chain must hold together.
    r.apply_snapshot(Snapshot(20, (STREAM,), (), ((5, 20), (7, 19))))
    assert r.apply(Update(22, route(4), 5, 20)) and r.apply(Update(24, route(5), 5, 22))
    assert r.apply(Update(21, route(6), 7, 19)) and r.apply(Update(23, route(7), 7, 21))
    assert {e for _, _, e in r.routes} == {4, 5, 6, 7} and r.seq == 24
    assert r.apply(Update(23, route(8), 7, 21)) and (STREAM.name, 0, 8) not in r.routes  # seen
    assert not r.apply(Update(26, route(9), 7, 25))


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_clone_pattern_over_ipc(tmp_path: Path) -> None:
    server = BusServer(tmp_path)
    client = BusClient(tmp_path, "w1")
    try:
        server.publish(STREAM)  # before the client asked: only the snapshot can carry it
        server.publish(route(1))
        client.request_snapshot()

        def pump() -> bool:
            server.handle_control()
            client.poll_control()
            client.poll_updates()
            return client.replica.synced

        wait_for(pump)
        assert client.replica.streams == {STREAM.name: STREAM}
        assert set(client.replica.routes) == {(STREAM.name, 0, 1)}
        server.publish(route(2))
        wait_for(lambda: (client.poll_updates(), (STREAM.name, 0, 2) in client.replica.routes)[1])
        # A lost update (simulated by bumping the sequence) makes the client ask again.
        server.state.apply(Update(server.seq + 1, route(3), STREAM.queue,
                                  server.state.topic_seq[STREAM.queue]))
        server.publish(route(4))

        def resynced() -> bool:
            client.poll_updates()
            server.handle_control()
            client.poll_control()
            return (STREAM.name, 0, 3) in client.replica.routes

        wait_for(resynced)
        assert client.replica.seq == server.seq
        # An unknown command gets an error reply, which is not a snapshot: counted, not applied.
        client.send(b"nonsense")
        wait_for(lambda: (server.handle_control(), client.poll_control(), client.errors == 1)[2])
        assert client.replica.seq == server.seq
    finally:
        client.close()
        server.close()
    assert not (tmp_path / "updates.sock").exists()


def test_a_shards_worker_hears_only_its_own_queues_streams(tmp_path: Path) -> None:
    """Topics (mt6d_mp.io.bus): a client of queue 2 gets the snapshot and the updates of queue
    2's streams and nothing of queue 3's; a client of every topic gets both; a stream moved
    from queue 2 to queue 3 is removed from queue 2's client and appears in queue 3's."""
    other = STREAM._replace(name="host-c-host-d", queue=3)
    server = BusServer(tmp_path)
    mine, everything = BusClient(tmp_path, "q2", topic=2), BusClient(tmp_path, "icmp")
    try:
        server.publish(STREAM)
        server.publish(other)
        server.publish(route(1))
        for client in (mine, everything):
            client.request_snapshot()
        wait_for(lambda: (server.handle_control(), mine.poll_control(), everything.poll_control(),
                          mine.replica.synced and everything.replica.synced)[3])
        assert set(mine.replica.streams) == {STREAM.name}
        assert set(everything.replica.streams) == {STREAM.name, other.name}
        time.sleep(0.2)  # the subscriptions reach the publisher
        server.publish(route(2))
        server.publish(RouteUpdate(other.name, 5, "accepted", b"\x05" * 16, 1030, b"\x98" * 16,
                                   2000, 0))
        wait_for(lambda: (everything.poll_updates(), (other.name, 0, 5) in everything.replica.routes)[1])
        mine.poll_updates()
        assert set(mine.replica.routes) == {(STREAM.name, 0, 1), (STREAM.name, 0, 2)}
        assert set(mine.replica.streams) == {STREAM.name}
        server.publish(STREAM._replace(queue=3))  # reload moved it to the other shard
        wait_for(lambda: (mine.poll_updates(), not mine.replica.streams)[1])
        assert not mine.replica.routes
        wait_for(lambda: (everything.poll_updates(),
                          everything.replica.streams[STREAM.name].queue == 3)[1])
        with pytest.raises(BusError):
            server.publish(route(3)._replace(stream="nobody"))  # no state: no topic
    finally:
        mine.close()
        everything.close()
        server.close()


class _CountingSub:
    """A client's SUB socket that counts the ZeroMQ messages it hands out."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.messages = sock, 0

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        frames: list[bytes] = self.sock.recv_multipart(flags)
        self.messages += 1
        return frames

    def close(self) -> None:
        self.sock.close()


def test_a_batch_goes_out_as_one_message_per_topic(tmp_path: Path) -> None:
    """BusServer.batch: what is published inside the block arrives at its end, one message
    per topic with every update in order; a client that lost an update earlier in the topic's
    chain asks for a snapshot and does not apply the rest of the message."""
    other = STREAM._replace(name="host-c-host-d", queue=3)
    server = BusServer(tmp_path)
    client = BusClient(tmp_path, "icmp")
    try:
        server.publish(STREAM)
        server.publish(other)
        client.request_snapshot()
        wait_for(lambda: (server.handle_control(), client.poll_control(), client.replica.synced)[2])
        time.sleep(0.2)  # the subscription reaches the publisher
        client.poll_updates()  # the states, older than the snapshot
        counting = _CountingSub(client.sub)
        client.sub = counting  # type: ignore[assignment]
        with server.batch():
            for epoch in range(1, 101):
                server.publish(route(epoch))
                server.publish(route(epoch, "expired")._replace(stream=other.name))
            with server.batch():  # nested: sent with the outer block
                server.publish(route(1, "released"))
            time.sleep(0.2)
            client.poll_updates()
            assert counting.messages == 0, "nothing leaves before the block ends"
        wait_for(lambda: (client.poll_updates(), (other.name, 0, 100) in client.replica.routes)[1])
        assert counting.messages == 2
        assert {k for k in client.replica.routes if k[0] == STREAM.name} == {
            (STREAM.name, 0, e) for e in range(2, 101)}
        assert client.replica.seq == server.seq

        server.state.apply(Update(server.seq + 1, route(200), STREAM.queue,
                                  server.state.topic_seq[STREAM.queue]))  # a lost update
        with server.batch():
            server.publish(route(201))
            server.publish(route(202))
        wait_for(lambda: (client.poll_updates(), client.snapshot_pending)[1])
        assert (STREAM.name, 0, 201) not in client.replica.routes
        wait_for(lambda: (server.handle_control(), client.poll_control(),
                          (STREAM.name, 0, 202) in client.replica.routes)[2])
        assert (STREAM.name, 0, 200) in client.replica.routes
    finally:
        client.close()
        server.close()


def test_publish_routes_sends_what_publish_sends(tmp_path: Path) -> None:
    """BusServer.publish_routes, the rotation's path, writes the same messages and leaves the
    same state as publish does one update at a time; an update for an unknown stream is a
    BusError, as it is for publish."""
    other = STREAM._replace(name="host-c-host-d", queue=3)
    updates = [route(e, state)._replace(stream=name) for e in range(1, 40)
               for state in ("accepted", "expired", "released")
               for name in (STREAM.name, other.name)]
    got = []
    for way in ("one", "many"):
        d = tmp_path / way
        d.mkdir()
        server = BusServer(d)
        sub = server.ctx.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(f"ipc://{d / 'updates.sock'}")
            time.sleep(0.2)  # the subscription reaches the publisher
            server.publish(STREAM)
            server.publish(other)
            with server.batch():
                if way == "one":
                    for u in updates:
                        server.publish(u)
                else:
                    server.publish_routes(updates)
            server.publish_routes(updates[:2])  # outside a batch: a message each
            frames = []
            while len(frames) < 6 and sub.poll(10000):  # what the assertion below expects
                frames.append(sub.recv_multipart())
            while sub.poll(200):  # and anything more that came
                frames.append(sub.recv_multipart())
            got.append((frames, server.snapshot().to_wire()))
            with pytest.raises(BusError, match="before its state"):
                server.publish_routes([route(99)._replace(stream="nobody")])
            server.publish(other.name)  # removed: its routes leave the snapshots with it
            assert {r.stream for r in server.snapshot().routes} == {STREAM.name}
        finally:
            sub.close()
            server.close()
    assert got[0] == got[1]
    assert len(got[0][0]) == 2 + 2 + 2  # two states; one message per topic; two single ones


def _later(delay: float, action: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        action()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_poller_wakes_for_updates_replies_and_its_own_descriptors(tmp_path: Path) -> None:
    """A worker's poll sleeps and wakes when a bus message or a packet arrives, not at its timeout.

    Each message comes from another thread while the poll sleeps with a 30 s timeout, so a poll
    that missed it would return at the timeout with nothing. Also the contract for any faster
    poller (results/PROFILE.md, 1fe820e -> 9d1e23c, tried one on ZMQ_FD).
    """
    server = BusServer(tmp_path)
    client = BusClient(tmp_path, "w1")
    poller = client.poller()
    a, b = socket.socketpair()
    try:
        server.publish(STREAM)  # routes are published on their stream's topic
        client.request_snapshot()
        wait_for(lambda: (server.handle_control(), client.poll_control(), client.replica.synced)[2])
        client.poll_updates()
        assert poller.poll(0) == ([], False, False)  # nothing waits

        sender = _later(0.3, lambda: server.publish(route(5)))
        fds, updates, control = poller.poll(30_000)  # at its timeout it would say "no update"
        sender.join()
        assert (fds, updates, control) == ([], True, False)
        assert client.poll_updates() and (STREAM.name, 0, 5) in client.replica.routes
        assert poller.poll(0) == ([], False, False)

        client.send(b"snapshot")  # a send (with ZMQ_FD, a send can use up the reply's signal)
        assert poller.poll(0) == ([], False, False)  # no reply yet
        replier = _later(0.3, server.handle_control)
        fds, updates, control = poller.poll(30_000)
        replier.join()
        assert (fds, updates, control) == ([], False, True)
        assert client.poll_control()
        assert poller.poll(0) == ([], False, False)

        poller.watch(a.fileno())
        writer = _later(0.3, lambda: b.send(b"x"))
        fds, updates, control = poller.poll(30_000)
        writer.join()
        assert (fds, updates, control) == ([a.fileno()], False, False)
        poller.unwatch(a.fileno())
        assert poller.poll(0) == ([], False, False)  # still readable, no longer watched
    finally:
        a.close()
        b.close()
        client.close()
        server.close()
