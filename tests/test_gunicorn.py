"""The server under gunicorn, as it runs in production (``planbro serve``, and the command
of the Docker image and the benchmark): every refusal is an OperationOutcome, instead of
gunicorn's HTML page, whether Planbro answers it (a header field over its limit) or gunicorn
(a request line over its bound, too many header fields, a request it cannot parse); a 6 KB URL
is served."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from server.store.journal import end_process

ROOT = Path(__file__).resolve().parent.parent
FHIR_JSON = "application/fhir+json"


def free_port() -> int:
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
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRO_", "MONGODB_"))}
    env.update(PLANBRO_DATA=str(tmp_path / "data"),
               PLANBRO_BASE_URL=f"http://127.0.0.1:{port}/fhir")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(_start(request.param, tmp_path / "data", port), cwd=ROOT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        wait_answering(process, base, log)
        yield base
    finally:
        end_process(process, timeout=30)


def wait_answering(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    """Until the server ``process`` (its output in ``log``) answers ``base/metadata``; fails
    when it exits first, or after a minute."""
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if requests.get(f"{base}/metadata", timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def _outcome(response: requests.Response, status: int, expression: list[str] | None,
             code: str = "too-long") -> str:
    """The diagnostics of ``response``, an OperationOutcome of one issue."""
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith(FHIR_JSON), response.text[:300]
    issue = response.json()["issue"][0]
    assert (issue["severity"], issue["code"], issue.get("expression")) == (
        "error", code, expression)
    assert issue["diagnostics"]
    return str(issue["diagnostics"])


def _raw(base: str, request: bytes) -> requests.Response:
    """Send ``request`` as it is on a new connection; the answer, read until the server
    closes the connection."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return _parsed(received)


def _parsed(received: bytes) -> requests.Response:
    """An HTTP/1.1 response as received (its status line, header fields and body)."""
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    response = requests.Response()
    response.status_code = int(status_line.split()[1])
    response.headers.update(dict(f.split(": ", 1) for f in fields))
    response._content = body
    return response


def test_gunicorn_lets_planbro_answer_over_long_requests(served: str) -> None:
    ids = ",".join(f"id-{n:05d}" for n in range(700))  # about 6 KB
    served_6kb = requests.get(f"{served}/metadata?_id={ids}", timeout=30)
    assert served_6kb.status_code == 200, served_6kb.text[:300]
    assert served_6kb.headers["Server"].startswith("gunicorn")
    _outcome(requests.get(f"{served}/metadata?_id={ids},{ids}", timeout=30), 414, None)
    big_header = {"X-Note": "x" * 12000}
    _outcome(requests.get(f"{served}/metadata", headers=big_header, timeout=30), 431,
             ["X-Note"])


def test_requests_gunicorn_refuses_get_an_operation_outcome(served: str) -> None:
    path = urlsplit(served).path
    # A request line over gunicorn's bound (8,190 bytes) is refused before its end arrives.
    unended = f"GET {path}/metadata?_id={'x' * 9000}".encode()
    said = _outcome(_raw(served, unended), 414, None)
    assert "_search" in said, said
    fields = "".join(f"X-Field-{n}: {n}\r\n" for n in range(101))
    _outcome(_raw(served, f"GET {path}/metadata HTTP/1.1\r\nHost: x\r\n{fields}\r\n".encode()),
             431, None)
    _outcome(_raw(served, b"HELLO\r\n\r\n"), 400, None, code="structure")
    _outcome(_raw(served, f"GET {path}/metadata HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n"
                  .encode()), 400, None, code="structure")
    _outcome(_raw(served, f"POST {path}/Patient HTTP/1.1\r\nHost: x\r\n"
                  "Transfer-Encoding: br, chunked\r\n\r\n0\r\n\r\n".encode()),
             501, None, code="not-supported")


def test_gunicorns_own_500_is_an_operation_outcome_too() -> None:
    """gunicorn answers 500 itself when the application fails outside its own error handling
    (it then gives no message): the page says the reason, as an OperationOutcome."""
    pytest.importorskip("gunicorn")
    from server.gunicorn_worker import outcome_page

    page = outcome_page(500, "Internal Server Error", "")
    assert page.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    response = _parsed(page)
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.headers["Connection"] == "close"
    said = _outcome(response, 500, None, code="exception")
    assert said == "Internal Server Error"


def test_a_second_quit_signal_while_quitting_does_not_hang_the_worker() -> None:
    """Ctrl+C reaches the workers as well as gunicorn's master, which passes SIGQUIT on: a
    worker may get its second quit signal while the first one's handler shuts its thread
    pool down, under the pool's lock. Simulated here: the second signal arrives inside that
    lock. The worker still exits (gunicorn's own would wait for the lock forever, until the
    master kills it after its graceful timeout)."""
    pytest.importorskip("gunicorn")
    import queue
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from server.gunicorn_worker import OutcomeWorker

    worker = OutcomeWorker.__new__(OutcomeWorker)  # the signal handling alone
    worker.cfg = SimpleNamespace(worker_int=lambda _worker: None)
    worker.tpool = ThreadPoolExecutor(max_workers=1)

    class SecondSignalInside(queue.SimpleQueue):  # put(None) is made under the pool's lock
        def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
            if item is None:
                worker.handle_quit(signal.SIGQUIT, None)
            super().put(item)

    worker.tpool._work_queue = SecondSignalInside()  # type: ignore[assignment]
    exited: list[int] = []

    def first_signal() -> None:
        try:
            worker.handle_quit(signal.SIGINT, None)
        except SystemExit as exc:
            exited.append(int(exc.code or 0))

    handler = threading.Thread(target=first_signal, daemon=True)
    handler.start()
    handler.join(timeout=10)
    assert not handler.is_alive(), "the worker hangs in its second quit signal"
    assert exited == [0] and worker.alive is False


def test_workers_two_per_cpu_unless_web_concurrency_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from server.gunicorn_conf import THREADS, default_workers

    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert default_workers() == 2 * len(os.sched_getaffinity(0))
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert default_workers() == 3
    assert THREADS == 1
