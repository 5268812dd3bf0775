"""Key phases in the lab (docs/PROTOCOL.md 5): rekeying under traffic, forward secrecy of a
capture, nonces across restarts and a clock step, a restarted gateway rejoining, fail closed when
the peer is unreachable, and clock skew inside and beyond the tolerance.

One switched lab with one stream; the tests start and stop the supervisors themselves, with a
short rekey interval (3 s at 1 s rotations) so that many rekeys fit in a test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp import lab as labmod
from mt6d_mp.io.bus import request
from mt6d_mp.lab import Lab, LabInfo
from mt6d_mp.lab.info import NamespaceInfo
from tests.lab.test_mt6d import ROUTES_SEEN, _lab, capture, check_external_capture, frames
from tests.lab.test_ops import received

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

REPO = Path(__file__).resolve().parents[2]
SUPERVISOR = REPO / "supervisor.py"
ROTATION = 1.0
REKEY = ("crypto.regen_interval=3", "crypto.regen_window=0.5", "crypto.regen_limit=6")


@pytest.fixture(scope="module")
def klab() -> Iterator[tuple[Lab, LabInfo]]:
    yield from _lab("switched", streams=1, start_supervisors=False)


def gateways(info: LabInfo) -> tuple[NamespaceInfo, NamespaceInfo]:
    return info.gateway_a, info.gateway_b


def start(lab: Lab, gw: NamespaceInfo, *settings: str) -> int:
    """The supervisor of ``gw`` with ``--set`` ``settings``, once it is ready (not yet keyed)."""
    assert gw.config and gw.runtime_dir and gw.supervisor_out
    ready = Path(gw.runtime_dir) / "ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, str(SUPERVISOR), "--config", gw.config]
    for s in settings:
        argv += ["--set", s]
    pid = lab.spawn(gw.name, argv, name=f"supervisor-{gw.name}", log_path=Path(gw.supervisor_out))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert lab.alive(pid), f"supervisor in {gw.name} exited" + labmod.log_tail(gw.supervisor_out)
        assert time.monotonic() < deadline, "not ready" + labmod.log_tail(gw.supervisor_out)
        time.sleep(0.05)
    return pid


def status(gw: NamespaceInfo) -> dict[str, Any]:
    reply = request(Path(gw.runtime_dir or ""), b"status")
    assert isinstance(reply, dict), f"no status from {gw.name}"
    return reply


def stream_row(gw: NamespaceInfo) -> dict[str, Any]:
    (row,) = status(gw)["streams"]
    return dict(row)


def stream_worker(gw: NamespaceInfo) -> dict[str, Any]:
    return next(w for w in status(gw)["workers"] if w["name"] != "icmp")


def wait_state(gw: NamespaceInfo, state: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = stream_row(gw)
        if row["key_state"] == state:
            return row
        assert time.monotonic() < deadline, f"{gw.name}: key state {row['key_state']}, not {state}"
        time.sleep(0.1)


# Every IPv6 packet in and out of an interface dropped, in the raw table (before MT6D's filter
# table rules, which it leaves alone; this kernel has neither tc's netem nor its drop action).
CUT = (("PREROUTING", "-i"), ("OUTPUT", "-o"))


def cut_off(lab: Lab, ns: str, iface: str, on: bool = True) -> None:
    for chain, flag in CUT:
        lab.exec(ns, ["ip6tables-legacy", "-t", "raw", "-I" if on else "-D", chain, flag, iface,
                      "-j", "DROP"], check=on)


def stop_all(lab: Lab, pids: list[int]) -> None:
    for pid in pids:
        lab.stop(pid)


def ctl(gw: NamespaceInfo, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mt6d_mp.ctl", "-c", gw.config or "", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def ping(lab: Lab, ns: str, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(ns, ["ping", "-6", "-n", *args, address], check=False, timeout=180)


def data_nonces(path: Path) -> tuple[Counter[tuple[str, bytes, int, int, int]], int]:
    """Every sealed data packet's (key id, sender, lane, counter, chunk index), counted; and how
    many data packets had no known route. The key is named by the route it travelled on (each
    phase's secret hashes its own addresses), the sender by the outer source."""
    seen = ROUTES_SEEN[path]
    nonces: Counter[tuple[str, bytes, int, int, int]] = Counter()
    unknown = 0
    for _, frame in frames(path):
        ip = frame[14:]
        if frame[12:14] != b"\x86\xdd" or len(ip) < 66 or ip[6] != 60 or ip[42] != 0x1E:
            continue
        route = seen.get((ip[8:24], ip[24:40]))
        if route is None:
            unknown += 1
            continue
        lane, counter = int.from_bytes(ip[46:48], "big"), int.from_bytes(ip[48:56], "big")
        chunk = ip[64] if ip[44] & 0x80 else -1  # a message's chunks share its nonce
        nonces[(route[2], ip[8:24], lane, counter, chunk)] += 1
    return nonces, unknown


# --- rekeying under traffic ---------------------------------------------------------------


def test_ping_and_tcp_across_rekeys_lose_nothing_and_a_capture_is_safe_from_the_profile_key(
    klab: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    """Ping every 0.1 s and an iperf3 TCP transfer across at least five rekeys: no ping lost, no
    TCP interval without data, every rekey visible in the capture as a new key phase. Then a
    fresh program with only the profile key and the capture (tests/lab/fs_probe.py) opens no
    data packet and finds no data packet on an address it can compute; it does find the
    exchange messages of the start, which travel on the bootstrap phase's routes (the one
    phase the profile key names: docs/PROTOCOL.md 5.7)."""
    lab, info = klab
    ga, gb = gateways(info)
    s = info.streams[0]
    pids: list[int] = []
    server = lab.spawn(s.host_b_ns, ["iperf3", "-s", "-1", "-B", s.host_b_address],
                       name="iperf3-server")
    try:
        with capture(lab, info.capture_ns, info.capture_if, tmp_path / "rekey.pcap") as pcap:
            pids = [start(lab, gw, *REKEY) for gw in (gb, ga)]
            for gw in (ga, gb):
                wait_state(gw, "keyed")
            before = stream_row(ga)["keyx"].get("rekeys", 0)
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", s.host_a_ns, "ping", "-6", "-n", "-c", "240", "-i", "0.1",
                 s.host_b_address], stdout=subprocess.PIPE, text=True)
            tcp = lab.exec(s.host_a_ns, ["iperf3", "-c", s.host_b_address, "-t", "20", "-b",
                                         "200M", "-i", "0.5", "-J"], check=False, timeout=120)
            out = pinger.communicate(timeout=120)[0]
            rekeys = stream_row(ga)["keyx"].get("rekeys", 0) - before
        sent, got = received(out)
        assert sent == got == 240, out
        assert tcp.returncode == 0, tcp.stdout + tcp.stderr
        intervals = [i["sum"]["bytes"] for i in json.loads(tcp.stdout)["intervals"]]
        assert len(intervals) >= 38 and min(intervals) > 0, f"a TCP stall: {intervals}"
        assert rekeys >= 5, f"only {rekeys} rekeys during the traffic"
        summary = check_external_capture(info, pcap)  # no true address, no host MAC, known routes
        assert len(summary["phases"]) >= 5, summary["phases"]
        assert summary["keyx"] >= 3 * 5, "three exchange messages per rekey on the wire"
        # The profile key alone, and the capture.
        key_file = Path(ga.dir or "") / s.key_file
        probe = subprocess.run(
            [sys.executable, "-m", "tests.lab.fs_probe", "--pcap", str(pcap), "--key",
             str(key_file), "--host", f"{s.host_a_address},{s.host_a_mac}",
             "--host", f"{s.host_b_address},{s.host_b_mac}", "--rotation", str(ROTATION)],
            capture_output=True, text=True, timeout=300, cwd=REPO)
        assert probe.returncode == 0, probe.stderr
        found = json.loads(probe.stdout)
        assert found["data"] > 2 * 240 and found["data_complete"] > 2 * 240, found
        assert found["data_opened"] == 0 and found["data_linked"] == 0, found
        assert found["keyx_linked"] >= 3, f"the start's exchange is on bootstrap routes: {found}"
    finally:
        lab.stop(server)
        stop_all(lab, pids)


