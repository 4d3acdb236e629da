"""The benchmark's measuring tools (bench/measure.py) on real processes: a figure's server
CPU time counts what the server's processes did after the answers were given, and the next
figure starts only once that work is done."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_measure", ROOT / "bench" / "measure.py")
assert _spec is not None and _spec.loader is not None
measure = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = measure
_spec.loader.exec_module(measure)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="the benchmark reads CPU times from Linux's /proc")

BUSY_S = 0.6
# A "server" whose child process goes on working after the parent has answered (as the
# records process moves audit records), then idles.
_CHILD = f"""
import time
start = time.process_time()
while time.process_time() - start < {BUSY_S}:
    pass
time.sleep(60)
"""
_PARENT = f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {_CHILD!r}])
time.sleep(60)
"""


def test_settle_waits_until_the_deferred_work_of_a_child_process_is_done() -> None:
    server = subprocess.Popen([sys.executable, "-c", _PARENT])
    try:
        began = time.monotonic()
        spent = measure.settle(server.pid)
        waited = time.monotonic() - began
        assert spent is not None and spent >= BUSY_S
        assert waited < measure.SETTLE_TIMEOUT_S
        # quiet now: it stays put
        again = measure.tree_cpu_seconds(server.pid)
        assert again is not None and again - spent < 0.05
    finally:
        for child in measure.tree_pids(server.pid) - {server.pid}:
            os.kill(child, signal.SIGKILL)
        server.kill()
        server.wait()


def test_settle_returns_none_for_a_process_that_is_gone() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert measure.settle(gone.pid) is None


def test_calibration_times_a_fixed_workload_in_milliseconds() -> None:
    sample = {"resourceType": "Bundle", "entry": [{"resource": {"id": str(i)}}
                                                  for i in range(50)]}
    ms = measure.calibrate(sample)
    assert isinstance(ms, float) and 0 < ms < 60_000


def test_a_run_records_the_machines_speed_before_and_after() -> None:
    speeds = iter([20.0, 31.5])
    stats = measure.run("noop", lambda _t: None, concurrency=2, duration=0.05, max_count=10,
                        speed=lambda: next(speeds))
    assert stats.speed_ms == (20.0, 31.5)
    assert stats.as_dict()["speed_ms"] == (20.0, 31.5)
    assert measure.run("noop", lambda _t: None, concurrency=1, duration=0.05,
                       max_count=10).speed_ms is None


def test_machine_busy_share_counts_every_process() -> None:
    assert measure.busy_pct((100, 1000), (150, 1100)) == 50.0
    assert measure.busy_pct(None, (150, 1100)) is None
    assert measure.busy_pct((100, 1000), (100, 1000)) is None
    before = measure.machine_ticks()
    start = time.process_time()
    while time.process_time() - start < 0.3:  # this process keeps one CPU busy
        pass
    after = measure.machine_ticks()
    assert before is not None and after is not None
    busy_ticks = after[0] - before[0]
    assert busy_ticks >= 0.25 * os.sysconf("SC_CLK_TCK"), (before, after)
    share = measure.busy_pct(before, after)
    assert share is not None and 100 / (os.cpu_count() or 1) * 0.8 <= share <= 100
