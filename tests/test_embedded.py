"""The embedded engine only: index use, WAL, durability, crashes and several processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from store_kit import ID, LAST_UPDATED, PARAMS, date_range, embedded_store, index_resource

from server import cli
from server.audit import store_indexer
from server.config import Config
from server.fhir.outcome import FhirError
from server.fhir.search.ast import (
    Chain,
    Clause,
    Condition,
    DateQuery,
    Has,
    MissingQuery,
    NumberQuery,
    QuantityQuery,
    ReferenceQuery,
    SearchQuery,
    SortKey,
    StringQuery,
    TokenQuery,
    UriQuery,
)
from server.fhir.search.normalize import serving
from server.fhir.search.parse import parse_search
from server.fhir.search.registry import Registry
from server.store import embedded as embedded_engine
from server.store import journal, open_store
from server.store.embedded import SCHEMA_VERSION, EmbeddedStore
from server.store.port import HistoryQuery, UniqueConflict
from server.store.sql_query import compile_search

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "folder" / "planbro.db"


@pytest.fixture
def embedded(db: Path) -> Iterator[EmbeddedStore]:
    store = embedded_store(db)
    yield store
    store.close()


def _put(store: EmbeddedStore, type_: str, id_: str, **body: object) -> None:
    with store.unit_of_work() as uow:
        uow.update(type_, id_, {"resourceType": type_, **body})


# -- index use -------------------------------------------------------------------------------

_DAY = date_range("2024-01-02")
_ONE = Decimal(1)


def _clause(key: str, *values: object, mod: str | None = None) -> Clause:
    param = {"_id": ID, "_lastUpdated": LAST_UPDATED}.get(key) or PARAMS[key]
    return Clause(param, mod, values)  # type: ignore[arg-type]


_INDEXED: dict[str, list[Condition]] = {
    "token": [_clause("Patient.identifier", TokenQuery("urn:x", "1"))],
    "token code": [_clause("Patient.identifier", TokenQuery(None, "1"), TokenQuery("", "2"))],
    "token system": [_clause("Patient.identifier", TokenQuery("urn:x", None))],
    "token text": [_clause("Patient.language", TokenQuery(None, "norsk"), mod="text")],
    "reference": [_clause("Patient.general-practitioner", ReferenceQuery("Practitioner", "d"))],
    "reference id": [_clause("Patient.general-practitioner", ReferenceQuery(None, "d"))],
    "reference url": [_clause("Patient.general-practitioner",
                              ReferenceQuery(None, None, url="https://x/Practitioner/1"))],
    "reference identifier": [_clause("Task.for", TokenQuery("urn:x", "1"), mod="identifier")],
    **{f"date {p}": [_clause("Patient.birthdate", DateQuery(p, *_DAY))]  # type: ignore[arg-type]
       for p in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")},
    "string": [_clause("Patient.name", StringQuery("ola"))],
    "string exact": [_clause("Patient.name", StringQuery("Ola"), mod="exact")],
    "string contains": [_clause("Patient.name", StringQuery("la"), mod="contains")],
    "uri": [_clause("Subscription.url", UriQuery("https://a/b"))],
    "uri below": [_clause("Subscription.url", UriQuery("https://a/b"), mod="below")],
    "uri above": [_clause("Subscription.url", UriQuery("https://a/b"), mod="above")],
    "number": [_clause("Patient.birth-order", NumberQuery("gt", _ONE, _ONE, _ONE))],
    "quantity": [_clause("Goal.target-quantity",
                         QuantityQuery("eq", _ONE, _ONE / 2, _ONE * 3 / 2, None, "kg"))],
    "_id": [_clause("_id", TokenQuery(None, "a"), TokenQuery(None, "b"))],
    "_lastUpdated": [_clause("_lastUpdated", DateQuery("ge", *_DAY))],
    "chain": [Chain(PARAMS["Task.for"], "Patient",
                    _clause("Patient.name", StringQuery("ola")))],
    "has": [Has("Task", PARAMS["Task.for"], _clause("Task.status", TokenQuery(None, "ready")))],
    "not": [_clause("Patient.gender", TokenQuery(None, "male"), mod="not")],
    "missing": [_clause("Patient.birthdate", MissingQuery(True), mod="missing")],
    "two clauses": [_clause("Patient.gender", TokenQuery(None, "male")),
                    _clause("Patient.birthdate", DateQuery("lt", *_DAY))],
}
_TYPE_OF = {"reference identifier": "Task", "chain": "Task", "uri": "Subscription",
            "uri below": "Subscription", "uri above": "Subscription", "quantity": "Goal"}
_NOT_DRIVEN = {"not", "missing", "_lastUpdated"}  # nothing to drive from but the type


@pytest.mark.parametrize("name", sorted(_INDEXED))
def test_searches_use_indexes(embedded: EmbeddedStore, name: str) -> None:
    for n in range(10):
        _put(embedded, "Patient", f"p{n}", name=[{"family": f"Ola{n}"}], gender="male")
        _put(embedded, "Task", f"t{n}", status="ready", **{"for": {"reference": f"Patient/p{n}"}})
    query = SearchQuery(_TYPE_OF.get(name, "Patient"), _INDEXED[name],
                        sort=[SortKey(PARAMS["Patient.birthdate"])] if name == "string" else [],
                        ids=frozenset({"p1", "p2"}) if name == "token" else None)
    plan = embedded.explain(query)
    scans = [line for line in plan if line.startswith("SCAN")
             and "VIRTUAL TABLE" not in line and "CONSTANT ROW" not in line
             and not line.endswith("_systems")]  # a code's systems: one row per system
    assert not scans, plan
    # The page is chosen first (inner query), then its JSON read by primary key.
    assert plan[0] == "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)", plan
    assert plan[1].startswith("LIST SUBQUERY"), plan
    driver = plan[2]
    if name in _NOT_DRIVEN:
        assert driver.startswith(("SEARCH r USING INDEX resource_updated (type=? AND deleted=?",
                                  "SEARCH r USING COVERING INDEX resource_updated (type=? AND "
                                  "deleted=?")), plan
    else:
        assert driver == "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)", plan
    for line in plan:
        if line.startswith("SEARCH t"):
            seek = line.partition("(")[2]
            assert ("type=?" in seek and "param=?" in seek) or seek.startswith("pk=? AND param=?") \
                or seek == "type=? AND id=?)" or "INTEGER PRIMARY KEY" in line, plan
    if name in _PARTIAL:  # the index of the rows that have the value searched
        assert any(f"INDEX {_PARTIAL[name]} " in line for line in plan), plan
    if name in _SEEKS:
        assert any(line.endswith(_SEEKS[name]) for line in plan), plan


_PARTIAL = {"token text": "idx_token_text", "reference url": "idx_reference_url"}
_SEEKS = {  # one index for tokens: a code alone is sought under each system
    "token": "COVERING INDEX idx_token_value (type=? AND param=? AND system=? AND code=?)",
    "token code": "COVERING INDEX idx_token_value (type=? AND param=? AND system=? AND code=?)",
    "token system": "COVERING INDEX idx_token_value (type=? AND param=? AND system=?)"}


@pytest.mark.parametrize("probed", ["status", "for"])
def test_a_probe_reads_only_its_index(embedded: EmbeddedStore, probed: str) -> None:
    """A condition that does not drive the search is checked in the ``(pk, param)`` index
    alone, without reading the index table's row."""
    for n in range(10):
        _put(embedded, "Task", f"t{n}", status="ready", **{"for": {"reference": f"Patient/p{n}"},
             "owner": {"reference": f"Practitioner/x{n % 2}"}})
    probe = {"status": _clause("Task.status", TokenQuery("", "ready")),
             "for": _clause("Task.for", ReferenceQuery("Patient", "p1"))}[probed]
    plan = embedded.explain(SearchQuery("Task", [
        _clause("Task.owner", ReferenceQuery("Practitioner", "x1")), probe]))
    assert any(line.startswith("SEARCH t") and "COVERING INDEX" in line
               and "(pk=? AND param=?" in line for line in plan), plan


