"""The route bus: ZeroMQ sockets between the supervisor and its workers (the only zmq/msgpack user).

Two ``ipc://`` endpoints in the supervisor's runtime directory, which only root can enter
(ipc:// paths on the shared filesystem work across network namespaces; abstract ``ipc://@``
and ``tcp://127.0.0.1`` do not: measured in namespaces on these machines):

* ``updates.sock``: PUB. Every message is two frames: its topic (the stream's queue number,
  2 bytes big-endian) and a msgpack array of one or more ``Update`` (a rotation sends each
  topic's hundreds of route changes as one message: :meth:`BusServer.batch`). A stream worker
  subscribes to its
  own queue's topic (ZeroMQ filters on the publisher's side, so a shard never even receives
  the other shards' updates); the ICMP worker to all.
* ``control.sock``: ROUTER. Workers send ``[b"snapshot"]`` (everything) or ``[b"snapshot",
  topic]`` (one queue's streams) and get ``Snapshot``; they send ``[b"ready", name]`` once their
  queue is bound and ``[b"stats", name, msgpack]`` periodically.

The client follows the ZeroMQ guide's Clone pattern: subscribe first, then ask for a snapshot,
then apply only updates newer than it; a gap in a topic's chain of updates (mt6d_mp.core.messages)
means a lost update, so ask again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import zmq

from mt6d_mp.core.messages import (
    VERSION,
    BusError,
    KeyxSend,
    Replica,
    RouteUpdate,
    Snapshot,
    StreamState,
    Update,
)

log = logging.getLogger(__name__)

UPDATES = "updates.sock"
CONTROL = "control.sock"
# Rotations publish a handful of messages per topic; a slow subscriber that falls this far
# behind resynchronises from a snapshot anyway.
HWM = 10000
MAX_UPDATES = 1 << 16  # in one message; more is a malformed message


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise BusError(f"not msgpack: {e}") from None


def topic_frame(queue: int) -> bytes:
    return queue.to_bytes(2, "big")


def endpoint(runtime_dir: Path, name: str) -> str:
    return f"ipc://{runtime_dir / name}"


class BusServer:
    """The supervisor's side: holds the published state and answers snapshot requests."""

    def __init__(self, runtime_dir: Path, context: zmq.Context[Any] | None = None) -> None:
        self.ctx = context or zmq.Context.instance()
        self.runtime_dir = runtime_dir
        self.state = Replica()  # what a snapshot sends; the source every replica copies
        self.state.seq = 0
        self.state.indexed = False  # a snapshot walks the routes; no rebuild by stream here
        self.ready: set[str] = set()
        self.stats: dict[str, dict[str, Any]] = {}
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, HWM)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        for sock, name in ((self.pub, UPDATES), (self.control, CONTROL)):
            path = runtime_dir / name
            if path.exists():
                path.unlink()  # left by a killed run; nobody else may bind in our root-only dir
            sock.bind(endpoint(runtime_dir, name))
            os.chmod(path, 0o600)
        # Extra control commands (mt6dctl) register here: name -> handler(args) -> reply.
        self.handlers: dict[bytes, Callable[[list[bytes]], Any]] = {}
        self._held: dict[int, list[Any]] | None = None  # inside batch(): topic -> updates

    def publish(self, item: StreamState | RouteUpdate | KeyxSend | str) -> None:
        """Apply one change to the published state and send it, with the next sequence number,
        on the topic of the stream's queue. A stream moved to another queue is first removed
        from the old one's (its old worker forgets it)."""
        streams = self.state.streams
        if isinstance(item, StreamState):
            old = streams.get(item.name)
            if old is not None and old.queue != item.queue:
                self._send(item.name, old.queue)
            self._send(item, item.queue)
            return
        name = item if isinstance(item, str) else item.stream
        known = streams.get(name)
        if known is None:
            raise BusError(f"update for stream {name!r} before its state")
        self._send(item, known.queue)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold what is published inside the block and send it at its end, one message per
        topic: a rotation changes thousands of routes, and a message each cost a third of the
        supervisor's rotation (py-spy at 1024 streams: results/scale.md). The state changes at
        once (a snapshot taken meanwhile already includes the held updates, and a worker skips
        updates older than its snapshot). Nested blocks send at the outermost one's end."""
        if self._held is not None:
            yield
            return
        self._held = {}
        try:
            yield
        finally:
            held, self._held = self._held, None
            for topic, updates in held.items():
                for start in range(0, len(updates), MAX_UPDATES):
                    self.pub.send_multipart([topic_frame(topic),
                                             pack(updates[start:start + MAX_UPDATES])])

    def publish_routes(self, items: Iterable[RouteUpdate]) -> None:
        """:meth:`publish` for many route updates (a rotation's thousands, inside
        :meth:`batch`): the chain is ours to make, so the state takes them without the
        replica's checks, and each wire is written out here (Update.to_wire gives the same)."""
        st = self.state
        streams, topic_seq = st.streams, st.topic_seq
        for item in items:
            known = streams.get(item.stream)
            if known is None:
                raise BusError(f"update for stream {item.stream!r} before its state")
            topic = known.queue
            seq, prev = st.seq + 1, topic_seq.get(topic, 0)
            st.seq = topic_seq[topic] = seq
            st.take_route(item)
            self._emit(topic, [VERSION, seq, "route", item.to_wire(), topic, prev])

    def _send(self, item: StreamState | RouteUpdate | KeyxSend | str, topic: int) -> None:
        st = self.state
        update = Update(st.seq + 1, item, topic, st.topic_seq.get(topic, 0))
        st.apply(update)  # the same rules every worker's replica applies
        if st.outbox:
            st.outbox.clear()  # a message to send is not state
        self._emit(topic, update.to_wire())

    def _emit(self, topic: int, wire: list[Any]) -> None:
        """One update's wire onto its topic: held inside :meth:`batch`, else sent alone."""
        if self._held is not None:
            self._held.setdefault(topic, []).append(wire)
        else:
            self.pub.send_multipart([topic_frame(topic), pack([wire])])

    @property
    def seq(self) -> int:
        return self.state.seq

    def snapshot(self, topic: int | None = None) -> Snapshot:
        """Everything, or one topic's (queue's) streams and routes."""
        st = self.state
        if topic is None:
            return Snapshot(st.seq, tuple(st.streams.values()), tuple(st.routes.values()),
                            tuple(st.topic_seq.items()))
        streams = {n: s for n, s in st.streams.items() if s.queue == topic}
        return Snapshot(st.seq, tuple(streams.values()),
                        tuple(r for r in st.routes.values() if r.stream in streams),
                        ((topic, st.topic_seq.get(topic, 0)),))

    def handle_control(self) -> None:
        """Answer every request waiting on the control socket (never blocks)."""
        while True:
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            ident, command, args = frames[0], frames[1], frames[2:]
            try:
                reply = self._dispatch(command, args)
            except (BusError, ValueError, KeyError) as e:
                reply = {"error": str(e)}
            if reply is not None:
                self.control.send_multipart([ident, pack(reply)])

    def _dispatch(self, command: bytes, args: list[bytes]) -> Any:
        if command == b"snapshot":
            if args and len(args[0]) != 2:
                raise BusError("snapshot: topic is 2 bytes")
            return self.snapshot(int.from_bytes(args[0], "big") if args else None).to_wire()
        if command == b"ready" and args:
            name = args[0].decode("utf-8", "replace")
            self.ready.add(name)
            log.info("event=worker_ready worker=%s", name)
            return None
        if command == b"stats" and len(args) == 2:
            stats = unpack(args[1])
            if isinstance(stats, dict):
                self.stats[args[0].decode("utf-8", "replace")] = stats
            return None
        handler = self.handlers.get(command)
        if handler is None:
            raise BusError(f"unknown command {command!r}")
        return handler(args)

    def close(self) -> None:
        self.pub.close()
        self.control.close()
        for name in (UPDATES, CONTROL):
            (self.runtime_dir / name).unlink(missing_ok=True)


