"""The HTTP server the demo, the tests and the benchmark download from, inside a lab namespace.

Flow: :meth:`Lab.start_http_server` asks :func:`command` for the program to run (nginx with a
configuration written into the server's work directory, else Python's http.server), spawns it
as a recorded lab process and waits until it listens.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def command(work: Path, ns: str, root: Path, address: str, port: int) -> tuple[list[str], str]:
    """(argv, process name) of a server for ``root`` on ``[address]:port``; files go to ``work``."""
    nginx = shutil.which("nginx")
    if not nginx:
        argv = [
            sys.executable, "-m", "http.server", "--bind", address,
            "--directory", str(root), str(port),
        ]  # fmt: skip
        return argv, f"http-{ns}-{port}"
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / d).mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(nginx_conf(work, root, address, port))
    return [nginx, "-e", f"{work}/error.log", "-p", str(work), "-c", str(conf)], f"nginx-{ns}-{port}"


def nginx_conf(work: Path, root: Path, address: str, port: int) -> str:
    return (
        "daemon off;\n"
        "master_process off;\n"  # one process: the recorded PID is the server
        "worker_processes 1;\n"
        f"pid {work}/nginx.pid;\n"
        f"error_log {work}/error.log warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log {work}/access.log;\n"
        f"  client_body_temp_path {work}/body;\n"
        f"  proxy_temp_path {work}/proxy;\n"
        f"  fastcgi_temp_path {work}/fastcgi;\n"
        f"  uwsgi_temp_path {work}/uwsgi;\n"
        f"  scgi_temp_path {work}/scgi;\n"
        "  default_type application/octet-stream;\n"
        "  sendfile on;\n"
        "  server {\n"
        f"    listen [{address}]:{port};\n"
        f"    root {root};\n"
        "  }\n"
        "}\n"
    )
