"""Per-stream route lists (thesis section 3.1.2), driven by an injected clock.

A route is the pair of hashed endpoints for one epoch (salt). At time ``t`` in epoch ``e``
(``e = floor(t / rotation_time)``, so rotations are aligned to absolute time, not process start):

==============  =====================  ==============================================
role            epochs                 why
==============  =====================  ==============================================
newest          e + 1                  bound and filtered in one rotation before use
active          e                      packets are SENT on it
accepted        e - L ... e + 1        packets are ACCEPTED on any of them
lingering       e - L - 1              expired; still installed one more rotation so
                                       that no worker is still using it when released
==============  =====================  ==============================================

``L`` = ceil(route_lifetime / rotation_time) >= 1. The C version sends on the *second newest*
route for the same reason we make routes one epoch ahead: a freshly bound address needs time
before it can be used, and the peer needs time to learn it.

Clock skew. A gateway whose clock reads epoch ``e`` sends on route ``e``; its peer, reading
epoch ``e'``, accepts ``e' - L .. e' + 1``. So traffic keeps flowing while ``-1 <= e - e' <= L``:
a peer may be up to one full rotation ahead or ``L`` rotations behind, minus the one-way delay.
With the default ``route_lifetime = rotation_time`` that is ``rotation_time`` either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from mt6d_mp.core.addressing import DEFAULT_HASH, Endpoint, endpoint
from mt6d_mp.core.epochs import epoch_at


@dataclass(frozen=True, slots=True)
class Route:
    """One epoch's pair of hashed endpoints for a stream, seen from this gateway."""

    stream: str
    epoch: int
    local: Endpoint  # our hashed source: bound on the external interface
    remote: Endpoint  # the peer's hashed address: where we send
    key_phase: int = 0  # which session key hashed it (in-band rekeying changes keys)


@dataclass(frozen=True, slots=True)
class StreamIdentity:
    """What both gateways know about one stream: true addresses, MACs, hash."""

    name: str
    local_address: bytes
    local_mac: bytes
    remote_address: bytes
    remote_mac: bytes
    hash_type: str = DEFAULT_HASH

    def route(self, epoch: int, session_key: bytes, key_phase: int = 0) -> Route:
        return Route(
            stream=self.name,
            epoch=epoch,
            local=endpoint(self.local_address, session_key, epoch, self.local_mac, self.hash_type),
            remote=endpoint(
                self.remote_address, session_key, epoch, self.remote_mac, self.hash_type
            ),
            key_phase=key_phase,
        )


def lifetime_epochs(rotation_time: float, route_lifetime: float) -> int:
    """How many epochs a route is still accepted after its own: ceil(lifetime / rotation), >= 1."""
    if rotation_time <= 0:
        raise ValueError("rotation_time must be positive")
    return max(1, math.ceil(route_lifetime / rotation_time - 1e-9))


@dataclass
class RouteChanges:
    """What one call to :meth:`RouteList.advance` changed, for the supervisor to apply."""

    added: list[Route] = field(default_factory=list)  # bind + filter in
    expired: list[Route] = field(default_factory=list)  # no longer accepted
    released: list[Route] = field(default_factory=list)  # unbind + filter out

    def __bool__(self) -> bool:
        return bool(self.added or self.expired or self.released)


# Given an epoch, the (session key, key phase) in force for it.
KeySchedule = Callable[[int], tuple[bytes, int]]


class RouteList:
    """The routes of one stream: newest first, computed from the epoch of ``now``.

    The list changes only in :meth:`advance`; the queries are pure functions of the state and
    the given time, so a test drives it with any clock.
    """

    def __init__(
        self,
        identity: StreamIdentity,
        keys: KeySchedule,
        rotation_time: float,
        route_lifetime: float,
    ) -> None:
        self.identity = identity
        self.keys = keys
        self.rotation_time = rotation_time
        self.lifetime = lifetime_epochs(rotation_time, route_lifetime)
        self._routes: dict[int, Route] = {}  # epoch -> route, every installed route
        self._last_expired = -1  # newest epoch already reported as expired
        # The last epoch of a key phase that another replaced (mt6d_mp.core.phases): no route
        # is made after it; None while the phase is in use.
        self.last: int | None = None

    def _make(self, epoch: int) -> Route:
        key, phase = self.keys(epoch)
        return self.identity.route(epoch, key, phase)

    def advance(self, now: float) -> RouteChanges:
        """Bring the list to the epoch of ``now``: make new routes, expire and release old ones.

        Safe to call at any time and any number of times; after a long pause (suspend, clock
        jump) it releases everything stale and installs the current window at once.
        """
        e = epoch_at(now, self.rotation_time)
        lingering = e - self.lifetime - 1
        changes = RouteChanges()
        for epoch in sorted(self._routes):
            if epoch < lingering:
                changes.released.append(self._routes.pop(epoch))
            elif epoch == lingering and epoch > self._last_expired:
                changes.expired.append(self._routes[epoch])
                self._last_expired = epoch
        hi = e + 1 if self.last is None else min(self.last, e + 1)
        for epoch in range(e - self.lifetime, hi + 1):
            if epoch not in self._routes:
                route = self._make(epoch)
                self._routes[epoch] = route
                changes.added.append(route)
        return changes

    def finished(self, now: float) -> bool:
        """True once a bounded list has released its last route and will make no other."""
        return (self.last is not None and not self._routes
                and epoch_at(now, self.rotation_time) > self.last)

    def installed(self) -> list[Route]:
        """Every route whose address and rule are on the system, newest first."""
        return [self._routes[k] for k in sorted(self._routes, reverse=True)]

    def accepted(self, now: float) -> list[Route]:
        e = epoch_at(now, self.rotation_time)
        return [r for r in self.installed() if e - self.lifetime <= r.epoch <= e + 1]

    def active(self, now: float) -> Route | None:
        return self._routes.get(epoch_at(now, self.rotation_time))