class BusClient:
    """A worker's side: a Replica kept current by snapshot + updates."""

    def __init__(self, runtime_dir: Path, name: str, context: zmq.Context[Any] | None = None,
                 topic: int | None = None):
        """``topic``: the one queue whose streams this worker keeps (None: every stream)."""
        self.ctx = context or zmq.Context.instance()
        self.name = name
        self.topic = b"" if topic is None else topic_frame(topic)
        self.replica = Replica()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, HWM)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        self.sub.connect(endpoint(runtime_dir, UPDATES))
        self.control = self.ctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.connect(endpoint(runtime_dir, CONTROL))
        self.snapshot_pending = False
        self.errors = 0

    def request_snapshot(self) -> None:
        if not self.snapshot_pending:
            self.control.send_multipart([b"snapshot", self.topic] if self.topic else [b"snapshot"])
            self.snapshot_pending = True

    def send(self, command: bytes, *args: bytes) -> None:
        self.control.send_multipart([command, *args], zmq.NOBLOCK)

    def send_stats(self, stats: dict[str, Any]) -> None:
        # If the supervisor is busy or gone, the next report carries the same counters.
        with contextlib.suppress(zmq.Again):
            self.send(b"stats", self.name.encode(), pack(stats))

    def poll_updates(self) -> bool:
        """Apply every update waiting on the SUB socket; return True if the state changed."""
        changed = False
        while True:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return changed
            try:
                if len(frames) != 2:
                    raise BusError(f"update: expected 2 frames, got {len(frames)}")
                wires = unpack(frames[1])
                if not isinstance(wires, list) or not 0 < len(wires) <= MAX_UPDATES:
                    raise BusError("update: expected an array of updates")
            except BusError as e:
                self.errors += 1
                log.warning("event=bad_update worker=%s error=%s", self.name, e)
                continue
            for wire in wires:
                try:
                    update = Update.from_wire(wire)
                except BusError as e:  # the gap it leaves asks for a snapshot
                    self.errors += 1
                    log.warning("event=bad_update worker=%s error=%s", self.name, e)
                    continue
                if not self.replica.apply(update):
                    log.info("event=update_gap worker=%s seq=%d have=%d", self.name, update.seq,
                             self.replica.seq)
                    self.request_snapshot()
                    break  # the rest of the message follows the gap: the snapshot has them
                changed = True

    def poll_control(self) -> bool:
        """Take a snapshot reply if one arrived; return True if the state changed."""
        changed = False
        while True:
            try:
                data = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return changed
            try:
                snap = Snapshot.from_wire(unpack(data))
            except BusError as e:
                self.errors += 1
                log.warning("event=bad_snapshot worker=%s error=%s", self.name, e)
                continue
            self.snapshot_pending = False
            if snap.seq >= self.replica.seq:
                self.replica.apply_snapshot(snap)
                changed = True

    def wait_control(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a reply on the control socket."""
        return bool(self.control.poll(int(timeout * 1000), zmq.POLLIN))

    def poller(self) -> Poller:
        """A poller over this client's two sockets, to which the worker adds its own fds."""
        return Poller(self)

    def close(self) -> None:
        self.sub.close()
        self.control.close()


class Poller:
    """One poll over file descriptors (a netfilter queue, UDP sockets) and the bus sockets.

    The worker's whole event loop waits here, so it stays one thread. The file descriptors are
    in an epoll set, and ZeroMQ's poll watches three things: the two bus sockets and that set's
    descriptor, readable when one of its members is. A shard of a hundred streams watches many
    hundreds of route sockets, and ZeroMQ's poller takes time in proportion to its items at
    every poll and every change (pyzmq's ``unregister`` renumbers the items after the one it
    removes); epoll's do not.
    """

    def __init__(self, client: BusClient) -> None:
        self._poller = zmq.Poller()
        self._sub, self._control = client.sub, client.control
        self._epoll = select.epoll()
        self._set = self._epoll.fileno()
        self._poller.register(self._sub, zmq.POLLIN)
        self._poller.register(self._control, zmq.POLLIN)
        self._poller.register(self._set, zmq.POLLIN)

    def watch(self, fd: int) -> None:
        self._epoll.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        self._epoll.unregister(fd)

    def poll(self, timeout_ms: int) -> tuple[list[int], bool, bool]:
        """(ready file descriptors, updates waiting, control reply waiting)."""
        fds: list[int] = []
        updates = control = False
        for item, _ in self._poller.poll(timeout_ms):
            if item is self._sub:
                updates = True
            elif item is self._control:
                control = True
            else:
                fds = [fd for fd, _ in self._epoll.poll(0)]
        return fds, updates, control

    def close(self) -> None:
        self._epoll.close()


def request(runtime_dir: Path, command: bytes, *args: bytes, timeout: float = 3.0) -> Any:
    """One request/reply on the control socket (for mt6dctl and tests); None on timeout."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint(runtime_dir, CONTROL))
        sock.send_multipart([command, *args])
        if sock.poll(int(timeout * 1000), zmq.POLLIN):
            return unpack(sock.recv())
        return None
    finally:
        sock.close()
