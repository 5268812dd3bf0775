"""The ICMP worker's tables (workers/icmp.py, IcmpWorker.rebuild) kept per stream: after every
bus message, redoing only the streams it touched gives the same tables as redoing all of them
from the same replica. Pure: no sockets are opened (the sent rings are files that need not
exist), and the Replica's per-stream index is checked along the way."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from mt6d_mp.core.messages import PhaseKeys, Replica, RouteUpdate, Snapshot, StreamState, Update
from workers.icmp import IcmpWorker


def stream(i: int, phases: tuple[int, ...] = (1,), crypt: str = "aes-256-gcm") -> StreamState:
    return StreamState(
        name=f"s{i}", queue=2 + i % 3, local=bytes([0x20, i]) * 8, remote=bytes([0x21, i]) * 8,
        crypt=crypt, phases=tuple(PhaseKeys(p, bytes([p, i]) * 16, bytes([i, p]) * 16)
                                  for p in phases),
        send_phase=phases[-1], lane=1, internal_ifindex=3, external_ifindex=4, tunnel_mtu=1452,
        rotation_time=2.0)


def route(i: int, epoch: int, phase: int, state: str = "accepted") -> RouteUpdate:
    return RouteUpdate(f"s{i}", epoch, state, bytes([0xa0, i, epoch % 256, phase]) * 4,
                       4000 + epoch % 1000, bytes([0xb0, i, epoch % 256, phase]) * 4, 5000, phase)


def worker(replica: Replica, tmp: Path) -> IcmpWorker:
    w = IcmpWorker.__new__(IcmpWorker)
    w.bus = type("Bus", (), {"replica": replica})()  # type: ignore[assignment]
    w.runtime_dir = tmp
    w.lookup_table, w.entries, w.decryptors, w.sent = {}, {}, {}, {}
    from collections import Counter
    w.hashed, w.nd_pending = Counter(), {}
    return w


def tables(w: IcmpWorker) -> tuple[dict[Any, Any], dict[bytes, int]]:
    """lookup_table with each decryptor named by its key, and the hashed addresses' counts."""
    out = {}
    for key, (local, remote, dec, _) in w.lookup_table.items():
        out[key] = (local, remote, None if dec is None else bytes(dec._key))  # type: ignore[attr-defined]
    return out, dict(w.hashed)


def test_touched_streams_only_give_the_same_tables_as_everything(tmp_path: Path) -> None:
    rng = random.Random(7)
    replica = Replica()
    replica.apply_snapshot(Snapshot(0, (), (), ()))
    incremental = worker(replica, tmp_path)
    seq, last = 0, {}
    epochs = {i: 100 for i in range(12)}

    def send(items: list[Any]) -> None:
        nonlocal seq
        for item in items:
            seq += 1
            name = item if isinstance(item, str) else getattr(item, "stream", None) or item.name
            topic = int(name[1:]) % 3
            assert replica.apply(Update(seq, item, topic, last.get(topic, 0)))
            last[topic] = seq
        incremental.rebuild()
        full = worker(replica, tmp_path)
        replica.touched, before = None, replica.touched  # the whole replica, as after a snapshot
        full.rebuild()
        replica.touched = before
        assert tables(incremental) == tables(full)
        assert replica.by_stream == {
            n: {k: r for k, r in replica.routes.items() if k[0] == n}
            for n in {k[0] for k in replica.routes}}

    send([stream(i) for i in range(12)])
    for _ in range(40):
        msg: list[Any] = []
        for i in rng.sample(range(12), 5):
            e = epochs[i] = epochs[i] + 1
            msg += [route(i, e, 0), route(i, e, 1), route(i, e - 3, 1, "expired"),
                    route(i, e - 5, 0, "released"), route(i, e - 5, 1, "released")]
        if rng.random() < 0.3:
            i = rng.randrange(12)
            msg.append(stream(i, (1, 2), rng.choice(["aes-256-gcm", "none"])))  # a rekey
        if rng.random() < 0.1:
            gone = rng.randrange(12)
            msg.append(f"s{gone}")
        send(msg)
    assert incremental.lookup_table and incremental.hashed
