"""mt6dctl: see and control a running MT6D supervisor (supervisorctl/circusctl style).

The supervisor answers on ``control.sock`` (ZeroMQ ROUTER) in its root-only runtime directory;
``mt6dctl -c CONFIG`` reads ``[runtime] dir`` from that configuration file to find it, so it
reaches exactly the supervisor running with that configuration (the lab's gateways included).

This module is the client only. Flow: :func:`main` builds the command line from the registry in
:mod:`mt6d_mp.commands` (each command's docstring there is both its ``--help`` and its wire
format, next to its daemon half), parses it, and hands it to the command's client half, the class
of the same name below: ``message()`` makes the request frames, :class:`Ctl` sends them and takes
the reply (or tells "not running" from "killed" by the pid file), ``finish()`` waits where the
command waits and decides the exit code, ``text()`` prints the result (``--json``: the result as
JSON). ``doctor`` runs here, without a supervisor. Requests are ZeroMQ multipart messages
``[command, arg...]`` (UTF-8); every reply is one msgpack map, ``{"error": text, "code": n}`` on
failure.

Exit codes (LSB where LSB has one; the README's "Operations" section is the reference):

====  ==========================================================================
 0    success; for ``status``: the supervisor runs and every worker is RUNNING
 1    the command failed (the supervisor answered with an error, a worker did not
      reach the state asked for, a ``doctor`` check failed); for ``status``:
      the supervisor is dead but its pid file remains (LSB "dead, pid file exists")
 2    bad command line
 3    ``status`` only: the supervisor is not running
 4    insufficient privilege (the runtime directory is root-only); for ``status``:
      state unknown
 6    the configuration is invalid (``reload`` refused it; the running one is kept)
 7    the supervisor is not running (every command but ``status``): no control
      socket, or no answer within ``--timeout``
150   ``status`` only: the supervisor runs but some worker is not RUNNING
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from mt6d_mp.commands import COMMANDS, Command, CommandError
from mt6d_mp.errors import (
    EXIT_BAD_ARGS,
    EXIT_GENERIC,
    EXIT_NOT_CONFIGURED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_PRIVILEGE,
    Mt6dError,
)
from mt6d_mp.examples import example_config
from mt6d_mp.runtime import DEFAULT_CONFIG, DEFAULT_RUNTIME_DIR, PID_FILE, control_socket, stale_pid

# LSB "status" action codes (LSB 3.0.0, "Init Script Actions").
STATUS_RUNNING = 0
STATUS_DEAD_PIDFILE = 1
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4
STATUS_DEGRADED = 150  # 150-199: reserved for the application
WAIT_TIMEOUT = 30.0


# --- the client halves of the commands ----------------------------------------------------------


class Client:
    """The client half of the command of the same name in :mod:`mt6d_mp.commands`."""

    name: ClassVar[str] = ""

    @property
    def command(self) -> Command:
        return COMMANDS[self.name]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        pass

    def message(self, args: argparse.Namespace) -> list[bytes]:
        """The request frames after the command name."""
        return []

    def finish(self, reply: dict[str, Any], args: argparse.Namespace,
               ctl: Ctl) -> tuple[dict[str, Any], int]:
        """After the reply: wait if the command waits; the result and exit code."""
        return reply, EXIT_OK

    def text(self, result: dict[str, Any]) -> str:
        """The result for people (``--json`` prints ``result`` as it is)."""
        return str(result.get("message", "ok"))


class Status(Client):
    name = "status"

    def finish(self, reply: dict[str, Any], args: argparse.Namespace,
               ctl: Ctl) -> tuple[dict[str, Any], int]:
        return reply, status_code(reply)

    def text(self, reply: dict[str, Any]) -> str:
        lines: list[str] = []
        add = lines.append
        add(f"supervisor pid {reply['pid']}  up {_dur(reply.get('uptime', 0))}  "
              f"config {reply['config']}  tunnel mtu {reply.get('tunnel_mtu')}")
        add(f"{'WORKER':<22} {'STATE':<9} {'PID':>7} {'UPTIME':>8} {'QUEUE':>5} {'WAIT':>5} "
              f"{'OUT':>9} {'IN':>9}  DROPS / REASON")
        for w in reply["workers"]:
            kq = w.get("kernel_queue") or {}
            drops = " ".join(f"{k}={v}" for k, v in sorted(w.get("drops", {}).items())) or "-"
            extra = drops if w["state"] == "running" else w.get("reason", "")
            add(f"{w['name']:<22} {w['state']:<9} {w['pid'] or '-':>7} "
                  f"{_dur(w['uptime']) if w['uptime'] else '-':>8} {w['queue']:>5} "
                  f"{kq.get('waiting', '-'):>5} {w.get('packets_out', 0):>9} "
                  f"{w.get('packets_in', 0):>9}  {extra}")
        add(f"{'STREAM':<22} {'ACTIVE ROUTE (epoch: local -> remote)':<80} NEXT ROTATION  KEY")
        for s in reply["streams"]:
            a = s.get("active")
            route = f"{a['epoch']}: {a['local']} -> {a['remote']}" if a else "none"
            add(f"{s['name']:<22} {route:<80} in {s['next_rotation_in']:.1f}s  {_key(s)}")
        fw = reply.get("firewall_drops") or {}
        if fw:
            add("FIREWALL DROPS  " + " ".join(f"{k}={v}" for k, v in sorted(fw.items())))
        return "\n".join(lines)


def _key(s: dict[str, Any]) -> str:
    """A stream's key in a few words: phase and age, or why it sends nothing."""
    state = s.get("key_state", "?")
    if state != "keyed":
        return f"{state.upper()} (sends nothing)"
    nxt = s.get("next_rekey_in")
    return (f"phase {s.get('key_phase')} age {_dur(s.get('key_age') or 0)}"
            + (f" rekey in {_dur(max(0.0, nxt))}" if nxt is not None else ""))


