"""Timing: a keep-alive HTTP client, a concurrent runner with bounded count and time, and
latency statistics."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

Operation = Callable[[int], None]
"""One measured operation; called with the running thread's number; raises on failure."""


class HttpError(Exception):
    pass


class Client:
    """One keep-alive connection to the server (use one per thread). ``token``: the bearer
    token every client of this run sends (set once the server has issued it)."""

    token: str | None = None

    def __init__(self, host: str, port: int, base_path: str) -> None:
        self.host, self.port, self.base_path = host, port, base_path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None,
                expect: tuple[int, ...] = (200, 201)) -> Any:
        """Send a request; return the parsed JSON body (None when empty)."""
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Accept": "application/fhir+json"}
        if Client.token:
            headers["Authorization"] = f"Bearer {Client.token}"
        if data is not None:
            headers["Content-Type"] = "application/fhir+json"
        for attempt in (1, 2):  # reconnect once when the server closed an idle connection
            conn = self._connection()
            try:
                conn.request(method, self.base_path + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
        if response.status not in expect:
            raise HttpError(f"{method} {path}: HTTP {response.status} {raw[:300]!r}")
        return json.loads(raw) if raw else None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Stats:
    """What one measured operation did."""

    name: str
    count: int
    errors: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    first_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_ms: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_ms:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def run(name: str, operation: Operation, *, concurrency: int, duration: float,
        max_count: int) -> Stats:
    """Run ``operation`` from ``concurrency`` threads until ``duration`` seconds have passed
    or ``max_count`` operations have started, whichever comes first."""
    lock = threading.Lock()
    started = 0
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    deadline = time.perf_counter() + duration

    def claim() -> bool:
        nonlocal started
        with lock:
            if started >= max_count or time.perf_counter() >= deadline:
                return False
            started += 1
            return True

    def worker(thread: int) -> None:
        mine = latencies[thread]
        while claim():
            t0 = time.perf_counter()
            try:
                operation(thread)
            except Exception as exc:  # every failure counts as an error
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            mine.append((time.perf_counter() - t0) * 1000)

    begin = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - begin
    merged = sorted(ms for per_thread in latencies for ms in per_thread)
    return Stats(name=name, count=len(merged), errors=len(errors), seconds=round(seconds, 3),
                 per_second=round(len(merged) / seconds, 1) if seconds else 0.0,
                 p50_ms=round(percentile(merged, 0.50), 2),
                 p95_ms=round(percentile(merged, 0.95), 2),
                 p99_ms=round(percentile(merged, 0.99), 2),
                 first_error=errors[0] if errors else None)
