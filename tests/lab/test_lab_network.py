"""The namespace lab itself (mt6d_mp.lab): topology, baseline forwarding, JSON, teardown, rollback.

Runs as root only. Every test uses its own random prefix and removes its lab in a finalizer.
MT6D itself is not exercised here: the supervisor is replaced by a stand-in where needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp import lab as labmod
from mt6d_mp.lab import Lab, LabError, LabInfo
from mt6d_mp.lab import gateway as labgateway
from mt6d_mp.lab import network as labnetwork
from mt6d_mp.lab.processes import ProcessTable

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


@pytest.fixture
def prefix() -> Iterator[str]:
    p = "t" + secrets.token_hex(3)
    try:
        yield p
    finally:
        try:
            labmod.down(p)
        finally:
            # namespaces carrying this test's unique prefix are this test's own
            stray = labmod.namespaces_with_prefix(p)
            for ns in stray:
                subprocess.run(["ip", "netns", "del", ns], check=False)
            assert not stray, f"left behind: {stray}"


def _ping(lab: Lab, ns: str, address: str) -> None:
    r = lab.exec(ns, ["ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", address], check=False)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr


def _alive(pid: int) -> bool:
    st = labmod.proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _netns_id(name: str) -> str:
    return f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"


@pytest.mark.parametrize("topology", ["switched", "routed"])
def test_baseline_ping_http_and_down(prefix: str, topology: str, tmp_path: Path) -> None:
    lab = Lab(prefix, topology, mt6d=False, router_mtu=1400)
    info = lab.up()
    assert sorted(labmod.namespaces_with_prefix(prefix)) == sorted(n.name for n in info.namespaces)
    ha, hb = info.host_a(), info.host_b()
    assert ha.address and hb.address
    _ping(lab, ha.name, hb.address)
    _ping(lab, hb.name, ha.address)

    if topology == "routed":  # the router's link to gateway B has the smaller MTU
        out = lab.exec(info.ns("router").name, ["ip", "-j", "link", "show", "gb"]).stdout
        assert json.loads(out)[0]["mtu"] == 1400

    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(2 * 1024 * 1024)
    (www / "f.bin").write_bytes(data)
    server = lab.start_http_server(hb.name, www, hb.address, 8080)
    assert _netns_of(server) == _netns_id(hb.name)
    assert lab.pids()[f"nginx-{hb.name}-8080"] == server
    dest = tmp_path / "got.bin"
    r = lab.exec(
        ha.name,
        ["curl", "-sS", "-g", "--fail", "--max-time", "20", "-o", str(dest),
         f"http://[{hb.address}]:8080/f.bin"],
        check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()

    assert labmod.down(prefix)
    assert labmod.namespaces_with_prefix(prefix) == []
    assert not _alive(server)
    assert not Path(info.lab_dir).exists()
    assert not labmod.down(prefix)  # nothing left to do


def test_two_streams_share_a_bridge(prefix: str) -> None:
    lab = Lab(prefix, "switched", streams=2, mt6d=False)
    info = lab.up()
    try:
        assert [s.queue for s in info.streams] == [2, 3]
        assert [(s.host_a_ns, s.host_b_ns) for s in info.streams] == [
            (f"{prefix}-ha", f"{prefix}-hb"),
            (f"{prefix}-ha2", f"{prefix}-hb2"),
        ]
        int0 = info.gateway_a.iface("int0")
        assert int0.kind == "bridge" and int0.ports == ("h1", "h2")
        assert info.gateway_a.iface("h2").master == "int0"
        for s in info.streams:
            _ping(lab, s.host_a_ns, s.host_b_address)
            _ping(lab, s.host_b_ns, s.host_a_address)
    finally:
        lab.down()


def test_cli_up_json_and_down(prefix: str) -> None:
    cli = [sys.executable, "-m", "mt6d_mp.lab"]
    r = subprocess.run(
        [*cli, "up", "-q", "--prefix", prefix, "--topology", "routed", "--no-mt6d", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    roles = {n["role"]: n for n in d["namespaces"]}
    assert set(roles) == {"host-a", "gateway-a", "router", "gateway-b", "host-b"}
    assert d["roles"]["router"] == f"{prefix}-rt"
    macs = [i["mac"] for n in d["namespaces"] for i in n["interfaces"]]
    assert len(macs) == len(set(macs)) and all(m.startswith("02:6d:") for m in macs)
    assert roles["host-a"]["address"] == "2001:db8:a::a1"
    assert roles["host-b"]["interfaces"][0]["addresses"] == ["2001:db8:b::b1/64"]
    assert {i["name"] for i in roles["gateway-a"]["interfaces"]} == {"ext0", "int0"}
    assert "2001:db8:a::1/64" in roles["router"]["interfaces"][0]["addresses"]
    assert d["streams"] == [
        {
            "name": "host-a-host-b",
            "index": 1,
            "queue": 2,
            "key_file": "keys/host-a-host-b.key",
            "host_a_ns": f"{prefix}-ha",
            "host_a_name": "host-a",
            "host_a_address": "2001:db8:a::a1",
            "host_a_mac": roles["host-a"]["mac"],
            "host_b_ns": f"{prefix}-hb",
            "host_b_name": "host-b",
            "host_b_address": "2001:db8:b::b1",
            "host_b_mac": roles["host-b"]["mac"],
        }
    ]
    # the JSON is the LabInfo of the state file, and round-trips
    assert LabInfo.from_dict(d) == labmod.load(prefix)

    # the kernel agrees with the description
    ga = roles["gateway-a"]
    out = subprocess.run(
        ["ip", "-n", ga["name"], "-j", "link", "show", "ext0"], capture_output=True, text=True
    ).stdout
    ext0 = next(i for i in ga["interfaces"] if i["name"] == "ext0")
    assert json.loads(out)[0]["address"] == ext0["mac"]

    done = subprocess.run([*cli, "down", "-q", "--prefix", prefix], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert labmod.namespaces_with_prefix(prefix) == []


def test_failure_halfway_rolls_back(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(plan: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(labnetwork, "add_routes", boom)
    lab = Lab(prefix, "switched", mt6d=False)
    with pytest.raises(RuntimeError, match="injected"):
        lab.up()
    assert labmod.namespaces_with_prefix(prefix) == []
    state = json.loads(lab.state.path.read_text())
    assert state["namespaces"] == [] and state["pids"] == [] and state["status"] == "down"
    # the prefix can be used again straight away
    monkeypatch.undo()
    lab.up()
    lab.down()


FAKE_SUPERVISOR = """\
import pathlib, sys, time, tomllib
cfg = pathlib.Path(sys.argv[sys.argv.index("--config") + 1])
mode = {mode!r}
if mode == "exit":
    print("fake supervisor: cannot start", flush=True)
    sys.exit(3)
