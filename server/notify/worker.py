"""A background thread that runs periodic jobs (notification delivery, reminders).

Each job returns how many seconds it wants to wait before its next run (None: its regular
interval). :meth:`Worker.wake` asks for a job to run soon; since the write that woke it may
not be committed yet, a woken job that finds nothing to do is tried again a few times over
``burst_s`` seconds. The thread holds the worker only weakly: when the application (and with
it the worker) goes away, the thread ends at its next turn; :meth:`Worker.stop` ends it at
once. Job errors are logged and the job runs again at its next turn.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

JobRun = Callable[[], float | None]
_RETRY_S = 0.1


@dataclass
class Job:
    name: str
    interval_s: float
    run: JobRun
    next_at: float = 0.0
    burst_until: float = 0.0


class Worker:
    def __init__(self, jobs: list[Job], *, name: str = "planbro-worker",
                 burst_s: float = 3.0) -> None:
        self.jobs = {job.name: job for job in jobs}
        self.name = name
        self.burst_s = burst_s
        self._event = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, first_delay_s: float = 1.0) -> None:
        """Start the thread; every job first runs ``first_delay_s`` seconds from now."""
        if self.running:
            return
        start = time.monotonic() + first_delay_s
        for job in self.jobs.values():
            job.next_at = start
        self._stopped.clear()
        self._thread = threading.Thread(target=_loop, args=(weakref.ref(self),),
                                        name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopped.set()
        self._event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._thread = None

    def wake(self, name: str) -> None:
        """Run job ``name`` soon (and again shortly if it then finds nothing)."""
        with self._lock:
            job = self.jobs[name]
            now = time.monotonic()
            job.next_at = now
            job.burst_until = now + self.burst_s
        self._event.set()

    def run_due(self) -> float:
        """Run the jobs whose time has come; returns seconds until the next one is due."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.next_at <= now and not self._stopped.is_set():
                self._run(job)
        with self._lock:
            return max(0.0, min(j.next_at for j in self.jobs.values()) - time.monotonic())

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        try:
            wanted = job.run()
        except Exception:  # a failing job must not end the worker
            log.exception("Background job %s failed", job.name)
            wanted = None
        now = time.monotonic()
        with self._lock:
            if job.next_at > started:
                return  # woken while running: it runs again at the next turn
            if wanted is None and now < job.burst_until:
                job.next_at = now + _RETRY_S
            elif wanted is None:
                job.next_at = now + job.interval_s
            else:
                job.next_at = now + min(max(wanted, 0.0), job.interval_s)


def _loop(ref: weakref.ReferenceType[Worker]) -> None:
    while True:
        worker = ref()
        if worker is None or worker._stopped.is_set():
            return
        wait = worker.run_due()
        event, stopped = worker._event, worker._stopped
        del worker  # hold the worker only while running its jobs
        event.wait(wait)
        event.clear()
        if stopped.is_set():
            return
