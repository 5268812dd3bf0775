"""The handshakes of the tunnels MT6D is compared with, timed where their own records allow it.

OpenVPN (:func:`openvpn_handshakes`): a lab of its own, set up as the ``openvpn`` path
(tunnels.py) plus ``--reneg-sec`` (a renegotiation every few seconds) and
``--machine-readable-output`` (every log line starts with its time, to the microsecond). From each
gateway's log (:func:`openvpn_times`):

* the first handshake: from ``TLS: Initial packet from`` to ``Peer Connection Initiated``;
* the start-up: from the first log line to ``Initialization Sequence Completed`` (this also
  holds the device set-up and OpenVPN's own timers);
* each renegotiation: from ``TLS: soft reset`` (logged only by the gateway that starts it) to
  the next ``Control Channel:`` line, which OpenVPN logs when the new key state becomes active.

wireguard-go (:func:`wireguard_handshakes`): a lab of its own, set up as the ``wireguard-go``
path. Each time, gateway A's peer is removed and added again with a persistent keepalive over
the control socket (``/var/run/wireguard/IF.sock``, the protocol ``wg`` itself speaks:
:func:`uapi`); the device then sends a keepalive at once, which needs a handshake first. The
handshake's time is from that request to the peer's ``last_handshake_time`` (nanoseconds, read
from the same socket), which the initiator sets when the response has arrived and the session
keys are made. wireguard-go rekeys on its own only after two minutes; a peer added afresh is as
close to a rekey as its control interface allows, and it is reported as what it is.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from mt6d_mp.bench.plan import SIDES, TOPOLOGY, Plan, Progress
from mt6d_mp.bench.results import stats
from mt6d_mp.bench.tunnels import setup_openvpn, setup_wireguard
from mt6d_mp.lab import Lab, random_prefix

WG_HANDSHAKE_TIMEOUT = 5.0
WG_PAUSE = 0.3  # between two wireguard-go handshakes (an initiation's timestamp must be newer)

_OVPN_LINE = re.compile(r"^(\d+\.\d{6}) [0-9a-f]+ (.*)$", re.MULTILINE)


def openvpn_times(text: str) -> dict[str, Any]:
    """From a log written with ``--machine-readable-output``: seconds of the first handshake
    (``handshake_s``), of the start-up (``startup_s``) and of each renegotiation this end
    started (``renegotiations_s``); None where the log lacks the lines."""
    first = initial = peer = complete = None
    reneg: list[float] = []
    reset: float | None = None
    for m in _OVPN_LINE.finditer(text):
        t, msg = float(m.group(1)), m.group(2)
        if first is None:
            first = t
        if initial is None and msg.startswith("TLS: Initial packet from"):
            initial = t
        elif peer is None and "Peer Connection Initiated" in msg:
            peer = t
        elif complete is None and msg.startswith("Initialization Sequence Completed"):
            complete = t
        elif msg.startswith("TLS: soft reset"):
            reset = t
        elif reset is not None and msg.startswith("Control Channel:"):
            reneg.append(t - reset)
            reset = None
    return {
        "handshake_s": peer - initial if initial is not None and peer is not None else None,
        "startup_s": complete - first if first is not None and complete is not None else None,
        "renegotiations_s": reneg,
    }


def uapi(ifname: str, request: str, timeout: float = 2.0) -> dict[str, str]:
    """One request on wireguard-go's control socket; the reply's first value of each key."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(f"/var/run/wireguard/{ifname}.sock")
        s.sendall(request.encode())
        buf = b""
        while not buf.endswith(b"\n\n"):
            data = s.recv(65536)
            if not data:
                break
            buf += data
    return parse_uapi(buf.decode())


def parse_uapi(text: str) -> dict[str, str]:
    """``key=value`` lines; the first value of each key (the device's, or the first peer's)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out.setdefault(key, value)
    return out


def last_handshake(reply: dict[str, str]) -> float | None:
    """The first peer's last handshake (wall clock, s) in a ``get`` reply; None if it has none."""
    sec, nsec = int(reply.get("last_handshake_time_sec", 0)), int(reply.get("last_handshake_time_nsec", 0))
    return sec + nsec / 1e9 if sec or nsec else None


