"""The test battery on one path: ping, floods, HTTP downloads, iperf3 TCP and UDP.

Flow: runner.py makes a :class:`Runner` for a path's lab and calls, in order,
:meth:`Runner.warm_up` (until a reply comes back, then a full-size ping for the path MTU),
:meth:`Runner.ping`, :meth:`Runner.flood` per size, :meth:`Runner.http` (nginx on host B, curl
on host A, SHA-256 checked), :meth:`Runner.tcp` and :meth:`Runner.udp` (iperf3, JSON, one retry
with a fresh server). Ping, flood and UDP runs also record the drop counters that grew while
they ran (drops.py). The load rows (load.py) run on the same Runner afterwards. A failure is
recorded in :attr:`Runner.errors`, never raised.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mt6d_mp.bench.drops import drop_counters, drops_between, drops_text
from mt6d_mp.bench.plan import Plan, Progress
from mt6d_mp.bench.results import stats
from mt6d_mp.bench.tunnels import PathLab
from mt6d_mp.errors import Mt6dError
from mt6d_mp.lab import LabError

IPERF_PORT = 5201
_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def parse_ping(text: str) -> dict[str, Any]:
    m = _PING_COUNTS.search(text)
    if not m:
        raise ValueError(f"no ping summary in: {text.strip()[-300:]!r}")
    sent, got = int(m.group(1)), int(m.group(2))
    r = _PING_RTT.search(text)
    rtt = dict(zip(("min", "avg", "max", "mdev"), (float(x) for x in r.groups()), strict=True)) if r else None
    return {
        "sent": sent,
        "received": got,
        "loss_pct": 100.0 * (sent - got) / sent if sent else None,
        "rtt_ms": rtt,
    }


def tcp_figures(end: dict[str, Any]) -> dict[str, Any]:
    """One iperf3 TCP run (its JSON ``end``): received Gbit/s, bytes, the sender's retransmits."""
    rx, tx = end["sum_received"], end["sum_sent"]
    return {
        "gbit_s": float(rx["bits_per_second"]) / 1e9,
        "bytes": int(rx["bytes"]),
        "retransmits": int(tx.get("retransmits", 0)),
    }


