"""One stream's key phases: their routes, which one sends, and the exchanges that make them.

Pure logic with an injected clock (every method takes ``now``) and random source; the supervisor
applies what it returns (route changes, messages to send) and publishes the keys. The protocol
is docs/PROTOCOL.md 5; the messages and the key schedule are mt6d_mp.core.keyx.

A *phase* is a secret (the profile key for phase 0, an exchange's result for the others) with its
own route list (mt6d_mp.core.routes): the same epochs, hashed with the phase's secret. Phase 0,
the bootstrap phase, always has its routes installed, so that a peer which lost its state can
start an exchange, and never carries data. At most three other phases live at once: the one in
use, the one before it until its routes expire (make-before-break), and a new one.

Timeline of a rekey, seen from the initiator (the responder's is the same one message later):

1. at ``next_rekey`` (phase age ``regen_interval`` plus a random share of ``regen_window``, so
   that both ends rarely start together) INIT goes on the sending phase's active route; retries
   back off and also go on the bootstrap route, which a peer that restarted can still hear;
2. RESP arrives with the responder's proof: the new phase ``q`` is *committed*: its routes for
   the current and the next epoch are made at once, and it may carry data from ``now + hold``
   (twice the measured round trip, at least HOLD_MIN: the time the responder needs to see
   CONFIRM and bind the routes); CONFIRM goes;
3. the old phase stops making routes after the next epoch and its routes expire as usual: it is
   accepted until then. Its secret goes with its last route.

If no phase is fresher than ``regen_limit``, the stream stops sending (fail closed) until an
exchange succeeds.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mt6d_mp.core import keyx
from mt6d_mp.core.crypto import derive_direction_key
from mt6d_mp.core.epochs import epoch_at
from mt6d_mp.core.routes import Route, RouteChanges, RouteList, StreamIdentity
from mt6d_mp.errors import PacketError

HOLD_MIN = 0.2  # seconds between the initiator's commit and its first packet in the new phase
RETRY_BASE = 0.5  # first retry of an unanswered INIT, doubling up to RETRY_MAX
RETRY_MAX = 8.0
RESP_REPEATS = 4  # how often the responder repeats RESP while waiting for CONFIRM
FIRST_EXCHANGE_JITTER = 0.5  # at start, the first INIT waits up to this long (random)
MAX_PHASES = 3  # besides the bootstrap phase: in use, the one before, a new one


@dataclass(frozen=True, slots=True)
class Policy:
    """The timers of ``[crypto]`` (mt6d_mp.core.config); 0 interval = only the first exchange."""

    regen_interval: float
    regen_window: float
    regen_limit: float  # 0: no hard limit
    tolerance: float  # how far a peer's clock may be off (the routes' skew tolerance), seconds


@dataclass(slots=True)
class Phase:
    number: int
    secret: bytes
    routes: RouteList
    seq: int  # order of creation: phase numbers wrap, this does not
    send_from: float | None  # when data may go on it; None: never (the bootstrap phase)
    tx_key: bytes = b""
    rx_key: bytes = b""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An exchange message to send on ``route`` (already authenticated for it)."""

    route: Route
    options: bytes
    payload: bytes
    kind: str


@dataclass(slots=True)
class _Completed:
    confirm: keyx.Message
    until: float