def status_code(reply: dict[str, Any]) -> int:
    workers = reply.get("workers", [])
    return STATUS_RUNNING if all(w["state"] == "running" for w in workers) else STATUS_DEGRADED


class _WorkerClient(Client):
    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("workers", nargs="+", metavar="WORKER",
                       help="a stream's name (its shard's worker, every stream of its queue), a "
                            "worker's name (qN for queue N, 'icmp'), or 'all'")
        p.add_argument("--no-wait", action="store_true",
                       help="return once the supervisor accepted the request")

    def message(self, args: argparse.Namespace) -> list[bytes]:
        return [w.encode() for w in args.workers]

    def finish(self, reply: dict[str, Any], args: argparse.Namespace,
               ctl: Ctl) -> tuple[dict[str, Any], int]:
        want = "stopped" if self.name == "stop" else "running"
        before = reply["workers"]  # name -> {"state", "pid"}
        now = before
        if args.no_wait:
            return reply, EXIT_OK
        deadline = time.monotonic() + args.wait_timeout
        while True:
            st = ctl.call(b"status")
            now = {w["name"]: {"state": w["state"], "pid": w["pid"], "reason": w["reason"]}
                   for w in st["workers"] if w["name"] in before}
            done = {n for n, w in now.items()
                    if w["state"] == want and (self.name != "restart"
                                               or w["pid"] != before[n]["pid"])}
            failed = {n for n, w in now.items() if w["state"] == "fatal"}
            if done | failed >= set(now) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        code = EXIT_OK if all(w["state"] == want for w in now.values()) else EXIT_GENERIC
        return {"workers": now}, code

    def text(self, result: dict[str, Any]) -> str:
        return "\n".join(f"{n}: {w['state']}" + (f" ({w['reason']})" if w.get("reason") else "")
                         for n, w in result["workers"].items())


class Start(_WorkerClient):
    name = "start"


class Stop(_WorkerClient):
    name = "stop"


class Restart(_WorkerClient):
    name = "restart"


class Reload(Client):
    name = "reload"

    def text(self, reply: dict[str, Any]) -> str:
        return (f"reloaded: added {', '.join(reply['added']) or 'none'}; "
                f"removed {', '.join(reply['removed']) or 'none'}; "
                f"unchanged {len(reply['unchanged'])}")


class Routes(Client):
    name = "routes"

    def text(self, reply: dict[str, Any]) -> str:
        lines: list[str] = []
        for s in reply["streams"]:
            lines.append(f"{s['name']}:")
            for r in s["routes"]:
                lines.append(f"  {r['epoch']:>12} {r['state']:<9} [{r['local']}]:{r['local_port']}"
                             f" <-> [{r['remote']}]:{r['remote_port']}")
        return "\n".join(lines)


