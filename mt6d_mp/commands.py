"""The control commands: each command's wire format and its daemon half (circus' model).

Flow: the supervisor registers :func:`handlers` on the bus's control socket; a request
``[command, arg...]`` (UTF-8 frames) reaches :meth:`Command.dispatch`, which decodes it, runs the
command's :meth:`~Command.execute` against the :class:`Controlled` interface (the supervisor)
and returns one msgpack-able map, ``{"error": text, "code": n}`` on failure: it never raises.

Each command is one class below: its docstring is both mt6dctl's ``--help`` for it and its wire
format. The client half of the same command (arguments, request frames, waiting, printing, exit
code) is the class of the same name in :mod:`mt6d_mp.ctl`; this module imports nothing of the
client, so the supervisor does not load argparse or the CLI. The shapes of the ``status`` and
``routes`` replies that concern routes are made here too (:func:`route_dict`,
:func:`stream_rows`, :func:`routes_reply`); the workers' rows come from :mod:`mt6d_mp.pool`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from mt6d_mp.core.epochs import next_boundary
from mt6d_mp.core.phases import StreamKeys
from mt6d_mp.core.routes import Route
from mt6d_mp.errors import EXIT_BAD_ARGS, EXIT_GENERIC, Mt6dError

log = logging.getLogger("mt6d.supervisor")


class CommandError(Mt6dError):
    """A command failed; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_GENERIC) -> None:
        super().__init__(message)
        self.exit_code = code


class Controlled(Protocol):
    """What the supervisor offers to the daemon halves of the commands."""

    def status_data(self) -> dict[str, Any]: ...
    def control_workers(self, action: str, names: list[str]) -> dict[str, Any]: ...
    def reload(self) -> dict[str, Any]: ...
    def routes_data(self) -> dict[str, Any]: ...
    def rehash(self) -> dict[str, Any]: ...
    def rekey(self, names: list[str]) -> dict[str, Any]: ...


# --- the commands -----------------------------------------------------------------------------


class Command:
    name: ClassVar[str] = ""
    daemon: ClassVar[bool] = True  # has a daemon half (doctor has not)

    @classmethod
    def help(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]

    def execute(self, sup: Controlled, args: list[str]) -> dict[str, Any]:
        """Daemon half, inside the supervisor."""
        raise NotImplementedError

    def dispatch(self, sup: Controlled, frames: list[bytes]) -> dict[str, Any]:
        """Daemon entry point (BusServer.handlers): decode, execute, never raise."""
        try:
            return self.execute(sup, [f.decode("utf-8", "replace") for f in frames])
        except Mt6dError as e:
            return {"error": str(e), "code": e.exit_code}
        except Exception as e:  # a control command must never take the supervisor down
            log.exception("event=control_failed command=%s", self.name)
            return {"error": f"internal error: {type(e).__name__}: {e}", "code": EXIT_GENERIC}


class Status(Command):
    """Show the supervisor, every worker and every stream at a glance.

    Wire: ``[b"status"]`` -> ``{"pid", "config", "uptime", "tunnel_mtu", "workers": [{"name",
    "pid", "state", "reason", "uptime", "queue", "kernel_queue": {"waiting", "queue_dropped",
    "user_dropped"}, "segment_queue": (the same for a stream worker's segmenting queue, or null),
    "spawns", "exits", "packets_in", "packets_out", "bytes_in", "bytes_out",
    "drops": {reason: n}, "counters"}], "streams": [{"name", "queue", "active", "installed",
    "next_rotation", "next_rotation_in", "key_state", "key_phase", "key_age", "next_rekey_in",
    "keyx": {counter: n}, "keyx_last_seconds"}], "firewall_drops": {kind: packets}}``.
    ``key_state`` is ``keyed`` (sending on phase ``key_phase``, whose key is ``key_age`` seconds
    old), ``bootstrapping`` (no exchange has succeeded yet: nothing is sent) or ``expired`` (no
    fresh key within ``regen_limit``: nothing is sent until an exchange succeeds); ``keyx`` counts
    the key exchange's messages and refusals by reason (docs/PROTOCOL.md 5).
    ``firewall_drops`` counts what the kernel dropped by MT6D's rules (kinds in
    mt6d_mp.io.firewall.Firewall.drop_counts: fragment, true_address, hashed_address, silenced,
    true_source). ``packets_out`` counts tunnelled packets (host to
    tunnel), ``packets_in`` extracted ones (tunnel to host), as the hosts see them: a TCP
    super-packet is one, whatever number of chunks carried it (``counters`` has
    ``messages_sent``, ``chunks_sent`` and ``messages_received``, docs/PROTOCOL.md 1.6).

    Exit: 0 running with every worker RUNNING, 150 running but some worker is not, 3 not
    running, 1 dead with a stale pid file, 4 unknown.
    """

    name = "status"

    def execute(self, sup: Controlled, args: list[str]) -> dict[str, Any]:
        return sup.status_data()


