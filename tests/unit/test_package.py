"""The package as pip users get it: ``python -m build`` makes a wheel and an sdist, and the wheel
installed into a fresh virtual environment outside the repository has working commands, the
workers and the example configuration; ``mypy --strict`` passes without the optional extras.

Offline and in seconds: the build runs without isolation (setuptools and build come with the test
extra), and the fresh environment gets the wheel with ``--no-deps`` plus links to the runtime
dependencies already installed in this environment (exactly the closure of mt6d-mp's
requirements without extras: no matplotlib, no test tools).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("mt6d-supervisor", "mt6dctl", "mt6d-keygen", "mt6d-lab", "mt6d-bench")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    sdist: Path
    venv: Path
    site: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        # No PYTHONPATH and a working directory outside the repository: nothing of the checkout
        # can be imported by accident.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PATH"] = f"{self.venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
        return subprocess.run([str(a) for a in argv], cwd=cwd or self.venv, env=env,
                              capture_output=True, text=True, timeout=120)


def runtime_closure(name: str = "mt6d-mp") -> list[metadata.Distribution]:
    """The installed distributions ``name`` needs at run time (requirements without extras)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = canonicalize_name(dist.metadata["Name"])
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [d for k, d in seen.items() if k != canonicalize_name(name)]


def link_distribution(dist: metadata.Distribution, site: Path) -> None:
    """Make ``dist`` importable in ``site`` by linking its top-level files and directories."""
    origin = Path(str(dist.locate_file("")))
    tops = {Path(str(f)).parts[0] for f in dist.files or []}
    for top in tops - {"..", "__pycache__"}:
        if (origin / top).exists() and not (site / top).exists():
            (site / top).symlink_to(origin / top)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("wheel")
    dist_dir = tmp / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist_dir),
                            str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist_dir.glob("mt6d_mp-*.whl")
    (sdist,) = dist_dir.glob("mt6d_mp-*.tar.gz")
    venv = tmp / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                          "install", "--no-deps", "--no-index", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    (site,) = (venv / "lib").glob("python3*/site-packages")
    for dist in runtime_closure():
        link_distribution(dist, site)
    yield Installed(wheel, sdist, venv, site)


def test_build_makes_wheel_and_sdist_with_every_module_and_the_example(installed: Installed) -> None:
    in_wheel = set(zipfile.ZipFile(installed.wheel).namelist())
    for module in sorted((REPO / "workers").glob("*.py")):
        assert f"workers/{module.name}" in in_wheel
    assert "supervisor.py" in in_wheel
    assert "mt6d_mp/mt6d.toml.example" in in_wheel
    with tarfile.open(installed.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "supervisor.py", "mt6d_mp/mt6d.toml.example"} <= names


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "mt6d-keygen"])
def test_installed_command_help(installed: Installed, command: str) -> None:
    done = installed.run(command, "--help")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"usage: {command}" in done.stdout


def test_installed_keygen_writes_a_private_key(installed: Installed) -> None:
    key = installed.venv / "k" / "test.key"
    done = installed.run("mt6d-keygen", key)
    assert done.returncode == 0, done.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 64


def test_installed_package_finds_its_workers_and_example(installed: Installed) -> None:
    probe = (
        "import json, mt6d_mp, workers, supervisor\n"
        "from mt6d_mp import pool\n"
        "from mt6d_mp.examples import example_config\n"
        "print(json.dumps({'mt6d_mp': mt6d_mp.__file__, 'workers': workers.__file__,\n"
        "    'supervisor': supervisor.__file__, 'pool_cwd': str(pool.REPO),\n"
        "    'example': str(example_config()), 'text': example_config().read_text()}))\n"
    )
    done = installed.run(installed.python, "-c", probe)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for key in ("mt6d_mp", "workers", "supervisor", "example"):
        assert Path(found[key]).is_relative_to(installed.site), (key, found[key])
    assert found["text"] == (REPO / "conf" / "mt6d.toml.example").read_text()
    # The supervisor starts each worker as `python -m workers.NAME` in pool.REPO (mt6d_mp/pool.py).
    assert Path(found["pool_cwd"]) == installed.site
    for module in ("stream", "icmp"):
        worker = installed.run(installed.python, "-m", f"workers.{module}", "--help", cwd=installed.site)
        assert worker.returncode == 0, worker.stderr
        assert "--runtime-dir" in worker.stdout
    # mt6dctl points a new installation without a configuration at the example it installed
    missing = installed.run("mt6dctl", "-c", installed.venv / "none.toml", "status")
    assert missing.returncode == 6
    assert str(installed.site / "mt6d_mp" / "mt6d.toml.example") in missing.stderr


def test_mypy_strict_passes_without_the_optional_extras(installed: Installed, tmp_path: Path) -> None:
    # The fresh environment has the runtime dependencies only: no matplotlib (bench extra).
    hidden = installed.run(installed.python, "-c", "import matplotlib")
    assert hidden.returncode != 0
    mypy = Path(sys.executable).parent / "mypy"
    done = subprocess.run([str(mypy), "--python-executable", str(installed.python), "--cache-dir",
                           str(tmp_path / "cache"), "mt6d_mp", "workers", "supervisor.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]


def test_systemd_unit_names_the_installed_commands(installed: Installed, tmp_path: Path) -> None:
    # The unit names /opt/mt6d/bin (README, "Installation"); here the same venv is elsewhere.
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = (REPO / "init" / "mt6d.service").read_text()
    assert "/opt/mt6d/bin/mt6d-supervisor" in unit and "/opt/mt6d/bin/mt6dctl" in unit
    (tmp_path / "mt6d.service").write_text(unit.replace("/opt/mt6d/", f"{installed.venv}/"))
    done = subprocess.run([analyze, "verify", str(tmp_path / "mt6d.service")], capture_output=True,
                          text=True, timeout=60)
    # verify fails on a command that is not there or not executable, and on unit syntax errors
    assert done.returncode == 0, done.stdout + done.stderr


def test_sysv_script_finds_the_installed_supervisor_with_init_s_path(installed: Installed,
                                                                     tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf" / "gateway-a", conf)
    assert installed.run("mt6d-keygen", conf / "keys" / "host-a-host-b.key").returncode == 0
    # init's minimal PATH, with neither the venv nor /usr/local/bin on it: MT6D_PREFIX is enough.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MT6D_PREFIX": str(installed.venv),
           "MT6D_CONFIG": str(conf / "mt6d.toml"), "MT6D_PIDFILE": str(tmp_path / "mt6d.pid")}
    script = str(REPO / "init" / "mt6d")
    done = subprocess.run([script, "check-config"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    (conf / "keys" / "host-a-host-b.key").unlink()
    bad = subprocess.run([script, "check-config"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 6, bad.stdout + bad.stderr  # the installed supervisor, checking
