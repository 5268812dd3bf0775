"""Which route sockets a stream reads when the poller wakes its worker, and in which order."""

from __future__ import annotations

from types import SimpleNamespace

from workers.tunnel import Tunnel


def tunnel(ready: list[int], full: set[int] | None = None) -> SimpleNamespace:
    """Route sockets with descriptors 10 (oldest route), 11 and 12; ``full`` ones fill a batch."""
    read: list[int] = []

    def receive(rs: SimpleNamespace) -> bool:
        read.append(rs.fd)
        return rs.fd in (full or set())

    return SimpleNamespace(socket_order=[SimpleNamespace(fd=fd) for fd in (10, 11, 12)],
                           worker=SimpleNamespace(ready_fds=ready, turn=1), drained=0,
                           receive=receive, read=read)


def test_only_the_readable_route_sockets_are_read_oldest_first() -> None:
    t = tunnel(ready=[12, 99, 10])  # 99: the queue, not a route socket
    Tunnel.receive_all(t)  # type: ignore[arg-type]
    assert t.read == [10, 12]
    # Drained: the poller's other readable route socket of this turn finds nothing to do.
    assert t.drained == t.worker.turn
    Tunnel.receive_all(t)  # type: ignore[arg-type]
    assert t.read == [10, 12]
    t.worker.turn += 1  # the next turn reads again
    Tunnel.receive_all(t)  # type: ignore[arg-type]
    assert t.read == [10, 12, 10, 12]


def test_a_full_batch_on_an_older_route_holds_back_the_newer_ones() -> None:
    t = tunnel(ready=[10, 11], full={10})
    Tunnel.receive_all(t)  # type: ignore[arg-type]
    assert t.read == [10]  # 11 waits: 10 may hold older datagrams still
    assert t.drained != t.worker.turn
    Tunnel.receive_all(t)  # type: ignore[arg-type]  # the call for 11 in the same turn: 10 first again
    assert t.read == [10, 10]
