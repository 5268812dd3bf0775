"""The docker-compose two-gateway lab end to end: ``scripts/docker-lab up``, then ping and an
HTTP download host-a -> host-b through MT6D while gateway-a's external interface is captured,
then ``scripts/docker-lab down`` whatever happened. Opt-in, see conftest.py."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

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


@pytest.mark.docker
def test_docker_lab_ping_and_http_through_mt6d_hide_true_addresses() -> None:
    try:
        up = run([str(SCRIPT), "up"], timeout=1200)
        assert up.returncode == 0, f"docker-lab up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"

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
    finally:
        down = run([str(SCRIPT), "down"], timeout=300)
        assert down.returncode == 0, f"docker-lab down failed:\n{down.stdout}\n{down.stderr}"
