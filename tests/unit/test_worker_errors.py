"""A bug met while handling a packet is counted, and logged once with its traceback."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import pytest

from workers.common import Worker


def test_internal_errors_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    worker = SimpleNamespace(counters=Counter(), name="s1")
    caplog.set_level(logging.ERROR)
    for _ in range(3):
        try:
            raise IndexError("a bug")
        except IndexError:
            Worker.internal_error(worker)  # type: ignore[arg-type]
    assert worker.counters["drop_internal_error"] == 3
    records = [r for r in caplog.records if "event=internal_error" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None
