"""scripts/docker-lab's choice of compose command, and the compose file both versions read.

The choice runs the script's own ``compose_command`` (``scripts/docker-lab compose-command``)
with stand-in ``docker`` and ``docker-compose`` programs first on PATH, so each case is the
script's real probe against a known answer: Debian 12 packages only compose v1, so the v2
branch cannot be run here against the real plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "docker-lab"
COMPOSE_FILE = REPO / "docker" / "docker-compose.yml"

# `docker compose version` succeeds only when FAKE_V2=1, as with and without the plugin (the
# real client without it: "docker: unknown command: docker compose", exit 1).
FAKE_DOCKER = """#!/bin/sh
if [ "$1" = compose ] && [ "$2" = version ] && [ "$FAKE_V2" = 1 ]; then
  echo "Docker Compose version v2.29.7"; exit 0
fi
echo "docker: unknown command: docker $1" >&2; exit 1
"""
# docker-compose that works when FAKE_V1=1, and otherwise fails as a broken install would.
FAKE_COMPOSE_V1 = """#!/bin/sh
[ "$FAKE_V1" = 1 ] || { echo "docker-compose: broken" >&2; exit 1; }
[ "$1" = version ] && echo "docker-compose version 1.29.2, build unknown"
"""


def choose(tmp_path: Path, v2: bool, v1: bool) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, text in (("docker", FAKE_DOCKER), ("docker-compose", FAKE_COMPOSE_V1)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "FAKE_V2": "1" if v2 else "0", "FAKE_V1": "1" if v1 else "0"}
    return subprocess.run([str(SCRIPT), "compose-command"], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize(("v2", "v1", "want"), [
    (True, True, "docker compose"),    # the plugin first, even where v1 is installed too
    (True, False, "docker compose"),   # a host with Docker's packages and no v1
    (False, True, "docker-compose"),   # Debian 12: v1 only
])  # fmt: skip
def test_compose_command_prefers_v2_plugin_then_v1(tmp_path: Path, v2: bool, v1: bool, want: str) -> None:
    done = choose(tmp_path, v2, v1)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == want


def test_compose_command_fails_and_says_so_when_neither_works(tmp_path: Path) -> None:
    done = choose(tmp_path, v2=False, v1=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "neither docker compose nor docker-compose works" in done.stderr


def test_compose_file_has_no_version_key_and_names_its_project() -> None:
    # Compose v2 warns that `version` is obsolete; v1.29 without it reads the Compose
    # Specification. The project name is in docker/.env because v1.29 rejects a top-level `name`.
    top = [line.split(":")[0] for line in COMPOSE_FILE.read_text().splitlines()
           if line and not line[0].isspace() and not line.startswith("#")]
    assert "version" not in top and "name" not in top
    env = (REPO / "docker" / ".env").read_text().splitlines()
    assert "COMPOSE_PROJECT_NAME=mt6d" in env


def compose_config() -> dict[str, object]:
    """docker/docker-compose.yml as docker-compose v1 resolves it (validation included), as data."""
    compose, python = shutil.which("docker-compose"), "/usr/bin/python3"
    if compose is None:
        pytest.skip("docker-compose (v1) not installed: scripts/docker-lab up installs it")
    env = {**os.environ, "MT6D_DOCKER_RUN": "/run/mt6d-docker"}
    done = subprocess.run([compose, "config"], cwd=COMPOSE_FILE.parent, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # docker-compose is itself Python with PyYAML (Debian's python3-yaml); the venv has no YAML.
    to_json = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"
    as_json = subprocess.run([python, "-c", to_json], input=done.stdout, capture_output=True, text=True,
                             timeout=30)
    assert as_json.returncode == 0, as_json.stderr
    config: dict[str, object] = json.loads(as_json.stdout)
    return config


def test_compose_file_valid_for_v1_with_restart_healthcheck_and_healthy_gateways() -> None:
    services = compose_config()["services"]
    assert isinstance(services, dict)
    assert set(services) == {"gateway-a", "gateway-b", "host-a", "host-b"}
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
    for gateway in ("gateway-a", "gateway-b"):
        assert "mt6dctl" in services[gateway]["healthcheck"]["test"]
    assert services["host-a"]["depends_on"] == {"gateway-a": {"condition": "service_healthy"}}
    assert services["host-b"]["depends_on"] == {"gateway-b": {"condition": "service_healthy"}}


# `docker info` answers when FAKE_ENGINE=1; dpkg-query reports the packages in FAKE_INSTALLED
# installed, as `dpkg-query -W -f='${Status}' PACKAGE` does.
FAKE_DOCKER_INFO = """#!/bin/sh
[ "$1" = info ] && [ "$FAKE_ENGINE" = 1 ] && exit 0
exit 1
"""
FAKE_DPKG_QUERY = """#!/bin/sh
for last; do :; done
for p in $FAKE_INSTALLED; do
  [ "$p" = "$last" ] && { printf 'install ok installed'; exit 0; }
done
exit 1
"""


def engine_plan(tmp_path: Path, engine: bool, dockerd: bool, installed: str = "") -> str:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    programs = {"docker": FAKE_DOCKER_INFO, "dpkg-query": FAKE_DPKG_QUERY}
    if dockerd:
        programs["dockerd"] = "#!/bin/sh\nexit 0\n"
    for name, text in programs.items():
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    # /usr/sbin (the real dockerd) is left off PATH; the stand-ins come first
    env = {"PATH": f"{fake}:/usr/bin:/bin", "FAKE_ENGINE": "1" if engine else "0",
           "FAKE_INSTALLED": installed}
    done = subprocess.run([str(SCRIPT), "engine-plan"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(("engine", "dockerd", "installed", "want"), [
    (True, True, "docker-ce docker-ce-cli", "use"),   # any engine that answers, Docker's own too
    (True, False, "", "use"),                          # e.g. a remote or rootless engine
    (False, True, "docker.io", "start"),               # installed, not running: started by hand
    (False, False, "", "install"),                     # nothing: Debian's docker.io
    (False, False, "docker-ce-cli", "refuse docker-ce-cli"),  # never replace Docker's packages
    (False, False, "moby-engine", "refuse moby-engine"),
])  # fmt: skip
def test_engine_plan_installs_docker_io_only_when_no_engine_and_no_dockers_own_packages(
        tmp_path: Path, engine: bool, dockerd: bool, installed: str, want: str) -> None:
    assert engine_plan(tmp_path, engine, dockerd, installed) == want