def test_nonces_never_repeat_across_restarts_and_a_clock_step_and_a_restarted_gateway_rejoins(
    klab: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    """Gateway A's stream worker restarted twice, then its supervisor restarted with its clock
    stepped back by half a rotation, then the worker again, all under traffic in both
    directions: every (key, sender, lane, counter) on the wire is unique, several lanes were
    used under one key, and after the supervisor restart traffic resumes by itself (gateway B is
    not touched)."""
    lab, info = klab
    ga, gb = gateways(info)
    s = info.streams[0]
    pids: list[int] = []
    try:
        with capture(lab, info.capture_ns, info.capture_if, tmp_path / "nonces.pcap") as pcap:
            pid_b = start(lab, gb, *REKEY)
            pid_a = start(lab, ga, *REKEY)
            pids = [pid_b, pid_a]
            for gw in (ga, gb):
                wait_state(gw, "keyed")
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", s.host_a_ns, "ping", "-6", "-n", "-i", "0.05", "-W", "1",
                 s.host_b_address], stdout=subprocess.PIPE, text=True)
            try:
                for _ in range(2):
                    old = stream_worker(ga)["pid"]
                    r = ctl(ga, "restart", s.name)
                    assert r.returncode == 0, r.stdout + r.stderr
                    assert stream_worker(ga)["pid"] != old
                    time.sleep(1.0)
                lab.stop(pid_a)
                pids.remove(pid_a)
                restarted = time.monotonic()
                pid_a = start(lab, ga, *REKEY, "rotation.clock_offset=-0.5")
                pids.append(pid_a)
                deadline = time.monotonic() + 20
                while ping(lab, s.host_a_ns, s.host_b_address, "-c", "1", "-W", "1").returncode:
                    assert time.monotonic() < deadline, "gateway A did not rejoin" + \
                        labmod.log_tail(ga.supervisor_out)
                rejoin = time.monotonic() - restarted
                r = ctl(ga, "restart", s.name)
                assert r.returncode == 0, r.stdout + r.stderr
                time.sleep(2.0)
            finally:
                pinger.send_signal(signal.SIGINT)
                pinger.communicate(timeout=30)
        nonces, unknown = data_nonces(pcap)
        assert unknown == 0
        repeated = {k: n for k, n in nonces.items() if n > 1}
        assert not repeated, f"nonces used twice: {list(repeated)[:5]}"
        a_addresses = {src for (_key, src, _lane, _c, _chunk) in nonces}
        lanes: dict[tuple[str, bytes], set[int]] = {}
        for key, src, lane, _c, _chunk in nonces:
            lanes.setdefault((key, src), set()).add(lane)
        assert max(len(v) for v in lanes.values()) >= 2, "worker restarts under one key"
        assert len({k for k, _ in lanes}) >= 2, "several phases (the restart's among them)"
        assert len(nonces) > 100 and len(a_addresses) > 4
        print(f"rejoin after a supervisor restart: {rejoin:.1f} s")
    finally:
        stop_all(lab, pids)


