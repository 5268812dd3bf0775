"""Logging set-up shared by the supervisor and the workers.

Lines are ``time level proc=NAME pid=PID logger: key=value ...``. Messages are written as
key=value pairs by the callers; nothing is logged per packet (workers count instead), and no
code path formats a key (keys are wrapped in classes whose repr hides them).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

SYSLOG_ADDRESS = "/dev/log"
FORMAT = "%(asctime)s %(levelname)s proc=%(proc)s pid=%(process)d %(name)s: %(message)s"


class _ProcFilter(logging.Filter):
    def __init__(self, proc: str) -> None:
        super().__init__()
        self.proc = proc

    def filter(self, record: logging.LogRecord) -> bool:
        record.proc = self.proc
        return True


def setup_logging(level: str, handlers: Iterable[str], log_file: str, proc: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(level.upper())
    made: list[logging.Handler] = []
    for kind in handlers:
        if kind == "console":
            made.append(logging.StreamHandler(sys.stderr))
        elif kind == "file" and log_file:
            directory = os.path.dirname(log_file)
            if directory:
                os.makedirs(directory, exist_ok=True)
            made.append(logging.FileHandler(log_file))
        elif kind == "syslog" and os.path.exists(SYSLOG_ADDRESS):
            from logging.handlers import SysLogHandler  # with queue, threading: only for syslog

            made.append(SysLogHandler(address=SYSLOG_ADDRESS))
    flt = _ProcFilter(proc)
    for h in made:
        h.setFormatter(logging.Formatter(FORMAT))
        h.addFilter(flt)
        root.addHandler(h)
