"""Prometheus text exposition of the supervisor's status (off unless ``[metrics] listen`` is set).

``render()`` is pure: it turns the ``mt6dctl status`` reply into the text format (version 0.0.4).
``MetricsServer`` serves the latest rendering on ``GET /metrics`` from a daemon thread; the
supervisor's loop refreshes it about once a second, so the HTTP thread never reads the
supervisor's live state. No key or address of a host ever appears in a metric.
"""

from __future__ import annotations

import http.server
import ipaddress
import logging
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9469"`` or ``"[::1]:9469"`` -> (address, port); ValueError otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: expected ADDRESS:PORT, for example 127.0.0.1:9469")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ipaddress.ip_address(host)  # raises ValueError with its own message
    return host, int(port_text)


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(v: float) -> str:
    """A sample value, exact: integers (counters, epochs) in full, not ``%g``'s six digits, which
    made epochs 898296598 and 898296599 one value and byte counters move in steps of thousands."""
    if v.is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(v)  # shortest text that reads back as the same float


def render(status: dict[str, Any]) -> str:
    """The text format for one status reply (see mt6d_mp.ctl for its shape)."""
    families: dict[str, tuple[str, str, list[str]]] = {}

    def add(name: str, kind: str, help_text: str, labels: dict[str, object], value: float) -> None:
        fam = families.setdefault(name, (kind, help_text, []))
        inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        fam[2].append(f"{name}{{{inner}}} {_value(value)}" if inner else f"{name} {_value(value)}")

    add("mt6d_supervisor_uptime_seconds", "gauge", "Seconds since the supervisor started.", {},
        float(status.get("uptime", 0.0)))
    add("mt6d_tunnel_mtu_bytes", "gauge", "MTU offered to the hosts through the tunnel.", {},
        float(status.get("tunnel_mtu", 0)))
    for w in status.get("workers", []):
        name = w["name"]
        add("mt6d_worker_up", "gauge", "1 when the worker is running.", {"worker": name},
            1.0 if w.get("state") == "running" else 0.0)
        add("mt6d_worker_restarts_total", "counter", "Times the worker was started again.",
            {"worker": name}, float(w.get("restarts", 0)))
        for direction, key in (("out", "packets_out"), ("in", "packets_in")):
            add("mt6d_worker_packets_total", "counter",
                "Packets tunnelled (out) and extracted (in).",
                {"worker": name, "direction": direction}, float(w.get(key, 0)))
        for direction, key in (("out", "bytes_out"), ("in", "bytes_in")):
            add("mt6d_worker_bytes_total", "counter", "Inner bytes tunnelled and extracted.",
                {"worker": name, "direction": direction}, float(w.get(key, 0)))
        for reason, count in sorted(w.get("drops", {}).items()):
            add("mt6d_worker_drops_total", "counter", "Packets dropped, by reason.",
                {"worker": name, "reason": reason}, float(count))
        ptb = w.get("counters", {}).get("ptb_sent", 0)
        add("mt6d_worker_packet_too_big_sent_total", "counter",
            "ICMPv6 Packet Too Big sent to hosts.", {"worker": name}, float(ptb))
    for s in status.get("streams", []):
        if s.get("active"):
            add("mt6d_stream_epoch", "gauge", "Epoch (salt) of the stream's active route.",
                {"stream": s["name"]}, float(s["active"]["epoch"]))
        if "key_state" in s:
            add("mt6d_stream_keyed", "gauge",
                "1 while the stream has a fresh key and sends; 0 when it fails closed.",
                {"stream": s["name"]}, 1.0 if s["key_state"] == "keyed" else 0.0)
            if s.get("key_age") is not None:
                add("mt6d_stream_key_age_seconds", "gauge", "Age of the key the stream sends with.",
                    {"stream": s["name"]}, float(s["key_age"]))
            for event, count in sorted((s.get("keyx") or {}).items()):
                add("mt6d_stream_keyx_total", "counter",
                    "Key exchange events and refusals, by kind (docs/PROTOCOL.md 5).",
                    {"stream": s["name"], "event": event}, float(count))
    out = []
    for name, (kind, help_text, samples) in families.items():
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(out) + "\n"


class _Server6(http.server.HTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """``GET /metrics`` on one address, in a daemon thread; everything else is 404."""

    def __init__(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self.text = "# no data yet\n"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = server.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # nothing per request in the log

        family = _Server6 if ":" in host else http.server.HTTPServer
        self.httpd = family((host, port), Handler)
        self.address = f"{listen}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                       daemon=True)

    def start(self) -> None:
        log.info("event=metrics_listening address=%s", self.address)
        self.thread.start()

    def update(self, status: dict[str, Any]) -> None:
        self.text = render(status)  # one reference assignment: the HTTP thread sees old or new

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
