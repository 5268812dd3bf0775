"""How mt6d_mp.io.netlink imports pyroute2 (each case in a fresh interpreter).

The netns tests (tests/netns/test_netlink.py) show that the supervisor's way, without pyroute2's
package ``__init__``, carries every netlink operation; these show the fallback.
"""

from __future__ import annotations

import subprocess
import sys

FALLBACK = """
import importlib.abc, sys

class FailOnce(importlib.abc.MetaPathFinder):
    # As a pyroute2 release whose submodules need the package's own names would.
    failed = False
    def find_spec(self, name, path, target=None):
        if name == "pyroute2.netlink.rtnl.ifaddrmsg" and not FailOnce.failed:
            FailOnce.failed = True
            raise ImportError("needs the package")
        return None

sys.meta_path.insert(0, FailOnce())
import mt6d_mp.io.netlink as netlink
import pyroute2
assert FailOnce.failed
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
assert netlink.ifaddrmsg is ifaddrmsg and netlink.NetlinkError is pyroute2.NetlinkError
assert "pyroute2.ndb" in sys.modules  # the whole package, by its own __init__
print("fallback ok")
"""


def test_a_failed_bare_import_falls_back_to_the_whole_package() -> None:
    out = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fallback", "ok"]


SUPERVISOR_IMPORTS = """
import sys
import supervisor
heavy = sorted(m for m in ("asyncio", "ssl", "unittest", "sqlite3", "pyroute2.ndb", "pyroute2.iproute")
               if m in sys.modules)
print("heavy:", ",".join(heavy) or "none")
"""


def test_the_supervisor_loads_none_of_the_heavy_modules() -> None:
    """What the supervisor imports keeps it small (results/PROFILE.md, "1fe820e -> 9d1e23c" and
    "40502f8 -> 9b550bf"): not asyncio and ssl (pyroute2's IPRoute, 10-13 MB), nor the rest of
    pyroute2 (17.5 MB)."""
    out = subprocess.run([sys.executable, "-c", SUPERVISOR_IMPORTS], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["heavy:", "none"]
