"""Group commit of audit records: the records of requests that end at the same time in one
process are stored together (one :meth:`~server.store.port.Store.record`).

Every read of a person's data must be recorded before its answer is returned, so every read
becomes a write, and an engine commits one write at a time per file. Storing the records of
concurrent requests together keeps reads from queueing behind one another's commits. The
first request to arrive writes everything queued at that moment (its own records and those of
the requests that came while the previous group was being written); the others wait for the
group their records are in. Each request still returns only once its own records are
committed, and gets the error when its group fails: nothing is shown unaudited.

A request already inside a unit of work (a GET entry of a transaction) writes its records in
that unit of work itself: they commit with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..store.port import Store

Record = tuple[str, dict[str, Any]]  # (resource type, resource)


@dataclass
class _Job:
    records: list[Record]
    finished: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Writes records for concurrent callers of one process in shared units of work."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store
        self._turn = threading.Condition()
        self._queue: list[_Job] = []
        self._writing = False

    def write(self, records: list[Record]) -> None:
        """Store ``records``; returns when they are committed (raises when they are not)."""
        store = self._store()
        if store.in_unit_of_work():
            store.record(records)
            return
        job = _Job(records)
        with self._turn:
            self._queue.append(job)
            while not job.finished and self._writing:
                self._turn.wait()
            group: list[_Job] = []
            if not job.finished:  # nobody is writing: write everything queued, ours too
                self._writing = True
                group, self._queue = self._queue, []
        if group:
            self._commit(store, group)
        if job.error is not None:
            raise job.error

    def _commit(self, store: Store, group: list[_Job]) -> None:
        error: BaseException | None = None
        try:
            store.record([record for job in group for record in job.records])
        except BaseException as exc:  # every request of the group fails with it
            error = exc
        with self._turn:
            for job in group:
                job.error, job.finished = error, True
            self._writing = False
            self._turn.notify_all()
