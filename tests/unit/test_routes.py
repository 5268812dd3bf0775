"""Route lists driven by an injected clock (no system state)."""

from mt6d_mp.core.addressing import endpoint
from mt6d_mp.core.epochs import epoch_at, next_boundary
from mt6d_mp.core.routes import RouteList, StreamIdentity, lifetime_epochs

A = bytes.fromhex("20010468 0c80c111 00000000 00000001".replace(" ", ""))
B = bytes.fromhex("20010468 0c80c111 00000000 00000002".replace(" ", ""))
MAC_A = bytes.fromhex("00abcd112201")
MAC_B = bytes.fromhex("00abcd112202")
KEY = b"\x42" * 64


def pair(rotation: float = 10, lifetime: float = 10) -> tuple[RouteList, RouteList]:
    a = StreamIdentity("a-b", A, MAC_A, B, MAC_B)
    b = StreamIdentity("b-a", B, MAC_B, A, MAC_A)
    keys = lambda e: (KEY, 0)  # noqa: E731
    return RouteList(a, keys, rotation, lifetime), RouteList(b, keys, rotation, lifetime)


def test_both_gateways_derive_the_same_routes_swapped() -> None:
    ra, rb = pair()
    ra.advance(1000.0)
    rb.advance(1000.0)
    for x, y in zip(ra.installed(), rb.installed(), strict=True):
        assert x.epoch == y.epoch
        assert x.local == y.remote and x.remote == y.local
    route = ra.active(1000.0)
    assert route is not None and route.epoch == 100
    assert route.local == endpoint(A, KEY, 100, MAC_A)
    assert route.remote == endpoint(B, KEY, 100, MAC_B)


def test_start_installs_previous_current_and_next() -> None:
    ra, _ = pair()
    changes = ra.advance(1005.0)
    assert [r.epoch for r in changes.added] == [99, 100, 101]
    assert not changes.expired and not changes.released
    assert [r.epoch for r in ra.installed()] == [101, 100, 99]
    assert ra.installed()[0].epoch == 101  # newest first


def test_make_before_break_over_rotations() -> None:
    ra, _ = pair()
    ra.advance(1000.0)
    assert not ra.advance(1009.9)  # nothing changes inside an epoch
    c = ra.advance(1010.0)
    assert [r.epoch for r in c.added] == [102]
    assert [r.epoch for r in c.expired] == [99]  # no longer accepted ...
    assert [r.epoch for r in ra.installed()] == [102, 101, 100, 99]  # ... but still installed
    assert [r.epoch for r in ra.accepted(1010.0)] == [102, 101, 100]
    c = ra.advance(1020.0)
    assert [r.epoch for r in c.released] == [99]  # released one rotation after it expired
    assert [r.epoch for r in c.expired] == [100]
    # The route used at any time was installed a full rotation before it became active.
    for t in range(1020, 1100, 10):
        active_before = {r.epoch for r in ra.installed()}
        ra.advance(float(t))
        active = ra.active(float(t))
        assert active is not None
        assert active.epoch in active_before or t == 1020


def test_clock_skew_of_less_than_one_rotation_loses_nothing() -> None:
    ra, rb = pair()
    for t in [1000.0 + i * 0.7 for i in range(100)]:
        for skew in (-9.9, -5.0, 0.0, 5.0, 9.9):
            ra.advance(t)
            rb.advance(t + skew)
            sent = ra.active(t)
            assert sent is not None
            accepted_by_b = {(r.local, r.remote) for r in rb.accepted(t + skew)}
            assert (sent.remote, sent.local) in accepted_by_b


def test_longer_lifetime_accepts_more_epochs() -> None:
    assert lifetime_epochs(10, 10) == 1
    assert lifetime_epochs(10, 25) == 3
    assert lifetime_epochs(2, 1) == 1
    ra, _ = pair(10, 30)
    ra.advance(1000.0)
    assert [r.epoch for r in ra.accepted(1000.0)] == [101, 100, 99, 98, 97]


def test_a_long_pause_releases_everything_stale() -> None:
    ra, _ = pair()
    ra.advance(1000.0)
    c = ra.advance(2000.0)
    assert sorted(r.epoch for r in c.released) == [99, 100, 101]
    assert [r.epoch for r in ra.installed()] == [201, 200, 199]


def test_epochs_align_to_absolute_time() -> None:
    assert epoch_at(19.99, 10) == 1 and epoch_at(20.0, 10) == 2
    assert next_boundary(20.0, 10) == 30.0 and next_boundary(29.5, 2) == 30.0


