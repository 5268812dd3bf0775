"""Messages on the supervisor's route bus, as small immutable records (``typing.NamedTuple``).

Each message turns into plain msgpack-able data with ``to_wire()`` and back with
``from_wire()``, which validates every field, so a malformed message is a :class:`BusError`
and never reaches a worker's state. The bus module does the msgpack encoding; this module only
knows the shapes. Never pickle across the bus.

Wire shapes (msgpack arrays; the first element is the message version):

* StreamState  ``[3, name, queue, local16, remote16, crypt, [[phase, tx_key32, rx_key32]...],
  send_phase, lane, internal_ifindex, external_ifindex, tunnel_mtu, rotation_time, flow_label,
  host_mode]``: ``local16`` and ``remote16`` are the hosts' true addresses; ``host_mode``: the
  local host is this machine (``internal_ifindex`` is then its loopback); the keys of every data phase
  (mt6d_mp.core.phases), ``send_phase`` -1 when the stream may not send (no fresh key), ``lane``
  this start's sender lane (a new one for every start of the worker: docs/PROTOCOL.md 2)
* RouteUpdate  ``[3, stream, epoch, state, local_hashed16, local_port, remote_hashed16,
  remote_port, key_phase]`` where state is ``"accepted"`` or ``"expired"`` or ``"released"``;
  a route is known by (stream, key_phase, epoch)
* KeyxSend     ``[3, stream, local_hashed16, local_port, options, payload]``: an exchange
  message for the stream's worker to send from that route's socket (not part of the state)
* Snapshot     ``[3, seq, [StreamState...], [RouteUpdate...], [[topic, last_seq]...]]``
* Update       ``[3, seq, kind, payload, topic, prev]`` with kind ``"stream"``, ``"route"``,
  ``"keyx"`` or ``"stream-removed"`` (payload is the stream name)

Topics: every update concerns one stream, and its topic is that stream's queue (its shard);
``prev`` is the sequence number of the topic's previous update (0: none yet). A stream worker
subscribes to its own queue's topic only and asks for a snapshot of it, so a shard never reads
the other shards' routes (a thousand streams publish thousands of updates every rotation); the
ICMP worker takes every topic. A snapshot says, per topic it covers, the last update it holds.

NamedTuple rather than frozen dataclasses: every worker loads this module, and ``dataclasses``
imports ``inspect`` (with ``ast``, ``dis`` and ``tokenize``), about 1 MB of private memory per
process. Nothing compares or unpacks these records as tuples.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from mt6d_mp.core.crypt_names import CRYPT_NAMES

# 2: StreamState lost hop_limit (never set; the inner hop limit is always copied)
# 3: key phases (StreamState carries every data phase's keys, the sending phase and the lane)
# 4: StreamState.host_mode
# 5: topics (Update.topic, Update.prev, Snapshot.topics)
# 6: a bus message carries an array of updates (mt6d_mp/io/bus.py: BusServer.batch)
VERSION = 6
ROUTE_STATES = ("accepted", "expired", "released")


class BusError(ValueError):
    """A bus message does not have the expected shape."""


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise BusError(what)


def _bytes(v: Any, n: int, what: str) -> bytes:
    _expect(isinstance(v, bytes) and len(v) == n, f"{what}: expected {n} bytes")
    assert isinstance(v, bytes)
    return v


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    _expect(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
            f"{what}: expected an integer {lo}..{hi}")
    assert isinstance(v, int)
    return v


def _float(v: Any, what: str) -> float:
    _expect(isinstance(v, float | int) and not isinstance(v, bool) and 0 < v < 1e6,
            f"{what}: expected a positive number")
    return float(v)


def _str(v: Any, what: str) -> str:
    _expect(isinstance(v, str) and 0 < len(v) <= 255, f"{what}: expected a name")
    assert isinstance(v, str)
    return v


def _array(v: Any, n: int, what: str) -> list[Any]:
    _expect(isinstance(v, list | tuple) and len(v) == n, f"{what}: expected {n} fields")
    _expect(v[0] == VERSION, f"{what}: unsupported version {v[0]!r}")
    return list(v)


class PhaseKeys(NamedTuple):
    """One data phase's per-direction AEAD keys."""

    phase: int
    tx_key: bytes
    rx_key: bytes