def _lab(prefix: str) -> Lab:
    return Lab(prefix, TOPOLOGY, mt6d=False)


def openvpn_handshakes(plan: Plan, scratch: Path, progress: Progress) -> dict[str, Any]:
    prefix = random_prefix("bn")
    res: dict[str, Any] = {
        "lab": prefix,
        "reneg_sec": plan.reneg_sec,
        "observed_s": plan.reneg_observe,
        "handshake_s": None,
        "startup_s": None,
        "renegotiation_s": None,
        "error": None,
    }
    lab = _lab(prefix)
    work = scratch / prefix
    work.mkdir(mode=0o700)
    try:
        info = lab.up()
        setup_openvpn(
            lab, info, work, ["--reneg-sec", str(plan.reneg_sec), "--machine-readable-output"]
        )
        time.sleep(plan.reneg_observe)
        times = [openvpn_times((work / f"openvpn-{side}.log").read_text(errors="replace")) for side in SIDES]
        res["handshake_s"] = stats([t["handshake_s"] for t in times])
        res["startup_s"] = stats([t["startup_s"] for t in times])
        res["renegotiation_s"] = stats([x for t in times for x in t["renegotiations_s"]])
        if res["renegotiation_s"] is None:
            res["error"] = f"no renegotiation logged in {plan.reneg_observe:g} s"
    except KeyboardInterrupt:
        raise
    except Exception as e:
        res["error"] = str(e)
    finally:
        try:
            if lab.claimed:
                lab.down()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    r = res["renegotiation_s"]
    progress(
        "openvpn: renegotiation "
        + (f"median {r['median'] * 1e3:.1f} ms, max {r['max'] * 1e3:.1f} ms over {r['n']}" if r else "-")
        + (f"; FAILED {res['error']}" if res["error"] else "")
    )
    return res


def wireguard_handshakes(plan: Plan, scratch: Path, progress: Progress) -> dict[str, Any]:
    prefix = random_prefix("bn")
    res: dict[str, Any] = {
        "lab": prefix,
        "repeats": plan.handshake_repeats,
        "handshake_s": None,
        "error": None,
    }
    lab = _lab(prefix)
    work = scratch / prefix
    work.mkdir(mode=0o700)
    samples: list[float] = []
    try:
        info = lab.up()
        _, ifname = setup_wireguard(lab, info, work)
        a = ifname["a"]
        for _ in range(plan.handshake_repeats):
            time.sleep(WG_PAUSE)
            peer = uapi(a, "get=1\n\n")
            request = (
                f"set=1\npublic_key={peer['public_key']}\nremove=true\n"
                f"public_key={peer['public_key']}\nendpoint={peer['endpoint']}\nallowed_ip=::/0\n"
                "persistent_keepalive_interval=25\n\n"
            )
            t0 = time.time()
            reply = uapi(a, request)
            if reply.get("errno") != "0":
                raise RuntimeError(f"wireguard-go refused to set the peer: errno {reply.get('errno')}")
            deadline = time.monotonic() + WG_HANDSHAKE_TIMEOUT
            while (done := last_handshake(uapi(a, "get=1\n\n"))) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no handshake within {WG_HANDSHAKE_TIMEOUT:g} s")
                time.sleep(0.001)
            samples.append(done - t0)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        res["error"] = str(e)
    finally:
        try:
            if lab.claimed:
                lab.down()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    res["handshake_s"] = stats(samples)
    h = res["handshake_s"]
    progress(
        "wireguard-go: handshake "
        + (f"median {h['median'] * 1e3:.2f} ms, max {h['max'] * 1e3:.2f} ms over {h['n']}" if h else "-")
        + (f"; FAILED {res['error']}" if res["error"] else "")
    )
    return res
