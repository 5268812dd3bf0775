"""The MT6D supervisor with its own logger (only) at debug level, for the rotation cost (rotation.py).

``python -m mt6d_mp.bench.supervisor_debug REPO [supervisor arguments]`` runs supervisor.py
from the checkout ``REPO`` as it is, except that once the supervisor has set up its logging the
``mt6d.supervisor`` logger is put at debug level, so that every rotation writes its
``event=rotated seconds=...`` line. ``--log-level debug`` would also put the libraries at debug
level (pyroute2 then logs every netlink message), which inflates the very rotations being
measured.

Flow: put ``REPO`` first on the module path, import supervisor, wrap its ``setup_logging``
(mt6d_mp.logs'),
run its ``main`` with the remaining arguments and exit with its code.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from mt6d_mp.logs import setup_logging as setup


def main(argv: list[str]) -> int:
    sys.path.insert(0, argv[0])
    import supervisor

    def setup_logging(level: str, handlers: Iterable[str], log_file: str, proc: str) -> None:
        setup(level, handlers, log_file, proc)
        logging.getLogger("mt6d.supervisor").setLevel(logging.DEBUG)

    vars(supervisor)["setup_logging"] = setup_logging  # the name supervisor.main calls
    return supervisor.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