class Rehash(Client):
    name = "rehash"

    def finish(self, reply: dict[str, Any], args: argparse.Namespace,
               ctl: Ctl) -> tuple[dict[str, Any], int]:
        return reply, EXIT_GENERIC if reply["firewall_diff"] else EXIT_OK

    def text(self, reply: dict[str, Any]) -> str:
        return "\n".join([f"rehashed: {reply['added']} routes added, {len(reply['rebound'])} "
                          f"addresses re-bound, {reply['published']} messages republished"]
                         + [f"firewall differs: {line}" for line in reply["firewall_diff"]])


class Rekey(Client):
    name = "rekey"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("streams", nargs="*", metavar="STREAM", help="stream names (default: all)")
        p.add_argument("--no-wait", action="store_true",
                       help="return once the supervisor accepted the request")

    def message(self, args: argparse.Namespace) -> list[bytes]:
        return [s.encode() for s in args.streams]

    def finish(self, reply: dict[str, Any], args: argparse.Namespace,
               ctl: Ctl) -> tuple[dict[str, Any], int]:
        names = reply["rekeying"]
        if args.no_wait:
            return reply, EXIT_OK
        # As the supervisor saw them when it took the request (an exchange can be done before
        # this client asks again).
        before = {n: (b["rekeys"], b["key_phase"]) for n, b in reply["before"].items()}
        deadline = time.monotonic() + args.wait_timeout
        while True:
            # Done once a new exchange committed and the stream sends on its phase.
            rows = {s["name"]: s for s in ctl.call(b"status")["streams"] if s["name"] in names}
            done = {n for n, s in rows.items()
                    if s.get("keyx", {}).get("rekeys", 0) > before[n][0]
                    and s.get("key_state") == "keyed" and s.get("key_phase") != before[n][1]}
            if done >= set(rows) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        result = {"streams": {n: {"rekeyed": n in done, "key_phase": rows[n].get("key_phase")}
                              for n in rows}}
        return result, EXIT_OK if done >= set(rows) else EXIT_GENERIC

    def text(self, result: dict[str, Any]) -> str:
        return "\n".join(f"{n}: " + (f"now on phase {r['key_phase']}" if r["rekeyed"]
                                     else "no new key yet")
                         for n, r in result["streams"].items())


class Top(Client):
    name = "top"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
        p.add_argument("--count", type=int, default=0, help="stop after N frames (0: Ctrl-C)")

    def finish(self, reply: dict[str, Any], args: argparse.Namespace,
               ctl: Ctl) -> tuple[dict[str, Any], int]:
        prev, prev_t = reply, time.monotonic()
        frames = 0
        try:
            while not args.count or frames < args.count:
                time.sleep(max(0.1, args.interval))
                cur, now = ctl.call(b"status"), time.monotonic()
                sys.stdout.write("\x1b[H\x1b[2J" + render_top(prev, cur, now - prev_t) + "\n")
                sys.stdout.flush()
                prev, prev_t = cur, now
                frames += 1
        except KeyboardInterrupt:
            pass
        return prev, EXIT_OK

    def text(self, result: dict[str, Any]) -> str:
        return ""  # the frames went out as they came