@pytest.mark.parametrize("sort", [False, True])
def test_a_large_driver_gives_way_to_a_smaller_one(
        embedded: EmbeddedStore, monkeypatch: pytest.MonkeyPatch, sort: bool) -> None:
    """The ranks put a reference before a date, but when every task has that owner and few
    were authored before the date, the date drives (sorted or not), with the same pages
    and total as the plan the ranks choose."""
    with embedded.unit_of_work() as uow:
        for i in range(700):
            uow.update("Task", f"t{i:03}", {
                "resourceType": "Task", "status": "ready",
                "owner": {"reference": "Practitioner/x0"},
                "authoredOn": f"{2023 if i % 100 == 7 else 2024}-02-{1 + i % 28:02}"})
    query = SearchQuery("Task", [_clause("Task.owner", ReferenceQuery("Practitioner", "x0")),
                                 _clause("Task.authored-on", DateQuery("lt", *_DAY))],
                        sort=[SortKey(PARAMS["Task.authored-on"])] if sort else [],
                        count=3, total=True)
    plan = embedded.explain(query)
    assert any(line.startswith("SEARCH t") and "idx_date" in line for line in plan), plan
    assert not any(line.startswith("SEARCH t") and "idx_reference" in line
                   and "pk=?" not in line for line in plan), plan
    found = embedded.search(query)
    monkeypatch.setattr(embedded_engine, "ORDERED_PLAN_FROM", 10**9)  # the ranks' plan
    assert not any("idx_date" in line and "pk=?" not in line
                   for line in embedded.explain(query)), embedded.explain(query)
    assert found == embedded.search(query)
    ids = [r["id"] for r in found.resources]
    assert found.total == 7 and len(ids) == 3 and all(i.endswith("07") for i in ids)
    assert ids == ["t507", "t007", "t207"] or not sort  # by authored-on: 4, 8, 12 February


def _tasks(store: EmbeddedStore, n: int) -> None:
    with store.unit_of_work() as uow:
        for i in range(n):
            uow.update("Task", f"t{i:04}", {
                "resourceType": "Task", "status": ("ready", "requested", "completed")[i % 3],
                "for": {"reference": f"Patient/p{i % 7 if i < n // 2 else 99}"}})


def _pages(store: EmbeddedStore, conditions: list[Condition]) -> list[list[object]]:
    return [[r["id"] for r in store.search(SearchQuery(
        "Task", conditions, count=count, offset=offset, total=True)).resources]
        for count, offset in ((1, 0), (20, 0), (20, 40), (100, 150), (50, 2000), (0, 0))]


@pytest.mark.parametrize("window", [5000, 40])
def test_the_ordered_plan_returns_the_driven_plans_pages(
        embedded: EmbeddedStore, monkeypatch: pytest.MonkeyPatch, window: int) -> None:
    """A large driver (>= ORDERED_PLAN_FROM index rows) walks the default order instead of
    sorting every match; with a small window a sparse page falls back to the driven plan.
    Either way the pages are the driven plan's."""
    _tasks(embedded, 1500)
    many = [_clause("Task.status", TokenQuery(None, "ready"))]
    sparse = [*many, _clause("Task.for", ReferenceQuery("Patient", "99"))]
    late = [*many, _clause("Task.for", ReferenceQuery("Patient", "3"))]
    monkeypatch.setattr(embedded_engine, "ORDERED_WINDOW", window)
    walked = {name: _pages(embedded, c) for name, c in
              (("many", many), ("sparse", sparse), ("late", late))}
    monkeypatch.setattr(embedded_engine, "ORDERED_PLAN_FROM", 10**9)
    for name, conditions in (("many", many), ("sparse", sparse), ("late", late)):
        assert walked[name] == _pages(embedded, conditions), name
    assert len(walked["many"][3]) == 100 and walked["many"][5] == []
    plan = embedded.explain(SearchQuery("Task", many))  # the driven plan, for comparison
    assert any("idx_token_value" in line for line in plan), plan


@pytest.mark.parametrize("window", [5000, 400])
def test_a_window_found_before_writes_still_gives_the_driven_plans_pages(
        embedded: EmbeddedStore, monkeypatch: pytest.MonkeyPatch, window: int) -> None:
    """The end of the ordered plan's window is reused for a while; writes since (updates
    move resources to the end of the order, deletes and creates shift it) never change a
    page. With 5000 the window first held every task (no end), with 400 only some."""
    monkeypatch.setattr(embedded_engine, "ORDERED_WINDOW", window)
    monkeypatch.setattr(embedded_engine, "ORDERED_BOUND_TTL_S", 3600.0)
    _tasks(embedded, 1500)
    searches = [[_clause("Task.status", TokenQuery(None, "ready"))],
                [_clause("Task.status", TokenQuery(None, "requested")),
                 _clause("Task.for", ReferenceQuery("Patient", "3"))]]
    before = [_pages(embedded, conditions) for conditions in searches]  # finds the bound
    assert embedded._connection().bounds
    with embedded.unit_of_work() as uow:
        for i in range(0, 1500, 2):  # half the tasks move to the end of the order
            uow.update("Task", f"t{i:04}", {"resourceType": "Task", "status": "ready"})
        for i in range(1, 600, 4):
            uow.delete("Task", f"t{i:04}")
        for i in range(1500, 7000):  # more than a window of new ones
            uow.update("Task", f"t{i:04}", {
                "resourceType": "Task", "status": ("ready", "requested")[i % 2],
                "for": {"reference": "Patient/3"}})

    def pages() -> list[list[list[object]]]:  # pages of 10 that start across the window's end
        return [_pages(embedded, conditions) + [[r["id"] for r in embedded.search(SearchQuery(
            "Task", conditions, count=10, offset=offset)).resources]
            for offset in range(0, 300, 7)] for conditions in searches]

    walked = pages()
    monkeypatch.setattr(embedded_engine, "ORDERED_PLAN_FROM", 10**9)
    assert walked == pages()
    assert [p[:6] for p in walked] != before