class _WorkerCommand(Command):
    action = ""

    def execute(self, sup: Controlled, args: list[str]) -> dict[str, Any]:
        if not args:
            raise CommandError(f"{self.name}: name a worker or 'all'", EXIT_BAD_ARGS)
        return sup.control_workers(self.action, args)


class Start(_WorkerCommand):
    """Start workers that are stopped, in backoff or fatal (``all`` for every worker).

    Wire: ``[b"start", name...]`` -> ``{"workers": {name: {"state", "pid"}}}``; an unknown name
    is an error and changes nothing. The client then waits until each is RUNNING (or FATAL).
    Exit: 0 all running, 1 some did not start.
    """

    name = "start"
    action = "start"


class Stop(_WorkerCommand):
    """Stop workers (SIGTERM, SIGKILL after 3 s); they stay down until started again.

    Wire: ``[b"stop", name...]`` -> ``{"workers": {name: {"state", "pid"}}}``. While a stream's
    worker is stopped its queue has no reader and the kernel drops the stream's packets (fail
    closed). Exit: 0 all stopped, 1 otherwise.
    """

    name = "stop"
    action = "stop"


class Restart(_WorkerCommand):
    """Stop and start workers again (``all`` for every worker).

    Wire: ``[b"restart", name...]`` -> ``{"workers": {name: {"state", "pid"}}}``. The client
    waits for each to be RUNNING with a new pid. Exit: 0 all restarted, 1 otherwise.
    """

    name = "restart"
    action = "restart"


class Reload(Command):
    """Re-read the configuration and apply stream changes without touching other streams.

    Wire: ``[b"reload"]`` -> ``{"added": [...], "removed": [...], "unchanged": [...]}``.
    Streams whose profile line was added are set up and get a worker; streams whose line went
    away are stopped and removed; a changed line (key, queue, hosts) is removed and added again.
    Refused, with the running configuration kept, when the new one is invalid (exit 6) or changes
    anything but streams (exit 1: those need a restart). If applying fails half way, what was
    applied is rolled back. SIGHUP to the supervisor does the same.
    """

    name = "reload"

    def execute(self, sup: Controlled, args: list[str]) -> dict[str, Any]:
        return sup.reload()


class Routes(Command):
    """List every stream's installed routes: hashed addresses and ports, newest first.

    Wire: ``[b"routes"]`` -> ``{"time", "rotation_time", "streams": [{"name", "routes":
    [{"epoch", "state", "local", "local_port", "remote", "remote_port", "key_phase", "key_id"}]}]}``
    with state ``active`` (sending), ``accepted`` (received on) or ``expired`` (lingering);
    ``key_id`` names the phase's secret by a one-way hash (phase numbers wrap and restart).
    """

    name = "routes"

    def execute(self, sup: Controlled, args: list[str]) -> dict[str, Any]:
        return sup.routes_data()


class Rehash(Command):
    """Recompute, repair and republish every stream's routes now.

    MT6D's hashed addresses are a function of the shared key and the *time* (the epoch), computed
    independently by both gateways; rotating early on one side would make it send from addresses
    the peer does not accept. So ``rehash`` does not skip ahead: it runs the rotation step for
    the current epoch, re-binds any route address that went missing, compares the firewall with
    what the supervisor installed, and republishes every stream and route on the bus (every worker
    then has a fresh copy). Wire: ``[b"rehash"]`` -> ``{"added": n, "rebound": [addresses],
    "firewall_diff": [lines], "published": n}``. Exit 0, or 1 when the firewall differs.
    """

    name = "rehash"

    def execute(self, sup: Controlled, args: list[str]) -> dict[str, Any]:
        return sup.rehash()


class Rekey(Command):
    """Start a key exchange now on the named streams (all without names).

    The new key phase is used once the exchange is confirmed; the old one stays accepted until
    its routes expire (docs/PROTOCOL.md 5). Wire: ``[b"rekey", stream...]`` -> ``{"rekeying":
    [stream...], "before": {stream: {"rekeys", "key_phase"}}}``. The client waits until each
    stream sends on a new phase. Exit: 0 all rekeyed, 1 otherwise (unknown stream, or no new
    phase within the wait).
    """

    name = "rekey"

    def execute(self, sup: Controlled, args: list[str]) -> dict[str, Any]:
        return sup.rekey(args)


