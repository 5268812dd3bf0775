"""The docker-compose lab test runs only when asked for: it installs packages, starts a docker
engine, builds images and takes a few minutes (see scripts/docker-lab)."""

from __future__ import annotations

import os

import pytest

ENABLE = "MT6D_DOCKER_TESTS"
HOW = (
    f"docker lab test: not run by default; run it as root with "
    f"`{ENABLE}=1 .venv/bin/pytest -m docker tests/docker` (it runs scripts/docker-lab up, "
    "checks, down: about 1-4 minutes, needs Debian's archive and PyPI)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ENABLE) == "1":
        if os.geteuid() == 0:
            return
        skip = pytest.mark.skip(reason=f"docker lab test needs root ({ENABLE}=1 is set)")
    else:
        skip = pytest.mark.skip(reason=HOW)
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(skip)
