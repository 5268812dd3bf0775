"""Key phases and the exchange between two gateways, driven by a fake clock (no network)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mt6d_mp.core import keyx
from mt6d_mp.core.phases import Outgoing, Policy, StreamKeys
from mt6d_mp.core.routes import Route, StreamIdentity

A = bytes.fromhex("20010db8000a00000000000000000010")
B = bytes.fromhex("20010db8000b00000000000000000020")
MAC_A, MAC_B = bytes.fromhex("0200000000aa"), bytes.fromhex("0200000000bb")
PSK = bytes(range(32))
ROT = 2.0
POLICY = Policy(regen_interval=20.0, regen_window=2.0, regen_limit=40.0, tolerance=2 * ROT)


def seeded(seed: int) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def pair(t: float = 1000.0, policy: Policy = POLICY) -> tuple[StreamKeys, StreamKeys]:
    a = StreamKeys(StreamIdentity("s", A, MAC_A, B, MAC_B), PSK, ROT, ROT, policy, t,
                   rng=seeded(1), jitter=lambda w: w / 2)
    b = StreamKeys(StreamIdentity("s", B, MAC_B, A, MAC_A), PSK, ROT, ROT, policy, t,
                   rng=seeded(2), jitter=lambda w: w / 3)
    a.advance(t)
    b.advance(t)
    return a, b


def peer_route(peer: StreamKeys, sent: Route) -> Route | None:
    for r in peer.installed():
        if (r.key_phase == sent.key_phase and r.epoch == sent.epoch
                and r.local.address == sent.remote.address and r.local.port == sent.remote.port):
            return r
    return None


def deliver(now: float, to: StreamKeys, msgs: list[Outgoing], drop: Callable[[Outgoing], bool]
            = lambda m: False) -> list[Outgoing]:
    out: list[Outgoing] = []
    for m in msgs:
        if drop(m):
            continue
        r = peer_route(to, m.route)
        if r is not None:
            out += to.receive(now, r, m.options, m.payload)
    return out


def run(a: StreamKeys, b: StreamKeys, t0: float, seconds: float, step: float = 0.05,
        drop: Callable[[Outgoing], bool] = lambda m: False) -> float:
    t = t0
    while t < t0 + seconds:
        t += step
        for x in (a, b):
            x.advance(t)
        to_b, to_a = a.tick(t), b.tick(t)
        while to_a or to_b:
            back_to_a = deliver(t, b, to_b, drop)
            back_to_b = deliver(t, a, to_a, drop)
            to_a, to_b = back_to_a, back_to_b
        for x in (a, b):
            x.advance(t)
    return t


def test_first_exchange_keys_both_ends_with_the_same_secret() -> None:
    a, b = pair()
    assert a.state == b.state == "bootstrapping"
    run(a, b, 1000.0, 3.0)
    assert a.state == b.state == "keyed"
    assert a.send_phase == b.send_phase and a.send_phase != 0
    pa, pb = a.phases[a.send_phase], b.phases[b.send_phase]  # type: ignore[index]
    assert pa.secret == pb.secret and pa.secret != PSK
    assert pa.tx_key == pb.rx_key and pa.rx_key == pb.tx_key
    # Both ends compute the same routes for the new phase, mirrored.
    ra, rb = a.active(1003.0), b.active(1003.0)
    assert ra is not None and rb is not None
    assert ra.local == rb.remote and ra.remote == rb.local
    # Exactly one exchange ran although both ends started (the tie is broken).
    assert a.counters["rekeys"] == b.counters["rekeys"] == 1


def test_rekeys_every_interval_and_old_phases_go() -> None:
    a, b = pair()
    t = run(a, b, 1000.0, 100.0)
    assert a.counters["rekeys"] >= 4 and a.state == b.state == "keyed"
    assert a.send_phase == b.send_phase
    # Never more than the bootstrap phase and three others; routes of dropped phases released.
    assert len(a.phases) <= 4
    assert {r.key_phase for r in a.installed()} == set(a.phases)
    assert a.active(t) is not None


def test_lost_messages_are_retried_and_never_split_the_phase() -> None:
    a, b = pair()
    rnd = random.Random(7)
    run(a, b, 1000.0, 200.0, drop=lambda m: rnd.random() < 0.4)
    assert a.counters["keyx_retries"] + b.counters["keyx_retries"] > 0
    assert a.state == b.state == "keyed" and a.send_phase == b.send_phase


def test_peer_unreachable_fails_closed_then_recovers() -> None:
    a, b = pair()
    t = run(a, b, 1000.0, 5.0)
    assert a.state == "keyed"
    t = run(a, b, t, POLICY.regen_limit + 5.0, drop=lambda m: True)
    assert a.state == b.state == "expired" and a.active(t) is None
    assert a.counters["keys_expired"] == 1
    t = run(a, b, t, 20.0)
    assert a.state == b.state == "keyed" and a.active(t) is not None


def test_restarted_peer_rejoins_through_the_bootstrap_phase() -> None:
    a, b = pair()
    t = run(a, b, 1000.0, 30.0)
    old = a.send_phase
    b2 = StreamKeys(b.identity, PSK, ROT, ROT, POLICY, t, rng=seeded(9), jitter=lambda w: w)
    b2.advance(t)
    t = run(a, b2, t, 6.0)
    assert a.state == b2.state == "keyed" and a.send_phase == b2.send_phase != old


def test_forged_replayed_and_misrouted_messages_change_nothing() -> None:
    a, b = pair()
    t = 1000.0
    a.advance(t)
    b.advance(t)
    init = a.tick(t + 1)
    assert init and init[0].kind == "init"
    # Forged: one bit flipped anywhere.
    r = peer_route(b, init[0].route)
    assert r is not None
    for i in range(len(init[0].payload)):
        bad = bytearray(init[0].payload)
        bad[i] ^= 1
        assert b.receive(t + 1, r, init[0].options, bytes(bad)) == []
    assert b.counters["keyx_auth_failed"] == len(init[0].payload)
    # On another route (another epoch's): the route is authenticated too.
    other = next(x for x in b.installed() if x.key_phase == 0 and x.epoch != r.epoch)
    assert b.receive(t + 1, other, init[0].options, init[0].payload) == []
    assert b.counters["keyx_auth_failed"] == len(init[0].payload) + 1
    resp = b.receive(t + 1, r, init[0].options, init[0].payload)
    assert resp and resp[0].kind == "resp"
    confirm = deliver(t + 1, a, resp)
    assert deliver(t + 1, b, confirm) == [] and b.send_phase is not None
    phase = b.send_phase
    # Replays of all three afterwards: counted, nothing changes.
    assert deliver(t + 2, b, init) == []
    assert b.counters["keyx_replay"] == 1
    assert deliver(t + 2, b, confirm) == []
    assert b.counters["keyx_replay"] == 2
    deliver(t + 2, a, resp)  # a answers a repeated RESP with its CONFIRM, nothing else
    assert b.send_phase == phase and a.counters["rekeys"] == b.counters["rekeys"] == 1
    # Replayed much later: stale.
    assert deliver(t + 60, b, init) == [] and b.counters["keyx_stale"] == 1


def test_message_codec_round_trip_and_rejects() -> None:
    key, aad = bytes(32), bytes(36)
    m = keyx.Message(keyx.INIT, b"12345678", time_ms=5, phase=3, public=bytes(range(32)))
    opts, payload = keyx.seal(key, aad, m)
    assert keyx.open_message(key, aad, opts, payload) == m
    with pytest.raises(Exception, match="keyx_malformed"):
        keyx.open_message(key, aad, opts, payload[:-1])
    with pytest.raises(Exception, match="keyx_version"):
        keyx.open_message(key, aad, opts[:4] + b"\x02" + opts[5:], payload)
    assert keyx.next_phase(0) == 1 and keyx.next_phase(255) == 1 and keyx.next_phase(3, 7) == 8


def test_low_order_public_key_is_refused() -> None:
    pending, _ = keyx.new_init(1000.0, 0, seeded(3))
    resp = keyx.Message(keyx.RESP, pending.id, phase=1, public=bytes(32), confirm=bytes(16))
    with pytest.raises(Exception, match="keyx_bad_public"):
        keyx.complete(pending, resp, PSK)


def test_an_exchange_that_may_not_start_waits_and_the_peer_still_answers() -> None:
    """``tick(may_start=False)`` (the supervisor's bound on exchanges at once) starts nothing
    however long it is due, and does not keep the peer's exchange from completing."""
    a, b = pair()
    t = 1000.0
    for _ in range(40):  # 2 s, every tick held back on a
        t += 0.05
        assert a.tick(t, may_start=False) == [] and a.initiated is None
    assert a.state == "bootstrapping" and a.counters["keyx_started"] == 0
    for _ in range(60):  # b may start: its exchange keys both ends, a answering
        t += 0.05
        for x in (a, b):
            x.advance(t)
        to_a = b.tick(t)
        to_b = a.tick(t, may_start=False)
        while to_a or to_b:
            to_a, to_b = deliver(t, b, to_b), deliver(t, a, to_a)
    assert a.state == b.state == "keyed" and a.counters["keyx_started"] == 0
