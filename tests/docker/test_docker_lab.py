"""The docker-compose two-gateway lab end to end: ``scripts/docker-lab up``, then ping and an
HTTP download host-a -> host-b through MT6D while gateway-a's external interface is captured;
plain compose commands run in docker/ find the lab; a gateway whose supervisor is killed comes
back by itself and carries traffic again; then ``scripts/docker-lab down`` whatever happened.
Opt-in, see conftest.py."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "docker-lab"
HOST_A, HOST_B = "2001:db8:a::a1", "2001:db8:b::b1"
HOST_MACS = ("02:6d:00:a0:01:00", "02:6d:00:b0:01:00")
CONF = "/etc/mt6d/mt6d.toml"


def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def dexec(container: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run(["docker", "exec", container, *argv], timeout)


def outer_pairs(capture: str) -> list[tuple[str, str]]:
    """(source, destination) of the tunnel packets in a ``tcpdump -nn -e`` text capture."""
    pairs = []
    for line in capture.splitlines():
        if " UDP" not in line or "ICMP6" in line:
            continue
        ip = re.sub(r"^.*?, length \d+: ", "", line).split()
        pairs.append((re.sub(r"\.\d+$", "", ip[0]), re.sub(r"\.\d+$", "", ip[2].rstrip(":"))))
    return pairs


def mentions(text: str, needle: str) -> bool:
    return re.search(rf"(^|[^0-9a-f:]){re.escape(needle)}([^0-9a-f:]|$)", text, re.M) is not None


def gw_status(gateway: str) -> dict[str, Any]:
    done = dexec(gateway, "mt6dctl", "-c", CONF, "--json", "status")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.5)


def gateway_keyed(gateway: str) -> bool:
    try:
        return all(s["key_state"] == "keyed" for s in gw_status(gateway)["streams"])
    except (ValueError, KeyError):
        return False  # not answering yet


@pytest.mark.docker
def test_docker_lab_ping_and_http_through_mt6d_hide_true_addresses() -> None:
    try:
        up = run([str(SCRIPT), "up"], timeout=1200)
        assert up.returncode == 0, f"docker-lab up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        compose = run([str(SCRIPT), "compose-command"], timeout=30).stdout.split()

        # A fresh gateway has its link-local addresses before its supervisor starts
        # (docker/gateway-start), so the hosts' router solicitations are regenerated, not dropped.
        for gateway in ("mt6d-gateway-a", "mt6d-gateway-b"):
            icmp = next(w for w in gw_status(gateway)["workers"] if w["name"] == "icmp")
            assert "rs_no_link_local" not in icmp["drops"], (gateway, icmp)

        # The project name is in the compose directory (docker/.env): plain compose finds the lab.
        ps = subprocess.run([*compose, "ps", "-q"], cwd=REPO / "docker", capture_output=True, text=True,
                            timeout=60)
        assert ps.returncode == 0, ps.stderr
        assert len(ps.stdout.split()) == 4

        start = dexec(
            "mt6d-gateway-a", "sh", "-c",
            "tcpdump -i ext0 -nn -U -w /tmp/t.pcap ip6 >/tmp/t.log 2>&1 & echo $! >/tmp/t.pid",
        )  # fmt: skip
        assert start.returncode == 0, start.stderr
        assert dexec("mt6d-gateway-a", "sh", "-c", "sleep 1; kill -0 $(cat /tmp/t.pid)").returncode == 0

        ping = dexec("mt6d-host-a", "ping", "-c", "12", "-i", "0.5", HOST_B)
        assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr

        want = dexec("mt6d-host-b", "sha256sum", "/var/www/html/10M.bin").stdout.split()[0]
        got = dexec(
            "mt6d-host-a", "sh", "-c",
            f"curl -sSfg -m 60 -o /tmp/f 'http://[{HOST_B}]/10M.bin' && sha256sum /tmp/f; rm -f /tmp/f",
            timeout=90,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        assert got.stdout.split()[0] == want
        assert want != hashlib.sha256(b"").hexdigest()

        stop = dexec("mt6d-gateway-a", "sh", "-c", 'kill -INT "$(cat /tmp/t.pid)"; sleep 1')
        assert stop.returncode == 0, stop.stderr
        capture = dexec("mt6d-gateway-a", "tcpdump", "-nn", "-e", "-r", "/tmp/t.pcap").stdout

        # through MT6D: the stream worker tunnelled and extracted packets ...
        status = json.loads(dexec("mt6d-gateway-a", "mt6dctl", "-c", CONF, "--json", "status").stdout)
        worker = next(w for w in status["workers"] if w["name"] == "host-a-host-b")
        assert worker["state"] == "running"
        # 10 MB in: bulk TCP arrives as messages in chunks (PROTOCOL.md 1.6), so count bytes
        assert worker["packets_out"] >= 12 and worker["bytes_in"] >= 10 * 2**20
        # ... which crossed the external link between hashed addresses that rotated ...
        pairs = outer_pairs(capture)
        assert len(pairs) >= 7000, capture[-2000:]
        assert all(s.startswith(("2001:db8:a:0:", "2001:db8:b:0:")) for pair in pairs for s in pair)
        assert len({p for p in pairs if p[0].startswith("2001:db8:a:")}) >= 3  # >= 3 rotations of 2 s
        # ... and the capture holds no true address and no host MAC
        for needle in (HOST_A, HOST_B, *HOST_MACS):
            assert not mentions(capture, needle), f"{needle} seen on the external link"

        # A supervisor killed outright: its container exits with it, Docker starts it again
        # (restart: unless-stopped), the new supervisor keys with the peer and traffic flows.
        def restarts() -> int:
            return int(run(["docker", "inspect", "-f", "{{.RestartCount}}", "mt6d-gateway-a"], 30).stdout)

        before = restarts()
        pid = gw_status("mt6d-gateway-a")["pid"]
        assert dexec("mt6d-gateway-a", "kill", "-KILL", str(pid)).returncode == 0
        wait_for("restart of mt6d-gateway-a", lambda: restarts() > before)
        wait_for("healthy mt6d-gateway-a", lambda: run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", "mt6d-gateway-a"], 30).stdout.strip()
            == "healthy")
        wait_for("key exchange after the restart", lambda: gateway_keyed("mt6d-gateway-a"))
        again = dexec("mt6d-host-a", "ping", "-c", "6", "-i", "0.5", HOST_B)
        assert again.returncode == 0 and " 0% packet loss" in again.stdout, again.stdout + again.stderr
    finally:
        down = run([str(SCRIPT), "down"], timeout=300)
        assert down.returncode == 0, f"docker-lab down failed:\n{down.stdout}\n{down.stderr}"