class StreamState(NamedTuple):
    """What a worker needs to carry one stream; keys are per-direction AEAD keys by phase."""

    name: str
    queue: int
    local: bytes  # local host's true address
    remote: bytes  # remote host's true address
    crypt: str
    phases: tuple[PhaseKeys, ...]
    send_phase: int  # -1: send nothing (no fresh key)
    lane: int
    internal_ifindex: int
    external_ifindex: int
    tunnel_mtu: int
    rotation_time: float
    flow_label: bool = False  # put addressing.flow_label() of the route on tunnel packets
    host_mode: bool = False  # the local host is this machine: deliver through internal_ifindex (lo)

    def __repr__(self) -> str:  # never show keys
        return (f"StreamState({self.name} queue={self.queue} crypt={self.crypt} "
                f"phases={[p.phase for p in self.phases]} send={self.send_phase} lane={self.lane})")

    def keys(self, phase: int) -> PhaseKeys | None:
        for p in self.phases:
            if p.phase == phase:
                return p
        return None

    def to_wire(self) -> list[Any]:
        return [VERSION, self.name, self.queue, self.local, self.remote, self.crypt,
                [list(p) for p in self.phases], self.send_phase, self.lane,
                self.internal_ifindex, self.external_ifindex, self.tunnel_mtu, self.rotation_time,
                self.flow_label, self.host_mode]

    @classmethod
    def from_wire(cls, v: Any) -> StreamState:
        a = _array(v, 15, "stream")
        _expect(isinstance(a[13], bool), "flow label switch: expected true or false")
        _expect(isinstance(a[14], bool), "host mode: expected true or false")
        crypt = _str(a[5], "stream crypt")
        _expect(crypt in CRYPT_NAMES, f"unknown crypt {crypt!r}")
        _expect(isinstance(a[6], list | tuple) and len(a[6]) <= 8, "phases: expected a list")
        phases = []
        for p in a[6]:
            _expect(isinstance(p, list | tuple) and len(p) == 3, "phase: expected 3 fields")
            phases.append(PhaseKeys(_int(p[0], 1, 255, "phase"), _bytes(p[1], 32, "tx key"),
                                    _bytes(p[2], 32, "rx key")))
        return cls(_str(a[1], "stream name"), _int(a[2], 0, 65535, "queue"),
                   _bytes(a[3], 16, "local"), _bytes(a[4], 16, "remote"), crypt, tuple(phases),
                   _int(a[7], -1, 255, "send phase"), _int(a[8], 0, 65535, "lane"),
                   _int(a[9], 1, 2**31, "internal ifindex"),
                   _int(a[10], 1, 2**31, "external ifindex"), _int(a[11], 1, 65535, "mtu"),
                   _float(a[12], "rotation time"), bool(a[13]), bool(a[14]))


class KeyxSend(NamedTuple):
    """An exchange message for a stream's worker to send on one of its routes."""

    stream: str
    local_hashed: bytes
    local_port: int
    options: bytes
    payload: bytes

    def to_wire(self) -> list[Any]:
        return [VERSION, self.stream, self.local_hashed, self.local_port, self.options,
                self.payload]

    @classmethod
    def from_wire(cls, v: Any) -> KeyxSend:
        a = _array(v, 6, "keyx")
        _expect(isinstance(a[4], bytes) and len(a[4]) <= 64, "keyx options: expected bytes")
        _expect(isinstance(a[5], bytes) and len(a[5]) <= 512, "keyx payload: expected bytes")
        return cls(_str(a[1], "keyx stream"), _bytes(a[2], 16, "keyx local"),
                   _int(a[3], 1, 65535, "keyx port"), a[4], a[5])


