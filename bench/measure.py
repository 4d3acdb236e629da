"""Timing: a keep-alive HTTP client, a concurrent runner with bounded count and time, and
latency statistics."""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

Operation = Callable[[int], None]
"""One measured operation; called with the running thread's number; raises on failure."""


class HttpError(Exception):
    pass


RECONNECT_EVERY = 100
"""A client opens a new connection after this many requests. The server's worker processes
take turns accepting connections, and which one takes a connection is chance: a few
connections kept for a whole run could all land on one worker, which would then serve them
alone (one interpreter lock) while the other idles. New connections go to the worker that
is free to accept them, so the load spreads as it does with many clients."""


class Client:
    """A keep-alive HTTP/1.1 connection to the server, renewed every
    :data:`RECONNECT_EVERY` requests (use one client per thread). ``token``: the bearer
    token every client of this run sends (set once the server has issued it).

    It writes the request and reads the response on the socket itself: the clients share the
    server's CPUs, and ``http.client`` (which parses headers as e-mail messages) costs about
    three times the CPU per request, time the server would otherwise have."""

    token: str | None = None

    def __init__(self, host: str, port: int, base_path: str) -> None:
        self.host, self.port, self.base_path = host, port, base_path.rstrip("/")
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._sent = 0

    def request(self, method: str, path: str, body: Any = None,
                expect: tuple[int, ...] = (200, 201)) -> Any:
        """Send a request; return the parsed JSON body (None when empty)."""
        data = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        head = [f"{method} {self.base_path}{path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                "Accept: application/fhir+json", f"Content-Length: {len(data)}"]
        if Client.token:
            head.append(f"Authorization: Bearer {Client.token}")
        if body is not None:
            head.append("Content-Type: application/fhir+json")
        message = ("\r\n".join(head) + "\r\n\r\n").encode() + data
        for attempt in (1, 2):  # reconnect once when the server closed an idle connection
            sock = self._connection()
            try:
                sock.sendall(message)
                status, raw, keep = self._response(sock)
                break
            except ConnectionError:
                self.close()
                if attempt == 2:
                    raise
        if not keep:
            self.close()
        if status not in expect:
            raise HttpError(f"{method} {path}: HTTP {status} {raw[:300]!r}")
        return json.loads(raw) if raw else None

    def _response(self, sock: socket.socket) -> tuple[int, bytes, bool]:
        """Read one response: its status, body and whether the connection stays open."""
        buffer = self._buffer
        while b"\r\n\r\n" not in buffer:
            buffer += self._receive(sock)
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get("transfer-encoding") == "chunked":
            body, buffer = self._chunked(sock, buffer)
        else:
            length = int(headers.get("content-length", "0"))
            while len(buffer) < length:
                buffer += self._receive(sock)
            body, buffer = buffer[:length], buffer[length:]
        self._buffer = buffer
        return status, body, headers.get("connection") != "close"

    def _chunked(self, sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
        chunks = []
        while True:
            while b"\r\n" not in buffer:
                buffer += self._receive(sock)
            size_line, _, buffer = buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(buffer) < size + 2:
                buffer += self._receive(sock)
            chunks.append(buffer[:size])
            buffer = buffer[size + 2:]
            if size == 0:
                return b"".join(chunks), buffer

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        data = sock.recv(262144)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def _connection(self) -> socket.socket:
        self._sent += 1
        if self._sent % RECONNECT_EVERY == 0:
            self.close()
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=120)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = b""
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


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
    server_cpu_ms: float | None = None
    """CPU time the server's processes spent per operation (all of them: it does not
    depend on how the work was spread over them), the work they deferred included: it is
    counted until they are quiet again (:func:`settle`)."""
    machine_busy_pct: float | None = None
    """How busy the machine's CPUs were while the operations ran, in percent of all of them
    (every process: the server's, the clients' and others'). Well below 100 with several
    clients, the operation waits for something other than CPU time (a lock, a disk)."""
    speed_ms: tuple[float, float] | None = None
    """The machine's speed (:func:`calibrate`, lower is faster) right before and right after
    the operations ran. Where the CPUs are shared with other machines it changes from one
    minute to the next, and a figure compares with another only as far as these do."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: its parent's id and the CPU time (user + system, in ticks) it
    has spent so far (from Linux's /proc)."""
    found: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        found[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def machine_ticks() -> tuple[int, int] | None:
    """The machine's CPU time so far, in ticks of all its CPUs: (busy, total), from Linux's
    /proc/stat (None elsewhere). Busy is every state but idle and waiting for I/O."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:]]
    except OSError:
        return None
    total = sum(ticks[:8])  # user nice system idle iowait irq softirq steal (guests are in user)
    return total - ticks[3] - ticks[4], total


def busy_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time that was busy between two :func:`machine_ticks`."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def _tree(root: int, processes: dict[int, tuple[int, int]]) -> set[int]:
    tree, grown = {root}, True
    while grown:
        more = {pid for pid, (parent, _) in processes.items() if parent in tree} - tree
        tree |= more
        grown = bool(more)
    return tree


def tree_pids(root: int) -> set[int]:
    """Process ``root`` and its live descendants (Linux)."""
    return _tree(root, _processes())


def tree_cpu_seconds(root: int) -> float | None:
    """CPU time (user + system) spent so far by process ``root`` and its descendants that
    are alive (from Linux's /proc; None elsewhere)."""
    if not os.path.isdir(f"/proc/{root}"):
        return None
    processes = _processes()
    return (sum(processes[pid][1] for pid in _tree(root, processes) if pid in processes)
            / os.sysconf("SC_CLK_TCK"))


QUIET_SHARE = 0.05
"""A server is quiet when its processes use less than this share of one CPU ..."""
QUIET_WINDOW_S = 0.25
"""... over this long."""
SETTLE_TIMEOUT_S = 120.0
"""The longest :func:`settle` waits for a server that stays busy."""


def settle(root: int) -> float | None:
    """Wait until the server whose first process is ``root`` is quiet: the work it deferred
    (moving audit records into their tables, checkpoints) is done. Returns the CPU time its
    processes had spent by then (:func:`tree_cpu_seconds`); None where that is unknown.

    Between the figures of a run this keeps what one operation left behind from being
    charged to the next one (and lets the next one start from the same state)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    spent = tree_cpu_seconds(root)
    while spent is not None and time.monotonic() < deadline:
        time.sleep(QUIET_WINDOW_S)
        now = tree_cpu_seconds(root)
        if now is None or now - spent < QUIET_SHARE * QUIET_WINDOW_S:
            return now
        spent = now
    return spent


CALIBRATION_ROUNDS = 7
"""Rounds of the calibration workload; the fastest counts (:func:`calibrate`)."""


def calibrate(sample: Any) -> float:
    """How fast this machine runs Python now: the least time, in ms, of
    :data:`CALIBRATION_ROUNDS` rounds of a fixed workload (JSON round trips of ``sample``
    and a loop of arithmetic), run while the server is quiet. Where the CPUs are shared with
    other machines, the same code runs faster or slower from one hour to the next, and the
    figures of two runs compare only as far as their calibrations do."""
    text = json.dumps(sample)
    best = math.inf
    for _ in range(CALIBRATION_ROUNDS):
        start = time.perf_counter()
        for _ in range(50):
            json.dumps(json.loads(text))
            sum(i * i for i in range(2000))
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 2)


def percentile(sorted_ms: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_ms:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def run(name: str, operation: Operation, *, concurrency: int, duration: float,
        max_count: int, server: int | None = None,
        speed: Callable[[], float] | None = None) -> Stats:
    """Run ``operation`` from ``concurrency`` threads until ``duration`` seconds have passed
    or ``max_count`` operations have started, whichever comes first. ``server``: the id of
    the server's (first) process, for :attr:`Stats.server_cpu_ms`; the run then starts once
    the server is quiet, and its CPU time is counted until it is quiet again
    (:func:`settle`). ``speed``: measures the machine's speed (:attr:`Stats.speed_ms`),
    while the server is quiet."""
    if server is not None:
        settle(server)
    speed_before = None if speed is None else speed()
    cpu_before = None if server is None else tree_cpu_seconds(server)
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

    begin, ticks_before = time.perf_counter(), machine_ticks()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds, busy = time.perf_counter() - begin, busy_pct(ticks_before, machine_ticks())
    cpu_after = None if server is None else settle(server)
    speed_ms = None if speed is None or speed_before is None else (speed_before, speed())
    merged = sorted(ms for per_thread in latencies for ms in per_thread)
    server_cpu_ms = None
    if cpu_before is not None and cpu_after is not None and merged:
        server_cpu_ms = round((cpu_after - cpu_before) * 1000 / len(merged), 2)
    return Stats(name=name, count=len(merged), errors=len(errors), seconds=round(seconds, 3),
                 per_second=round(len(merged) / seconds, 1) if seconds else 0.0,
                 p50_ms=round(percentile(merged, 0.50), 2),
                 p95_ms=round(percentile(merged, 0.95), 2),
                 p99_ms=round(percentile(merged, 0.99), 2),
                 first_error=errors[0] if errors else None, server_cpu_ms=server_cpu_ms,
                 machine_busy_pct=busy, speed_ms=speed_ms)
