"""The sent-packet ring shared by a stream worker (writer) and the ICMP worker (reader)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mt6d_mp.core.crypto import CRYPT_AES_256_GCM, Sealer
from mt6d_mp.core.packet import aad_prefix
from mt6d_mp.core.sentlog import SENT_PREFIX, SENT_SLOTS, sent_slot
from mt6d_mp.io.sentring import SentReader, SentRing, ring_path

AAD = aad_prefix(bytes(16), bytes(15) + b"\x01", 1, 2)


def sealed(sealer: Sealer, n: int) -> tuple[bytes, bytes]:
    return sealer.seal(bytes([n % 256]) * 200, AAD)


def test_a_reader_finds_what_the_writer_sent_and_nothing_else(tmp_path: Path) -> None:
    path = ring_path(tmp_path, "hostA-hostB")
    writer, reader = SentRing(path), SentReader(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    sealer = Sealer(CRYPT_AES_256_GCM, bytes(32), counter=10)
    packets = [sealed(sealer, i) for i in range(5)]
    for dstopts, payload in packets:
        writer.add(dstopts, payload)
    for dstopts, payload in packets:
        assert reader.was_sent(dstopts, payload[:SENT_PREFIX])
        flipped = bytearray(payload[:SENT_PREFIX])
        flipped[3] ^= 1
        assert not reader.was_sent(dstopts, bytes(flipped))
        assert not reader.was_sent(dstopts, payload[: SENT_PREFIX - 1])  # another length
    unsent = sealed(sealer, 99)
    assert not reader.was_sent(unsent[0], unsent[1][:SENT_PREFIX])


def test_sealed_packets_take_the_slot_of_their_counter_and_old_ones_are_overwritten(
    tmp_path: Path,
) -> None:
    path = ring_path(tmp_path, "s")
    writer, reader = SentRing(path), SentReader(path)
    sealer = Sealer(CRYPT_AES_256_GCM, bytes(32), counter=2**40 + 7)
    first = sealed(sealer, 1)
    writer.add(*first)
    assert sent_slot(first[0]) == (2**40 + 7) % SENT_SLOTS
    for i in range(SENT_SLOTS):  # a full turn later the slot holds another packet
        writer.add(*sealed(sealer, i))
    assert not reader.was_sent(first[0], first[1][:SENT_PREFIX])


def test_packets_without_options_are_found_by_search_on_record_boundaries(tmp_path: Path) -> None:
    path = ring_path(tmp_path, "plain")
    writer, reader = SentRing(path), SentReader(path)
    for i in range(20):
        writer.add(b"", bytes([i]) * 80)
    assert reader.was_sent(b"", bytes([7]) * SENT_PREFIX)
    assert not reader.was_sent(b"", bytes([21]) * SENT_PREFIX)
    assert not reader.was_sent(b"", bytes([7]) * 10)


def test_a_restarted_writer_forgets_and_a_reader_follows_a_new_file(tmp_path: Path) -> None:
    path = ring_path(tmp_path, "s")
    writer, reader = SentRing(path), SentReader(path)
    writer.add(b"", b"x" * 70)
    assert reader.was_sent(b"", b"x" * SENT_PREFIX)
    SentRing(path)  # a restarted worker: same file, cleared in place
    assert not reader.was_sent(b"", b"x" * SENT_PREFIX)
    path.unlink()  # the stream removed and added again: a new file
    assert not reader.was_sent(b"", b"y" * SENT_PREFIX)
    SentRing(path).add(b"", b"y" * 70)
    assert reader.was_sent(b"", b"y" * SENT_PREFIX)


def test_no_file_means_nothing_was_sent(tmp_path: Path) -> None:
    assert not SentReader(tmp_path / "missing.ring").was_sent(b"", b"x")


def test_a_private_ring_is_small_and_takes_any_counter() -> None:
    ring = SentRing(None)
    sealer = Sealer(CRYPT_AES_256_GCM, bytes(32), counter=2**50 + 3)
    for i in range(10):
        ring.add(*sealed(sealer, i))
        ring.add(b"", bytes(100))
    assert len(ring._mm) == 4 * 88


def test_the_direct_write_of_a_sealed_packet_leaves_the_record_sent_record_makes(
    tmp_path: Path,
) -> None:
    """SentRing.add packs a sealed packet's record straight into the ring (the hot path); the
    bytes, and the slot, must be those of sent_record and sent_slot, also for a payload shorter
    than the prefix and for one handed over as a memoryview (the general path)."""
    from mt6d_mp.core.sentlog import RECORD_LEN, sent_record

    writer = SentRing(ring_path(tmp_path, "s"))
    sealer = Sealer(CRYPT_AES_256_GCM, bytes(32), counter=SENT_SLOTS - 2)
    for payload_len, view in ((200, False), (10, False), (300, True)):
        dstopts, payload = sealer.seal(bytes(payload_len), AAD)
        writer.add(memoryview(dstopts) if view else dstopts, memoryview(payload) if view else payload)
        at = sent_slot(dstopts) * RECORD_LEN
        assert writer._mm[at : at + RECORD_LEN] == sent_record(dstopts, payload[:SENT_PREFIX])