if mode == "ready":
    run = pathlib.Path(tomllib.loads(cfg.read_text())["runtime"]["dir"])
    (run / "ready").write_text("")
print("fake supervisor running", flush=True)
time.sleep(600)
"""


def _fake_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    fake = tmp_path / "supervisor.py"
    fake.write_text(FAKE_SUPERVISOR.format(mode=mode))
    monkeypatch.setattr(labgateway, "SUPERVISOR", fake)
    # The fake has no control socket and no streams to key.
    monkeypatch.setattr(labgateway, "wait_keyed", lambda *args: None)


def test_mt6d_configs_and_supervisors(prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_supervisor(tmp_path, monkeypatch, "ready")
    lab = Lab(prefix, "switched", streams=2, rotation_time=1.5)
    info = lab.up()
    pids = dict(info.pids)
    assert set(pids) == {"supervisor-a", "supervisor-b"}
    assert _netns_of(pids["supervisor-a"]) == _netns_id(info.ga)
    assert _netns_of(pids["supervisor-b"]) == _netns_id(info.gb)

    ga, gb = info.gateway_a, info.gateway_b
    assert ga.config and gb.config and ga.dir and gb.dir
    for gw in (ga, gb):
        assert gw.dir and gw.config
        gdir = Path(gw.dir)
        assert stat.S_IMODE(gdir.stat().st_mode) == 0o700
        cfg = tomllib.loads(Path(gw.config).read_text())
        assert cfg["interfaces"] == {"internal": "int0", "external": "ext0"}
        assert cfg["rotation"]["rotation_time"] == 1.5
        assert cfg["runtime"]["dir"] == gw.runtime_dir
        assert cfg["log"]["file"] == gw.log_file
        for s in info.streams:
            key = gdir / s.key_file
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            text = key.read_text()
            assert len(text) == 129 and text.endswith("\n") and bytes.fromhex(text[:-1])
            assert text == (Path(ga.dir) / s.key_file).read_text()
    assert (Path(ga.dir) / "profiles").read_text().splitlines()[1:] == [
        "host-a host-b 2 @keys/host-a-host-b.key",
        "host-a2 host-b2 3 @keys/host-a2-host-b2.key",
    ]
    assert (Path(gb.dir) / "profiles").read_text().splitlines()[1:] == [
        "host-b host-a 2 @keys/host-a-host-b.key",
        "host-b2 host-a2 3 @keys/host-a2-host-b2.key",
    ]
    users = (Path(ga.dir) / "users").read_text()
    assert "2001:db8:100::a2 host-a2\n" in users and "2001:db8:100::b1 host-b\n" in users
    assert f"{info.host_b(2).mac} 2001:db8:100::b2\n" in (Path(gb.dir) / "ethers").read_text()

    config = pytest.importorskip("mt6d_mp.core.config")
    for gw, local in ((ga, "host-a"), (gb, "host-b")):
        c = config.load(gw.config)
        assert c.internal == "int0" and c.rotation_time == 1.5
        assert [(s.local.name, s.queue) for s in c.streams] == [(local, 2), (f"{local}2", 3)]

    assert labmod.down(prefix)
    assert not any(_alive(p) for p in pids.values())
    assert labmod.namespaces_with_prefix(prefix) == []


@pytest.mark.parametrize(
    ("mode", "message"),
    # the error carries the end of the supervisor's output (the lab's files go with the lab)
    [("hang", r"did not become ready in 1s; see .*supervisor\.out; its last lines:\n"
              r"  fake supervisor running"),
     ("exit", r"with code 3 [\s\S]*\n  fake supervisor: cannot start")],
)
def test_supervisor_failure_rolls_back(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, message: str
) -> None:
    _fake_supervisor(tmp_path, monkeypatch, mode)
    spawned: list[int] = []
    spawn = ProcessTable.spawn

    def spy(self: ProcessTable, *args: Any, **kwargs: Any) -> int:
        pid = spawn(self, *args, **kwargs)
        spawned.append(pid)
        return pid

    monkeypatch.setattr(ProcessTable, "spawn", spy)
    lab = Lab(prefix, "routed", ready_timeout=1.0)
    with pytest.raises(LabError, match=message):
        lab.up()
    assert labmod.namespaces_with_prefix(prefix) == []
    state = json.loads(lab.state.path.read_text())
    assert state["pids"] == [] and state["namespaces"] == []
    assert len(spawned) == 2 and not any(_alive(p) for p in spawned)
    # the supervisor's output is kept for the post-mortem the error message points to
    assert (lab.dir / "ga" / "supervisor.out").exists()
