"""The server under gunicorn, as it runs in production (``planbro serve``, and the command
of the Docker image and the benchmark): an over-long URL or header field reaches Planbro,
which answers it with an OperationOutcome, instead of gunicorn's HTML page; a 6 KB URL is
served."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from server.store.journal import end_process

ROOT = Path(__file__).resolve().parent.parent
FHIR_JSON = "application/fhir+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(kind: str, data: Path, port: int) -> list[str]:
    if kind == "planbro serve":
        return [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
                "--data", str(data), "--workers", "1", "--threads", "2"]
    return [sys.executable, "-m", "gunicorn", "-c", "python:server.gunicorn_conf", "-w", "1",
            "-b", f"127.0.0.1:{port}", "server.app:create_app()"]


@pytest.fixture(params=["planbro serve", "gunicorn -c python:server.gunicorn_conf"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The base URL of a server started as ``request.param`` on a free port."""
    pytest.importorskip("gunicorn")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRO_", "MONGODB_"))}
    env.update(PLANBRO_DATA=str(tmp_path / "data"),
               PLANBRO_BASE_URL=f"http://127.0.0.1:{port}/fhir")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(_start(request.param, tmp_path / "data", port), cwd=ROOT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if requests.get(f"{base}/metadata", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield base
    finally:
        end_process(process, timeout=30)


def _outcome(response: requests.Response, status: int, expression: list[str] | None) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith(FHIR_JSON), response.text[:300]
    issue = response.json()["issue"][0]
    assert (issue["severity"], issue["code"], issue.get("expression")) == (
        "error", "too-long", expression)
    assert issue["diagnostics"]


def test_gunicorn_lets_planbro_answer_over_long_requests(served: str) -> None:
    ids = ",".join(f"id-{n:05d}" for n in range(700))  # about 6 KB
    served_6kb = requests.get(f"{served}/metadata?_id={ids}", timeout=30)
    assert served_6kb.status_code == 200, served_6kb.text[:300]
    assert served_6kb.headers["Server"].startswith("gunicorn")
    _outcome(requests.get(f"{served}/metadata?_id={ids},{ids}", timeout=30), 414, None)
    big_header = {"X-Note": "x" * 12000}
    _outcome(requests.get(f"{served}/metadata", headers=big_header, timeout=30), 431,
             ["X-Note"])
