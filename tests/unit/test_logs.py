"""setup_logging: the handlers it installs and the line format they write."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mt6d_mp import logs


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_syslog_lines_reach_the_syslog_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_root: None
) -> None:
    """The syslog handler (imported only when asked for) writes to the socket, with the proc tag."""
    address = str(tmp_path / "log")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(address)
    sink.settimeout(5)
    monkeypatch.setattr(logs, "SYSLOG_ADDRESS", address)
    logs.setup_logging("info", ["syslog"], "", "icmp")
    logging.getLogger("mt6d.test").info("event=hello")
    line = sink.recv(4096).decode()
    sink.close()
    assert "proc=icmp" in line and "mt6d.test: event=hello" in line


def test_syslog_is_skipped_without_a_syslog_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_root: None
) -> None:
    monkeypatch.setattr(logs, "SYSLOG_ADDRESS", str(tmp_path / "absent"))
    logs.setup_logging("info", ["syslog"], "", "icmp")
    assert logging.getLogger().handlers == []
