"""The attacker tier: root, real namespaces, an attacker on the gateways' external link."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="attack tests need root (they build network namespaces)")
    for item in items:
        if "attack" in item.keywords:
            item.add_marker(skip)