# --- failing closed -------------------------------------------------------------------------


def test_peer_unreachable_fails_closed_then_recovers(klab: tuple[Lab, LabInfo], tmp_path: Path) -> None:
    """Gateway B's external link drops everything: gateway A's key passes regen_limit (6 s) with
    no exchange answered, the stream stops sending (key_expired, counted, status and drops say
    so) and no data packet leaves A while exchanges are still tried; once B is back both rekey
    and traffic flows."""
    lab, info = klab
    ga, gb = gateways(info)
    s = info.streams[0]
    pids = [start(lab, gw, *REKEY) for gw in (gb, ga)]
    try:
        for gw in (ga, gb):
            wait_state(gw, "keyed")
        assert received(ping(lab, s.host_a_ns, s.host_b_address, "-c", "5", "-i", "0.2").stdout) == (5, 5)
        cut_off(lab, gb.name, "ext0")
        try:
            row = wait_state(ga, "expired", timeout=30)
            assert row["keyx"]["keys_expired"] >= 1 and row["active"] is None, row
            drops_before = stream_worker(ga)["drops"].get("no_key", 0)
            with capture(lab, info.capture_ns, info.capture_if, tmp_path / "closed.pcap") as pcap:
                r = ping(lab, s.host_a_ns, s.host_b_address, "-c", "5", "-i", "0.2", "-W", "1")
            assert r.returncode != 0, r.stdout
            time.sleep(1.2)  # a counter report
            assert stream_worker(ga)["drops"].get("no_key", 0) >= drops_before + 5
            summary = check_external_capture(info, pcap)
            assert summary["phases"] == set(), "no data packet leaves while the key is expired"
            deadline = time.monotonic() + 20
            while stream_row(ga)["keyx"].get("keyx_sent_init", 0) <= row["keyx"].get(
                    "keyx_sent_init", 0):
                assert time.monotonic() < deadline, "exchanges are still tried"
                time.sleep(0.2)
            log_text = Path(ga.supervisor_out or "").read_text()
            assert "event=key_expired action=fail_closed" in log_text
            code = ctl(ga, "status")
            assert "EXPIRED (sends nothing)" in code.stdout, code.stdout
        finally:
            cut_off(lab, gb.name, "ext0", on=False)
        for gw in (ga, gb):
            wait_state(gw, "keyed", timeout=40)
        deadline = time.monotonic() + 20
        while ping(lab, s.host_a_ns, s.host_b_address, "-c", "1", "-W", "1").returncode:
            assert time.monotonic() < deadline, "no traffic after the peer came back"
        assert received(ping(lab, s.host_a_ns, s.host_b_address, "-c", "10", "-i", "0.2").stdout) == (10, 10)
    finally:
        stop_all(lab, pids)


