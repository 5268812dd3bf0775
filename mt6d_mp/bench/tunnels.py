"""The lab of one path: plain forwarding, MT6D, or a peer tunnel (OpenVPN, wireguard-go) set up in it.

Flow of :func:`path_lab`: build a fresh routed lab (with MT6D for ``mt6d``, without for the
others); for a tunnel give each gateway an outer address on ext0
(:func:`_add_outer_addresses`), start the tunnel in both gateways and wait until it is up
(:func:`setup_openvpn`: TLS with two self-signed certificates pinned by fingerprint;
:func:`setup_wireguard`: wireguard-go on a TUN device configured with ``wg``), then route the
other site's /64 into it (:func:`_route_through`); yield a :class:`PathLab`; always remove the
lab afterwards. Tunnel MTUs keep the outer packets within 1500 bytes: wireguard-go 1420
(wg-quick's default), OpenVPN 1428 (1500 - 40 IPv6 - 8 UDP - 4 opcode/peer-id - 4 packet id -
16 GCM tag).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mt6d_mp.bench.host import TunnelProcesses
from mt6d_mp.bench.plan import OUTER, ROUTER, SIDES, SITE, TOPOLOGY, Plan, Progress
from mt6d_mp.lab import Lab, LabError, LabInfo

OPENVPN_PORT = 1194
OPENVPN_TUN_MTU = 1428
WG_PORT = 51820
WG_MTU = 1420
TUNNEL_TIMEOUT = 30.0


@dataclass
class PathLab:
    path: str
    lab: Lab
    info: LabInfo
    procs: TunnelProcesses | None
    work: Path  # scratch directory of this path (keys, downloads)

    @property
    def src_ns(self) -> str:
        return self.info.ha

    @property
    def dst(self) -> str:
        address = self.info.host_b().address
        assert address
        return address


def _gw(info: LabInfo, side: str) -> str:
    return info.ga if side == "a" else info.gb


def _add_outer_addresses(lab: Lab, info: LabInfo) -> None:
    for side in SIDES:
        lab.exec(_gw(info, side), ["ip", "-6", "addr", "add", f"{OUTER[side]}/64", "dev", "ext0", "nodad"])


def _route_through(lab: Lab, info: LabInfo, dev: dict[str, str]) -> None:
    """The other site's /64 into the tunnel; the peer's outer address stays via the router."""
    for side, other in (("a", "b"), ("b", "a")):
        ns = _gw(info, side)
        lab.exec(ns, ["ip", "-6", "route", "add", f"{OUTER[other]}/128", "via", ROUTER[side], "dev", "ext0"])
        lab.exec(ns, ["ip", "-6", "route", "add", SITE[other], "dev", dev[side]])


def _file_contains(path: Path, needle: str) -> bool:
    try:
        return needle in path.read_text(errors="replace")
    except OSError:
        return False


def _wait_for(what: str, ok: Callable[[], bool], timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if not alive():
            raise LabError(f"{what}: process exited")
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not ready after {timeout:g} s")
        time.sleep(0.1)


def _self_signed(cn: str, directory: Path) -> tuple[Path, Path, str]:
    """A P-256 key and self-signed certificate; returns (cert, key, SHA-256 fingerprint)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{cn}.crt", directory / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex(":").upper()


def setup_openvpn(lab: Lab, info: LabInfo, work: Path, extra: Sequence[str] = ()) -> TunnelProcesses:
    """OpenVPN in both gateways, up (``extra``: more options for both, e.g. ``--reneg-sec``)."""
    _add_outer_addresses(lab, info)
    certs = {side: _self_signed(f"gw{side}", work) for side in SIDES}
    inner = {"a": "fd6d:b::1", "b": "fd6d:b::2"}
    roots: dict[str, list[int]] = {}
    logs: dict[str, Path] = {}
    for side, other in (("a", "b"), ("b", "a")):
        cert, key, _fp = certs[side]
        logs[side] = work / f"openvpn-{side}.log"
        argv = [
            "openvpn",
            "--dev",
            "ovpn0",
            "--dev-type",
            "tun",
            "--proto",
            "udp6",
            "--local",
            OUTER[side],
            "--remote",
            OUTER[other],
            "--port",
            str(OPENVPN_PORT),
            "--tls-server" if side == "a" else "--tls-client",
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--peer-fingerprint",
            certs[other][2],
            "--dh",
            "none",
            "--cipher",
            "AES-256-GCM",
            "--data-ciphers",
            "AES-256-GCM",
            "--disable-dco",
            "--tun-mtu",
            str(OPENVPN_TUN_MTU),
            "--ifconfig-ipv6",
            f"{inner[side]}/64",
            inner[other],
            "--ping",
            "10",
            "--verb",
            "3",
            "--mute-replay-warnings",
            *extra,
        ]
        roots[side] = [lab.spawn(_gw(info, side), argv, name=f"openvpn-{side}", log_path=logs[side])]
    for side in SIDES:
        pid = roots[side][0]
        log = logs[side]
        _wait_for(
            f"openvpn in gateway {side} (see {log})",
            functools.partial(_file_contains, log, "Initialization Sequence Completed"),
            TUNNEL_TIMEOUT,
            functools.partial(lab.alive, pid),
        )
    _route_through(lab, info, {"a": "ovpn0", "b": "ovpn0"})
    return TunnelProcesses(roots)