class Runner:
    """Runs the test battery on one PathLab; failures are recorded, never raised."""

    def __init__(
        self,
        pl: PathLab,
        plan: Plan,
        files: dict[int, tuple[Path, str]],
        progress: Progress,
        iperf_server_args: Sequence[str] = (),
    ):
        self.pl = pl
        self.plan = plan
        self.files = files
        self.say = progress
        self.errors: list[str] = []
        self.iperf_pid: int | None = None
        self.iperf_server_args = tuple(iperf_server_args)  # more options for the iperf3 server
        # Wall-clock times (time.time) just before the last iperf3 client started and just after
        # it returned: where its intervals lie, for lining them up with other events (rekey.py).
        self.launched = self.returned = 0.0

    def log(self, msg: str) -> None:
        self.say(f"{self.pl.path}: {msg}")

    def fail(self, what: str, e: BaseException | str) -> None:
        msg = f"{what}: {e}"
        self.errors.append(msg)
        self.log(f"FAILED {msg}")

    def exec(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return self.pl.lab.exec(self.pl.src_ns, argv, check=False, timeout=timeout)

    def warm_up(self) -> None:
        """Until a reply comes back; then one full-size ping so the host learns the path MTU."""
        deadline = time.monotonic() + 15
        while True:
            r = self.exec(["ping", "-6", "-n", "-c", "1", "-W", "1", self.pl.dst], 10)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise LabError(f"no ping reply through {self.pl.path} in 15 s")
        self.exec(
            ["ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-s", "1452", self.pl.dst], 10
        )

    def drops(self) -> Counter[str] | None:
        try:
            return drop_counters(self.pl)
        except (Mt6dError, OSError, subprocess.SubprocessError, KeyError, ValueError) as e:
            self.fail("drop counters", e)
            return None

    def dropped_since(self, before: Counter[str] | None) -> dict[str, int] | None:
        """The drop counters that grew since ``before`` (None if either reading failed)."""
        after = self.drops() if before is not None else None
        return drops_between(before, after) if before is not None and after is not None else None

    def ping(self) -> dict[str, Any] | None:
        n, i = self.plan.ping_count, self.plan.ping_interval
        before = self.drops()
        try:
            r = self.exec(
                ["ping", "-6", "-n", "-q", "-c", str(n), "-i", f"{i:g}", "-W", "2", self.pl.dst],
                timeout=n * i + 30,
            )
            res = parse_ping(r.stdout)
        except (Mt6dError, ValueError) as e:
            self.fail("ping", e)
            return None
        res.update(count=n, interval_s=i, drops=self.dropped_since(before))
        rtt = res["rtt_ms"] or {}
        self.log(
            f"ping {n} x {i:g} s: avg {rtt.get('avg', float('nan')):.3f} ms, loss {res['loss_pct']:.2f}%"
            + drops_text(res["drops"])
        )
        return res

    def flood(self, n: int) -> dict[str, Any]:
        deadline = max(30, n // 100)  # 10 ms per packet if every reply were lost
        res: dict[str, Any] = {
            "count": n,
            "sent": None,
            "received": None,
            "loss_pct": None,
            "rtt_ms": None,
            "seconds": None,
            "drops": None,
        }
        before = self.drops()
        t0 = time.monotonic()
        try:
            r = self.exec(
                ["ping", "-6", "-n", "-q", "-f", "-c", str(n), "-w", str(deadline), self.pl.dst],
                timeout=deadline + 30,
            )
            res.update(parse_ping(r.stdout))
        except (Mt6dError, ValueError) as e:
            self.fail(f"flood {n}", e)
            return res
        res["seconds"] = time.monotonic() - t0
        res["drops"] = self.dropped_since(before)
        rtt = res["rtt_ms"] or {}
        self.log(
            f"flood {n}: avg {rtt.get('avg', float('nan')):.3f} ms, loss {res['loss_pct']:.2f}%, "
            f"{res['seconds']:.1f} s" + drops_text(res["drops"])
        )
        return res

    def http(self) -> list[dict[str, Any]]:
        pl = self.pl
        hb = pl.info.host_b()
        out: list[dict[str, Any]] = []
        try:
            pl.lab.start_http_server(hb.name, next(iter(self.files.values()))[0].parent, pl.dst)
        except Mt6dError as e:
            self.fail("http server", e)
            return [
                {"size": s, "runs": [], "mbyte_s": None, "seconds": None, "verified": False}
                for s in self.files
            ]
        dest = pl.work / "download.bin"
        for size, (src, digest) in self.files.items():
            runs: list[dict[str, Any]] = []
            for _ in range(self.plan.http_repeats):
                dest.unlink(missing_ok=True)
                url = f"http://[{pl.dst}]/{src.name}"
                try:
                    r = self.exec(
                        [
                            "curl",
                            "-sS",
                            "-g",
                            "--fail",
                            "--max-time",
                            "300",
                            "-o",
                            str(dest),
                            "-w",
                            "%{size_download} %{time_total}",
                            url,
                        ],
                        timeout=330,
                    )
                except Mt6dError as e:
                    self.fail(f"http {size}", e)
                    continue
                if r.returncode != 0:
                    self.fail(f"http {size}", f"curl exit {r.returncode}: {r.stderr.strip()}")
                    continue
                got, secs = (float(x) for x in r.stdout.split()[:2])
                ok = int(got) == size and _sha256(dest) == digest
                if not ok:
                    self.fail(f"http {size}", "downloaded file differs from the served file")
                runs.append(
                    {"seconds": secs, "mbyte_s": size / secs / 1e6 if secs > 0 else None, "verified": ok}
                )
            dest.unlink(missing_ok=True)
            entry: dict[str, Any] = {
                "size": size,
                "runs": runs,
                "mbyte_s": stats([x["mbyte_s"] for x in runs]),
                "seconds": stats([x["seconds"] for x in runs]),
                "verified": bool(runs)
                and len(runs) == self.plan.http_repeats
                and all(x["verified"] for x in runs),
            }
            out.append(entry)
            med = entry["mbyte_s"]["median"] if entry["mbyte_s"] else float("nan")
            self.log(
                f"http {size / 1e6:g} MB x{len(runs)}: median {med:.1f} MB/s, "
                f"sha256 {'ok' if entry['verified'] else 'NOT verified'}"
            )
        return out

    def iperf_server(self, restart: bool = False) -> None:
        """The iperf3 server on host B, started once (again with ``restart``) and listening."""
        pl = self.pl
        if restart and self.iperf_pid is not None:
            with contextlib.suppress(Mt6dError):
                pl.lab.stop(self.iperf_pid)
            self.iperf_pid = None
        if self.iperf_pid is None:
            hb = pl.info.host_b()
            self.iperf_pid = pl.lab.spawn(
                hb.name,
                ["iperf3", "-s", "-B", pl.dst, "-p", str(IPERF_PORT), *self.iperf_server_args],
                name="iperf3-server",
                log_path=pl.work / "iperf3-server.log",
            )
            pl.lab.wait_listening(self.iperf_pid, IPERF_PORT, what="iperf3 server")

    def iperf(self, extra: Sequence[str], seconds: int) -> dict[str, Any]:
        """One iperf3 client run (JSON); one retry with a fresh server if it fails."""
        last = ""
        for attempt in range(2):
            self.iperf_server(restart=attempt > 0)
            argv = ["iperf3", "-c", self.pl.dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", *extra]
            self.launched = time.time()
            r = self.exec(argv, timeout=seconds + 40)
            self.returned = time.time()
            try:
                data: dict[str, Any] = json.loads(r.stdout)
            except json.JSONDecodeError:
                last = f"iperf3 exit {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}"
                continue
            if "error" in data:
                last = f"iperf3: {data['error']}"
                continue
            return data
        raise LabError(last)

    def tcp(self) -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        for k in range(self.plan.tcp_runs):
            try:
                end = self.iperf([], self.plan.tcp_seconds)["end"]
            except Mt6dError as e:
                self.fail(f"tcp run {k + 1}", e)
                continue
            run = tcp_figures(end)
            runs.append(run)
            self.log(
                f"tcp run {k + 1}/{self.plan.tcp_runs}: {run['gbit_s']:.3f} Gbit/s, "
                f"{run['retransmits']} retransmits"
            )
        return {
            "seconds": self.plan.tcp_seconds,
            "runs": runs,
            "gbit_s": stats([x["gbit_s"] for x in runs]),
            "retransmits": stats([x["retransmits"] for x in runs]),
            "bytes": sum(x["bytes"] for x in runs),
        }

    def udp(self) -> dict[str, Any]:
        p = self.plan
        runs: list[dict[str, Any]] = []
        for k in range(p.udp_runs):
            before = self.drops()
            try:
                end = self.iperf(["-u", "-b", f"{p.udp_rate_mbit}M", "-l", str(p.udp_len)], p.udp_seconds)[
                    "end"
                ]
            except Mt6dError as e:
                self.fail(f"udp run {k + 1}", e)
                continue
            s = end["sum"]
            run: dict[str, Any] = {
                "jitter_ms": float(s["jitter_ms"]),
                "loss_pct": float(s["lost_percent"]),
                "packets": int(s["packets"]),
                "lost": int(s["lost_packets"]),
                "gbit_s": float(s["bits_per_second"]) / 1e9,
                "bytes": int(s["bytes"]),
                "drops": self.dropped_since(before),
            }
            runs.append(run)
            self.log(
                f"udp run {k + 1}/{p.udp_runs} at {p.udp_rate_mbit} Mbit/s: loss {run['loss_pct']:.2f}%, "
                f"jitter {run['jitter_ms']:.3f} ms" + drops_text(run["drops"])
            )
        return {
            "rate_mbit": p.udp_rate_mbit,
            "datagram_bytes": p.udp_len,
            "seconds": p.udp_seconds,
            "runs": runs,
            "jitter_ms": stats([x["jitter_ms"] for x in runs]),
            "loss_pct": stats([x["loss_pct"] for x in runs]),
            "bytes": sum(x["bytes"] for x in runs),
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
