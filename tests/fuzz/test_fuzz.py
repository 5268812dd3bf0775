"""Fuzz every parser of bytes from the network or a socket (tests/fuzz/targets.py).

Unit tier: no root, no sockets, plain pytest with Hypothesis. Each target starts from valid
inputs built by the project's own encoders and mutates them (bit flips, boundary values, cuts,
insertions, extensions; msgpack structures element by element), plus plain random bytes.

The default run is bounded and the same every time (derandomized): ``MT6D_FUZZ_EXAMPLES``
examples per target, 400 by default (the whole tier takes under 10 s on two cores). Setting
the variable also makes the run random, new inputs each time; a longer run by hand::

    MT6D_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/fuzz -q -x

A failure prints the input (``data=b'...'``); save it as
``tests/fuzz/corpus/<target>/crash-<what>.bin`` so test_corpus.py replays it on every run.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.mutate import FUZZ_SETTINGS
from tests.fuzz.targets import TARGETS


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz(name: str) -> None:
    target = TARGETS[name]
    strategy = target.strategy(list(target.seeds().values()))

    @FUZZ_SETTINGS
    @given(data=strategy)
    def run(data: bytes) -> None:
        target.check(data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_are_accepted(name: str) -> None:
    """The seeds are valid inputs: each target runs them without error (and so can mutate them)."""
    for data in TARGETS[name].seeds().values():
        TARGETS[name].check(data)


def test_framing_round_trips() -> None:
    from tests.fuzz.mutate import frame, unframe

    @FUZZ_SETTINGS
    @given(st.lists(st.binary(max_size=20), max_size=5))
    def run(parts: list[bytes]) -> None:
        assert unframe(frame(parts)) == parts

    run()