def _wg_keypair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    k = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    priv = k.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = k.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(priv).decode(), base64.b64encode(pub).decode()


def setup_wireguard(lab: Lab, info: LabInfo, work: Path) -> tuple[TunnelProcesses, dict[str, str]]:
    _add_outer_addresses(lab, info)
    # wireguard-go's control socket is /var/run/wireguard/<ifname>.sock, shared by every
    # namespace: the interface names carry the lab prefix so that labs never collide
    ifname = {side: f"wg{info.prefix}{side}" for side in SIDES}
    keys = {side: _wg_keypair() for side in SIDES}
    roots: dict[str, list[int]] = {}
    for side in SIDES:
        out = work / f"wireguard-go-{side}.log"
        pid = lab.spawn(
            _gw(info, side), ["wireguard-go", "-f", ifname[side]], name=f"wireguard-go-{side}", log_path=out
        )
        roots[side] = [pid]
        sock = Path(f"/var/run/wireguard/{ifname[side]}.sock")
        _wait_for(
            f"wireguard-go in gateway {side} (see {out})",
            sock.exists,
            TUNNEL_TIMEOUT,
            functools.partial(lab.alive, pid),
        )
    for side, other in (("a", "b"), ("b", "a")):
        ns = _gw(info, side)
        key_file = work / f"wg-{side}.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(keys[side][0] + "\n")
        lab.exec(
            ns,
            [
                "wg",
                "set",
                ifname[side],
                "private-key",
                str(key_file),
                "listen-port",
                str(WG_PORT),
                "peer",
                keys[other][1],
                "endpoint",
                f"[{OUTER[other]}]:{WG_PORT}",
                "allowed-ips",
                "::/0",
            ],
        )
        lab.exec(ns, ["ip", "link", "set", ifname[side], "mtu", str(WG_MTU), "up"])
    _route_through(lab, info, ifname)
    return TunnelProcesses(roots), ifname


@contextlib.contextmanager
def path_lab(
    path: str,
    plan: Plan,
    scratch: Path,
    progress: Progress,
    prefix: str,
    *,
    rotation_time: float | None = None,
    settings: Sequence[str] = (),
) -> Iterator[PathLab]:
    """A fresh routed lab ``prefix`` carrying ``path``; always removed afterwards.

    For ``mt6d``, ``rotation_time`` (default the plan's) and ``settings`` (supervisor
    ``--set SECTION.KEY=VALUE``, both gateways) shape the gateways.
    """
    lab = Lab(
        prefix,
        TOPOLOGY,
        mt6d=path == "mt6d",
        rotation_time=plan.rotation_time if rotation_time is None else rotation_time,
        settings=settings,
    )
    work = scratch / prefix
    work.mkdir(mode=0o700)
    try:
        t0 = time.monotonic()
        info = lab.up()
        procs: TunnelProcesses | None = None
        if path == "mt6d":
            pids = lab.pids()
            procs = TunnelProcesses({s: [pids[f"supervisor-{s}"]] for s in SIDES}, with_children=True)
        elif path == "openvpn":
            procs = setup_openvpn(lab, info, work)
        elif path == "wireguard-go":
            procs, _ = setup_wireguard(lab, info, work)
        progress(f"{path}: lab {prefix} up in {time.monotonic() - t0:.1f} s")
        yield PathLab(path, lab, info, procs, work)
    finally:
        if lab.claimed:
            try:
                lab.down()
            finally:
                shutil.rmtree(work, ignore_errors=True)