class RouteUpdate(NamedTuple):
    stream: str
    epoch: int
    state: str
    local_hashed: bytes  # our hashed address (bound here)
    local_port: int
    remote_hashed: bytes  # the peer's hashed address
    remote_port: int
    key_phase: int = 0

    def to_wire(self) -> list[Any]:
        return [VERSION, self.stream, self.epoch, self.state, self.local_hashed, self.local_port,
                self.remote_hashed, self.remote_port, self.key_phase]

    @classmethod
    def from_wire(cls, v: Any) -> RouteUpdate:
        a = _array(v, 9, "route")
        state = _str(a[3], "route state")
        _expect(state in ROUTE_STATES, f"unknown route state {state!r}")
        return cls(_str(a[1], "route stream"), _int(a[2], 0, 2**63, "epoch"), state,
                   _bytes(a[4], 16, "local"), _int(a[5], 1, 65535, "local port"),
                   _bytes(a[6], 16, "remote"), _int(a[7], 1, 65535, "remote port"),
                   _int(a[8], 0, 255, "key phase"))


class Snapshot(NamedTuple):
    seq: int
    streams: tuple[StreamState, ...]
    routes: tuple[RouteUpdate, ...]
    topics: tuple[tuple[int, int], ...] = ()  # (topic, its last update's seq) for each covered

    def to_wire(self) -> list[Any]:
        return [VERSION, self.seq, [s.to_wire() for s in self.streams],
                [r.to_wire() for r in self.routes], [list(t) for t in self.topics]]

    @classmethod
    def from_wire(cls, v: Any) -> Snapshot:
        a = _array(v, 5, "snapshot")
        _expect(isinstance(a[2], list) and isinstance(a[3], list) and isinstance(a[4], list),
                "snapshot: expected lists")
        topics = []
        for t in a[4]:
            _expect(isinstance(t, list) and len(t) == 2, "snapshot: topic: expected 2 fields")
            topics.append((_int(t[0], 0, 65535, "topic"), _int(t[1], 0, 2**63, "topic seq")))
        return cls(_int(a[1], 0, 2**63, "seq"),
                   tuple(StreamState.from_wire(s) for s in a[2]),
                   tuple(RouteUpdate.from_wire(r) for r in a[3]), tuple(topics))


class Update(NamedTuple):
    seq: int
    item: StreamState | RouteUpdate | KeyxSend | str  # str: name of a removed stream
    topic: int = 0  # the stream's queue
    prev: int = 0  # seq of the topic's previous update, 0 if none

    def to_wire(self) -> list[Any]:
        payload: list[Any] | str
        if isinstance(self.item, StreamState):
            kind, payload = "stream", self.item.to_wire()
        elif isinstance(self.item, RouteUpdate):
            kind, payload = "route", self.item.to_wire()
        elif isinstance(self.item, KeyxSend):
            kind, payload = "keyx", self.item.to_wire()
        else:
            kind, payload = "stream-removed", self.item
        return [VERSION, self.seq, kind, payload, self.topic, self.prev]

    @classmethod
    def from_wire(cls, v: Any) -> Update:
        a = _array(v, 6, "update")
        seq = _int(a[1], 1, 2**63, "seq")
        topic, prev = _int(a[4], 0, 65535, "topic"), _int(a[5], 0, seq - 1, "prev")
        kind = a[2]
        item: StreamState | RouteUpdate | KeyxSend | str
        if kind == "stream":
            item = StreamState.from_wire(a[3])
        elif kind == "route":
            item = RouteUpdate.from_wire(a[3])
        elif kind == "keyx":
            item = KeyxSend.from_wire(a[3])
        elif kind == "stream-removed":
            item = _str(a[3], "removed stream")
        else:
            raise BusError(f"update: unknown kind {kind!r}")
        return cls(seq, item, topic, prev)