def test_the_ordered_plan_walks_the_update_order_index(embedded: EmbeddedStore) -> None:
    compiled = compile_search(SearchQuery("Task", [
        _clause("Task.status", TokenQuery(None, "ready")),
        _clause("Task.for", ReferenceQuery("Patient", "3"))]), 0)
    assert compiled.window is not None and compiled.estimates
    conn = sqlite3.connect(embedded.path)
    plan = [row[3] for row in conn.execute(
        "EXPLAIN QUERY PLAN " + compiled.window,
        {**compiled.params, "wms": 0, "wid": ""}).fetchall()]
    conn.close()
    assert any(line.startswith(("SEARCH r USING INDEX resource_updated",
                                "SEARCH r USING COVERING INDEX resource_updated"))
               for line in plan), plan
    # the walk is in index order (no sort); only the page itself is sorted, once read
    assert [line for line in plan if "TEMP B-TREE" in line] == [plan[-1]], plan
    assert not any(line.startswith("SCAN") for line in plan), plan


def test_history_and_read_many_use_indexes(embedded: EmbeddedStore) -> None:
    conn = sqlite3.connect(embedded.path)
    columns = embedded_engine._H_VERSION_COLUMNS  # a record's JSON: from its resource row
    plans = {
        "journal span": embedded_engine.JOURNAL_SPAN,  # looked at after every few reads
        "history one": f"SELECT {columns} FROM history WHERE type = ? AND id = ? "
                       "ORDER BY version DESC",
        "history type": f"SELECT {columns} FROM history WHERE type = ? AND last_updated_ms >= ? "
                        "ORDER BY last_updated_ms DESC, seq DESC LIMIT 5",
        "read many": "SELECT r.* FROM (VALUES (?, ?), (?, ?)) AS v JOIN resource AS r "
                     "ON r.type = v.column1 AND r.id = v.column2 WHERE r.deleted = 0",
    }
    for sql in plans.values():
        lines = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql,
                                                [1] * sql.count("?"))]
        assert not [line for line in lines if line.startswith("SCAN")
                    and "CONSTANT ROW" not in line and line != "SCAN v"], lines
        assert "USE TEMP B-TREE" not in " ".join(lines), lines
    conn.close()


# -- the file --------------------------------------------------------------------------------


def test_file_settings(embedded: EmbeddedStore, db: Path) -> None:
    assert db.is_file()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    own = embedded._connection()
    assert own.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert own.execute("PRAGMA cache_size").fetchone()[0] == -embedded_engine.CACHE_KIB
    assert own.execute("PRAGMA busy_timeout").fetchone()[0] >= 30000


def test_unknown_schema_version_is_refused(db: Path) -> None:
    embedded_store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 999"):
        embedded_store(db)


def test_data_survives_reopening(db: Path) -> None:
    first = embedded_store(db)
    _put(first, "Patient", "p1", gender="female")
    first.close()
    second = embedded_store(db)
    assert second.read("Patient", "p1").resource["gender"] == "female"
    assert [r["id"] for r in second.search(SearchQuery("Patient", [
        _clause("Patient.gender", TokenQuery(None, "female"))])).resources] == ["p1"]
    _put(second, "Patient", "p2")  # connections are reopened after close()
    second.close()
    assert embedded_store(db).read("Patient", "p2").version == 1


def test_open_store_picks_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(Config(data_dir=tmp_path / "data"), lambda r: None)  # type: ignore
    assert isinstance(store, EmbeddedStore)
    assert store.path == tmp_path / "data" / "planbro.db"
    store.close()

    import server.store.mongo as mongo

    seen: dict[str, object] = {}

    class FakeMongoStore:
        def __init__(self, indexer: object, *, uri: str, db_name: str) -> None:
            seen.update(uri=uri, db_name=db_name)

    monkeypatch.setattr(mongo, "MongoStore", FakeMongoStore)
    config = Config(mongodb_uri="mongodb://db:27017/?replicaSet=rs0", mongodb_db="plans")
    assert isinstance(open_store(config, lambda r: None), FakeMongoStore)  # type: ignore
    assert seen == {"uri": "mongodb://db:27017/?replicaSet=rs0", "db_name": "plans"}


# -- units of work ---------------------------------------------------------------------------


def test_a_failed_write_leaves_nothing_when_the_unit_of_work_goes_on(
        embedded: EmbeddedStore) -> None:
    with embedded.unit_of_work() as uow:
        uow.create("Task", {"resourceType": "Task", "status": "ready"}, id_="a", keys=("k",))
        with pytest.raises(UniqueConflict):
            uow.create("Task", {"resourceType": "Task", "status": "draft"}, id_="b",
                       keys=("k2", "k"))
        uow.create("Task", {"resourceType": "Task"}, id_="c", keys=("k2",))
    assert embedded.read("Task", "b") is None
    assert embedded.history(HistoryQuery("Task"))[1] == 2
    draft = _clause("Task.status", TokenQuery(None, "draft"))
    assert embedded.search(SearchQuery("Task", [draft])).resources == []


def test_create_with_a_taken_id_is_a_conflict(embedded: EmbeddedStore) -> None:
    _put(embedded, "Patient", "p1")
    with pytest.raises(FhirError) as taken, embedded.unit_of_work() as uow:
        uow.create("Patient", {"resourceType": "Patient"}, id_="p1")
    assert taken.value.status == 409
    assert embedded.read("Patient", "p1").version == 1


def test_nested_units_of_work(embedded: EmbeddedStore) -> None:
    with embedded.unit_of_work() as outer:
        outer.create("Patient", {"resourceType": "Patient"}, id_="outer")
        with pytest.raises(ValueError), embedded.unit_of_work() as inner:
            inner.create("Patient", {"resourceType": "Patient"}, id_="inner-failed")
            raise ValueError
        with embedded.unit_of_work() as inner:
            inner.create("Patient", {"resourceType": "Patient"}, id_="inner")
        assert outer.read("Patient", "inner") is not None
    assert embedded.read("Patient", "outer") is not None
    assert embedded.read("Patient", "inner") is not None
    assert embedded.read("Patient", "inner-failed") is None
    with pytest.raises(ValueError), embedded.unit_of_work():
        with embedded.unit_of_work() as inner:
            inner.create("Patient", {"resourceType": "Patient"}, id_="undone")
        raise ValueError
    assert embedded.read("Patient", "undone") is None
    with pytest.raises(RuntimeError, match="ended"):
        inner.read("Patient", "outer")


@contextmanager
def _writing(store: EmbeddedStore, id_: str) -> Iterator[threading.Event]:
    """A unit of work of another thread that has created Patient ``id_`` and commits when
    the event given to the block is set (or the block ends)."""
    written, commit = threading.Event(), threading.Event()

    def writer() -> None:
        with store.unit_of_work() as uow:
            uow.create("Patient", {"resourceType": "Patient"}, id_=id_)
            written.set()
            commit.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert written.wait(10)
        yield commit
    finally:
        commit.set()
        thread.join(10)


