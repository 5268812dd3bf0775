"""Hypothesis strategies that mutate valid inputs, the framing of multi-part inputs, and the run
settings of the fuzz tier.

A fuzz input is always one byte string, so that any input can be stored in the corpus and
replayed: targets that take several parts (a destination options header and a payload, a
sequence of chunks, a list of netlink datagrams, the frames of a control request) get them
framed by :func:`frame` (4-byte big-endian length before each part) and split back with the
lenient :func:`unframe`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: Examples per target; the default keeps the whole tier at a few seconds.
EXAMPLES = int(os.environ.get("MT6D_FUZZ_EXAMPLES", "400"))

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The default run is the same every time (a CI failure can be reproduced); a longer run by
    # hand (MT6D_FUZZ_EXAMPLES set) explores new inputs each time.
    derandomize="MT6D_FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

# Byte and 16-bit values that sit on parsers' boundaries.
INTERESTING_8 = (0x00, 0x01, 0x02, 0x06, 0x07, 0x08, 0x0C, 0x10, 0x11, 0x1E, 0x2B, 0x2C, 0x3A, 0x3C,
                 0x3E, 0x40, 0x60, 0x7F, 0x80, 0x81, 0xC0, 0xFE, 0xFF)
INTERESTING_16 = (0, 1, 2, 4, 7, 8, 15, 16, 20, 24, 40, 48, 0x7F, 0x80, 0xFF, 0x100, 0x3FFF,
                  0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
MAX_EXTEND = 64


def frame(parts: Sequence[bytes]) -> bytes:
    """Several byte strings as one: each preceded by its length (4 bytes, big endian)."""
    return b"".join(len(p).to_bytes(4, "big") + bytes(p) for p in parts)


def unframe(data: bytes, at_least: int = 0) -> list[bytes]:
    """The parts of :func:`frame`; a cut last part is kept as far as it goes; padded with b"" to
    ``at_least`` parts."""
    parts: list[bytes] = []
    off = 0
    while off < len(data):
        n = int.from_bytes(data[off : off + 4], "big")
        parts.append(data[off + 4 : off + 4 + n])
        off += 4 + n
    parts += [b""] * (at_least - len(parts))
    return parts


def fields(data: bytes, n: int) -> list[bytes]:
    """Exactly ``n`` parts of :func:`frame`: missing ones are b"", extra ones are ignored."""
    return unframe(data, n)[:n]


@st.composite
def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random edits: bit flips, boundary values, cuts, insertions, extensions."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 7))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == 0 and buf:  # flip one bit
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and buf:  # a boundary byte
            buf[pos] = draw(st.sampled_from(INTERESTING_8))
        elif op == 2 and len(buf) >= 2:  # a boundary 16-bit value, big or little endian
            value = draw(st.sampled_from((*INTERESTING_16, len(buf), len(buf) - 40, len(buf) - 48)))
            pos = min(pos, len(buf) - 2)
            buf[pos : pos + 2] = (value & 0xFFFF).to_bytes(2, draw(st.sampled_from(("big", "little"))))
        elif op == 3:  # cut
            del buf[pos:]
        elif op == 4:  # extend
            buf += draw(st.binary(min_size=1, max_size=MAX_EXTEND))
        elif op == 5:  # insert
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == 6:  # delete a slice
            del buf[pos : pos + draw(st.integers(1, 16))]
        elif op == 7 and buf:  # any byte
            buf[pos] = draw(st.integers(0, 255))
    return bytes(buf)


def mutated(seeds: Sequence[bytes], max_random: int = 256) -> st.SearchStrategy[bytes]:
    """A seed, mutated; sometimes plain random bytes."""
    return st.one_of(st.sampled_from(list(seeds)).flatmap(mutate), st.binary(max_size=max_random))


@st.composite
def mutated_parts(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """A framed seed, its parts mutated one by one; parts may also be dropped, repeated or swapped."""
    parts = unframe(draw(st.sampled_from(list(seeds))))
    if parts and draw(st.integers(0, 3)) == 0:
        order = draw(st.lists(st.integers(0, len(parts) - 1), min_size=1, max_size=len(parts) + 2))
        parts = [parts[0], *(parts[i] for i in order)]  # the first part is the target's mode
    out = []
    for p in parts:
        out.append(draw(mutate(p)) if draw(st.integers(0, 2)) == 0 else p)
    return frame(out)


# --- msgpack: structure-aware mutation of wire objects -----------------------------------------------
MSGPACK_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=12) | st.binary(max_size=40)
    | st.sampled_from((0, 1, 2**31, 2**63, -1, 65535, 65536, "", "x" * 256, b"\0" * 16, b"\0" * 32)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _mutate_wire(draw: st.DrawFn, obj: Any) -> Any:
    """``obj`` (nested lists) with one element replaced, removed or added somewhere."""
    if not isinstance(obj, list) or not obj or draw(st.integers(0, 5)) == 0:
        return draw(MSGPACK_VALUES)
    obj = list(obj)
    i = draw(st.integers(0, len(obj) - 1))
    op = draw(st.integers(0, 3))
    if op == 0:
        del obj[i]
    elif op == 1:
        obj.insert(i, draw(MSGPACK_VALUES))
    else:
        obj[i] = draw(_mutate_wire(obj[i]))
    return obj


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def mutated_msgpack(seeds: Sequence[Any]) -> st.SearchStrategy[bytes]:
    """Packed wire objects: mutated as structures (then packed) or as bytes."""
    packed = [pack(s) for s in seeds]
    structural = st.sampled_from(list(seeds)).flatmap(
        lambda s: st.lists(st.just(0), min_size=1, max_size=3).flatmap(
            lambda n: _repeat(_mutate_wire, s, len(n)))).map(pack)
    return st.one_of(structural, mutated(packed))


def _repeat(step: Any, obj: Any, times: int) -> st.SearchStrategy[Any]:
    strategy: st.SearchStrategy[Any] = st.just(obj)
    for _ in range(times):
        strategy = strategy.flatmap(step)
    return strategy
