"""Unit tests for mt6d_mp.core.crypto: key derivation, sealing/opening against cryptography's AEADs
with hand-built nonces and associated data, the unauthenticated prefix decryption, the replay window."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from mt6d_mp.core.crypto import (
    CRYPT_AES_256_GCM,
    CRYPT_CHACHA20_POLY1305,
    CRYPT_NONE,
    CRYPT_TYPES,
    Opener,
    ReplayWindow,
    Sealer,
    derive_direction_key,
)
from mt6d_mp.errors import PacketError

AEADS: dict[int, type[AESGCM] | type[ChaCha20Poly1305]] = {
    CRYPT_AES_256_GCM: AESGCM,
    CRYPT_CHACHA20_POLY1305: ChaCha20Poly1305,
}
KEY = bytes(range(32))
A = bytes.fromhex("20010db8000000000000000000000001")
B = bytes.fromhex("20010db8000000000000000000000002")
PREFIX = bytes(range(100, 136))  # stands for outer src + dst + ports


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out with hmac, as an independent reference."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
    return out[:length]


def expected_dstopts(alg: int, phase: int, lane: int, counter: int) -> bytes:
    return bytes([17, 1, 0x1E, 12, alg, phase]) + lane.to_bytes(2, "big") + counter.to_bytes(8, "big")


def test_crypt_types() -> None:
    assert CRYPT_TYPES == {"aes-256-gcm": 1, "chacha20-poly1305": 2, "none": 0}


def test_derive_direction_key_matches_rfc5869() -> None:
    session = os.urandom(64)
    for phase in (0, 7):
        want = hkdf_sha256(session, b"mt6d-mp v1", b"data" + bytes([phase]) + A + B, 32)
        assert derive_direction_key(session, A, B, phase) == want
    assert derive_direction_key(session, A, B) != derive_direction_key(session, B, A)
    with pytest.raises(ValueError):
        derive_direction_key(session, A[:15], B)


@pytest.mark.parametrize("alg", [CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305])
@pytest.mark.parametrize("lane", [0, 0x1234])
def test_seal_matches_reference_aead(alg: int, lane: int) -> None:
    sealer = Sealer(alg, KEY, lane=lane, phase=3)
    ref = AEADS[alg](KEY)
    for counter in range(3):
        plain = os.urandom(50 + counter)
        dstopts, ct = sealer.seal(plain, PREFIX)
        want_hdr = expected_dstopts(alg, 3, lane, counter)
        assert dstopts == want_hdr
        nonce = b"\x00\x00" + lane.to_bytes(2, "big") + counter.to_bytes(8, "big")
        assert ct == ref.encrypt(nonce, plain, PREFIX + want_hdr)
    assert sealer.counter == 3


@pytest.mark.parametrize("alg", [CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305])
def test_open_round_trip_replay_and_tamper(alg: int) -> None:
    sealer, opener = Sealer(alg, KEY), Opener(alg, KEY)
    plain = os.urandom(100)
    hdr, ct = sealer.seal(plain, PREFIX)
    # Tampering is rejected and does not consume the counter.
    bad = bytearray(ct)
    bad[5] ^= 1
    with pytest.raises(PacketError) as err:
        opener.open(PREFIX, hdr, bytes(bad))
    assert err.value.reason == "auth_failed"
    bad_prefix = bytearray(PREFIX)
    bad_prefix[0] ^= 0x80
    with pytest.raises(PacketError, match="auth_failed"):
        opener.open(bytes(bad_prefix), hdr, ct)
    assert opener.open(PREFIX, hdr, ct) == plain
    with pytest.raises(PacketError) as err:
        opener.open(PREFIX, hdr, ct)
    assert err.value.reason == "replay"


def test_open_checks_alg_phase_and_lanes() -> None:
    sealer = Sealer(CRYPT_AES_256_GCM, KEY, lane=1)
    hdr, ct = sealer.seal(b"x" * 20, PREFIX)
    with pytest.raises(PacketError) as err:
        Opener(CRYPT_CHACHA20_POLY1305, KEY).open(PREFIX, hdr, ct)
    assert err.value.reason == "alg_mismatch"
    with pytest.raises(PacketError) as err:
        Opener(CRYPT_AES_256_GCM, KEY, phase=1).open(PREFIX, hdr, ct)
    assert err.value.reason == "key_phase"
    bad = bytearray(hdr)
    bad[4] = 9
    with pytest.raises(PacketError) as err:
        Opener(CRYPT_AES_256_GCM, KEY).open(PREFIX, bytes(bad), ct)
    assert err.value.reason == "unknown_alg"
    with pytest.raises(PacketError) as err:
        Opener(CRYPT_AES_256_GCM, KEY).open(PREFIX, None, ct)
    assert err.value.reason == "not_encrypted"
    # Two lanes with the same counter are different nonces and different windows.
    opener = Opener(CRYPT_AES_256_GCM, KEY)
    other = Sealer(CRYPT_AES_256_GCM, KEY, lane=2)
    h2, c2 = other.seal(b"y" * 20, PREFIX)
    assert opener.open(PREFIX, hdr, ct) == b"x" * 20
    assert opener.open(PREFIX, h2, c2) == b"y" * 20


def test_none_mode() -> None:
    sealer, opener = Sealer(CRYPT_NONE, b""), Opener(CRYPT_NONE, b"")
    assert sealer.seal(b"abc", PREFIX) == (b"", b"abc")
    assert sealer.overhead == 0
    assert opener.open(PREFIX, None, b"abc") == b"abc"
    with pytest.raises(PacketError, match="alg_mismatch"):
        opener.open(PREFIX, expected_dstopts(1, 0, 0, 0), b"abc" * 10)


def test_counter_exhausted() -> None:
    sealer = Sealer(CRYPT_AES_256_GCM, KEY, counter=2**64 - 2)
    hdr, _ = sealer.seal(b"a", PREFIX)
    assert hdr[-8:] == (2**64 - 2).to_bytes(8, "big")
    with pytest.raises(PacketError) as err:
        sealer.seal(b"a", PREFIX)
    assert err.value.reason == "counter_exhausted"


def test_repr_hides_key() -> None:
    key = bytes([0xAB]) * 32
    for obj in (Sealer(CRYPT_AES_256_GCM, key), Opener(CRYPT_CHACHA20_POLY1305, key)):
        text = repr(obj) + str(obj)
        assert "ab" * 4 not in text.lower() and "\\xab" not in text.lower()


def test_window_size_minimum() -> None:
    with pytest.raises(ValueError):
        Opener(CRYPT_AES_256_GCM, KEY, window_size=2047)
    Opener(CRYPT_AES_256_GCM, KEY, window_size=2048)


@pytest.mark.parametrize("alg", [CRYPT_AES_256_GCM, CRYPT_CHACHA20_POLY1305])
@pytest.mark.parametrize("cut", [0, 1, 15, 16, 17, 63, 64, 65, 700, 1199])
def test_decrypt_unauthenticated_prefix(alg: int, cut: int) -> None:
    plain = os.urandom(1200)
    lane, counter = 7, 123456789
    hdr = expected_dstopts(alg, 0, lane, counter)
    nonce = b"\x00\x00" + lane.to_bytes(2, "big") + counter.to_bytes(8, "big")
    ct = AEADS[alg](KEY).encrypt(nonce, plain, PREFIX + hdr)  # reference ciphertext
    for obj in (Opener(alg, KEY), Sealer(alg, KEY)):
        assert obj.decrypt_unauthenticated_prefix(hdr, ct[:cut]) == plain[:cut]


def test_decrypt_prefix_alg_mismatch() -> None:
    with pytest.raises(PacketError, match="alg_mismatch"):
        Opener(CRYPT_AES_256_GCM, KEY).decrypt_unauthenticated_prefix(expected_dstopts(2, 0, 0, 0), b"abc")


# --- replay window ---------------------------------------------------------------------------------------
def test_replay_window_basics() -> None:
    w = ReplayWindow(64)
    for c in (5, 3, 10, 4):
        assert w.check(c)
        w.commit(c)
    assert not w.check(5) and not w.check(10)
    assert w.check(6) and w.check(11) and w.check(0)
    w.commit(100)
    assert not w.check(36)  # 100 - 36 = 64: outside
    assert w.check(37)
    w.commit(2**64 - 2)  # huge jump: must not build a huge bitmap
    assert not w.check(100)
    assert w.check(2**64 - 3)


@settings(max_examples=200, deadline=None)
@given(
    size=st.sampled_from([1, 8, 64, 2048]),
    ops=st.lists(st.integers(min_value=0, max_value=5000), max_size=200),
)
def test_replay_window_matches_model(size: int, ops: list[int]) -> None:
    window = ReplayWindow(size)
    seen: set[int] = set()
    top = -1
    for c in ops:
        model_ok = c not in seen and c > top - size
        assert window.check(c) == model_ok
        if model_ok:
            window.commit(c)
            seen.add(c)
            top = max(top, c)


def test_sealer_starts_at_the_given_counter() -> None:
    sealer = Sealer(CRYPT_AES_256_GCM, KEY, counter=1_700_000_000_000_000)
    hdr, _ = sealer.seal(b"x", PREFIX)
    assert hdr[-8:] == (1_700_000_000_000_000).to_bytes(8, "big")
    with pytest.raises(ValueError):
        Sealer(CRYPT_AES_256_GCM, KEY, counter=2**64)


def test_a_restarted_opener_refuses_what_its_predecessor_accepted() -> None:
    sealer, first = Sealer(CRYPT_AES_256_GCM, KEY), Opener(CRYPT_AES_256_GCM, KEY)
    sealed = [sealer.seal(bytes([i]), PREFIX) for i in range(5)]
    for hdr, ct in sealed[:4]:
        first.open(PREFIX, hdr, ct)
    second = Opener(CRYPT_AES_256_GCM, KEY)
    second.resume_above(0, 3)  # lane 0 up to counter 3: what the journal gives a successor
    for hdr, ct in sealed[:4]:  # replays of everything the first one saw
        with pytest.raises(PacketError) as err:
            second.open(PREFIX, hdr, ct)
        assert err.value.reason == "replay"
    assert second.open(PREFIX, *sealed[4]) == bytes([4])  # newer packets still pass
    window = ReplayWindow(2048)
    window.resume_above(10)
    window.resume_above(5)  # never moves backwards
    assert window.top == 10 and not window.check(10) and not window.check(0) and window.check(11)
