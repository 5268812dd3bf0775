"""Replay tests/fuzz/corpus/<target>/*.bin through its fuzz target: the seeds and every input a
fuzz run found crashing (``crash-*.bin``), as regression cases. Regenerate the seeds with
``.venv/bin/python -m tests.fuzz.regen``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(CORPUS.glob("*/*.bin"))


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_corpus(path: Path) -> None:
    TARGETS[path.parent.name].check(path.read_bytes())


def test_every_target_has_its_seeds_in_the_corpus() -> None:
    for name, target in TARGETS.items():
        for seed in target.seeds():
            assert (CORPUS / name / f"seed-{seed}.bin").exists(), (
                f"{name}/seed-{seed}.bin missing: run python -m tests.fuzz.regen")
    assert {p.name for p in CORPUS.iterdir()} <= set(TARGETS)
