"""docker-compose.yml and docker/Dockerfile: structure and consistency.

The compose file is parsed with PyYAML and checked here on every machine; when a Compose CLI
(``docker compose`` or ``docker-compose``) is installed, it must also accept the file.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_mongo_is_an_initiated_single_node_replica_set(compose: dict[str, Any]) -> None:
    mongo = compose["services"]["mongo"]
    assert mongo["image"] == "mongo:7"
    command = mongo["command"]
    replica_set = command[command.index("--replSet") + 1]
    check = " ".join(mongo["healthcheck"]["test"])
    assert "mongosh" in check and "rs.initiate(" in check and "isWritablePrimary" in check
    assert f"_id: '{replica_set}'" in check and "host: 'mongo:27017'" in check
    assert mongo["ports"] == ["127.0.0.1:27017:27017"]  # the loopback address only


def test_server_uses_the_replica_set_and_waits_for_it(compose: dict[str, Any]) -> None:
    server = compose["services"]["planbro"]
    mongo_command = compose["services"]["mongo"]["command"]
    # the public URL the port is published at, unless the environment names another
    assert server["environment"]["PLANBRO_BASE_URL"] == (
        "${PLANBRO_BASE_URL:-http://localhost:8080/fhir}")
    uri = urlsplit(server["environment"]["MONGODB_URI"])
    assert uri.scheme == "mongodb" and uri.netloc == "mongo:27017"
    assert parse_qs(uri.query)["replicaSet"] == [mongo_command[mongo_command.index("--replSet")
                                                               + 1]]
    assert server["depends_on"] == {"mongo": {"condition": "service_healthy"}}
    check = " ".join(server["healthcheck"]["test"])
    assert "http://localhost:8080/fhir/metadata" in check and "urllib" in check
    assert "8080:8080" in server["ports"]


def test_dockerfile_builds_the_package_and_runs_gunicorn(compose: dict[str, Any]) -> None:
    build = compose["services"]["planbro"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text(encoding="utf-8")
    lines = [line.strip() for line in dockerfile.splitlines()]
    assert "FROM python:3.11-slim" in lines
    # installed in place: the server reads profiles/ and mappings/ from the source tree
    assert any(line.startswith("RUN pip install -e .") for line in lines)
    # the workers as server/gunicorn_conf.py says (WEB_CONCURRENCY, else 2 per CPU)
    assert ('CMD ["gunicorn", "-c", "python:server.gunicorn_conf", "-b", '
            '"0.0.0.0:8080", "server.app:create_app()"]' in lines)
    ignore = (ROOT / build["context"] / f"{build['dockerfile']}.dockerignore").read_text(
        encoding="utf-8").split()
    assert ".git" in ignore and "server" not in ignore and "pyproject.toml" not in ignore


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True,
                               check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI (docker compose / docker-compose) is installed")
    result = subprocess.run([*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                            text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