class Replica:
    """A worker's copy of the supervisor's state, kept by the Clone pattern.

    ``apply_snapshot`` replaces everything; ``apply`` takes an update only if it follows the
    last one of its topic (``prev``); the topics' chains interleave in any order. It returns
    False on a gap (an update was lost: PUB/SUB drops messages at its high-water mark and
    before a subscriber has joined), and the worker then asks for a new snapshot. Updates
    older than the snapshot are ignored. A replica holds the topics it subscribed to (the
    supervisor's own, every topic).
    """

    def __init__(self) -> None:
        self.seq = -1  # -1: no snapshot yet; then the newest update taken
        self.snapshot_seq = -1  # the last snapshot's: every update up to it is in it
        self.topic_seq: dict[int, int] = {}  # topic -> seq of its newest update taken
        self.streams: dict[str, StreamState] = {}
        self.routes: dict[tuple[str, int, int], RouteUpdate] = {}  # (stream, phase, epoch)
        # The same routes by stream: a worker that rebuilds only the streams an update touched
        # finds theirs without walking every route of every stream.
        self.by_stream: dict[str, dict[tuple[str, int, int], RouteUpdate]] = {}
        self.indexed = True  # keep by_stream (the supervisor's own replica does without)
        # Exchange messages to send, in order; not state: a snapshot does not carry them (a
        # message lost to a resynchronisation is a lost datagram, and the exchange retries).
        self.outbox: list[KeyxSend] = []
        # Streams whose state or routes changed since the worker last looked (None: all of
        # them, after a snapshot): a shard of many streams rebuilds only those.
        self.touched: set[str] | None = None

    def take_touched(self) -> set[str] | None:
        """The streams changed since the last call (None: every stream), and start afresh."""
        touched, self.touched = self.touched, set()
        return touched

    @property
    def synced(self) -> bool:
        return self.seq >= 0

    def apply_snapshot(self, snap: Snapshot) -> None:
        self.seq = self.snapshot_seq = snap.seq
        self.topic_seq = dict(snap.topics)
        self.streams = {s.name: s for s in snap.streams}
        self.routes = {(r.stream, r.key_phase, r.epoch): r for r in snap.routes}
        self.by_stream = {}
        for key, r in self.routes.items():
            self.by_stream.setdefault(r.stream, {})[key] = r
        self.touched = None

    def routes_of(self, stream: str) -> list[RouteUpdate]:
        return list(self.by_stream.get(stream, {}).values())

    def take_route(self, item: RouteUpdate) -> None:
        """A route update, once its place in the chain is checked (the supervisor's own
        replica, which makes the chain, takes its route updates here directly)."""
        stream = item.stream
        key = (stream, item.key_phase, item.epoch)
        if item.state == "released":
            self.routes.pop(key, None)
            mine = self.by_stream.get(stream) if self.indexed else None
            if mine is not None:
                mine.pop(key, None)
                if not mine:
                    del self.by_stream[stream]
        else:
            self.routes[key] = item
            if self.indexed:
                self.by_stream.setdefault(stream, {})[key] = item
        if self.touched is not None:
            self.touched.add(stream)

    def apply(self, update: Update) -> bool:
        if not self.synced:
            return True  # wait for the snapshot; it will include this update
        last = self.topic_seq.get(update.topic, 0)
        if update.seq <= self.snapshot_seq or update.seq <= last:
            return True  # already in the snapshot, or seen
        if update.prev != last:
            return False
        # Topics are sent one message each (BusServer.batch), so a replica of several topics
        # may take a later topic's updates before an earlier one's: only each topic's chain
        # is in order.
        self.topic_seq[update.topic] = update.seq
        if update.seq > self.seq:
            self.seq = update.seq
        item = update.item
        touched = self.touched
        if type(item) is RouteUpdate:  # most updates: thousands a rotation
            self.take_route(item)
            return True
        if isinstance(item, StreamState):
            self.streams[item.name] = item
            if touched is not None:
                touched.add(item.name)
        elif isinstance(item, KeyxSend):
            self.outbox.append(item)
        elif isinstance(item, str):  # the stream was removed
            if touched is not None:
                touched.add(item)
            self.streams.pop(item, None)
            gone = self.by_stream.pop(item, {}) if self.indexed else [
                k for k in self.routes if k[0] == item]
            for key in gone:
                del self.routes[key]
        return True
