"""Configuration: the main TOML file and its three auxiliary files (thesis table 3.1, 2.7.2).

Loading is pure: it reads files and returns frozen dataclasses, or raises :class:`ConfigError`
listing *every* problem found, each naming the file and the line or key, what was found and what
was expected. Nothing on the system is touched, so ``--check-config`` is just ``load()``.

Auxiliary files (``#`` starts a comment, blank lines are ignored):

* users    ``<ipv6 address> <hostname>``           (like /etc/hosts)
* ethers   ``<mac> <ipv6 address>``                (like /etc/ethers)
* profiles ``<local host> <remote host> <queue> <key>``
  where ``<key>`` is the session key in hex (at least 256 bits; 512 recommended) or
  ``@path`` naming a key file holding the hex key (relative paths are relative to the profiles
  file). Files holding keys must not be readable or writable by group or others. Lines that
  name the same queue form a shard: one worker carries all their streams (workers/stream.py);
  no line may name the ICMP worker's queue.

Two modes (``[interfaces] mode``): ``gateway`` (the default) protects the hosts on the internal
interface; ``host`` protects this machine itself, which has no internal interface: every
stream's local host is one of this machine's own addresses (README, "Host mode").

Every key of the main file, with its default, is documented in ``conf/mt6d.toml.example``
and in :data:`SCHEMA` below (the single source of truth; a test keeps both in step).

One module, a little over 600 lines, on purpose: it is the whole configuration contract, and
the schema table (every key, its type, default and meaning) is a third of it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt6d_mp.core import crypt_names
from mt6d_mp.core.addressing import HASH_TYPES, mac_bytes, mac_text
from mt6d_mp.core.crypt_names import CRYPT_NAMES
from mt6d_mp.core.queues import MAX_QUEUE, QUEUE_RANGE
from mt6d_mp.errors import ConfigError

CRYPT_TYPES = CRYPT_NAMES
LOG_HANDLERS = ("console", "file", "syslog")
LOG_LEVELS = ("debug", "info", "warning", "error")
MODES = ("gateway", "host")
MIN_KEY_BYTES = 32
RECOMMENDED_KEY_BYTES = 64


class SessionKey:
    """Secret key bytes that never show up in a repr, a log line or a traceback."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = bytes(secret)

    @property
    def secret(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        return f"SessionKey(<{len(self._secret) * 8} bits>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionKey) and other._secret == self._secret

    def __hash__(self) -> int:
        return hash(("SessionKey", len(self._secret)))


@dataclass(frozen=True)
class Host:
    name: str
    address: ipaddress.IPv6Address
    mac: bytes

    def __repr__(self) -> str:
        return f"Host({self.name} {self.address} {mac_text(self.mac)})"


@dataclass(frozen=True)
class StreamConfig:
    """One profile line: a stream between a local host (behind us) and a remote host."""

    name: str
    local: Host
    remote: Host
    queue: int
    key: SessionKey
    source: str  # "profiles:LINE" for messages


@dataclass(frozen=True)
class Config:
    path: Path
    internal: str
    external: str
    bridging: str
    rotation_time: float
    route_lifetime: float
    hash_type: str
    encrypt: bool
    crypt_type: str
    regen_interval: float
    regen_window: float
    regen_limit: float
    clock_offset: float
    users_path: Path
    ethers_path: Path
    profiles_path: Path
    icmp_queue: int
    packets: bool
    firewall: bool
    routes: bool
    flow_label: bool
    log_handlers: tuple[str, ...]
    log_file: str
    log_level: str
    runtime_dir: Path
    link_mtu: int
    streams: tuple[StreamConfig, ...]
    keep_warm_ms: int = 5
    receive_buffer_kb: int = 4096
    queue_target_ms: float = 5.0
    queue_interval_ms: float = 100.0
    metrics_listen: str = ""
    mode: str = "gateway"  # "host": MT6D on the protected host itself; internal is then ""

    @property
    def host_mode(self) -> bool:
        """MT6D runs on the protected host: no internal interface, the local hosts are this
        machine's own addresses (README, "Host mode")."""
        return self.mode == "host"

    @property
    def effective_regen_limit(self) -> float:
        """The hard limit in seconds: ``regen_limit``, or 1.5 x interval + window (WireGuard
        rejects a key 1.5 x its rekey time), or none (0) without periodic rekeying."""
        if self.regen_limit:
            return self.regen_limit
        return 1.5 * self.regen_interval + self.regen_window if self.regen_interval else 0.0

    @property
    def effective_crypt(self) -> str:
        """The crypt type packets use: ``none`` whenever ``encrypt`` is off."""
        return self.crypt_type if self.encrypt else crypt_names.NONE

    def stream(self, name: str) -> StreamConfig:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(name)


# --- the main file's schema -------------------------------------------------------------------

Checker = Callable[[Any], str | None]  # returns a problem description, or None when fine


def _positive(v: Any) -> str | None:
    return None if v > 0 else "a number greater than 0"


def _one_of(choices: tuple[str, ...]) -> Checker:
    def check(v: Any) -> str | None:
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def _queue(v: Any) -> str | None:
    return None if 0 <= v <= MAX_QUEUE else f"a queue number {QUEUE_RANGE}"


def _handlers(v: Any) -> str | None:
    if all(isinstance(h, str) and h in LOG_HANDLERS for h in v):
        return None
    return "a list of " + ", ".join(repr(h) for h in LOG_HANDLERS)


def _keep_warm(v: Any) -> str | None:
    return None if 0 <= v <= 100 else "0 (off) or 1..100 milliseconds"


def _receive_buffer(v: Any) -> str | None:
    return None if 64 <= v <= 65536 else "64..65536 KB"


def _queue_target(v: Any) -> str | None:
    return None if v == 0 or 0.5 <= v <= 1000 else "0 (no queue management) or 0.5..1000 ms"


def _queue_interval(v: Any) -> str | None:
    return None if 5 <= v <= 10000 else "5..10000 ms"


def _mtu(v: Any) -> str | None:
    return None if v == 0 or 1280 <= v <= 65535 else "0 (read it from the interface) or 1280..65535"


def _ifname(v: Any) -> str | None:
    return None if 0 < len(v) < 16 and "/" not in v and " " not in v else "an interface name"


def _listen(v: Any) -> str | None:
    if v == "":
        return None
    host, sep, port = v.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        sep = ""
    if sep and port.isdigit() and 0 < int(port) < 65536:
        return None
    return "empty (off) or ADDRESS:PORT, for example 127.0.0.1:9469 or [::1]:9469"


def _optional_ifname(v: Any) -> str | None:
    return None if v == "" else _ifname(v)


@dataclass(frozen=True)
class Key:
    type: type | tuple[type, ...]
    default: Any
    doc: str
    check: Checker | None = None


NUMBER = (int, float)

SCHEMA: dict[str, dict[str, Key]] = {
    "interfaces": {
        "mode": Key(str, "gateway", "gateway: protect the hosts on the internal interface; "
                    "host: protect this machine itself (no internal interface)", _one_of(MODES)),
        "internal": Key(str, "eth1", "interface toward the protected hosts (gateway mode only)",
                        _ifname),
        "external": Key(str, "eth0", "interface toward the untrusted network", _ifname),
        "bridging": Key(
            str, "", "interface the route addresses are bound to; empty = external",
            _optional_ifname,
        ),
    },
    "rotation": {
        "rotation_time": Key(NUMBER, 10.0, "seconds between address rotations", _positive),
        "route_lifetime": Key(
            NUMBER, 10.0,
            "seconds a route is still accepted after it stops being active (rounded up to "
            "whole rotations, at least one); also the tolerated clock lag",
            _positive,
        ),
        "hash_type": Key(str, "sha256", "hash of equation 2.1", _one_of(HASH_TYPES)),
        "clock_offset": Key(
            NUMBER, 0.0, "seconds added to this machine's clock for MT6D's epochs and key "
            "exchange times: for labs that test clock skew; leave 0 on gateways",
            lambda v: None if abs(v) <= 86400 else "a number of seconds within a day"),
    },
    "crypto": {
        "encrypt": Key(bool, True, "encrypt and authenticate every tunnel packet"),
        "crypt_type": Key(str, crypt_names.AES_256_GCM, "AEAD for tunnel packets", _one_of(CRYPT_TYPES)),
        "regen_interval": Key(
            NUMBER, 120.0, "seconds between in-band key exchanges (forward secrecy); 0 = only "
            "the exchange at start", lambda v: None if v >= 0 else "a number >= 0",
        ),
        "regen_window": Key(NUMBER, 10.0, "up to this many seconds of random delay added to "
                            "each rekey, so that both ends rarely start at once",
                            lambda v: None if v >= 0 else "a number >= 0"),
        "regen_limit": Key(NUMBER, 0.0, "seconds after which a stream with no fresh key stops "
                           "sending (fail closed); 0 = 1.5 x regen_interval + regen_window",
                           lambda v: None if v >= 0 else "a number >= 0"),
    },
    "files": {
        "users": Key(str, "users", "hostname to address file (relative to this file)"),
        "ethers": Key(str, "ethers", "MAC to address file (relative to this file)"),
        "profiles": Key(str, "profiles", "stream profiles file (relative to this file)"),
    },
    "queues": {
        "icmp": Key(int, 1, "netfilter queue of the ICMP worker", _queue),
    },
    "switches": {
        "packets": Key(bool, True, "process packets (off: only rotate addresses)"),
        "firewall": Key(bool, True, "manage ip6tables rules"),
        "routes": Key(bool, True, "bind and release route addresses"),
        "flow_label": Key(bool, False, "put a per-route hashed flow label on tunnel packets"),
    },
    "log": {
        "handlers": Key(list, ["console"], "any of console, file, syslog", _handlers),
        "file": Key(str, "/var/log/mt6d.log", "log file for the file handler"),
        "level": Key(str, "info", "debug, info, warning or error", _one_of(LOG_LEVELS)),
    },
    "runtime": {
        "dir": Key(str, "/run/mt6d", "root-only directory for sockets, pid and state files"),
    },
    "metrics": {
        "listen": Key(str, "", "serve Prometheus metrics on ADDRESS:PORT; empty = off", _listen),
    },
    "tunnel": {
        "link_mtu": Key(
            int, 0, "MTU of the external path; 0 = the external interface's MTU", _mtu
        ),
        "keep_warm_ms": Key(
            int, 5, "while a stream is active, run its packet path on a dummy packet every "
            "N ms so that a lone packet finds it in the CPU caches; 0 = off", _keep_warm
        ),
        "receive_buffer_kb": Key(
            int, 4096, "receive buffer of each route socket, KB: where a bulk transfer's queue "
            "stands; smaller keeps other traffic's wait short, at the price of TCP losses "
            "there", _receive_buffer
        ),
        "queue_target_ms": Key(
            NUMBER, 5.0, "queue management of the tunnel's queues, the route sockets and the "
            "netfilter queue (CoDel, RFC 8289): a bulk TCP message that waited longer than "
            "this, for a whole interval, is dropped, so that "
            "the transfer slows rather than keep a standing queue in front of other traffic; "
            "0 = off", _queue_target
        ),
        "queue_interval_ms": Key(
            NUMBER, 100.0, "CoDel's interval: how long the wait must stay above the target "
            "before the first drop (about the longest round trip of the traffic)", _queue_interval
        ),
    },
}


def _type_name(t: type | tuple[type, ...]) -> str:
    if t == NUMBER:
        return "a number"
    return {str: "a string", bool: "true or false", int: "an integer", list: "a list"}.get(
        t if isinstance(t, type) else t[0], str(t)
    )


def _typed(value: Any, spec: Key) -> bool:
    if isinstance(value, bool) and spec.type is not bool:
        return False
    return isinstance(value, spec.type)


def _check_main(path: Path, data: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """Validate the parsed main file against SCHEMA; return flat values ``section.key``."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in SCHEMA:
            problems.append(
                f"{where}: unknown section [{section}] (expected one of "
                + ", ".join(SCHEMA)
                + ")"
            )
            continue
        if not isinstance(table, dict):
            problems.append(f"{where}: [{section}] must be a table")
            continue
        for key, value in table.items():
            spec = SCHEMA[section].get(key)
            if spec is None:
                problems.append(
                    f"{where}: unknown key {section}.{key} (expected one of "
                    + ", ".join(SCHEMA[section])
                    + ")"
                )
                continue
            problem = _validate(f"{section}.{key}", value, spec)
            if problem:
                problems.append(f"{where}: {problem}")
            else:
                values[f"{section}.{key}"] = value
    return values, problems


def _validate(name: str, value: Any, spec: Key) -> str | None:
    if not _typed(value, spec):
        return f"{name} = {value!r}: expected {_type_name(spec.type)}"
    if spec.check is not None:
        expected = spec.check(value)
        if expected:
            return f"{name} = {value!r}: expected {expected}"
    return None


def parse_override(assignment: str) -> tuple[str, Any]:
    """Parse a command-line override ``section.key=value`` (value in TOML syntax or bare)."""
    name, sep, text = assignment.partition("=")
    name = name.strip()
    section, dot, key = name.partition(".")
    if not sep or not dot or section not in SCHEMA or key not in SCHEMA[section]:
        raise ConfigError(
            f"command line: {assignment!r}: expected section.key=value with a known key, "
            "for example rotation.rotation_time=5"
        )
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare string such as internal=eth1
    return name, value


# --- auxiliary files --------------------------------------------------------------------------


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if fields:
            out.append((number, fields))
    return out


def _secret_file_problem(path: Path) -> str | None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{path}: holds key material but its mode is {stat.S_IMODE(mode):04o}; expected no "
            f"access for group or others (chmod 600 {path})"
        )
    return None


def _read_users(path: Path, problems: list[str]) -> dict[str, ipaddress.IPv6Address]:
    users: dict[str, ipaddress.IPv6Address] = {}
    for number, fields in _lines(path):
        where = f"{path}:{number}"
        if len(fields) != 2:
            problems.append(f"{where}: expected '<ipv6 address> <hostname>', found {' '.join(fields)!r}")
            continue
        try:
            address = ipaddress.IPv6Address(fields[0])
        except ValueError:
            problems.append(f"{where}: {fields[0]!r} is not an IPv6 address")
            continue
        if fields[1] in users:
            problems.append(f"{where}: hostname {fields[1]!r} is listed twice")
            continue
        if address.is_multicast or address.is_unspecified or address.is_loopback:
            problems.append(f"{where}: {address} is not a unicast host address")
            continue
        users[fields[1]] = address
    return users


def _read_ethers(path: Path, problems: list[str]) -> dict[ipaddress.IPv6Address, bytes]:
    ethers: dict[ipaddress.IPv6Address, bytes] = {}
    for number, fields in _lines(path):
        where = f"{path}:{number}"
        if len(fields) != 2:
            problems.append(f"{where}: expected '<mac> <ipv6 address>', found {' '.join(fields)!r}")
            continue
        try:
            mac = mac_bytes(fields[0])
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        try:
            address = ipaddress.IPv6Address(fields[1])
        except ValueError:
            problems.append(f"{where}: {fields[1]!r} is not an IPv6 address")
            continue
        if address in ethers:
            problems.append(f"{where}: {address} has a MAC already")
            continue
        ethers[address] = mac
    return ethers


def _read_key(text: str, profiles: Path, where: str, problems: list[str]) -> SessionKey | None:
    source = where
    if text.startswith("@"):
        key_path = Path(text[1:])
        if not key_path.is_absolute():
            key_path = profiles.parent / key_path
        try:
            problem = _secret_file_problem(key_path)
            hex_text = key_path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{where}: cannot read key file {key_path}: {e}")
            return None
        if problem:
            problems.append(f"{where}: {problem}")
            return None
        source = f"{where}: key file {key_path}"
    else:
        hex_text = text
    try:
        secret = bytes.fromhex(hex_text)
    except ValueError:
        problems.append(f"{source}: the session key is not hex (expected hex digits, two per byte)")
        return None
    if len(secret) < MIN_KEY_BYTES:
        problems.append(
            f"{source}: the session key has {len(secret) * 8} bits; expected at least "
            f"{MIN_KEY_BYTES * 8} ({RECOMMENDED_KEY_BYTES * 8} recommended)"
        )
        return None
    return SessionKey(secret)


def _read_profiles(
    path: Path,
    users: Mapping[str, ipaddress.IPv6Address],
    ethers: Mapping[ipaddress.IPv6Address, bytes],
    icmp_queue: int,
    users_path: Path,
    problems: list[str],
) -> tuple[StreamConfig, ...]:
    streams: list[StreamConfig] = []
    pairs: dict[frozenset[str], str] = {}
    inline_keys = False
    for number, fields in _lines(path):
        where = f"{path}:{number}"
        if len(fields) != 4:
            problems.append(
                f"{where}: expected '<local host> <remote host> <queue> <key or @keyfile>', "
                f"found {len(fields)} fields"
            )
            continue
        local_name, remote_name, queue_text, key_text = fields
        hosts = []
        for name in (local_name, remote_name):
            if name not in users:
                problems.append(f"{where}: host {name!r} is not in the users file {users_path}")
            elif users[name] not in ethers:
                problems.append(f"{where}: host {name!r} ({users[name]}) has no MAC in the ethers file")
            else:
                hosts.append(Host(name, users[name], ethers[users[name]]))
        if local_name == remote_name:
            problems.append(f"{where}: a stream needs two different hosts, found {local_name!r} twice")
        try:
            queue = int(queue_text)
            if not 0 <= queue <= MAX_QUEUE:
                raise ValueError
        except ValueError:
            problems.append(f"{where}: queue {queue_text!r}: expected a number {QUEUE_RANGE}")
            queue = -1
        if queue == icmp_queue:
            problems.append(f"{where}: queue {queue} is the ICMP worker's (queues.icmp)")
        pair = frozenset((local_name, remote_name))
        if pair in pairs:
            problems.append(
                f"{where}: duplicate stream {local_name} <-> {remote_name} (first at {pairs[pair]})"
            )
        else:
            pairs[pair] = where
        inline_keys = inline_keys or not key_text.startswith("@")
        key = _read_key(key_text, path, where, problems)
        if len(hosts) == 2 and key is not None and queue >= 0:
            streams.append(
                StreamConfig(f"{local_name}-{remote_name}", hosts[0], hosts[1], queue, key, where)
            )
    if inline_keys:
        problem = _secret_file_problem(path)
        if problem:
            problems.append(problem)
    _check_shared_keys(streams, problems)
    return tuple(streams)


def _check_shared_keys(streams: list[StreamConfig], problems: list[str]) -> None:
    """Two streams of one host must not share a key: the host's bootstrap-phase address and
    port are a function of its address, its MAC, the key and the epoch alone (docs/PROTOCOL.md
    0 and 5.1), so both streams would bind the same route address and port."""
    seen: dict[tuple[bytes, bytes], StreamConfig] = {}
    for s in streams:
        for host in (s.local, s.remote):
            first = seen.setdefault((host.address.packed, s.key.secret), s)
            if first is not s:
                problems.append(
                    f"{s.source}: stream {s.name} has the key of {first.name} ({first.source}) "
                    f"and shares host {host.name} with it: each stream of a host needs its own key")


# --- loading ----------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any], problems: list[str]) -> None:
    """``section.key`` values from the command line, validated like the file's; they win."""
    for name, value in overrides.items():
        section, _, key = name.partition(".")
        spec = SCHEMA.get(section, {}).get(key)
        if spec is None:
            problems.append(f"command line: unknown setting {name}")
            continue
        if isinstance(value, int) and not isinstance(value, bool) and spec.type == NUMBER:
            value = float(value)
        problem = _validate(name, value, spec)
        if problem:
            problems.append(f"command line: {problem}")
        else:
            values[name] = value


def _check_together(path: Path, get: Callable[[str], Any], files: dict[str, Path],
                    problems: list[str], in_file: Callable[[str], bool] = lambda name: False) -> None:
    """What no single key can say: files that exist, settings that agree with each other, and
    switches kept from the thesis's configuration whose behaviour is not built yet (refused rather
    than silently run without what the operator asked for)."""
    for kind, file in files.items():
        if not file.is_file():
            given = str(Path(get(f"files.{kind}")))
            problems.append(f"{path}: files.{kind} = {given!r}: no such file {file}")
    if get("rotation.route_lifetime") < get("rotation.rotation_time"):
        problems.append(
            f"{path}: rotation.route_lifetime = {get('rotation.route_lifetime')}: expected at "
            f"least rotation.rotation_time ({get('rotation.rotation_time')})"
        )
    if get("interfaces.mode") == "host":
        if in_file("interfaces.internal"):  # set in the file or on the command line
            problems.append(
                f"{path}: interfaces.internal = {get('interfaces.internal')!r}: host mode has no "
                "internal interface (this machine is the protected host); remove the key, or use "
                'mode = "gateway"')
    elif get("interfaces.internal") == get("interfaces.external"):
        problems.append(f"{path}: interfaces.internal and interfaces.external must differ")
    interval, window = get("crypto.regen_interval"), get("crypto.regen_window")
    rotation = get("rotation.rotation_time")
    epochs = math.ceil(get("rotation.route_lifetime") / rotation - 1e-9) + 2 if rotation > 0 else 3
    if interval and interval < epochs * rotation:
        problems.append(
            f"{path}: crypto.regen_interval = {interval}: expected 0 or at least {epochs * rotation:g} "
            "s (route_lifetime + 2 rotations: an old phase's routes must expire before the next "
            "rekey)")
    limit = get("crypto.regen_limit")
    if limit and interval and limit <= interval + window + rotation:
        problems.append(
            f"{path}: crypto.regen_limit = {limit}: expected more than regen_interval + "
            f"regen_window + rotation_time ({interval + window + rotation:g} s), or 0")
    if "file" in get("log.handlers") and not get("log.file"):
        problems.append(f"{path}: log.handlers has 'file' but log.file is empty")


def load(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Config:
    """Load and validate the whole configuration, or raise ConfigError naming every problem.

    ``overrides`` maps ``section.key`` to values from the command line; they win over the file.
    The flow: the main file (TOML, every key checked against SCHEMA), the overrides, the checks
    across keys, then the three line files (users, ethers, profiles) into streams.
    """
    path = Path(path)
    values, problems = _check_main(path, _read_toml(path), str(path))
    _apply_overrides(values, overrides or {}, problems)

    def get(name: str) -> Any:
        section, _, key = name.partition(".")
        return values.get(name, SCHEMA[section][key].default)

    files = {}
    for kind in ("users", "ethers", "profiles"):
        p = Path(get(f"files.{kind}"))
        files[kind] = p if p.is_absolute() else path.parent / p
    _check_together(path, get, files, problems, lambda name: name in values)
    if problems:
        raise ConfigError(problems)

    users = _read_users(files["users"], problems)
    ethers = _read_ethers(files["ethers"], problems)
    streams = _read_profiles(
        files["profiles"], users, ethers, get("queues.icmp"), files["users"], problems
    )
    if not streams and not problems:
        problems.append(f"{files['profiles']}: no streams defined (expected at least one line)")
    if problems:
        raise ConfigError(problems)
    return _config(path, get, files, streams)


def _config(path: Path, get: Callable[[str], Any], files: dict[str, Path],
            streams: tuple[StreamConfig, ...]) -> Config:
    return Config(
        path=path,
        internal="" if get("interfaces.mode") == "host" else get("interfaces.internal"),
        external=get("interfaces.external"),
        bridging=get("interfaces.bridging") or get("interfaces.external"),
        rotation_time=float(get("rotation.rotation_time")),
        route_lifetime=float(get("rotation.route_lifetime")),
        hash_type=get("rotation.hash_type"),
        encrypt=get("crypto.encrypt"),
        crypt_type=get("crypto.crypt_type"),
        regen_interval=float(get("crypto.regen_interval")),
        regen_window=float(get("crypto.regen_window")),
        regen_limit=float(get("crypto.regen_limit")),
        clock_offset=float(get("rotation.clock_offset")),
        users_path=files["users"],
        ethers_path=files["ethers"],
        profiles_path=files["profiles"],
        icmp_queue=get("queues.icmp"),
        packets=get("switches.packets"),
        firewall=get("switches.firewall"),
        routes=get("switches.routes"),
        flow_label=get("switches.flow_label"),
        log_handlers=tuple(get("log.handlers")),
        log_file=get("log.file"),
        log_level=get("log.level"),
        runtime_dir=Path(get("runtime.dir")),
        link_mtu=get("tunnel.link_mtu"),
        keep_warm_ms=get("tunnel.keep_warm_ms"),
        receive_buffer_kb=get("tunnel.receive_buffer_kb"),
        queue_target_ms=get("tunnel.queue_target_ms"),
        queue_interval_ms=get("tunnel.queue_interval_ms"),
        streams=streams,
        metrics_listen=get("metrics.listen"),
        mode=get("interfaces.mode"),
    )