@dataclass
class StreamKeys:
    """The key phases of one stream (see the module docstring)."""

    identity: StreamIdentity
    psk: bytes
    rotation_time: float
    route_lifetime: float
    policy: Policy
    now: float
    rng: Callable[[int], bytes] = os.urandom
    jitter: Callable[[float], float] = field(default=lambda w: random.uniform(0.0, w))
    phases: dict[int, Phase] = field(default_factory=dict)
    send_phase: int | None = None
    counters: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)  # log lines for the supervisor (no secrets)
    changed: bool = True  # keys or the sending phase changed: republish the stream's state

    def __post_init__(self) -> None:
        self._seq = itertools.count()
        self.phases[0] = self._phase(0, self.psk, None)
        self.initiated: keyx.Initiated | None = None
        self.answered: dict[bytes, keyx.Answered] = {}
        self.answered_sent: dict[bytes, float] = {}  # id -> when RESP was last sent
        self.completed: dict[bytes, _Completed] = {}  # ids we confirmed as initiator
        self.seen: dict[bytes, float] = {}  # INIT ids answered -> when to forget them
        self.next_rekey = self.now + self.jitter(FIRST_EXCHANGE_JITTER)
        self.rekey_forced = False
        self.keyed_since = self.now  # start of the sending phase's life (for the hard limit)
        self.expired = False
        # Seconds from the first INIT to the commit of the last exchange this end started
        # (what a rekey costs in time; mt6d-bench reports it).
        self.last_exchange: float | None = None
        # Deterministic winner when both ends start at once: the end whose local host has the
        # lower true address keeps its exchange, the other answers it.
        self.wins_ties = self.identity.local_address < self.identity.remote_address

    # --- phases and routes ----------------------------------------------------------------

    def _phase(self, number: int, secret: bytes, send_from: float | None) -> Phase:
        def schedule(epoch: int) -> tuple[bytes, int]:
            return secret, number

        routes = RouteList(self.identity, schedule, self.rotation_time, self.route_lifetime)
        tx = rx = b""
        if number:
            local, remote = self.identity.local_address, self.identity.remote_address
            tx = derive_direction_key(secret, local, remote, number)
            rx = derive_direction_key(secret, remote, local, number)
        return Phase(number, secret, routes, next(self._seq), send_from, tx, rx)

    def advance(self, now: float) -> RouteChanges:
        """Every phase's routes brought to ``now``; phases whose last route went are dropped."""
        self._update_sending(now)
        merged = RouteChanges()
        for number in list(self.phases):
            p = self.phases[number]
            ch = p.routes.advance(now)
            merged.added += ch.added
            merged.expired += ch.expired
            merged.released += ch.released
            if number and p.routes.finished(now):
                del self.phases[number]  # the secret goes with its last route
                self.events.append(f"event=key_phase_dropped phase={number}")
                self.changed = True
        return merged

    def key_id(self, phase: int) -> str:
        """A public name of a phase's secret (8 bytes of a one-way hash, never the secret),
        for ``mt6dctl routes``: phase numbers wrap and restart, key ids do not repeat."""
        p = self.phases.get(phase)
        if p is None:
            return ""
        return hashlib.sha256(b"mt6d-mp key id\0" + p.secret).digest()[:8].hex()

    def installed(self) -> list[Route]:
        return [r for p in self._by_age() for r in p.routes.installed()]

    def accepted(self, now: float) -> list[Route]:
        return [r for p in self._by_age() for r in p.routes.accepted(now)]

    def active(self, now: float) -> Route | None:
        """The route data is sent on now: the sending phase's route of this epoch."""
        if self.send_phase is None:
            return None
        p = self.phases.get(self.send_phase)
        return p.routes.active(now) if p is not None else None

    def data_phases(self) -> list[Phase]:
        """The phases with data keys (all but the bootstrap phase), oldest first."""
        return [p for p in self._by_age() if p.number]

    def _by_age(self) -> list[Phase]:
        return sorted(self.phases.values(), key=lambda p: p.seq)

    def _update_sending(self, now: float) -> None:
        """Send on the newest phase whose hold has passed and that is younger than the hard
        limit; stop the older one's route making. With none, send nothing (fail closed)."""
        limit = self.policy.regen_limit
        ready = [p for p in self.phases.values() if p.send_from is not None and p.send_from <= now
                 and (limit <= 0 or now - p.send_from <= limit)]
        if not ready:
            if self.send_phase is not None:
                self.expired = True
                self.send_phase = None
                self.changed = True
                self.counters["keys_expired"] += 1
                self.events.append("event=key_expired action=fail_closed note=no fresh key: the "
                                   "stream sends nothing until an exchange succeeds")
            return
        newest = max(ready, key=lambda p: p.seq)
        if newest.number == self.send_phase:
            return
        old = self.phases.get(self.send_phase) if self.send_phase else None
        if old is not None and old.routes.last is None:
            old.routes.last = epoch_at(now, self.rotation_time) + 1
        self.send_phase = newest.number
        assert newest.send_from is not None
        self.keyed_since = newest.send_from
        self.expired = False
        self.changed = True
        self.events.append(f"event=key_phase_sending phase={newest.number}")
        if self.policy.regen_interval > 0:
            self.next_rekey = (self.keyed_since + self.policy.regen_interval
                               + self.jitter(self.policy.regen_window))
        elif not self.rekey_forced:
            self.next_rekey = float("inf")

    @property
    def state(self) -> str:
        """``keyed`` (sending), ``expired`` (fail closed after the hard limit) or ``bootstrapping``
        (no phase yet)."""
        if self.send_phase is not None:
            return "keyed"
        return "expired" if self.expired else "bootstrapping"

    # --- the exchange ---------------------------------------------------------------------

    def request_rekey(self, now: float) -> None:
        """``mt6dctl rekey``: start an exchange at the next tick."""
        self.next_rekey = now
        self.rekey_forced = True

    def tick(self, now: float, may_start: bool = True) -> list[Outgoing]:
        """Timers: start or retry an exchange, repeat an unconfirmed RESP, forget old state.
        With ``may_start`` False an exchange that is due waits for a later tick (the
        supervisor bounds how many run at once)."""
        self._update_sending(now)
        out: list[Outgoing] = []
        for mid in [m for m, t in self.seen.items() if t < now]:
            del self.seen[mid]
        for mid in [m for m, c in self.completed.items() if c.until < now]:
            del self.completed[mid]
        for mid in [m for m, a in self.answered.items() if a.until < now]:
            del self.answered[mid]
            self.answered_sent.pop(mid, None)
            self.counters["keyx_abandoned_responder"] += 1
        for mid, a in self.answered.items():
            if now - self.answered_sent[mid] >= self._retry_delay(1):
                self.answered_sent[mid] = now
                out += self._send(a.reply, a.route_phase, now, "resp")
        pending = self.initiated
        if pending is None:
            if now >= self.next_rekey and len(self.phases) > MAX_PHASES:
                # Rekeys faster than routes expire (``mt6dctl rekey`` in a loop): wait for the
                # oldest phase to go rather than keep ever more addresses bound.
                self.counters["keyx_postponed"] += 1
                self.next_rekey = now + self.rotation_time
            elif now >= self.next_rekey and self.answered:
                # The peer's exchange is under way: its phase will do (two at once would be a
                # wasted rekey and one more live phase).
                self.next_rekey = now + self._retry_delay(1)
            elif now >= self.next_rekey and may_start:
                self.rekey_forced = False
                pending, msg = keyx.new_init(now, self.send_phase or 0, self.rng)
                self.initiated = pending
                self.counters["keyx_started"] += 1
                self.events.append(f"event=keyx_started phase={self.send_phase or 0}")
                out += self._send(msg, self.send_phase or 0, now, "init")
        elif now - pending.sent >= self._retry_delay(pending.attempts):
            self.initiated = pending._replace(sent=now, attempts=pending.attempts + 1)
            msg = keyx.Message(keyx.INIT, pending.id, pending.time_ms, pending.phase, pending.public)
            self.counters["keyx_retries"] += 1
            # Retries go on the bootstrap route too: a peer that restarted hears only that one.
            for number in {self.send_phase or 0, 0}:
                out += self._send(msg, number, now, "init")
            if now - pending.started > self.policy.tolerance / 2:
                # The time in the INIT is getting stale for the peer: start afresh.
                self.initiated = None
                self.next_rekey = now
        return out

    def _retry_delay(self, attempts: int) -> float:
        return float(min(RETRY_BASE * 2 ** (attempts - 1), RETRY_MAX))

    def _send(self, msg: keyx.Message, phase: int, now: float, kind: str) -> list[Outgoing]:
        p = self.phases.get(phase)
        route = p.routes.active(now) if p is not None else None
        if p is None or route is None:
            self.counters["keyx_no_route"] += 1
            return []
        opts, payload = keyx.seal(keyx.auth_key(p.secret), send_aad(route), msg)
        self.counters[f"keyx_sent_{kind}"] += 1
        return [Outgoing(route, opts, payload, kind)]

    def receive(self, now: float, route: Route, options: bytes, payload: bytes) -> list[Outgoing]:
        """An exchange message that arrived on ``route`` (one of ours); what to send back.

        A message that fails any check changes nothing and is counted by reason.
        """
        p = self.phases.get(route.key_phase)
        if p is None:
            self.counters["keyx_unknown_phase"] += 1
            return []
        try:
            msg = keyx.open_message(keyx.auth_key(p.secret), receive_aad(route), options, payload)
            if msg.type == keyx.INIT:
                return self._on_init(now, route, msg)
            if msg.type == keyx.RESP:
                return self._on_resp(now, route, msg)
            return self._on_confirm(now, msg)
        except PacketError as e:
            self.counters[e.reason] += 1
            return []

    def _on_init(self, now: float, route: Route, msg: keyx.Message) -> list[Outgoing]:
        if abs(now * 1000 - msg.time_ms) > self.policy.tolerance * 1000:
            raise PacketError("keyx_stale", "INIT time outside the clock tolerance")
        done = self.answered.get(msg.id)
        if done is not None:  # the initiator did not get our RESP: the same one again
            self.counters["keyx_repeated"] += 1
            self.answered_sent[msg.id] = now
            return self._send(done.reply, route.key_phase, now, "resp")
        if msg.id in self.seen:
            raise PacketError("keyx_replay", "INIT already answered")
        if self.initiated is not None:
            if self.wins_ties:
                raise PacketError("keyx_collision", "both started; ours wins")
            self.counters["keyx_collision_yielded"] += 1
            self.initiated = None
        q = keyx.next_phase(msg.phase, *self.phases)
        secret, reply, expected = keyx.answer(msg, self.psk, q, self.rng)
        # RESP goes again every RETRY_BASE until CONFIRM; the exchange is given up when the
        # initiator gives up its INIT too (half the clock tolerance: it then starts afresh).
        until = now + max(self.policy.tolerance / 2, RETRY_BASE * (RESP_REPEATS + 1))
        self.answered[msg.id] = keyx.Answered(msg.id, q, secret, reply, expected, until,
                                              route.key_phase)
        self.answered_sent[msg.id] = now
        self.seen[msg.id] = until + 2 * self.policy.tolerance
        self.counters["keyx_answered"] += 1
        return self._send(reply, route.key_phase, now, "resp")

    def _on_resp(self, now: float, route: Route, msg: keyx.Message) -> list[Outgoing]:
        pending = self.initiated
        if pending is None or pending.id != msg.id:
            done = self.completed.get(msg.id)
            if done is None:
                raise PacketError("keyx_unexpected", "RESP to no exchange of ours")
            self.counters["keyx_repeated"] += 1  # our CONFIRM was lost: the same one again
            return self._send(done.confirm, route.key_phase, now, "confirm")
        if msg.phase == 0 or msg.phase in self.phases:
            raise PacketError("keyx_phase_clash", f"phase {msg.phase} is in use here")
        secret, confirm = keyx.complete(pending, msg, self.psk)
        self.initiated = None
        rtt = max(0.0, now - pending.sent)
        self.last_exchange = now - pending.started
        self._commit(now, msg.phase, secret, now + max(HOLD_MIN, 2 * rtt))
        self.completed[msg.id] = _Completed(confirm, now + RETRY_MAX * RESP_REPEATS)
        return self._send(confirm, route.key_phase, now, "confirm")

    def _on_confirm(self, now: float, msg: keyx.Message) -> list[Outgoing]:
        a = self.answered.get(msg.id)
        if a is None:
            raise PacketError("keyx_replay" if msg.id in self.seen else "keyx_unexpected",
                              "CONFIRM to no open exchange")
        if msg.phase != a.q or not hmac.compare_digest(msg.confirm, a.expected):
            raise PacketError("keyx_confirm_failed", "initiator")
        del self.answered[msg.id]
        self.answered_sent.pop(msg.id, None)
        if a.q in self.phases:
            raise PacketError("keyx_phase_clash", f"phase {a.q} appeared meanwhile")
        self._commit(now, a.q, a.secret, now)
        return []

    def _commit(self, now: float, q: int, secret: bytes, send_from: float) -> None:
        """A confirmed phase: its routes for the whole window (the peer's clock may be up to a
        rotation ahead or ``L`` behind, and its first packets on the phase use *its* epoch's
        route), data from ``send_from``."""
        self.phases[q] = self._phase(q, secret, send_from)
        self.next_rekey = float("inf")  # set when the phase starts sending (_update_sending)
        self.changed = True
        self.counters["rekeys"] += 1
        self.events.append(f"event=key_phase_committed phase={q}")
        self._update_sending(now)


def send_aad(route: Route) -> bytes:
    """The associated data prefix of what we send on ``route``: our end is the source."""
    return (route.local.address + route.remote.address + route.local.port.to_bytes(2, "big")
            + route.remote.port.to_bytes(2, "big"))


def receive_aad(route: Route) -> bytes:
    """The associated data prefix of what arrives on ``route``: the peer's end is the source."""
    return (route.remote.address + route.local.address + route.remote.port.to_bytes(2, "big")
            + route.local.port.to_bytes(2, "big"))