def test_mt6dctl_rekey_starts_an_exchange_at_once(klab: tuple[Lab, LabInfo]) -> None:
    lab, info = klab
    ga, gb = gateways(info)
    s = info.streams[0]
    pids = [start(lab, gw) for gw in (gb, ga)]  # default interval: no rekey on its own here
    try:
        for gw in (ga, gb):
            wait_state(gw, "keyed")
        phase = stream_row(ga)["key_phase"]
        r = ctl(ga, "rekey", s.name)
        assert r.returncode == 0 and "now on phase" in r.stdout, r.stdout + r.stderr
        assert stream_row(ga)["key_phase"] != phase
        wait_state(gb, "keyed")
        assert stream_row(gb)["key_phase"] == stream_row(ga)["key_phase"]
        r = ctl(ga, "rekey", "no-such-stream")
        assert r.returncode != 0 and "unknown stream" in r.stdout + r.stderr
        assert received(ping(lab, s.host_a_ns, s.host_b_address, "-c", "5", "-i", "0.2").stdout) == (5, 5)
    finally:
        stop_all(lab, pids)


# --- clock skew ---------------------------------------------------------------------------


def test_clock_skew_inside_the_tolerance_loses_nothing_and_beyond_it_fails_closed(
    klab: tuple[Lab, LabInfo]
) -> None:
    """Gateway A's clock 0.4 rotations ahead (the tolerance is one rotation ahead and
    route_lifetime behind, docs/PROTOCOL.md 0): pings across rotations and rekeys all come back.
    3.5 rotations ahead: the two gateways' routes never meet, no exchange succeeds, A never has a
    key and B's expires: both send nothing (counted: drops, keys_expired, exchange attempts)."""
    lab, info = klab
    ga, gb = gateways(info)
    s = info.streams[0]
    pid_b = start(lab, gb, *REKEY)
    pids = [pid_b, start(lab, ga, *REKEY, f"rotation.clock_offset={0.4 * ROTATION}")]
    try:
        for gw in (ga, gb):
            wait_state(gw, "keyed")
        before = stream_row(ga)["keyx"].get("rekeys", 0)
        r = ping(lab, s.host_a_ns, s.host_b_address, "-c", "80", "-i", "0.1")
        assert received(r.stdout) == (80, 80), r.stdout
        assert stream_row(ga)["keyx"].get("rekeys", 0) > before, "a rekey under the skew"
        lab.stop(pids.pop())
        pids.append(start(lab, ga, *REKEY, f"rotation.clock_offset={3.5 * ROTATION}"))
        # Their routes no longer meet (A hashes epochs 3 ahead of B's): no exchange gets
        # through, A never gets a key, B's expires at regen_limit (6 s).
        row = wait_state(gb, "expired", timeout=20)
        assert row["keyx"].get("keys_expired", 0) >= 1, row["keyx"]
        a_row = stream_row(ga)
        assert a_row["key_state"] == "bootstrapping" and a_row["keyx"].get("keyx_sent_init", 0) > 3
        r = ping(lab, s.host_a_ns, s.host_b_address, "-c", "5", "-i", "0.2", "-W", "1")
        assert received(r.stdout)[1] == 0, r.stdout
        time.sleep(1.2)
        assert stream_worker(ga)["drops"].get("no_key", 0) >= 5
    finally:
        stop_all(lab, pids)


