"""Fixtures for namespace tests: each test gets namespaces of its own, deleted even on failure."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests import nsutil

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="netns tests need root (they create network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def ns_prefix() -> str:
    """A unique prefix (``t`` + 6 hex digits) for every namespace this test creates."""
    return nsutil.unique_prefix()


@pytest.fixture
def netns_factory(ns_prefix: str) -> Iterator[Callable[[str], str]]:
    """``make(role) -> name``: a new namespace ``<prefix>-<role>``; all deleted at the end."""
    made: list[str] = []

    def make(role: str) -> str:
        name = f"{ns_prefix}-{role}"
        made.append(name)  # before creating: a half-made namespace is deleted too
        return nsutil.make_ns(name)

    try:
        yield make
    finally:
        for name in reversed(made):
            nsutil.delete_ns(name)
        left = nsutil.list_ns(ns_prefix)
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def netns(netns_factory: Callable[[str], str]) -> str:
    """One fresh namespace with DAD off and forwarding on, deleted after the test."""
    return netns_factory("a")
