"""Group commit of audit records: concurrent requests store their records together, each
returns only once its own records are committed, and a failed group fails every request in
it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_kit import embedded_store

from server.audit.commit import GroupCommit
from server.fhir.search.ast import SearchQuery
from server.store.embedded import EmbeddedStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    engine = embedded_store(tmp_path / "audit.db")
    yield engine
    engine.close()


def _event(n: int) -> tuple[str, dict[str, Any]]:
    return "AuditEvent", {"resourceType": "AuditEvent", "outcomeDesc": str(n)}


def _count(store: EmbeddedStore) -> int:
    total = store.search(SearchQuery("AuditEvent", count=0, total=True)).total
    assert total is not None
    return total


class _Slow:
    """A store whose first storing of records waits until released, counting them."""

    def __init__(self, inner: EmbeddedStore) -> None:
        self.inner, self.units = inner, 0
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def record(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        self.units += 1
        if self.units == 1:
            self.entered.set()
            assert self.release.wait(10)
        self.inner.record(records)


def test_requests_arriving_during_a_commit_share_the_next(store: EmbeddedStore) -> None:
    slow = _Slow(store)
    commits = GroupCommit(lambda: slow)  # type: ignore[arg-type, return-value]
    first = threading.Thread(target=commits.write, args=([_event(0)],))
    first.start()
    assert slow.entered.wait(10)
    others = [threading.Thread(target=commits.write, args=([_event(n)],)) for n in range(1, 8)]
    for thread in others:
        thread.start()
    time.sleep(0.3)  # they queue behind the commit in progress
    assert _count(store) == 0
    slow.release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert _count(store) == 8
    assert slow.units == 2  # the seven waiting requests were committed together


def test_concurrent_requests_all_return_committed(store: EmbeddedStore) -> None:
    commits = GroupCommit(lambda: store)
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def request(n: int) -> None:
        start.wait()
        try:
            for k in range(20):
                commits.write([_event(n * 100 + k)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and _count(store) == 160


def test_a_failed_group_fails_its_requests(store: EmbeddedStore) -> None:
    commits = GroupCommit(lambda: store)
    broken: dict[str, Any] = None  # type: ignore[assignment]
    with pytest.raises(TypeError):
        commits.write([_event(0), ("AuditEvent", broken)])
    assert _count(store) == 0  # all or nothing
    commits.write([_event(1)])
    assert _count(store) == 1


def test_inside_a_unit_of_work_records_commit_with_it(store: EmbeddedStore) -> None:
    commits = GroupCommit(lambda: store)
    with pytest.raises(RuntimeError), store.unit_of_work():
        commits.write([_event(1)])
        raise RuntimeError("the transaction fails")
    assert _count(store) == 0
    with store.unit_of_work():
        commits.write([_event(2)])
    assert _count(store) == 1