def test_readers_are_not_blocked_by_a_writer(embedded: EmbeddedStore) -> None:
    with _writing(embedded, "slow"):
        started = time.monotonic()
        assert embedded.read("Patient", "slow") is None  # not committed yet, and no waiting
        assert time.monotonic() - started < 1
    assert embedded.read("Patient", "slow").version == 1


def _log_frames(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    finally:
        conn.close()


def test_a_checkpoint_beside_a_writer_rewinds_the_log(
        embedded: EmbeddedStore, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "REWIND_FRAMES", 1)
    for i in range(100):
        _put(embedded, "Patient", f"p{i}", gender="female")
    with _writing(embedded, "during") as commit:  # a commit begun before the checkpoint ended
        checkpoint = threading.Thread(target=embedded._checkpoint)
        checkpoint.start()
        time.sleep(0.2)  # its copy is done; the rewind waits for the writer lock
        commit.set()
    checkpoint.join(10)
    _put(embedded, "Patient", "after", gender="male")
    # Without the rewind the log would go on from the 100 writes before (over 200 frames).
    assert _log_frames(db) < 20
    assert embedded.read("Patient", "during") is not None


def test_large_id_restrictions(embedded: EmbeddedStore) -> None:
    with embedded.unit_of_work() as uow:
        for n in range(50):
            uow.update("Patient", f"p{n}", {"resourceType": "Patient"})
    ids = frozenset({f"p{n}" for n in range(0, 50, 2)} | {f"x{n}" for n in range(40000)})
    result = embedded.search(SearchQuery("Patient", ids=ids, count=100, total=True))
    assert result.total == 25


def test_unsupported_searches_are_refused(embedded: EmbeddedStore) -> None:
    with pytest.raises(FhirError) as system:
        embedded.search(SearchQuery(None))  # type: ignore[arg-type]
    assert system.value.status == 400
    with pytest.raises(FhirError) as modifier:
        embedded.search(SearchQuery("Patient", [
            _clause("Patient.birthdate", DateQuery("eq", *_DAY), mod="exact")]))
    assert modifier.value.status == 400


# -- crashes and several processes -----------------------------------------------------------

_WRITER = """
import sys
from server.fhir.search.ast import IndexValues
from server.store.embedded import EmbeddedStore
store = EmbeddedStore(lambda resource: IndexValues(), sys.argv[1])
n = 0
while True:
    with store.unit_of_work() as uow:
        version = uow.create("Patient", {"resourceType": "Patient", "multipleBirthInteger": n})
    print(version.id, flush=True)
    n += 1
"""


def _python(script: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env=env,
                            text=True, **kwargs)  # type: ignore[call-overload]


def test_acknowledged_writes_survive_kill_9(db: Path) -> None:
    db.parent.mkdir(parents=True)
    child = _python(_WRITER, str(db), stdout=subprocess.PIPE)
    acknowledged = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < 300:
            line = child.stdout.readline()
            assert line, "the writer stopped early"
            acknowledged.append(line.strip())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    store = embedded_store(db)
    found = store.read_many([("Patient", id_) for id_ in acknowledged])
    assert len(found) == len(acknowledged)
    assert store._connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


_COUNTER = """
import sys, time
from server.fhir.search.ast import IndexValues
from server.store.embedded import EmbeddedStore
path, start_at, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
time.sleep(max(0.0, start_at - time.time()))
store = EmbeddedStore(lambda resource: IndexValues(), path)
for n in range(rounds):
    with store.unit_of_work() as uow:
        uow.create("Patient", {"resourceType": "Patient"})
    with store.unit_of_work() as uow:
        current = uow.read("Patient", "counter")
        count = current.resource["multipleBirthInteger"] if current else 0
        uow.update("Patient", "counter", {"resourceType": "Patient",
                                          "multipleBirthInteger": count + 1},
                   if_match=current.version if current else None)
print("done", flush=True)
"""


def test_two_processes_write_the_same_file(db: Path) -> None:
    db.parent.mkdir(parents=True)
    rounds, start_at = 60, time.time() + 1.0  # both open the new file at the same moment
    children = [_python(_COUNTER, str(db), str(start_at), str(rounds),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [child.communicate(timeout=60) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert out.strip() == "done" and "locked" not in err
    store = embedded_store(db)
    counter = store.read("Patient", "counter")
    assert counter.resource["multipleBirthInteger"] == 2 * rounds  # no lost update
    assert counter.version == 2 * rounds
    assert store.search(SearchQuery("Patient", count=0, total=True)).total == 2 * rounds + 1
    store.close()


def test_a_writer_that_waits_too_long_gets_503(db: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    import server.store.embedded as engine

    monkeypatch.setattr(engine, "BUSY_TIMEOUT_S", 0.2)
    store = embedded_store(db)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(FhirError) as busy, store.unit_of_work():
            pass
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}
    _put(store, "Patient", "after")  # the lock is free again
    store.close()


# -- the journal of records ------------------------------------------------------------------

_EVENT = {"resourceType": "AuditEvent", "outcome": "0",
          "entity": [{"what": {"reference": "Patient/p1"}}]}


def _journalled(store: EmbeddedStore) -> int:
    return store._connection().execute("SELECT count(*) FROM journal").fetchone()[0]


def _stored_events(store: EmbeddedStore) -> int:
    return store._connection().execute(
        "SELECT count(*) FROM resource WHERE type = 'AuditEvent'").fetchone()[0]


def _record(store: EmbeddedStore, n: int) -> None:
    with store.unit_of_work() as uow:
        for _ in range(n):
            uow.record("AuditEvent", _EVENT)


def test_a_record_is_stored_once_and_its_history_shows_it(
        embedded: EmbeddedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A moved record's history row leaves the JSON to its current row; vread and history
    show it all the same, and a version replaced later (an administrative system may update
    or delete a record) keeps its own JSON."""
    monkeypatch.setattr(EmbeddedStore, "_wake_drainer", lambda self: None)
    _record(embedded, 1)  # a write's record: the main journal
    embedded.record([("AuditEvent", {**_EVENT, "outcome": "4"})])  # a read's: the records file
    found = embedded.search(SearchQuery("AuditEvent", count=10)).resources
    assert len(found) == 2
    conn = embedded._connection()
    assert conn.execute("SELECT count(*) FROM history WHERE type = 'AuditEvent' "
                        "AND json IS NULL AND deleted = 0").fetchone()[0] == 2
    for event in found:
        version = embedded.vread("AuditEvent", event["id"], 1)
        assert version is not None and version.resource == event and not version.deleted
    listed, total = embedded.history(HistoryQuery("AuditEvent"))
    assert total == 2 and sorted(v.resource["outcome"] for v in listed) == ["0", "4"]
    first, second = found
    changed = {**first, "outcome": "8"}
    with embedded.unit_of_work() as uow:
        uow.update("AuditEvent", first["id"], changed)
        assert uow.delete("AuditEvent", second["id"]) is not None
    assert embedded.vread("AuditEvent", first["id"], 1).resource == first
    assert embedded.vread("AuditEvent", first["id"], 2).resource["outcome"] == "8"
    assert embedded.vread("AuditEvent", second["id"], 1).resource == second
    assert embedded.vread("AuditEvent", second["id"], 2).deleted
    history, _ = embedded.history(HistoryQuery("AuditEvent", first["id"]))
    assert [v.resource["outcome"] for v in history] == ["8", "0"]


def test_a_read_moves_what_the_background_has_not(embedded: EmbeddedStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EmbeddedStore, "_wake_drainer", lambda self: None)
    monkeypatch.setattr(embedded_engine, "DRAIN_BATCH", 7)  # several batches
    _record(embedded, 30)
    _put(embedded, "Patient", "p1")
    assert (_journalled(embedded), _stored_events(embedded)) == (30, 0)
    assert embedded.read("Patient", "p1") is not None and _journalled(embedded) == 30
    result = embedded.search(SearchQuery("AuditEvent", count=0, total=True))
    assert result.total == 30 and (_journalled(embedded), _stored_events(embedded)) == (0, 30)
    _record(embedded, 2)
    assert embedded.history(HistoryQuery())[1] == 1 + 32  # a system history concerns records too
    assert _journalled(embedded) == 0


def test_records_moved_by_another_while_prepared_are_not_moved_twice(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Index values are computed before the write lock is taken; the records are read again
    under it, so what another process moved meanwhile is not stored twice, and what was
    recorded meanwhile is moved too."""
    monkeypatch.setattr(EmbeddedStore, "_wake_drainer", lambda self: None)
    mine, other = embedded_store(db), embedded_store(db)
    _record(mine, 3)
    mine.record([("AuditEvent", _EVENT)] * 2)  # a read's records: the records file
    pending = embedded_engine._pending(mine._connection(), mine._records, 10, (None, None))
    prepared = embedded_engine._prepare(mine.indexer, pending.journal + pending.side)
    assert (len(pending.journal), len(pending.side)) == (3, 2)
    assert not other._drain(10)  # the other process moves all five first
    _record(mine, 1)  # and one more is recorded
    with mine.unit_of_work() as uow:
        moved = uow.move(10, (None, None), prepared)
    assert (len(moved.journal), len(moved.side)) == (1, 0)
    assert (_journalled(mine), _stored_events(mine)) == (0, 6)
    assert _count_events(mine) == 6
    mine.close()
    other.close()


def test_the_background_moves_records_without_a_read(embedded: EmbeddedStore) -> None:
    _record(embedded, 250)
    deadline = time.monotonic() + 30
    while _journalled(embedded) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (_journalled(embedded), _stored_events(embedded)) == (0, 250)
    embedded.close()
    assert not [t for t in threading.enumerate() if t.name == "planbro-journal"]


def test_journalled_records_survive_reopening(db: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    monkeypatch.setattr(EmbeddedStore, "_wake_drainer", lambda self: None)
    first = embedded_store(db)
    _record(first, 3)
    first.close()
    second = embedded_store(db)
    assert _journalled(second) == 3
    assert second.search(SearchQuery("AuditEvent", count=0, total=True)).total == 3
    second.close()


def test_a_version_1_file_gets_the_journal(db: Path) -> None:
    embedded_store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE journal")
    conn.execute("DROP TABLE journal_mark")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    store = embedded_store(db)
    assert store._connection().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    _record(store, 1)
    assert store.search(SearchQuery("AuditEvent", count=0, total=True)).total == 1
    store.close()


def _reopened_as(db: Path, version: int, indexes: dict[str, str]) -> EmbeddedStore:
    """The closed file ``db`` made a file of schema ``version``, whose ``indexes`` (name:
    ``table (columns)``) were as given, then opened (and so migrated)."""
    conn = sqlite3.connect(db)
    for name, definition in indexes.items():
        conn.execute(f"DROP INDEX {name}")
        conn.execute(f"CREATE INDEX {name} ON {definition}")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    store = embedded_store(db)
    assert store._connection().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    return store


def test_a_version_2_file_gets_the_probe_indexes(db: Path) -> None:
    first = embedded_store(db)
    _put(first, "Task", "t1", status="ready")
    first.close()
    store = _reopened_as(db, 2, {"idx_token_pk": "idx_token (pk, param)",
                                 "idx_reference_pk": "idx_reference (pk, param)"})
    conn = store._connection()
    columns = {name: [row[2] for row in conn.execute(f"PRAGMA index_info({name})")]
               for name in ("idx_token_pk", "idx_reference_pk")}
    assert columns == {"idx_token_pk": ["pk", "param", "code", "system"],
                       "idx_reference_pk": ["pk", "param", "target_id", "target_type"]}
    found = store.search(SearchQuery("Task", [_clause("Task.status", TokenQuery(None, "ready"))]))
    assert [r["id"] for r in found.resources] == ["t1"]
    store.close()


def test_a_version_3_file_gets_the_target_indexes(db: Path) -> None:
    first = embedded_store(db)
    _put(first, "Patient", "p1", communication=[{"language": {
        "coding": [{"system": "urn:ietf:bcp:47", "code": "nb"}], "text": "Norsk"}}],
         generalPractitioner=[{"reference": "Practitioner/d1"},
                              {"reference": "https://x.example/Practitioner/d2"}])
    first.close()
    store = _reopened_as(db, 3, {
        "idx_reference_target": "idx_reference (type, param, target_id, target_type)",
        "idx_reference_url": "idx_reference (type, param, url)",
        "idx_token_text": "idx_token (type, param, text)"})
    conn = store._connection()
    assert [row[2] for row in conn.execute("PRAGMA index_info(idx_reference_target)")] == \
        ["type", "target_id", "param", "target_type"]
    partial = dict(conn.execute("SELECT name, sql LIKE '%WHERE%' FROM sqlite_master WHERE "
                                "name IN ('idx_reference_url', 'idx_token_text')").fetchall())
    assert partial == {"idx_reference_url": 1, "idx_token_text": 1}
    gp = "Patient.general-practitioner"
    for clause in (_clause(gp, ReferenceQuery("Practitioner", "d1")),
                   _clause(gp, ReferenceQuery(None, None, url="https://x.example/Practitioner/d2")),
                   _clause("Patient.language", TokenQuery(None, "nor"), mod="text")):
        found = store.search(SearchQuery("Patient", [clause])).resources
        assert [r["id"] for r in found] == ["p1"]
    store.close()


def test_a_version_5_file_gets_one_token_index(db: Path) -> None:
    first = embedded_store(db)
    _put(first, "Patient", "p1", identifier=[{"system": "urn:x", "value": "1"}])
    _put(first, "Patient", "p2", identifier=[{"value": "1"}, {"system": "urn:y", "value": "2"}])
    first.close()
    conn = sqlite3.connect(db)
    conn.execute("DROP INDEX idx_token_value")
    conn.execute("CREATE INDEX idx_token_code ON idx_token (type, param, code, system)")
    conn.execute("CREATE INDEX idx_token_system ON idx_token (type, param, system)")
    conn.execute("PRAGMA user_version = 5")
    conn.commit()
    conn.close()
    store = embedded_store(db)
    conn = store._connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    names = {row[1] for row in conn.execute("PRAGMA index_list(idx_token)")}
    assert names == {"idx_token_value", "idx_token_text", "idx_token_pk"}
    assert [row[2] for row in conn.execute("PRAGMA index_info(idx_token_value)")] == \
        ["type", "param", "system", "code", "pk"]
    for value, ids in ((TokenQuery(None, "1"), ["p1", "p2"]), (TokenQuery("urn:y", None), ["p2"]),
                       (TokenQuery("", "1"), ["p2"]), (TokenQuery("urn:x", "1"), ["p1"])):
        found = store.search(SearchQuery("Patient", [_clause("Patient.identifier", value)]))
        assert sorted(r["id"] for r in found.resources) == ids, value
    store.close()


def _held_elsewhere(lock_path: Path) -> bool:
    """Whether a process holds the lock file (tried from a descriptor of its own, as another
    process would)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        journal.fcntl.flock(fd, journal.fcntl.LOCK_EX | journal.fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # lets go of what it took
    return False


def test_a_waiting_thread_gets_the_lock_when_it_is_let_go_without_trying_it_again_and_again(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel hands the lock over: no pauses between tries that leave it free, and no
    tries that take the CPU time its holder needs."""
    store = embedded_store(db)
    tries = []
    real_flock = journal.fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation & journal.fcntl.LOCK_NB:
            tries.append(fd)
        real_flock(fd, operation)

    for lock in (store._writer, store._mover):
        tries.clear()
        holder = os.open(lock._path, os.O_RDWR | os.O_CREAT, 0o600)
        real_flock(holder, journal.fcntl.LOCK_EX)  # another process writes
        let_go: list[float] = []

        def release(fd: int = holder, at: list[float] = let_go) -> None:
            real_flock(fd, journal.fcntl.LOCK_UN)
            at.append(time.monotonic())

        timer = threading.Timer(0.2, release)
        monkeypatch.setattr(journal.fcntl, "flock", flock)
        timer.start()
        with lock.hold() as held:
            got = time.monotonic()
            assert held is True and _held_elsewhere(lock._path)
        monkeypatch.setattr(journal.fcntl, "flock", real_flock)
        timer.join()
        os.close(holder)
        assert got - let_go[0] < 0.5  # handed over when let go, not at the deadline (60 s)
        assert tries.count(lock._fd) == 1  # tried once without waiting, then waited
        assert not _held_elsewhere(lock._path)
    store.close()


def test_a_wait_given_up_takes_the_lock_for_the_next_thread_or_lets_it_go(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    timeout = [0.1]
    lock = journal.WriterLock(db, lambda: timeout[0])
    lock_path = Path(f"{db}.lock")
    holder = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    journal.fcntl.flock(holder, journal.fcntl.LOCK_EX)
    with pytest.raises(FhirError) as busy, lock.hold():
        pass
    assert busy.value.status == 503
    with lock.hold(block=False) as held:
        assert held is False  # the wait goes on
    # the next thread takes the wait over, and holds the lock until it lets go
    timeout[0] = 5.0
    threading.Timer(0.2, journal.fcntl.flock, (holder, journal.fcntl.LOCK_UN)).start()
    with lock.hold() as held:
        assert held is True
        time.sleep(0.05)
        assert _held_elsewhere(lock_path)
    assert not _held_elsewhere(lock_path)
    # a wait given up that nobody takes over lets the lock go when it comes
    journal.fcntl.flock(holder, journal.fcntl.LOCK_EX)
    timeout[0] = 0.1
    with pytest.raises(FhirError), lock.hold():
        pass
    journal.fcntl.flock(holder, journal.fcntl.LOCK_UN)
    deadline = time.monotonic() + 5
    while _held_elsewhere(lock_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _held_elsewhere(lock_path)
    os.close(holder)
    with lock.hold() as held:
        assert held is True


def test_a_wait_that_fails_fails_its_thread_and_the_next_wait_works(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    lock = journal.WriterLock(db, lambda: 5.0)
    lock_path = Path(f"{db}.lock")
    holder = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    real_flock = journal.fcntl.flock
    real_flock(holder, journal.fcntl.LOCK_EX)
    failures = [OSError(37, "No locks available")]

    def flock(fd: int, operation: int) -> None:
        if fd != holder and not operation & (journal.fcntl.LOCK_NB | journal.fcntl.LOCK_UN) \
                and failures:
            raise failures.pop()
        real_flock(fd, operation)

    monkeypatch.setattr(journal.fcntl, "flock", flock)
    begin = time.monotonic()
    with pytest.raises(OSError, match="No locks available"), lock.hold():
        pass
    assert time.monotonic() - begin < 1  # at once, not at the deadline
    threading.Timer(0.1, real_flock, (holder, journal.fcntl.LOCK_UN)).start()
    with lock.hold() as held:
        assert held is True and _held_elsewhere(lock_path)
    os.close(holder)


def test_a_lock_taken_without_blocking_is_refused_while_another_holds_it(db: Path) -> None:
    store = embedded_store(db)
    holder = os.open(store._mover._path, os.O_RDWR | os.O_CREAT, 0o600)
    journal.fcntl.flock(holder, journal.fcntl.LOCK_EX)  # another process moves a batch
    begin = time.monotonic()
    with store._mover.hold(block=False) as held:
        assert held is False
    assert time.monotonic() - begin < 0.1  # at once
    journal.fcntl.flock(holder, journal.fcntl.LOCK_UN)
    os.close(holder)
    with store._mover.hold(block=False) as held:
        assert held is True
        seen: list[bool] = []

        def other_thread() -> None:
            with store._mover.hold(block=False) as other:
                seen.append(other)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(5)
        assert seen == [False]  # a thread of this process is refused too
    with store._mover.hold(block=False) as held:
        assert held is True  # let go after each block
    store.close()


def test_rows_bound_one_by_one_are_the_rows_read_from_json(db: Path) -> None:
    """The records process binds each row (``alone``); other writers read the rows from one
    JSON array: both store the same values, of the same SQL types."""
    store = embedded_store(db)
    conn = store._connection()
    rows = [("AuditEvent", "p", 1.5, "http://unitsofmeasure.org", "mg", "mg"),
            ("AuditEvent", "p", 3.0, "", "", ""), ("AuditEvent", "q", -0.1, "s", "c", "år"),
            ("AuditEvent", "q", 1e300, "s", "c", "\"quoted\"")]
    stored = {}
    for alone, first in ((False, 1), (True, 101)):
        embedded_engine._insert_rows(conn, "idx_quantity", [
            (pk, *row) for pk, row in enumerate(rows, first)], alone=alone)
        stored[alone] = conn.execute(
            "SELECT pk - ?, type, param, value, typeof(value), system, code, unit, typeof(unit) "
            "FROM idx_quantity WHERE pk >= ? AND pk < ? ORDER BY pk",
            (first, first, first + 100)).fetchall()
    assert stored[True] == stored[False] and len(stored[True]) == len(rows)
    assert {r[4] for r in stored[True]} == {"real"} and stored[True][3][3] == 1e300
    store.close()


def _count_events(store: EmbeddedStore) -> int | None:
    return store.search(SearchQuery("AuditEvent", count=0, total=True)).total


def test_records_of_reads_do_not_wait_for_writes(db: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    monkeypatch.setattr(EmbeddedStore, "_wake_drainer", lambda self: None)
    monkeypatch.setattr(embedded_engine, "BUSY_TIMEOUT_S", 0.2)
    embedded = embedded_store(db)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process is writing the main file
    try:
        embedded.record([("AuditEvent", _EVENT), ("AuditEvent", _EVENT)])
        with pytest.raises(FhirError):  # while a write would wait (and give up)
            _put(embedded, "Patient", "p1")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert _journalled(embedded) == 0 and embedded._records.last() == 2
    assert _count_events(embedded) == 2 and embedded._records.last() == 0
    embedded.record([("AuditEvent", _EVENT)])  # numbers go on after the file was emptied
    assert _count_events(embedded) == 3
    with pytest.raises(ValueError, match="not a record type"):
        embedded.record([("Patient", {"resourceType": "Patient"})])
    embedded.close()


def test_a_unit_of_work_sees_the_records_of_reads(embedded: EmbeddedStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EmbeddedStore, "_wake_drainer", lambda self: None)
    embedded.record([("AuditEvent", _EVENT)] * 2)
    with embedded.unit_of_work() as uow:
        uow.record("AuditEvent", _EVENT)
        assert len(uow.search(SearchQuery("AuditEvent", count=10)).resources) == 3


def test_records_moved_before_a_crash_are_not_moved_twice(
        embedded: EmbeddedStore, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EmbeddedStore, "_wake_drainer", lambda self: None)
    from server.store.journal import RecordFile

    monkeypatch.setattr(RecordFile, "forget", lambda self, upto: None)  # the crash
    embedded.record([("AuditEvent", _EVENT)] * 3)
    assert _count_events(embedded) == 3 and embedded._records.last() == 3
    embedded.record([("AuditEvent", _EVENT)])
    assert _count_events(embedded) == 4
    embedded.close()
    Path(f"{db}.records").unlink()  # a lost records file is a new journal, not a skipped one
    for suffix in ("-wal", "-shm"):
        Path(f"{db}.records{suffix}").unlink(missing_ok=True)
    again = embedded_store(db)
    again.record([("AuditEvent", _EVENT)])
    assert _count_events(again) == 5
    again.close()


def test_requests_help_when_the_background_falls_behind(
        embedded: EmbeddedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EmbeddedStore, "_wake_drainer", lambda self: None)  # it is behind
    monkeypatch.setattr(embedded_engine, "BACKLOG_LIMIT", 20)
    monkeypatch.setattr(embedded_engine, "DRAIN_BATCH", 5)
    monkeypatch.setattr(embedded_engine, "BACKLOG_CHECK_EVERY", 4)
    for n in range(60):
        if n % 2:
            embedded.record([("AuditEvent", _EVENT)] * 3)  # reads
        else:
            _record(embedded, 3)  # writes
        assert embedded._backlog() <= 20 + 4 * 3  # checked every 4th time
    assert _stored_events(embedded) >= 180 - 32
    assert _count_events(embedded) == 180


# -- the records process ---------------------------------------------------------------------

_MOVER = """
import os, sys
from store_kit import index_resource
from server.store import embedded
embedded.RECORDS_GATHER_S = float(os.environ.get("GATHER_S", embedded.RECORDS_GATHER_S))
sys.exit(embedded.EmbeddedStore(index_resource, sys.argv[1]).serve_records(int(sys.argv[2])))
"""


@pytest.fixture
def mover_command(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A records process with the tests' indexer (found on PYTHONPATH)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))
    monkeypatch.setattr(journal, "RECORDS_PROCESS_CHECK_S", 0.0)
    return [sys.executable, "-c", _MOVER]


def _until(condition: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _ended(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has ended (its new parent may not reap it)


def test_the_records_process_moves_the_records(db: Path, mover_command: list[str]) -> None:
    store = EmbeddedStore(index_resource, db, records_process=mover_command)
    _record(store, 120)  # the journal
    store.record([("AuditEvent", _EVENT)] * 130)  # the records file
    process = store._process
    assert process is not None and process._child is not None
    child = process._child
    assert _until(lambda: _stored_events(store) == 250), "the records were not moved"
    assert _journalled(store) == 0 and store._records.after(0, None, None) == []
    assert child.poll() is None and child.pid != os.getpid()
    assert store._drainer is None  # no thread of this process moved them
    assert _count_events(store) == 250
    store.close()
    assert child.poll() == 0  # stopped with the store


def test_the_records_process_lets_records_gather_into_a_batch(
        db: Path, mover_command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATHER_S", "4")
    batch = embedded_engine.DRAIN_BATCH
    store = EmbeddedStore(index_resource, db, records_process=mover_command)
    store.record([("AuditEvent", _EVENT)] * batch)  # a batch is moved without waiting
    assert _until(lambda: _stored_events(store) == batch), "the batch was not moved"
    store.record([("AuditEvent", _EVENT)] * 3)
    time.sleep(2)
    assert _stored_events(store) == batch  # fewer than a batch wait for more
    assert _until(lambda: _stored_events(store) == batch + 3), "they were never moved"
    begin = time.monotonic()
    store.record([("AuditEvent", _EVENT)] * batch)
    assert _until(lambda: _stored_events(store) == 2 * batch + 3)
    assert time.monotonic() - begin < 4  # not after the gathering time
    assert _count_events(store) == 2 * batch + 3
    store.close()


def test_one_records_process_per_file(db: Path, mover_command: list[str]) -> None:
    first = EmbeddedStore(index_resource, db, records_process=mover_command)
    second = EmbeddedStore(index_resource, db, records_process=mover_command)
    first.record([("AuditEvent", _EVENT)])
    assert first._process is not None and first._process._child is not None
    assert _until(lambda: _stored_events(first) == 1)  # it runs (and holds its lock)
    for _ in range(5):
        second.record([("AuditEvent", _EVENT)])
    assert second._process is not None and second._process._child is None  # not started
    assert _until(lambda: _stored_events(first) == 6)
    first.close()
    second.close()


_RECORDS_PARENT = """
import sys, time
from store_kit import index_resource
from server.store.embedded import EmbeddedStore
store = EmbeddedStore(index_resource, sys.argv[1], records_process=sys.argv[2:])
store.record([("AuditEvent", {"resourceType": "AuditEvent", "outcome": "0"})])
print(store._process._child.pid, flush=True)
time.sleep(600)
"""


def test_the_records_process_ends_with_the_process_that_started_it(
        db: Path, mover_command: list[str]) -> None:
    db.parent.mkdir(parents=True)
    parent = subprocess.Popen([sys.executable, "-c", _RECORDS_PARENT, str(db), *mover_command],
                              cwd=REPO, text=True, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not _ended(child)
    finally:
        parent.kill()
        parent.wait(10)
    assert _until(lambda: _ended(child), 10), "the records process outlived its parent"
    store = embedded_store(db)
    assert _count_events(store) == 1  # moved, or moved now
    store.close()


def test_a_records_process_that_fails_leaves_the_moving_to_a_thread(
        db: Path, mover_command: list[str], caplog: pytest.LogCaptureFixture) -> None:
    store = EmbeddedStore(index_resource, db,
                          records_process=[sys.executable, "-c", "raise SystemExit(3)"])
    store.record([("AuditEvent", _EVENT)])
    process = store._process
    assert process is not None and process._child is not None
    process._child.wait(30)
    store.record([("AuditEvent", _EVENT)])  # finds it ended with an error
    assert process.failed and "exited with 3" in caplog.text
    assert _until(lambda: _stored_events(store) == 2)
    assert store._drainer is not None and store._drainer.is_alive()
    store.close()


_RECORDER = """
import sys
from server.fhir.search.ast import IndexValues
from server.store.embedded import EmbeddedStore
store = EmbeddedStore(lambda resource: IndexValues(), sys.argv[1])
while True:
    with store.unit_of_work() as uow:
        uow.record("AuditEvent", {"resourceType": "AuditEvent", "outcome": "0"})
    print("recorded", flush=True)
"""


def test_acknowledged_records_survive_kill_9(db: Path) -> None:
    db.parent.mkdir(parents=True)
    child = _python(_RECORDER, str(db), stdout=subprocess.PIPE)
    acknowledged = 0
    try:
        assert child.stdout is not None
        while acknowledged < 300:
            assert child.stdout.readline(), "the recorder stopped early"
            acknowledged += 1
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    store = embedded_store(db)
    assert store.search(SearchQuery("AuditEvent", count=0, total=True)).total >= acknowledged
    assert _journalled(store) == 0
    assert store._connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


def test_a_request_over_the_backlog_waits_for_the_mover_at_work_instead_of_queueing(
        embedded: EmbeddedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EmbeddedStore, "_wake_drainer", lambda self: None)
    monkeypatch.setattr(embedded_engine, "BACKLOG_CHECK_EVERY", 1)
    monkeypatch.setattr(embedded_engine, "BACKLOG_LIMIT", 10**9)
    embedded.record([("AuditEvent", _EVENT)] * 20)  # behind, unchecked
    monkeypatch.setattr(embedded_engine, "BACKLOG_LIMIT", 5)
    moving, moved, returned = threading.Event(), threading.Event(), threading.Event()
    released = threading.Event()
    seen: list[bool] = []

    def mover() -> None:  # holds the mover's lock, moves everything, then holds on a while
        with embedded._mover.hold():
            moving.set()
            time.sleep(0.2)
            with embedded.unit_of_work() as uow:
                assert isinstance(uow, embedded_engine._EmbeddedUnitOfWork)
                uow.move(None, (None, None))
            moved.set()
            returned.wait(5)
            released.set()

    def request() -> None:
        embedded.record([("AuditEvent", _EVENT)])
        seen.append(released.is_set())
        returned.set()

    holder = threading.Thread(target=mover, daemon=True)
    holder.start()
    assert moving.wait(5)
    asker = threading.Thread(target=request, daemon=True)
    asker.start()
    time.sleep(0.1)
    assert not returned.is_set()  # over the backlog: it waits
    assert returned.wait(5) and moved.is_set()  # back once the mover has caught up ...
    assert seen == [False]  # ... without waiting for its lock
    holder.join(5)
    assert _count_events(embedded) == 21


# -- planbro reindex ---------------------------------------------------------------------------


def test_planbro_reindex_reads_references_anew_under_the_base_url(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Index rows a former version of the server stored (here: an absolute reference to
    another server taken for a local one) are replaced by what the server extracts now."""
    monkeypatch.delenv("PLANBRO_BASE_URL", raising=False)
    monkeypatch.delenv("MONGODB_URI", raising=False)
    config = Config(data_dir=tmp_path)
    store = open_store(config, store_indexer(Registry.load_default()))
    serving("https://planbro.test/fhir")
    try:
        with store.unit_of_work() as uow:
            uow.update("Task", "t", {
                "resourceType": "Task", "status": "ready", "intent": "order",
                "for": {"reference": "https://planbro.test/fhir/Patient/p"},
                "owner": {"reference": "https://other.example.org/fhir/Practitioner/x"}})
    finally:
        serving(None)
        store.close()
    with sqlite3.connect(config.embedded_path) as conn:  # the former reading of the URL
        conn.execute("INSERT INTO idx_reference SELECT pk, type, 'owner', "
                     "'Practitioner', 'x', '', '' FROM resource WHERE id = 't'")
        conn.execute("DELETE FROM idx_reference WHERE param = 'subject'")
    conn.close()

    def tasks(param: str, target: str) -> list[str]:
        query = parse_search(Registry.load_default(), "Task", [(param, target)]).query
        found = open_store(config, store_indexer(Registry.load_default()))
        try:
            return [r["id"] for r in found.search(query).resources]
        finally:
            found.close()

    assert tasks("owner", "Practitioner/x") == ["t"]
    assert tasks("subject", "Patient/p") == []
    with pytest.raises(SystemExit) as refused:  # without the base, URLs cannot be read
        cli.main(["reindex", "--data", str(tmp_path)])
    assert refused.value.code == 2 and "base URL" in capsys.readouterr().err
    assert cli.main(["reindex", "--data", str(tmp_path),
                     "--base-url", "https://planbro.test/fhir"]) == 0
    assert "Search index rebuilt: 1 resources indexed" in capsys.readouterr().out
    assert tasks("owner", "Practitioner/x") == []
    assert tasks("subject", "Patient/p") == ["t"]
    assert tasks("owner", "https://other.example.org/fhir/Practitioner/x") == ["t"]


def test_planbro_reindex_keeps_the_values_of_our_profiles_search_parameters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``CarePlan?evaluation-date`` is ours (profiles/): indexed again, it is still found."""
    from server.plans.rules import search_registry

    monkeypatch.delenv("MONGODB_URI", raising=False)
    registry = search_registry()
    config = Config(data_dir=tmp_path)
    store = open_store(config, store_indexer(registry))
    try:
        with store.unit_of_work() as uow:
            uow.update("CarePlan", "p", {
                "resourceType": "CarePlan", "status": "draft", "intent": "plan",
                "subject": {"reference": "Patient/x"}, "extension": [{
                    "url": "http://planbro.no/fhir/StructureDefinition/ip-evaluation-date",
                    "valueDate": "2026-12-01"}]})
    finally:
        store.close()
    query = parse_search(registry, "CarePlan", [("evaluation-date", "2026-12")]).query

    def found() -> list[str]:
        reader = open_store(config, store_indexer(registry))
        try:
            return [r["id"] for r in reader.search(query).resources]
        finally:
            reader.close()

    assert found() == ["p"]
    assert cli.main(["reindex", "--data", str(tmp_path), "--base-url", "https://x.test/fhir"]) == 0
    assert found() == ["p"]