class Top(Command):
    """A live view of every worker and stream, refreshed every second (as ``wg show`` or ``htop``).

    Packets and bits per second out (tunnelled) and in (extracted), drops per second by reason,
    worker state, the active route, the time to the next rotation and the stream's key. The
    client asks for ``status`` again every interval and shows the differences; Ctrl-C ends it.
    Wire: ``[b"top"]`` -> the ``status`` reply. Exit: 0.
    """

    name = "top"

    def execute(self, sup: Controlled, args: list[str]) -> dict[str, Any]:
        return sup.status_data()


class Doctor(Command):
    """Check what this machine needs to run MT6D (no supervisor needed).

    Checks: root; the configuration loads; the legacy ip6tables backend works and the NFQUEUE
    target and netfilter queue support exist; the configured interfaces exist (in this network
    namespace); the runtime directory is root-only; IPv6 forwarding is off (MT6D does not need
    it; with it on, a stopped or restarting supervisor leaves the gateway routing the hosts'
    packets in clear); clock synchronisation (both gateways derive the addresses from the time:
    they must agree within ``route_lifetime``). Prints one line per
    check: ``ok``, ``WARN`` or ``FAIL``. Exit: 0 no check failed, 1 some check failed.
    """

    name = "doctor"
    daemon = False


COMMANDS: dict[str, Command] = {
    c.name: c for c in (Status(), Start(), Stop(), Restart(), Reload(), Routes(), Rehash(),
                        Rekey(), Top(), Doctor())
}


def handlers(sup: Controlled) -> dict[bytes, Callable[[list[bytes]], dict[str, Any]]]:
    """The control socket's handlers (BusServer.handlers) for every command with a daemon half."""

    def handler(command: Command) -> Callable[[list[bytes]], dict[str, Any]]:
        return lambda frames: command.dispatch(sup, frames)

    return {c.name.encode(): handler(c) for c in COMMANDS.values() if c.daemon}


# --- reply shapes (daemon side) ---------------------------------------------------------------


def route_dict(r: Route) -> dict[str, Any]:
    # inet_ntop: the same text as ipaddress's, ten times faster (a status of a thousand streams
    # prints some 16000 addresses)
    return {"epoch": r.epoch, "local": socket.inet_ntop(socket.AF_INET6, r.local.address),
            "local_port": r.local.port, "remote": socket.inet_ntop(socket.AF_INET6, r.remote.address),
            "remote_port": r.remote.port, "key_phase": r.key_phase}


def stream_rows(route_lists: Mapping[str, StreamKeys], queues: Mapping[str, int], now: float,
                rotation_time: float) -> list[dict[str, Any]]:
    """The ``streams`` list of the status reply."""
    rows = []
    for name, keys in route_lists.items():
        active = keys.active(now)
        nxt = next_boundary(now, rotation_time)
        rows.append({
            "name": name, "queue": queues[name],
            "active": route_dict(active) if active else None,
            "installed": [route_dict(r) for r in keys.installed()],
            "next_rotation": nxt, "next_rotation_in": nxt - now,
            "key_state": keys.state, "key_phase": keys.send_phase,
            "key_age": now - keys.keyed_since if keys.send_phase is not None else None,
            "next_rekey_in": (keys.next_rekey - now if keys.next_rekey != float("inf")
                              else None),
            "keyx": {k: v for k, v in keys.counters.items() if v},
            "keyx_last_seconds": keys.last_exchange,
        })
    return rows


def routes_reply(route_lists: Mapping[str, StreamKeys], now: float,
                 rotation_time: float) -> dict[str, Any]:
    """The reply to ``routes``: every installed route, as active, accepted or expired."""
    streams = []
    for name, keys in route_lists.items():
        active = keys.active(now)
        accepted = {(r.key_phase, r.epoch) for r in keys.accepted(now)}
        streams.append({"name": name, "routes": [
            {**route_dict(r), "key_id": keys.key_id(r.key_phase),
             "state": "active" if r == active
             else "accepted" if (r.key_phase, r.epoch) in accepted
             else "expired"} for r in keys.installed()]})
    return {"time": now, "rotation_time": rotation_time, "streams": streams}