def _rate(n: float) -> str:
    """A per-second figure in 5 characters: 950, 12.3k, 4.1M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def render_top(prev: dict[str, Any], cur: dict[str, Any], seconds: float) -> str:
    """One frame of ``mt6dctl top``: rates from two status replies ``seconds`` apart."""
    dt = max(seconds, 1e-6)
    before = {w["name"]: w for w in prev.get("workers", [])}
    streams = {s["name"]: s for s in cur.get("streams", [])}
    lines = [f"mt6d top  supervisor pid {cur.get('pid')}  up {_dur(cur.get('uptime', 0))}  "
             f"tunnel mtu {cur.get('tunnel_mtu')}  {time.strftime('%H:%M:%S')}",
             f"{'WORKER':<22} {'STATE':<9} {'PKT/s OUT':>9} {'PKT/s IN':>9} {'bit/s OUT':>9} "
             f"{'bit/s IN':>9}  {'ROUTE':<14} {'ROTATE':>6}  KEY"]
    for w in cur.get("workers", []):
        old = before.get(w["name"], w)

        def per_s(key: str, w: dict[str, Any] = w, old: dict[str, Any] = old) -> float:
            return float(max(0, w.get(key, 0) - old.get(key, 0))) / dt

        s = streams.get(w["name"])
        route = key = rotate = ""
        if s is not None:
            a = s.get("active")
            route = f"{a['epoch']} p{a['key_phase']}" if a else "none"
            rotate = f"{s['next_rotation_in']:.1f}s"
            key = _key(s)
        lines.append(
            f"{w['name']:<22} {w['state']:<9} {_rate(per_s('packets_out')):>9} "
            f"{_rate(per_s('packets_in')):>9} {_rate(8 * per_s('bytes_out')):>9} "
            f"{_rate(8 * per_s('bytes_in')):>9}  {route:<14} {rotate:>6}  {key}")
        old_drops = old.get("drops", {})
        drops = {k: (v - old_drops.get(k, 0)) / dt for k, v in w.get("drops", {}).items()
                 if v > old_drops.get(k, 0)}
        if drops:
            lines.append("    drops/s " + " ".join(f"{k}={_rate(v)}" for k, v in sorted(drops.items())))
    fw = cur.get("firewall_drops") or {}
    if fw:
        lines.append("FIREWALL DROPS (total)  " + " ".join(f"{k}={v}" for k, v in sorted(fw.items())))
    return "\n".join(lines)


class Doctor(Client):
    name = "doctor"

    def finish(self, reply: dict[str, Any], args: argparse.Namespace,
               ctl: Ctl) -> tuple[dict[str, Any], int]:
        failed = any(c["result"] == "FAIL" for c in reply["checks"])
        return reply, EXIT_GENERIC if failed else EXIT_OK

    def text(self, reply: dict[str, Any]) -> str:
        return "\n".join(f"{c['result']:<4} {c['check']:<18} {c['detail']}"
                         for c in reply["checks"])


CLIENTS: dict[str, Client] = {
    c.name: c for c in (Status(), Start(), Stop(), Restart(), Reload(), Routes(), Rehash(),
                        Rekey(), Top(), Doctor())
}


# --- doctor's checks (client side only) -------------------------------------------------------


def doctor(config_path: Path) -> dict[str, Any]:
    checks: list[dict[str, str]] = []

    def check(name: str, result: str, detail: str) -> None:
        checks.append({"check": name, "result": result, "detail": detail})

    check("root", "ok" if os.geteuid() == 0 else "FAIL",
          "running as root" if os.geteuid() == 0 else "MT6D needs root (queues, firewall, addresses)")
    from mt6d_mp.core import config as cfgmod

    cfg = None
    try:
        cfg = cfgmod.load(config_path)
        check("config", "ok", f"{config_path}: valid, {len(cfg.streams)} streams")
    except Mt6dError as e:
        check("config", "FAIL", f"{config_path}: " + "; ".join(str(e).splitlines()))
    legacy = shutil.which("ip6tables-legacy")
    if legacy is None:
        check("ip6tables", "FAIL", "ip6tables-legacy not found (Debian: apt install iptables)")
    else:
        r = _run([legacy, "-S", "INPUT"])
        check("ip6tables", "ok" if r[0] == 0 else "FAIL",
              "legacy backend usable (MT6D's rules show in ip6tables-legacy -S, not ip6tables)"
              if r[0] == 0 else f"ip6tables-legacy -S INPUT failed: {r[1]}")
    targets = _read("/proc/net/ip6_tables_targets")
    queue_proc = Path("/proc/net/netfilter/nfnetlink_queue").exists()
    if targets is not None and "NFQUEUE" in targets.split() and queue_proc:
        check("nfqueue", "ok", "NFQUEUE target and nfnetlink_queue present")
    else:
        check("nfqueue", "FAIL", "no NFQUEUE target or no nfnetlink_queue "
              "(modprobe xt_NFQUEUE nfnetlink_queue; kernel: CONFIG_NETFILTER_XT_TARGET_NFQUEUE)")
    if cfg is not None:
        for role, name in (("internal", cfg.internal), ("external", cfg.external),
                           ("bridging", cfg.bridging)):
            if not name:  # host mode: no internal interface
                continue
            try:
                socket.if_nametoindex(name)
                check(f"interface {role}", "ok", f"{name} present")
            except OSError:
                check(f"interface {role}", "FAIL", f"{name}: no such interface in this namespace")
    runtime = cfg.runtime_dir if cfg is not None else runtime_dir_of(config_path)
    try:
        st = runtime.stat()
        mode = stat.S_IMODE(st.st_mode)
        ok = st.st_uid == 0 and not mode & 0o077
        check("runtime dir", "ok" if ok else "FAIL",
              f"{runtime}: mode {mode:04o} uid {st.st_uid}" + ("" if ok else
              " (expected owner root, no access for group or others: chmod 700)"))
    except FileNotFoundError:
        check("runtime dir", "ok", f"{runtime}: absent (the supervisor creates it, mode 0700)")
    except OSError as e:
        check("runtime dir", "FAIL", f"{runtime}: {e.strerror}")
    forwarding = (_read("/proc/sys/net/ipv6/conf/all/forwarding") or "").strip()
    check("forwarding", "ok" if forwarding == "0" else "WARN",
          "IPv6 forwarding off: while the supervisor is stopped, hosts' packets go nowhere"
          if forwarding == "0" else
          f"net.ipv6.conf.all.forwarding={forwarding or '?'}: MT6D does not need it, and while the "
          "supervisor is stopped or restarting the gateway would route hosts' packets in clear "
          "(sysctl -w net.ipv6.conf.all.forwarding=0)")
    check("clock", *_clock_hint(cfg.route_lifetime if cfg else None))
    return {"checks": checks}


def _clock_hint(lifetime: float | None) -> tuple[str, str]:
    tol = f" (gateways must agree within route_lifetime = {lifetime:g}s)" if lifetime else ""
    if shutil.which("chronyc"):
        code, out = _run(["chronyc", "-n", "tracking"])
        if code == 0:
            for line in out.splitlines():
                if line.startswith("Leap status"):
                    normal = line.split(":", 1)[1].strip() == "Normal"
                    return ("ok" if normal else "WARN"), f"chrony: {line.strip()}{tol}"
    if shutil.which("timedatectl"):
        code, out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
        if code == 0 and out.strip() in ("yes", "no"):
            synced = out.strip() == "yes"
            return ("ok" if synced else "WARN"), f"timedatectl: NTP synchronized {out.strip()}{tol}"
    return "WARN", f"cannot tell whether the clock is synchronised (no chronyc/timedatectl answer){tol}"


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)
    return r.returncode, (r.stdout if r.returncode == 0 else r.stderr).strip()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _dur(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


# --- the client -------------------------------------------------------------------------------


def runtime_dir_of(config_path: Path) -> Path:
    """``[runtime] dir`` of a main configuration file, read on its own.

    Deliberately not a full ``config.load()``: ``reload`` must reach the supervisor also when the
    file has just been edited into an invalid state (the supervisor then refuses it).
    """
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        # A new installation, likely: point at the example that came with the package.
        raise CommandError(f"{config_path}: no such configuration file (the example, every key with "
                           f"its default: {example_config()})", EXIT_NOT_CONFIGURED) from None
    except PermissionError:
        raise CommandError(f"{config_path}: permission denied (run as root)", EXIT_PRIVILEGE) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CommandError(f"{config_path}: cannot read the runtime directory: {e}",
                           EXIT_NOT_CONFIGURED) from None
    value = data.get("runtime", {}).get("dir", DEFAULT_RUNTIME_DIR) if isinstance(
        data.get("runtime", {}), dict) else DEFAULT_RUNTIME_DIR
    if not isinstance(value, str) or not value:
        raise CommandError(f"{config_path}: runtime.dir must be a path", EXIT_NOT_CONFIGURED)
    return Path(value)


class NotRunning(CommandError):
    def __init__(self, message: str, stale_pid: int | None = None) -> None:
        super().__init__(message, EXIT_NOT_RUNNING)
        self.stale_pid = stale_pid


class Ctl:
    """The client: one request/reply per call on the supervisor's control socket."""

    def __init__(self, runtime_dir: Path, timeout: float) -> None:
        self.runtime_dir = runtime_dir
        self.timeout = timeout

    def call(self, command: bytes, *args: bytes) -> dict[str, Any]:
        from mt6d_mp.core.messages import BusError
        from mt6d_mp.io.bus import request

        sock = control_socket(self.runtime_dir)
        try:
            if not sock.exists():
                stale = stale_pid(self.runtime_dir)
                raise NotRunning(
                    f"supervisor not running (no {sock})"
                    + (f"; stale pid file names dead pid {stale}" if stale else ""), stale)
            if not os.access(sock, os.R_OK | os.W_OK):
                raise CommandError(f"{sock}: permission denied (run as root)", EXIT_PRIVILEGE)
        except PermissionError:
            raise CommandError(f"{self.runtime_dir}: permission denied (run as root)",
                               EXIT_PRIVILEGE) from None
        stale = stale_pid(self.runtime_dir)
        if stale is not None:  # killed: its socket file is left, nobody answers
            raise NotRunning(f"supervisor not running: pid {stale} in "
                             f"{self.runtime_dir / PID_FILE} is dead", stale)
        try:
            reply = request(self.runtime_dir, command, *args, timeout=self.timeout)
        except BusError as e:  # not msgpack
            raise CommandError(f"unexpected reply from the supervisor: {e}") from None
        if reply is None:
            raise NotRunning(f"supervisor not running: no answer on {sock} within {self.timeout:g}s")
        if not isinstance(reply, dict):
            raise CommandError(f"unexpected reply from the supervisor: {reply!r}")
        if "error" in reply:
            code = reply.get("code", EXIT_GENERIC)
            raise CommandError(str(reply["error"]),
                               code if isinstance(code, int) and code != EXIT_OK else EXIT_GENERIC)
        return reply


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the reply as JSON (for scripts)")
    ap = argparse.ArgumentParser(
        prog="mt6dctl", parents=[common],
        description="Control a running MT6D supervisor. " + (__doc__ or "").split("\n\n")[1],
        epilog="exit codes: 0 ok, 1 command failed, 2 bad arguments, 3 (status) not running, "
               "4 no privilege / (status) unknown, 6 invalid configuration, 7 supervisor not "
               "running, 150 (status) some worker not running",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=DEFAULT_CONFIG, type=Path,
                    help=f"main configuration file (default {DEFAULT_CONFIG})")
    ap.add_argument("--runtime-dir", type=Path, help="talk to the supervisor in this directory")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="seconds to wait for an answer (default 10)")
    ap.add_argument("--wait-timeout", type=float, default=WAIT_TIMEOUT,
                    help="start/stop/restart: seconds to wait for the state (default 30)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, parents=[common], help=c.help(), description=c.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        CLIENTS[c.name].add_arguments(p)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_BAD_ARGS
    as_json = getattr(args, "json", False)
    cmd = CLIENTS[args.command]

    def out(r: dict[str, Any]) -> None:
        print(json.dumps(r, indent=2, sort_keys=True, default=str))

    try:
        ctl = Ctl(args.runtime_dir or Path("."), args.timeout)
        if cmd.command.daemon:
            ctl.runtime_dir = args.runtime_dir or runtime_dir_of(args.config)
            reply = ctl.call(cmd.name.encode(), *cmd.message(args))
        else:
            reply = doctor(args.config)
        try:
            result, code = cmd.finish(reply, args, ctl)
            text = (json.dumps(result, indent=2, sort_keys=True, default=str) if as_json
                    else cmd.text(result))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # Only the supervisor can answer on its root-only socket, but a reply of another
            # version (or a bug) must read as a failed command, not a traceback.
            raise CommandError(f"unexpected reply from the supervisor ({type(e).__name__}: {e})",
                               STATUS_UNKNOWN if cmd.name == "status" else EXIT_GENERIC) from e
        print(text)
        return code
    except NotRunning as e:
        code = e.exit_code
        if cmd.name == "status":
            code = STATUS_DEAD_PIDFILE if e.stale_pid else STATUS_NOT_RUNNING
        if as_json:
            out({"error": str(e), "running": False, "code": code})
        print(f"mt6dctl: {e}", file=sys.stderr)
        return code
    except CommandError as e:
        code = e.exit_code
        if cmd.name == "status" and code == EXIT_PRIVILEGE:
            code = STATUS_UNKNOWN
        if as_json:
            out({"error": str(e), "code": code})
        print(f"mt6dctl: {cmd.name} failed: {e}", file=sys.stderr)
        return code
    except Mt6dError as e:
        print(f"mt6dctl: {cmd.name} failed: {e}", file=sys.stderr)
        return e.exit_code if cmd.name != "status" else STATUS_UNKNOWN


if __name__ == "__main__":
    sys.exit(main())
