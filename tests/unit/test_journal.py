"""The replay journal (mt6d_mp.io.journal): what a killed worker accepted survives it."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

from mt6d_mp.core.crypto import CRYPT_AES_256_GCM, Opener, Sealer
from mt6d_mp.core.packet import open_payload, tunnel_pieces
from mt6d_mp.errors import PacketError
from mt6d_mp.io.journal import SLOTS, ReplayJournal, fingerprint

KEY = bytes(range(32))
FP = fingerprint(KEY, 0)


def test_floors_survive_a_sigkilled_writer_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "replay-s.bin"
    pid = os.fork()
    if pid == 0:  # the worker: records, then dies without any clean-up
        j = ReplayJournal(path, FP)
        j.record(0, 1_000_000)
        j.record(0, 1_000_007)
        j.record(3, 42)
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(ReplayJournal(path, FP).floors()) == [(0, 1_000_007), (3, 42)]


def test_another_key_or_phase_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "replay-s.bin"
    ReplayJournal(path, FP).record(0, 99)
    assert ReplayJournal(path, fingerprint(KEY, 1)).floors() == []
    assert ReplayJournal(path, fingerprint(bytes(32), 0)).floors() == []
    assert KEY.hex() not in path.read_bytes().hex()


def test_more_lanes_than_slots_are_flagged_not_overwritten(tmp_path: Path) -> None:
    j = ReplayJournal(tmp_path / "j", FP)
    for lane in range(SLOTS + 2):
        j.record(lane, lane + 10)
    assert j.full
    assert sorted(j.floors()) == [(lane, lane + 10) for lane in range(SLOTS)]


def test_an_opener_resumed_from_the_journal_refuses_what_its_predecessor_took(tmp_path: Path) -> None:
    path = tmp_path / "j"
    sealer = Sealer(CRYPT_AES_256_GCM, KEY)
    aad = bytes(32) + (1).to_bytes(2, "big") + (2).to_bytes(2, "big")  # src, dst, ports
    packets = []
    for i in range(3):
        inner = b"\x60\0\0\0" + (20).to_bytes(2, "big") + b"\x3b\x40" + bytes(32) + bytes([i]) * 20
        dstopts, _udp, payload = tunnel_pieces(inner, bytes(16), bytes(16), 1, 2, sealer)
        packets.append((dstopts, bytes(payload)))
    first = Opener(CRYPT_AES_256_GCM, KEY)
    journal = ReplayJournal(path, FP)
    first.on_commit = journal.record
    for dstopts, payload in packets[:2]:
        open_payload(first, aad, dstopts, payload)
    successor = Opener(CRYPT_AES_256_GCM, KEY)
    for lane, top in ReplayJournal(path, FP).floors():
        successor.resume_above(lane, top)
    for dstopts, payload in packets[:2]:
        try:
            open_payload(successor, aad, dstopts, payload)
        except PacketError as e:
            assert e.reason == "replay"
        else:
            raise AssertionError("a replay was accepted")
    open_payload(successor, aad, *packets[2])  # the next packet still passes
