"""Audit: every interaction on a person's data leaves an AuditEvent, every write a Provenance;
the person reads their own access log and nobody else's; only auditors read all of it; a
failure to audit fails the request."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from access_kit import World

from server.fhir.model import validate
from server.fhir.search.ast import Clause, ReferenceQuery, SearchQuery, SortKey
from server.store.port import Store, UnitOfWork

LOG = "AuditEvent?patient=Patient/{}&_count=200&_sort=-_lastUpdated"


def _log(world: World, caller: str, person: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in world.bundle(caller, LOG.format(person)).get("entry", [])]


def _people(event: dict[str, Any]) -> set[str]:
    """The persons an AuditEvent is about (entities in the role of patient)."""
    return {e["what"]["reference"] for e in event.get("entity", [])
            if e.get("role", {}).get("code") == "1"}


def _org(event: dict[str, Any]) -> str | None:
    return next((a["who"]["identifier"]["value"] for a in event["agent"]
                 if a["who"].get("type") == "Organization"), None)


def test_the_person_reads_their_own_access_log(world: World) -> None:
    assert world.get("kommune", "CarePlan/active").status_code == 200
    assert world.get("unrelated", "Condition/active-condition").status_code == 404
    log = _log(world, "self:active", "active")
    assert log and all(_people(e) == {"Patient/active"} for e in log)
    read = next(e for e in log if _org(e) == "300000002" and e["subtype"][0]["code"] == "read"
                and any(x.get("what", {}).get("reference", "").startswith("CarePlan/active")
                        for x in e["entity"]))
    assert read["outcome"] == "0" and read["action"] == "R"
    assert read["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    assert read["recorded"]
    denied = next(e for e in log if _org(e) == "300000061")
    assert denied["outcome"] == "4"  # the refused attempt is in the log too
    every = world.bundle("self:active", "AuditEvent?_count=500")["entry"]
    assert all(_people(e["resource"]) == {"Patient/active"} for e in every)
    assert world.bundle("self:active", LOG.format("limited")).get("entry", []) == []
    for event in log[:20]:
        assert [i for i in validate(event, type_="AuditEvent") if i.severity == "error"] == []


def test_paging_the_access_log_ends(world: World) -> None:
    """Reading one's access log adds to it; paging through it still ends, with the events
    there were when the first page was made."""
    world.get("kommune", "CarePlan/active")
    bundle = world.bundle("self:active", "AuditEvent?_count=1&_total=accurate")
    total, seen = bundle["total"], [bundle["entry"][0]["resource"]["id"]]
    while "next" in (links := {link["relation"]: link["url"] for link in bundle["link"]}):
        bundle = world.bundle("self:active", links["next"])
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        assert len(seen) <= total, "paging the access log did not end"
    assert len(seen) == len(set(seen)) == total
    assert world.bundle("self:active", "AuditEvent?_total=accurate")["total"] > 2 * total - 1


def test_nobody_else_reads_audit_events_but_auditors(world: World) -> None:
    world.get("nav", "Goal/limited-goal")
    event_id = _log(world, "self:limited", "limited")[0]["id"]
    for caller in ("kommune", "nav", "admin", "self:active", "doctor"):
        assert world.get(caller, f"AuditEvent/{event_id}").status_code == 404, caller
        if caller != "self:active":  # who reads only their own
            assert world.bundle(caller, "AuditEvent?_total=accurate")["total"] == 0, caller
    current = world.get("auditor", f"AuditEvent/{event_id}")
    assert current.status_code == 200
    for path in (f"AuditEvent/{event_id}/_history/1", f"AuditEvent/{event_id}/_history"):
        found = world.get("auditor", path)  # its history holds it once stored
        assert found.status_code == 200, path
        body = found.json()
        assert (body if path.endswith("/1") else body["entry"][0]["resource"]) == \
            current.json(), path
    everyone = world.bundle("auditor", "AuditEvent?_count=1000")["entry"]
    people = set().union(*(_people(e["resource"]) for e in everyone))
    assert {"Patient/active", "Patient/limited"} <= people
    assert world.get("auditor", "Patient/active").status_code == 403  # its scope: audit only


def test_searches_are_logged_per_person_with_the_query(world: World) -> None:
    world.get("nav", "Goal?subject=Patient/active,Patient/limited")
    for person in ("active", "limited"):
        search = next(e for e in _log(world, f"self:{person}", person)
                      if e["subtype"][0]["code"] == "search-type" and _org(e) == "300000029")
        assert search["action"] == "E"
        assert any("Goal?subject=" in x.get("description", "") for x in search["entity"])
        assert _people(search) == {f"Patient/{person}"}


def test_writes_get_a_provenance(world: World) -> None:
    goal = {k: v for k, v in world.get("kommune", "Goal/active-goal").json().items()
            if k != "meta"}
    written = world.put("kommune", {**goal, "lifecycleStatus": "active"})
    assert written.status_code == 200
    version = written.json()["meta"]["versionId"]
    found = world.bundle("self:active",
                         f"Provenance?target=Goal/active-goal/_history/{version}")["entry"]
    provenance = found[0]["resource"]
    agent = provenance["agent"][0]
    assert agent["onBehalfOf"]["identifier"]["value"] == "300000002"
    assert provenance["activity"]["coding"][0]["code"] == "UPDATE"
    assert [i for i in validate(provenance, type_="Provenance") if i.severity == "error"] == []
    update = next(e for e in _log(world, "self:active", "active")
                  if e["subtype"][0]["code"] == "update")
    assert update["action"] == "U"
    loaded = world.bundle("admin", "Provenance?target=Patient/kari&_count=5")["entry"]
    assert loaded[0]["resource"]["agent"][0]["who"]["display"].startswith("Planbro")
    assert "entry" not in world.bundle("unrelated", "Provenance?target=Goal/active-goal")


class _AuditFails:
    """A store whose units of work fail to write AuditEvents (a disk error)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        with self._store.unit_of_work() as uow:
            yield _FailingUnit(uow)  # type: ignore[misc]

    def record(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        if any(type_ == "AuditEvent" for type_, _ in records):
            raise sqlite3.OperationalError("disk I/O error")
        self._store.record(records)


class _FailingUnit:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def __getattr__(self, name: str) -> Any:
        return getattr(self._uow, name)

    def record(self, type_: str, resource: dict[str, Any]) -> None:
        if type_ == "AuditEvent":
            raise sqlite3.OperationalError("disk I/O error")
        self._uow.record(type_, resource)


def test_a_failure_to_audit_fails_the_request(fresh: World,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    service = fresh.planbro.service
    auditor = fresh.app.extensions["planbro.audit"]
    before = fresh.get("admin", "Goal/active-goal").json()
    failing = _AuditFails(service.store)
    monkeypatch.setattr(service, "store", failing)
    monkeypatch.setattr(auditor, "store", failing)
    read = fresh.get("kommune", "CarePlan/active")
    assert read.status_code == 500
    assert read.json()["resourceType"] == "OperationOutcome"
    assert "audit" in read.json()["issue"][0]["diagnostics"]
    goal = {k: v for k, v in before.items() if k != "meta"}
    write = fresh.put("kommune", {**goal, "lifecycleStatus": "on-hold"})
    assert write.status_code == 500
    monkeypatch.undo()
    after = fresh.get("admin", "Goal/active-goal").json()
    assert after["meta"]["versionId"] == before["meta"]["versionId"]  # nothing stored
    assert fresh.get("kommune", "CarePlan/active").status_code == 200


def test_the_access_log_is_found_by_person_and_time_through_indexes(world: World) -> None:
    store = world.planbro.store
    patient = world.planbro.registry.param("AuditEvent", "patient")
    last_updated = world.planbro.registry.param("AuditEvent", "_lastUpdated")
    query = SearchQuery("AuditEvent", [Clause(patient, None, (ReferenceQuery("Patient",
                                                                            "active"),))],
                        sort=[SortKey(last_updated, descending=True)], count=20)
    plan = store.explain(query)
    assert not [line for line in plan if line.startswith("SCAN")
                and "CONSTANT ROW" not in line and "VIRTUAL TABLE" not in line], plan
    assert any("idx_reference_target" in line for line in plan), plan


def test_the_records_process_moves_the_access_log_with_the_access_values(fresh: World
                                                                         ) -> None:
    """The server's records process (``server.mover``) moves the AuditEvents of reads into
    the tables without any read of them, indexed as the server indexes: the person then
    finds them in their access log."""
    store = fresh.planbro.store
    assert fresh.get("kommune", "CarePlan/active").status_code == 200
    process = store._process  # type: ignore[attr-defined]
    assert process is not None and process._child is not None
    assert process._child.args[1:3] == ["-m", "server.mover"]
    conn = store._connection()  # type: ignore[attr-defined]
    records = store._records  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while (records.after(0, None, None) or conn.execute(
            "SELECT count(*) FROM journal").fetchone()[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert records.after(0, None, None) == []
    assert store._drainer is None  # type: ignore[attr-defined]  # no thread of this process
    log = _log(fresh, "self:active", "active")
    assert any(e["subtype"][0]["code"] == "read" and _org(e) == "300000002" for e in log)
