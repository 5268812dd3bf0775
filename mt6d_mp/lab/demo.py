"""``mt6d-lab demo``: build a lab, send traffic through it while capturing the external link, show it.

Flow of :func:`demo`, each step a function below in this order:

- build the lab (with the threat model printed first when MT6D runs);
- :func:`_start_capture`: tcpdump on the external link, waited for until it listens;
- then for each pair of sites (A-B; with ``three-sites`` A-B, A-C and B-C, each gateway a peer of
  the two others), one stream's hosts x and y:
- :func:`_ping`: 20 pings from host x to host y, every one must come back;
- :func:`_download`: a random file served by host y, fetched by host x with curl and checked by
  SHA-256;
- :func:`_show_capture`: stop tcpdump, list the outer address pairs by first appearance (with
  three sites, each with the gateways whose link it crossed), and with MT6D fail on any true
  address seen or on addresses that did not rotate (between every pair of gateways);
- remove the lab (only one this call built) and print ``== OK`` or ``== FAILED: ...``.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from mt6d_mp.errors import Mt6dError
from mt6d_mp.lab.info import LabError, LabInfo, NamespaceInfo
from mt6d_mp.lab.lab import Lab
from mt6d_mp.lab.netns import random_prefix
from mt6d_mp.lab.pcap import analyse_capture
from mt6d_mp.lab.processes import mkdir


def _say(msg: str) -> None:
    print(msg, flush=True)


# The threat model in one paragraph (docs/SECURITY.md has it whole; README says the same).
THREAT_MODEL = """\
   Threat model: an attacker on the external link sees every tunnel packet and may send any
   frame to any MAC and address (forge, replay, fragment, flood). They never see a true address,
   a host MAC or a key, cannot link one rotation's addresses to the next, and get no answer:
   the gateways answer nothing but their peer's authenticated tunnel packets (and neighbour
   discovery for the addresses in use) and send no error, echo reply or MLD report outside; a
   host gets nothing that did not come sealed from the peer gateway, and nothing but the
   protected host's own packets from the internal link enters the tunnel."""


def demo(
    topology: str = "switched",
    prefix: str | None = None,
    *,
    rotation_time: float = 2.0,
    mt6d: bool = True,
    size: int = 10 * 1024 * 1024,
) -> int:
    """Build a lab, ping and download through it while capturing the external link; 0 = success."""
    prefix = prefix or random_prefix()
    lab = Lab(prefix, topology, rotation_time=rotation_time, mt6d=mt6d)
    failures: list[str] = []
    try:
        _say(
            f"== mt6d-lab demo: lab {prefix}, {topology}, "
            f"{'MT6D rotation ' + format(rotation_time, 'g') + ' s' if mt6d else 'no MT6D'}"
        )
        if mt6d:
            _say(THREAT_MODEL)
        info = lab.up()
        _say("  " + "".join(f" host {s.name.upper()} {h.name} {h.address}  "
                            for s in info.sites for h in [info.namespace(s.hosts[0])]).rstrip())
        for site in info.sites:
            if info.host_mode(info.namespace(site.hosts[0])):
                _say(f"   host {site.name.upper()} runs MT6D itself (host mode, no gateway in "
                     "front of it)")
        pcap, cap = _start_capture(lab, info)
        servers: dict[str, str] = {}  # host y's namespace -> SHA-256 of the file it serves
        for s in info.streams:
            x, y = info.namespace(s.host_a_ns), info.namespace(s.host_b_ns)
            failures += _ping(lab, x, y)
            failures += _download(lab, info, x, y, size, servers)
        time.sleep(0.3)
        lab.stop(cap)
        failures += _show_capture(pcap, info)
    except KeyboardInterrupt:
        failures.append("interrupted")
    except Mt6dError as e:
        failures.append(str(e))
    finally:
        try:
            if lab.claimed:  # never remove a lab of the same prefix that we did not build
                lab.down()
                _say(f"-- lab {prefix} removed")
        except Exception as e:
            failures.append(f"teardown: {e}")
    return _verdict(failures, mt6d)