def test_forged_and_replayed_exchange_messages_from_the_link_change_nothing(
    klab: tuple[Lab, LabInfo], tmp_path: Path
) -> None:
    """The three messages of a rekey, captured on the link, sent again at once (replays, while
    their route is still accepted) and with one bit of the tag flipped (forgeries), each from
    the link to the gateway it was for: both keep their phase, every one is counted by reason,
    and traffic goes on."""
    from tests.attack.harness import l4_checksum, send_frames

    def flip_tag_bit(frame: bytes) -> bytes:
        """One bit of the tag flipped, the UDP checksum made right again (else the kernel drops
        it before MT6D sees it): a forgery only the tag can catch."""
        ip = bytearray(frame[14:])
        ip[-1] ^= 1
        udp = bytearray(ip[48:])  # after the 8-byte options header
        udp[6:8] = b"\0\0"
        udp[6:8] = l4_checksum(bytes(ip[8:24]), bytes(ip[24:40]), 17, bytes(udp)).to_bytes(2, "big")
        return frame[:14] + bytes(ip[:48]) + bytes(udp)

    lab, info = klab
    ga, gb = gateways(info)
    s = info.streams[0]
    pids = [start(lab, gw) for gw in (gb, ga)]
    try:
        for gw in (ga, gb):
            wait_state(gw, "keyed")
        while time.time() % ROTATION > 0.1:  # start just after a boundary: the route lives 2 s
            time.sleep(0.01)
        with capture(lab, info.capture_ns, info.capture_if, tmp_path / "kx.pcap", snaplen=0) as pcap:
            r = ctl(ga, "rekey", s.name)
            assert r.returncode == 0, r.stdout + r.stderr
        before = {gw.name: stream_row(gw) for gw in (ga, gb)}
        by_type: dict[int, bytes] = {}
        for _, f in frames(pcap):  # the last INIT, RESP and CONFIRM (earlier ones: the start's)
            if f[12:14] == b"\x86\xdd" and f[14 + 6] == 60 and f[14 + 42] == 0x3E:
                by_type[f[14 + 45]] = f
        assert sorted(by_type) == [1, 2, 3], sorted(by_type)
        exchange = list(by_type.values())
        forged = [flip_tag_bit(f) for f in exchange]
        a_mac = bytes.fromhex(ga.iface("ext0").mac.replace(":", ""))
        to_a = [f for f in exchange + forged if f[:6] == a_mac]
        to_b = [f for f in exchange + forged if f[:6] != a_mac]
        send_frames(lab, gb.name, "ext0", to_a)  # from the link, to A's MAC
        send_frames(lab, ga.name, "ext0", to_b)
        time.sleep(1.5)  # a counter report
        after = {gw.name: stream_row(gw) for gw in (ga, gb)}
        for gw in (ga, gb):
            b, a = before[gw.name], after[gw.name]
            assert a["key_phase"] == b["key_phase"] and a["keyx"].get("rekeys") == b["keyx"].get(
                "rekeys"), (b, a)
            delta = {k: a["keyx"].get(k, 0) - b["keyx"].get(k, 0) for k in a["keyx"]}
            assert delta.get("keyx_auth_failed", 0) >= 1, (
                delta, stream_worker(gw)["counters"], status(gw)["firewall_drops"])  # forgeries
        kb = {k: after[gb.name]["keyx"].get(k, 0) - before[gb.name]["keyx"].get(k, 0)
              for k in after[gb.name]["keyx"]}
        ka = {k: after[ga.name]["keyx"].get(k, 0) - before[ga.name]["keyx"].get(k, 0)
              for k in after[ga.name]["keyx"]}
        assert kb.get("keyx_replay", 0) >= 2, kb  # INIT and CONFIRM again at B
        # RESP again at A: its CONFIRM once more if A still holds the exchange, else refused.
        assert ka.get("keyx_repeated", 0) + ka.get("keyx_unexpected", 0) >= 1, ka
        assert received(ping(lab, s.host_a_ns, s.host_b_address, "-c", "10", "-i", "0.1").stdout) == (10, 10)
    finally:
        stop_all(lab, pids)
