"""Write the seed files of the fuzz corpus: ``.venv/bin/python -m tests.fuzz.regen``.

Each target's seeds (tests/fuzz/targets.py) go to ``tests/fuzz/corpus/<target>/seed-<name>.bin``;
old seed files are replaced, crash files (``crash-*.bin``) are kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"


def main() -> int:
    for name, target in TARGETS.items():
        directory = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*.bin"):
            old.unlink()
        seeds = target.seeds()
        for seed, data in seeds.items():
            (directory / f"seed-{seed}.bin").write_bytes(data)
        print(f"{name}: {len(seeds)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