def _start_capture(lab: Lab, info: LabInfo) -> tuple[Path, int]:
    """tcpdump on the external link, once it listens: (pcap file, its PID)."""
    pcap = Path(info.lab_dir) / "external.pcap"
    tcpdump_out = Path(info.lab_dir) / "tcpdump.out"
    cap = lab.spawn(
        info.capture_ns,
        ["tcpdump", "-i", info.capture_if, "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "256",
         "-w", str(pcap)],
        name="tcpdump",
        log_path=tcpdump_out,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while "listening on" not in (tcpdump_out.read_text() if tcpdump_out.exists() else ""):
        if time.monotonic() > deadline or not lab.alive(cap):
            raise LabError(f"tcpdump did not start; see {tcpdump_out}")
        time.sleep(0.05)
    _say(f"-- capturing the external link: {info.capture_ns} {info.capture_if} -> {pcap}")
    return pcap, cap


def _ping(lab: Lab, ha: NamespaceInfo, hb: NamespaceInfo) -> list[str]:
    assert hb.address
    _say(f"-- ping -c 20 -i 0.2 {hb.address} from {ha.name}")
    ping = lab.exec(
        ha.name, ["ping", "-6", "-n", "-c", "20", "-i", "0.2", "-W", "2", hb.address],
        check=False, timeout=60,
    )  # fmt: skip
    m = re.search(r"(\d+) packets transmitted, (\d+) received", ping.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", ping.stdout)
    sent, got = (int(m.group(1)), int(m.group(2))) if m else (20, 0)
    _say(f"   {got}/{sent} replies" + (f", avg rtt {rtt.group(1)} ms" if rtt else ""))
    return [f"ping lost {sent - got} of {sent}"] if got < sent else []


def _download(lab: Lab, info: LabInfo, ha: NamespaceInfo, hb: NamespaceInfo, size: int,
              servers: dict[str, str]) -> list[str]:
    """Host ``ha`` fetches a file from host ``hb`` (whose server, started once, is in ``servers``)."""
    assert hb.address
    a_dir, b_dir = ha.name.rsplit("-", 1)[1], hb.name.rsplit("-", 1)[1]
    if hb.name not in servers:
        www = mkdir(Path(info.lab_dir) / b_dir / "www", 0o755)
        blob = www / "file.bin"
        with open(blob, "wb") as f:
            f.write(os.urandom(size))
        servers[hb.name] = hashlib.sha256(blob.read_bytes()).hexdigest()
        lab.start_http_server(hb.name, www, hb.address)
    want = servers[hb.name]
    dest = mkdir(Path(info.lab_dir) / a_dir, 0o755) / f"file-from-{b_dir}.bin"
    _say(f"-- curl http://[{hb.address}]/file.bin ({size / 2**20:g} MiB) from {ha.name}")
    curl = lab.exec(
        ha.name,
        ["curl", "-sS", "-g", "--fail", "--max-time", "120", "-o", str(dest),
         "-w", "%{speed_download} %{time_total}", f"http://[{hb.address}]/file.bin"],
        check=False, timeout=150,
    )  # fmt: skip
    if curl.returncode != 0:
        return [f"download failed: curl exit {curl.returncode}: {curl.stderr.strip()}"]
    got_sum = hashlib.sha256(dest.read_bytes()).hexdigest()
    speed, total = (float(x) for x in curl.stdout.split()[:2])
    same = got_sum == want
    _say(
        f"   {size / 2**20:g} MiB in {total:.2f} s ({speed * 8 / 1e6:.1f} Mbit/s), "
        f"sha256 {'matches' if same else 'DIFFERS'} ({got_sum[:16]}...)"
    )
    return [] if same else ["downloaded file differs from the served file"]


def _show_capture(pcap: Path, info: LabInfo) -> list[str]:
    many = len(info.gateways) > 2  # name each pair's link by its gateways (their ext0 MACs)
    labels = {gw.iface("ext0").mac: gw.role.rsplit("-", 1)[1].upper() for gw in info.gateways}
    rep = analyse_capture(pcap, info.true_addresses, labels if many else None)
    _say(
        f"-- external link: {rep.packets} IPv6 packets; outer address pairs (non-ICMP), "
        "by first appearance:"
    )
    for src, dst, first, last, n in rep.pairs[:40]:
        link = "{}->{}  ".format(*rep.links.get((src, dst), ("?", "?"))) if many else ""
        _say(f"   {first:7.2f}-{last:7.2f} s  {link}{src:>28} -> {dst:<28} {n:6d} pkts")
    if len(rep.pairs) > 40:
        _say(f"   ... {len(rep.pairs) - 40} more")
    _say(f"   {rep.distinct_pairs} distinct pairs; true host addresses seen in {len(rep.leaks)} frames")
    per_link: dict[str, int] = {}
    if many:
        for src, dst, *_ in rep.pairs:
            link = "<->".join(sorted(rep.links.get((src, dst), ("?", "?"))))
            per_link[link] = per_link.get(link, 0) + 1
        _say("   distinct pairs between gateways: "
             + ", ".join(f"{k} {v}" for k, v in sorted(per_link.items())))
    for t, what in rep.leaks[:5]:
        _say(f"   leak at {t:.2f} s: {what}")
    failures = []
    if info.mt6d:
        if rep.leaks:
            failures.append(f"true host addresses visible on the external link ({len(rep.leaks)} frames)")
        if rep.distinct_pairs <= 2:
            failures.append(f"outer addresses did not rotate ({rep.distinct_pairs} pairs)")
        names = sorted(labels.values()) if many else []
        for n, x in enumerate(names):
            for y in names[n + 1:]:
                seen = per_link.get(f"{x}<->{y}", 0)
                if seen <= 2:
                    failures.append(f"outer addresses between gateways {x} and {y} did not "
                                    f"rotate ({seen} pairs)")
    elif rep.leaks:
        _say("   (baseline without MT6D: the true addresses are visible, as expected)")
    return failures


def _verdict(failures: list[str], mt6d: bool) -> int:
    if failures:
        _say("== FAILED: " + "; ".join(failures))
        return 1
    _say(
        "== OK: "
        + (
            "traffic crossed MT6D intact, outer addresses rotated and no true host "
            "address appeared on the external link"
            if mt6d
            else "baseline traffic crossed the lab intact"
        )
    )
    return 0
