"""The folders are the architecture: dependencies point one way (README, Layout).

Pure code (mt6d_mp/core) imports no I/O library and nothing outside core; each I/O library is
imported by exactly one adapter module; workers and the supervisor wire the two together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IO_LIBRARIES = {
    "zmq": {"mt6d_mp/io/bus.py"},
    "msgpack": {"mt6d_mp/io/bus.py"},
    "pyroute2": {"mt6d_mp/io/netlink.py"},
    "iptc": {"mt6d_mp/io/firewall.py"},
    "netfilterqueue": {"mt6d_mp/io/nfqueue.py"},
}
PURE_ALLOWED = {"mt6d_mp.core", "mt6d_mp.errors", "cryptography"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def sources() -> list[Path]:
    files = [*ROOT.glob("mt6d_mp/**/*.py"), *ROOT.glob("workers/*.py"), ROOT / "supervisor.py"]
    return sorted(files)


def test_each_io_library_has_one_home() -> None:
    for path in sources():
        rel = str(path.relative_to(ROOT))
        for module in imports(path):
            top = module.split(".")[0]
            if top in IO_LIBRARIES:
                assert rel in IO_LIBRARIES[top], f"{rel} imports {module}"


def test_pure_core_imports_only_stdlib_core_and_cryptography() -> None:
    import sys

    for path in ROOT.glob("mt6d_mp/core/*.py"):
        for module in imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            assert any(module == a or module.startswith(a + ".") for a in PURE_ALLOWED), (
                f"{path.name} imports {module}")


DAEMON_SIDE = ["supervisor.py", "mt6d_mp/commands.py", "mt6d_mp/pool.py", "mt6d_mp/runtime.py"]


def test_the_supervisor_does_not_import_the_cli() -> None:
    """mt6dctl (mt6d_mp.ctl) is the client only: the supervisor and the modules it is built of
    (the command registry, the worker pool, the runtime directory) never import it, and the
    command registry and the pool no argparse either (their daemon halves need none)."""
    for rel in DAEMON_SIDE:
        found = imports(ROOT / rel)
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        assert "mt6d_mp.ctl" not in found, f"{rel} imports the CLI"
        if rel != "supervisor.py":
            assert "argparse" not in found, f"{rel} imports argparse"
    probe = ("import sys, supervisor; print(sorted(m for m in ('mt6d_mp.ctl', 'asyncio', 'ssl',"
             " 'unittest') if m in sys.modules))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
