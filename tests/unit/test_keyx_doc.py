"""The worked example of docs/PROTOCOL.md 5.8, recomputed from the code."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from mt6d_mp.core import keyx
from mt6d_mp.core.addressing import endpoint
from mt6d_mp.core.crypto import derive_direction_key


def _doc_examples() -> dict[str, bytes]:
    """The ```hex NAME blocks of docs/PROTOCOL.md, as bytes."""
    text = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text()
    return {name: bytes.fromhex("".join(line[6:] for line in body.splitlines()).replace(" ", ""))
            for name, body in re.findall(r"```hex (\S+)\n(.*?)```", text, re.S)}


def a16(s: str) -> bytes:
    return ipaddress.IPv6Address(s).packed


PSK = bytes(range(64))
TA, TB = a16("2001:db8:a::10"), a16("2001:db8:b::20")
HA, HB = a16("2001:db8:a:0:1234:5678:9abc:def0"), a16("2001:db8:b:0:fedc:ba98:7654:3210")
AB = HA + HB + (40000).to_bytes(2, "big") + (50000).to_bytes(2, "big")
BA = HB + HA + (50000).to_bytes(2, "big") + (40000).to_bytes(2, "big")


def test_keyx_doc_example() -> None:
    doc = _doc_examples()
    k0 = keyx.auth_key(PSK)
    assert k0.hex() == "a61598d6af745d7021b906a804ff416f3e3613fe5904a5bf708bd2f8e8dfb133"
    mid = bytes.fromhex("0102030405060708")
    ei_priv = X25519PrivateKey.from_private_bytes(b"\x11" * 32)
    ei = keyx.public_bytes(ei_priv)
    assert ei.hex() == "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13"
    init = keyx.Message(keyx.INIT, mid, time_ms=1_700_000_000_000, phase=0, public=ei)
    assert b"".join(keyx.seal(k0, AB, init)) == doc["keyx-init"]
    # B's side: the message as received, then its answer.
    got = keyx.open_message(k0, AB, doc["keyx-init"][:8], doc["keyx-init"][8:])
    assert got == init
    secret, resp, expected = keyx.answer(got, PSK, 1, lambda n: b"\x22" * n)
    assert b"".join(keyx.seal(k0, BA, resp)) == doc["keyx-resp"]
    assert resp.public.hex() == "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20"
    # A's side.
    pending = keyx.Initiated(mid, ei_priv, ei, 0.0, 0.0, 1, init.time_ms, 0)
    secret_a, confirm = keyx.complete(pending, resp, PSK)
    assert secret_a == secret
    assert secret.hex() == "da659d45254ef2a33231224829c401735e9671457346dc9766c3a35acc712b76"
    assert keyx.exchange(ei_priv, resp.public).hex() == (
        "9e004098efc091d4ec2663b4e9f5cfd4d7064571690b4bea97ab146ab9f35056")
    assert b"".join(keyx.seal(k0, AB, confirm)) == doc["keyx-confirm"]
    assert confirm.confirm == expected
    assert derive_direction_key(secret, TA, TB, 1).hex() == (
        "7bebbaf63fa3579a07f7962b507bbfca464fef5c252530c1d6da86f35a7b9a92")
    assert derive_direction_key(secret, TB, TA, 1).hex() == (
        "3b3fdf6dbf6ee2046137ee947a95b8c9ba73f5b5ccb3e5b46be44312b748384a")
    mac = bytes.fromhex("0200000000aa")
    e1, e0 = endpoint(TA, secret, 850_000_000, mac), endpoint(TA, PSK, 850_000_000, mac)
    assert (str(ipaddress.IPv6Address(e1.address)), e1.port) == ("2001:db8:a:0:f421:5123:c757:f0c8", 25149)
    assert (str(ipaddress.IPv6Address(e0.address)), e0.port) == ("2001:db8:a:0:a943:a66a:2ba1:f11", 12435)
