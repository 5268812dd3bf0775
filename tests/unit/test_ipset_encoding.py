"""Set members encoded from templates (mt6d_mp/io/ipset.py, _member) are byte for byte what the
attribute-by-attribute encoder builds, for any addresses and port, including values that
look like the template's markers; wrong sizes are refused, not sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mt6d_mp.errors import SystemSetupError
from mt6d_mp.io.ipset import Member, _encode_member, _member, _parse_member

addr = st.binary(min_size=16, max_size=16)


@given(addr, st.integers(0, 0xFFFF), addr)
def test_templates_match_the_attribute_encoder(ip: bytes, port: int, ip2: bytes) -> None:
    for m in (Member(ip), Member(ip, port, ip2)):
        assert _member(m) == _encode_member(m)
        inner = _member(m)[4:]  # past IPSET_ATTR_DATA's header
        assert _parse_member(inner) == m


def test_marker_like_values() -> None:
    for m in (Member(b"\xa1" * 16, 0xC3D4, b"\xb2" * 16), Member(b"\xb2" * 16, 0xA1A1, b"\xa1" * 16),
              Member(b"\x00" * 16, 0, b"\x00" * 16)):
        assert _member(m) == _encode_member(m)


@pytest.mark.parametrize("bad", [Member(b"\x01" * 4), Member(b"\x01" * 16, 5, b"\x02" * 15),
                                 Member(b"\x01" * 16, 70000, b"\x02" * 16)])
def test_wrong_sizes_are_refused(bad: Member) -> None:
    with pytest.raises(SystemSetupError):
        _member(bad)
