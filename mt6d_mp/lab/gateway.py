"""MT6D on the lab's gateways: their configuration files and their supervisors (also on the
hosts that run MT6D themselves in the host-mode topologies: ``LabInfo.gateways``).

Flow: once the network is up, :meth:`Lab.up` writes each gateway's files with
:func:`write_configs` (one key per stream, shared by the two gateways of the stream and written
to them only; users, ethers, profiles and ``mt6d.toml`` from :func:`gateway_toml`) and then,
unless asked not to, starts every gateway's supervisor with :func:`start_supervisors` and waits
until each has written its ``ready`` file and keyed every one of its streams.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mt6d_mp.lab.info import LabError, LabInfo, NamespaceInfo
from mt6d_mp.lab.processes import ProcessTable, mkdir, write_private

log = logging.getLogger("mt6d_mp.lab")

SUPERVISOR = Path(__file__).resolve().parents[2] / "supervisor.py"


def log_tail(path: str | Path | None, lines: int = 12) -> str:
    """The last lines of a log, indented, for an error message (a lab's files may be gone by
    the time anyone reads the error, as in CI); empty if there is nothing to read."""
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return "; its last lines:\n" + "\n".join("  " + line for line in tail) if tail else ""


def write_configs(info: LabInfo, *, encrypt: bool) -> None:
    """Each gateway's directory: keys/, users, ethers, profiles and mt6d.toml. A gateway's
    profiles list the streams it carries, its own host first (in a three-site lab two of them
    per host: one to each other site)."""
    keys = {s.name: os.urandom(64).hex() + "\n" for s in info.streams}
    hosts = {}  # address -> (name, MAC), every end of every stream (several may share a namespace)
    for s in info.streams:
        hosts[s.host_a_address] = (s.host_a_name, s.host_a_mac)
        hosts[s.host_b_address] = (s.host_b_name, s.host_b_mac)
    users = "# <ipv6 address> <hostname>\n" + "".join(f"{a} {n}\n" for a, (n, _) in hosts.items())
    ethers = "# <mac> <ipv6 address>\n" + "".join(f"{m} {a}\n" for a, (_, m) in hosts.items())
    for gw in info.gateways:
        assert gw.dir and gw.config and gw.runtime_dir and gw.log_file
        gdir = mkdir(Path(gw.dir), 0o700)
        kdir = mkdir(gdir / "keys", 0o700)
        mkdir(Path(gw.runtime_dir), 0o700)
        mine = info.streams_of(gw)
        lines = ["# <local host> <remote host> <queue> <key or @keyfile>"]
        for s, name in mine:
            write_private(kdir / f"{s.name}.key", keys[s.name])
            local, remote = ((s.host_a_name, s.host_b_name) if name == s.name
                             else (s.host_b_name, s.host_a_name))
            lines.append(f"{local} {remote} {s.queue} @{s.key_file}")
        write_private(gdir / "users", users, 0o644)
        write_private(gdir / "ethers", ethers, 0o644)
        write_private(gdir / "profiles", "\n".join(lines) + "\n")
        write_private(gdir / "mt6d.toml", gateway_toml(info, gw, encrypt=encrypt), 0o644)
        log.info("[#] wrote %s (users, ethers, profiles, %d key files)", gw.config, len(mine))


def gateway_toml(info: LabInfo, gw: NamespaceInfo, *, encrypt: bool) -> str:
    rt = repr(info.rotation_time)
    interfaces = ('mode = "host"\nexternal = "eth0"\n' if info.host_mode(gw)
                  else 'internal = "int0"\nexternal = "ext0"\n')
    return (
        f"# MT6D configuration of {gw.role} in lab {info.prefix} (written by mt6d-lab)\n"
        "[interfaces]\n"
        f"{interfaces}"
        "[rotation]\n"
        f"rotation_time = {rt}\n"
        f"route_lifetime = {rt}\n"
        'hash_type = "sha256"\n'
        "[crypto]\n"
        f"encrypt = {'true' if encrypt else 'false'}\n"
        'crypt_type = "aes-256-gcm"\n'
        "[files]\n"
        'users = "users"\n'
        'ethers = "ethers"\n'
        'profiles = "profiles"\n'
        "[queues]\n"
        "icmp = 1\n"
        "[log]\n"
        'handlers = ["console", "file"]\n'
        f'file = "{gw.log_file}"\n'
        'level = "info"\n'
        "[runtime]\n"
        f'dir = "{gw.runtime_dir}"\n'
    )


def start_supervisors(
    procs: ProcessTable,
    info: LabInfo,
    *,
    settings: Sequence[str],
    ready_timeout: float,
    argv: Sequence[str] = (),
) -> list[int]:
    """Start every gateway's supervisor and wait until each is ready and (MT6D's own) has keyed
    every stream; their PIDs, A first.

    ``argv`` is the program before ``--config`` (default: this Python running supervisor.py).
    """
    if not argv and not SUPERVISOR.is_file():
        raise LabError(f"MT6D supervisor not found at {SUPERVISOR} (use --no-mt6d for the baseline)")
    program = list(argv) or [sys.executable, str(SUPERVISOR)]
    started: list[tuple[NamespaceInfo, int]] = []
    for gw in info.gateways:
        assert gw.config and gw.runtime_dir and gw.supervisor_out
        (Path(gw.runtime_dir) / "ready").unlink(missing_ok=True)
        pid = procs.spawn(
            gw.name,
            [*program, "--config", gw.config, *(a for s in settings for a in ("--set", s))],
            name=f"supervisor-{gw.role.rsplit('-', 1)[1]}",
            log_path=Path(gw.supervisor_out),
        )
        started.append((gw, pid))
    deadline = time.monotonic() + ready_timeout
    for gw, pid in started:
        wait_ready(procs, gw, pid, deadline, ready_timeout)
    if not argv:  # MT6D's own supervisor (another program has no key exchange to wait for)
        for gw, pid in started:
            wait_keyed(procs, gw, pid, deadline, ready_timeout)
    return [pid for _, pid in started]


def wait_keyed(procs: ProcessTable, gw: NamespaceInfo, pid: int, deadline: float,
               timeout: float) -> None:
    """Until every stream of ``gw`` sends on a key of its own: the first key exchange with the
    peer is done (nothing is sent before it: docs/PROTOCOL.md 5)."""
    from mt6d_mp.io.bus import request

    assert gw.runtime_dir
    while True:
        # A status of a thousand streams takes the supervisor a while: a short timeout would
        # leave it answering requests nobody waits for any more.
        asked = time.monotonic()
        reply = request(Path(gw.runtime_dir), b"status", timeout=10.0)
        took = time.monotonic() - asked
        rows = reply.get("streams", []) if isinstance(reply, dict) else []
        waiting = [r.get("name") for r in rows if r.get("key_state") != "keyed"]
        if rows and not waiting:
            log.info("supervisor in %s has keyed its %d streams", gw.name, len(rows))
            return
        if not procs.alive(pid) or time.monotonic() > deadline:
            states = (f"{len(waiting)} of {len(rows)} not keyed, e.g. {waiting[:3]}" if rows
                      else "no status")
            raise LabError(
                f"supervisor in {gw.name}: streams not keyed in {timeout:g}s ({states}); "
                f"see {gw.supervisor_out}{log_tail(gw.supervisor_out)}")
        time.sleep(min(1.0, 0.05 + took))  # the supervisor's time, not ours, is scarce


def wait_ready(procs: ProcessTable, gw: NamespaceInfo, pid: int, deadline: float, timeout: float) -> None:
    """Until the supervisor ``pid`` of ``gw`` has written its ready file (by ``deadline``)."""
    assert gw.runtime_dir
    ready = Path(gw.runtime_dir) / "ready"
    while not ready.exists():
        if not procs.alive(pid):
            code = procs.exit_code(pid)
            raise LabError(
                f"supervisor in {gw.name} exited"
                f"{f' with code {code}' if code is not None else ''} before becoming ready; "
                f"see {gw.supervisor_out}{log_tail(gw.supervisor_out)}"
            )
        if time.monotonic() > deadline:
            raise LabError(
                f"supervisor in {gw.name} did not become ready in {timeout:g}s; "
                f"see {gw.supervisor_out}{log_tail(gw.supervisor_out)}"
            )
        time.sleep(0.05)
    log.info("supervisor in %s is ready (pid %d)", gw.name, pid)
