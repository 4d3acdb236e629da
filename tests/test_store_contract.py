"""The storage contract (server/store/port.py), run against every engine."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from store_kit import GENDER_SYSTEM, ID, LAST_UPDATED, PARAMS, date_range, norm

from server.fhir.search.ast import (
    Chain,
    Clause,
    Condition,
    DateQuery,
    Has,
    IndexValues,
    Keyset,
    MissingQuery,
    NumberQuery,
    QuantityQuery,
    QueryValue,
    ReferenceQuery,
    ReferenceValue,
    SearchParam,
    SearchQuery,
    SearchResult,
    SortKey,
    StringQuery,
    TokenQuery,
    TokenValue,
    UriQuery,
    page_order,
)
from server.store import port
from server.store.port import (
    INDEX_NS,
    ETags,
    HistoryQuery,
    Precondition,
    Store,
    UniqueConflict,
    Version,
    VersionConflict,
    format_instant,
    now_instant,
)

FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"
OTHER_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.2"
FNR_A = "01819010001"  # synthetic (month + 80), passes the modulus-11 check
FNR_B = "15857510027"
UCUM = "http://unitsofmeasure.org"
INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


# -- helpers ---------------------------------------------------------------------------------


def put(store: Store, type_: str, id_: str, body: dict[str, Any] | None = None,
        **kwargs: Any) -> Version:
    with store.unit_of_work() as uow:
        return uow.update(type_, id_, {"resourceType": type_, **(body or {})}, **kwargs)[0]


def create(store: Store, type_: str, body: dict[str, Any] | None = None,
           **kwargs: Any) -> Version:
    with store.unit_of_work() as uow:
        return uow.create(type_, {"resourceType": type_, **(body or {})}, **kwargs)


def delete(store: Store, type_: str, id_: str, **kwargs: Any) -> Version | None:
    with store.unit_of_work() as uow:
        return uow.delete(type_, id_, **kwargs)


def param(key: str) -> SearchParam:
    return {"_id": ID, "_lastUpdated": LAST_UPDATED}.get(key) or PARAMS[key]


def c(key: str, *values: QueryValue, mod: str | None = None) -> Clause:
    """A clause on ``Type.param`` (or ``_id`` / ``_lastUpdated``)."""
    return Clause(param(key), mod, values)


def tok(code: str | None, system: str | None = None) -> TokenQuery:
    return TokenQuery(system, code)


def ref(target: str, version: str | None = None) -> ReferenceQuery:
    type_, _, id_ = target.rpartition("/")
    return ReferenceQuery(type_ or None, id_, version=version)


def date(prefix: str, text: str) -> DateQuery:
    return DateQuery(prefix, *date_range(text))  # type: ignore[arg-type]


def num(prefix: str, value: str, cls: type = NumberQuery, **extra: Any) -> Any:
    """A number/quantity query with the implicit precision range of ``value``."""
    exact = Decimal(value)
    half = Decimal(1).scaleb(exact.as_tuple().exponent) / 2
    return cls(prefix, exact, exact - half, exact + half, **extra)  # type: ignore[arg-type]


def qty(prefix: str, value: str, system: str | None = None,
        code: str | None = None) -> QuantityQuery:
    return num(prefix, value, QuantityQuery, system=system, code=code)


def find(store: Store, type_: str, *conditions: Condition, **kwargs: Any) -> list[str]:
    """Ids found, in order; a resource never comes twice."""
    kwargs.setdefault("count", 100)
    result = store.search(SearchQuery(type_, list(conditions), **kwargs))
    ids = [r["id"] for r in result.resources]
    assert len(ids) == len(set(ids)), ids
    return ids


def found(store: Store, type_: str, *conditions: Condition, **kwargs: Any) -> set[str]:
    return set(find(store, type_, *conditions, **kwargs))


# -- create, read, update, delete ------------------------------------------------------------


@pytest.mark.parametrize(("ms", "instant"), [
    (0, "1970-01-01T00:00:00.000Z"), (-1, "1969-12-31T23:59:59.999Z"),
    (1_000, "1970-01-01T00:00:01.000Z"), (-1_001, "1969-12-31T23:59:58.999Z"),
    (1_763_856_000_123, "2025-11-23T00:00:00.123Z"),
    (203_716_219_437_219, "8425-07-05T14:43:57.219Z"),  # beyond a float's exact milliseconds
    (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    (-49_572_686_076_196, "0399-02-08T01:25:23.804Z"),  # a year of four digits, always
    (-62_135_596_800_000, "0001-01-01T00:00:00.000Z")])
def test_instants_are_exact_to_the_millisecond(ms: int, instant: str) -> None:
    assert format_instant(ms) == instant
    assert format_instant(ms) == instant  # the cached second gives the same


def test_create_read_vread(store: Store) -> None:
    created = create(store, "Patient", {"active": True})
    assert isinstance(created.id, str) and 1 <= len(created.id) <= 64
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", created.id)
    assert (created.type, created.version, created.deleted, created.method) == (
        "Patient", 1, False, "POST")
    assert created.etag == 'W/"1"'
    assert INSTANT.match(created.last_updated)
    assert created.resource == {"resourceType": "Patient", "active": True, "id": created.id,
                                "meta": {"versionId": "1",
                                         "lastUpdated": created.last_updated}}
    read = store.read("Patient", created.id)
    assert read == created
    assert store.vread("Patient", created.id, 1) == created
    assert store.vread("Patient", created.id, 2) is None
    assert store.read("Patient", "unknown") is None
    assert store.read("Practitioner", created.id) is None
    assert create(store, "Patient").id != created.id


def test_assigned_ids_sort_in_the_order_they_were_made(store: Store) -> None:
    """Server-assigned ids begin with the time (UUID version 7), so new rows go to the end
    of the id indexes, not to random places in them."""
    made = [create(store, "Patient").id for _ in range(50)]
    with store.unit_of_work() as uow:
        for _ in range(50):
            uow.record("AuditEvent", _event("p1"))
    query = SearchQuery("AuditEvent", [c("AuditEvent.patient", ref("Patient/p1"))], count=100)
    recorded = [e["id"] for e in store.search(query).resources]
    for ids in (made, recorded):
        assert len(set(ids)) == 50 and all(uuid.UUID(i).version == 7 for i in ids)
    assert made == sorted(made) and max(made) < min(recorded)


def test_client_json_is_kept_exactly(store: Store) -> None:
    body = {
        "zeta": {"y": 1, "b": [3, 2, 1]},
        "lifecycleStatus": "active",
        "target": [{"detailQuantity": {"value": Decimal("1.10"), "unit": "kg"}}],
        "meta": {"tag": [{"code": "x"}], "versionId": "77"},
        "alpha": "Ærlig Østre Ås",
    }
    written = put(store, "Goal", "g1", body)
    resource = store.read("Goal", "g1").resource
    assert resource == written.resource
    assert list(resource) == ["resourceType", "zeta", "lifecycleStatus", "target", "meta",
                              "alpha", "id"]
    assert list(resource["zeta"]) == ["y", "b"] and resource["zeta"]["b"] == [3, 2, 1]
    value = resource["target"][0]["detailQuantity"]["value"]
    assert isinstance(value, Decimal) and str(value) == "1.10"
    assert resource["meta"] == {"tag": [{"code": "x"}], "versionId": "1",
                                "lastUpdated": written.last_updated}
    assert resource["alpha"] == "Ærlig Østre Ås"
    assert body["meta"] == {"tag": [{"code": "x"}], "versionId": "77"}  # input not changed


def test_update_makes_a_new_version(store: Store) -> None:
    first = create(store, "Patient", {"gender": "male"})
    with store.unit_of_work() as uow:
        second, created = uow.update("Patient", first.id,
                                     {"resourceType": "Patient", "gender": "female"})
    assert not created
    assert (second.version, second.method) == (2, "PUT")
    assert second.resource["meta"]["versionId"] == "2"
    assert second.last_updated >= first.last_updated
    assert store.read("Patient", first.id).resource["gender"] == "female"
    assert store.vread("Patient", first.id, 1).resource["gender"] == "male"
    with store.unit_of_work() as uow:
        third, _ = uow.update("Patient", first.id, {"resourceType": "Patient"},
                              method="PATCH")
    assert (third.version, store.read("Patient", first.id).method) == (3, "PATCH")


def test_update_creates_when_missing(store: Store) -> None:
    with store.unit_of_work() as uow:
        version, created = uow.update("Patient", "chosen-id", {"resourceType": "Patient"})
    assert created and version.version == 1 and version.id == "chosen-id"
    assert store.read("Patient", "chosen-id").resource["id"] == "chosen-id"


def test_delete_writes_a_tombstone(store: Store) -> None:
    put(store, "Patient", "p1", {"name": [{"family": "Dahl"}]})
    tombstone = delete(store, "Patient", "p1")
    assert tombstone is not None
    assert (tombstone.version, tombstone.deleted, tombstone.resource, tombstone.method) == (
        2, True, None, "DELETE")
    assert store.read("Patient", "p1") == tombstone
    assert store.vread("Patient", "p1", 2) == tombstone
    assert store.vread("Patient", "p1", 1).resource["name"] == [{"family": "Dahl"}]
    versions, total = store.history(HistoryQuery("Patient", "p1"))
    assert total == 2 and [v.version for v in versions] == [2, 1]
    assert versions[0].deleted
    assert find(store, "Patient") == []
    assert find(store, "Patient", c("Patient.name", StringQuery("dahl"))) == []
    assert store.read_many([("Patient", "p1")]) == []
    assert delete(store, "Patient", "p1") is None
    assert delete(store, "Patient", "never") is None


def test_recreate_after_delete_continues_versions(store: Store) -> None:
    put(store, "Patient", "p1")
    delete(store, "Patient", "p1")
    with store.unit_of_work() as uow:
        version, created = uow.update("Patient", "p1", {"resourceType": "Patient",
                                                        "gender": "other"})
    assert created and version.version == 3 and not version.deleted
    assert version.resource["meta"]["versionId"] == "3"
    assert find(store, "Patient", c("Patient.gender", tok("other"))) == ["p1"]
    put(store, "Patient", "p2")
    asked = [("Patient", "p1", 1), ("Patient", "p1", 2), ("Patient", "p1", 3),
             ("Patient", "p2", 1), ("Patient", "p1", 9), ("Goal", "p1", 2)]
    assert store.deleted_versions(asked) == {("Patient", "p1", 2)}
    assert store.deleted_versions([]) == set()


def test_if_match(store: Store) -> None:
    put(store, "Patient", "p1")
    put(store, "Patient", "p1", {"active": True})
    with pytest.raises(VersionConflict) as stale:
        put(store, "Patient", "p1", {"active": False}, if_match=1)
    assert stale.value.status == 412
    assert put(store, "Patient", "p1", {"active": False}, if_match=2).version == 3
    with pytest.raises(VersionConflict):
        delete(store, "Patient", "p1", if_match=2)
    with pytest.raises(VersionConflict):
        put(store, "Patient", "absent", if_match=1)
    assert store.read("Patient", "absent") is None
    assert delete(store, "Patient", "p1", if_match=3).version == 4
    with pytest.raises(VersionConflict):
        put(store, "Patient", "p1", if_match=3)
    assert store.read("Patient", "p1").version == 4


def test_client_preconditions(store: Store) -> None:
    def etags(*versions: int, name: str = "If-Match") -> ETags:
        """``*`` without versions, else the list of their ETags."""
        text = ", ".join(f'W/"{v}"' for v in versions) or "*"
        return ETags(name, name, text, frozenset(map(str, versions)), any=not versions)

    create_only = Precondition(if_none_match=etags(name="If-None-Match"))
    assert put(store, "Patient", "p1", if_match=create_only).version == 1
    with pytest.raises(VersionConflict) as exists:
        put(store, "Patient", "p1", {"active": True}, if_match=create_only)
    assert exists.value.issues[0].expression == ("If-None-Match",)
    with pytest.raises(VersionConflict):
        put(store, "Patient", "absent", if_match=Precondition(etags()))
    assert store.read("Patient", "absent") is None
    assert put(store, "Patient", "p1", if_match=Precondition(etags(3, 1))).version == 2
    with pytest.raises(VersionConflict):
        delete(store, "Patient", "p1", if_match=Precondition(etags(1, 3)))
    assert delete(store, "Patient", "p1", if_match=Precondition(etags())).version == 3
    assert put(store, "Patient", "p1", if_match=create_only).version == 4


def test_concurrent_if_match_updates_lose_nothing(store: Store) -> None:
    put(store, "Patient", "p1", {"multipleBirthInteger": 0})
    threads_n, wins_each = 4, 5
    won: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            wins = 0
            while wins < wins_each:
                current = store.read("Patient", "p1")
                body = {"multipleBirthInteger": current.resource["multipleBirthInteger"] + 1}
                try:
                    put(store, "Patient", "p1", body, if_match=current.version)
                except VersionConflict:
                    continue
                wins += 1
                with lock:
                    won.append(current.version)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    total = threads_n * wins_each
    assert sorted(won) == list(range(1, total + 1))  # exactly one winner per version
    final = store.read("Patient", "p1")
    assert final.version == total + 1
    assert final.resource["multipleBirthInteger"] == total


def test_unique_keys(store: Store) -> None:
    plan = create(store, "Task", {"status": "ready"}, keys=("plan:p1", "open:p1"))
    with pytest.raises(UniqueConflict) as taken:
        create(store, "Task", {"status": "draft"}, keys=("open:p1",))
    assert (taken.value.status, taken.value.key) == (409, "open:p1")
    assert (taken.value.owner_type, taken.value.owner_id) == ("Task", plan.id)
    assert find(store, "Task", c("Task.status", tok("draft"))) == []
    # keys=None keeps the keys; an update may keep its own keys
    put(store, "Task", plan.id, {"status": "in-progress"})
    with pytest.raises(UniqueConflict):
        create(store, "Task", keys=("open:p1",))
    put(store, "Task", plan.id, {"status": "in-progress"}, keys=("plan:p1", "open:p1"))
    # an update with other keys releases the old ones
    put(store, "Task", plan.id, {"status": "completed"}, keys=("plan:p1",))
    other = create(store, "Task", keys=("open:p1",))
    with pytest.raises(UniqueConflict):
        put(store, "Task", other.id, keys=("plan:p1",))
    with pytest.raises(UniqueConflict):
        put(store, "Task", "new-one", keys=("plan:p1",))
    assert store.read("Task", "new-one") is None
    # deleting releases the keys
    delete(store, "Task", plan.id)
    taker = create(store, "Task", keys=("plan:p1",))
    with store.unit_of_work() as uow:  # who holds a key, as the unit of work sees it
        assert uow.key_holder("plan:p1") == ("Task", taker.id)
        assert uow.key_holder("open:p1") == ("Task", other.id)
        uow.update("Task", taker.id, {"resourceType": "Task", "status": "completed"}, keys=())
        assert uow.key_holder("plan:p1") is None
        assert uow.key_holder("no-such-key") is None


def test_unit_of_work_rolls_back_on_error(store: Store) -> None:
    put(store, "Patient", "kept", {"name": [{"family": "Berg"}]})
    _, before = store.history(HistoryQuery())

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.unit_of_work() as uow:
        uow.create("Patient", {"resourceType": "Patient", "name": [{"family": "Lie"}]},
                   id_="gone", keys=("k1",))
        uow.update("Patient", "kept", {"resourceType": "Patient",
                                       "name": [{"family": "Moe"}]})
        uow.delete("Patient", "kept")
        raise Boom
    assert store.read("Patient", "gone") is None
    assert store.read("Patient", "kept").version == 1
    assert found(store, "Patient", c("Patient.name", StringQuery("lie"))) == set()
    assert found(store, "Patient", c("Patient.name", StringQuery("moe"))) == set()
    assert found(store, "Patient", c("Patient.name", StringQuery("berg"))) == {"kept"}
    assert store.history(HistoryQuery())[1] == before
    create(store, "Patient", keys=("k1",))  # the key was never taken


def test_reads_inside_a_unit_of_work_see_its_writes(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.create("Patient", {"resourceType": "Patient", "gender": "female"}, id_="p1")
        assert uow.read("Patient", "p1").version == 1
        result = uow.search(SearchQuery("Patient", [c("Patient.gender", tok("female"))]))
        assert [r["id"] for r in result.resources] == ["p1"]
        uow.update("Patient", "p1", {"resourceType": "Patient", "gender": "male"})
        assert uow.vread("Patient", "p1", 2).resource["gender"] == "male"
        assert uow.vread("Patient", "p1", 3) is None
        uow.delete("Patient", "p1")
        assert uow.read("Patient", "p1").deleted
        assert uow.vread("Patient", "p1", 3).deleted
        assert uow.search(SearchQuery("Patient")).resources == []


def test_history_inside_a_unit_of_work_lists_its_versions(store: Store) -> None:
    put(store, "Patient", "a")
    with store.unit_of_work() as uow:
        uow.update("Patient", "a", {"resourceType": "Patient", "active": True})
        assert uow.delete("Patient", "a") is not None
        uow.update("Patient", "a", {"resourceType": "Patient"})
        versions, total = uow.history(HistoryQuery("Patient", "a"))
        assert ([v.version for v in versions], total) == ([4, 3, 2, 1], 4)
        assert uow.history(HistoryQuery("Patient"))[1] == 4
        assert uow.deleted_versions([("Patient", "a", 2), ("Patient", "a", 3)]) == {
            ("Patient", "a", 3)}
    assert store.history(HistoryQuery("Patient", "a"))[1] == 4


def test_read_many(store: Store) -> None:
    for id_ in ("a", "b", "c"):
        put(store, "Patient", id_)
    put(store, "Practitioner", "a")
    delete(store, "Patient", "c")
    got = store.read_many([("Patient", "a"), ("Patient", "c"), ("Practitioner", "a"),
                           ("Patient", "x"), ("Goal", "a"), ("Patient", "b")])
    assert {(v.type, v.id, v.version) for v in got} == {
        ("Patient", "a", 1), ("Practitioner", "a", 1), ("Patient", "b", 1)}
    many = [("Patient", f"m{i}") for i in range(1200)]
    with store.unit_of_work() as uow:
        for type_, id_ in many:
            uow.update(type_, id_, {"resourceType": type_})
    assert len(store.read_many(many + [("Patient", "a")])) == 1201


# -- records (the server's AuditEvents and Provenances) --------------------------------------


def _event(person: str) -> dict[str, Any]:
    return {"resourceType": "AuditEvent", "outcome": "0",
            "entity": [{"what": {"reference": f"Patient/{person}"}}]}


def _events_of(reader: Any, person: str) -> list[dict[str, Any]]:
    query = SearchQuery("AuditEvent", [c("AuditEvent.patient", ref(f"Patient/{person}"))])
    return reader.search(query).resources


def test_records_are_in_every_read_once_committed(store: Store) -> None:
    put(store, "Patient", "p1")
    put(store, "Patient", "p2")
    with store.unit_of_work() as uow:
        uow.record("AuditEvent", _event("p1"))
        uow.record("AuditEvent", _event("p1"))
        uow.record("Provenance", {"resourceType": "Provenance", "target": [
            {"reference": "Patient/p1/_history/1"}]})
        assert len(_events_of(uow, "p1")) == 2  # its own unit of work sees them
        with pytest.raises(ValueError, match="not a record type"):
            uow.record("Patient", {"resourceType": "Patient"})
    events = _events_of(store, "p1")
    assert len(events) == 2 and events[0]["id"] != events[1]["id"]
    for event in events:
        assert event["meta"]["versionId"] == "1" and INSTANT.match(event["meta"]["lastUpdated"])
        assert event["entity"] == _event("p1")["entity"]
        stored = store.read("AuditEvent", event["id"])
        assert stored is not None and stored.resource == event and stored.method == "POST"
        assert store.vread("AuditEvent", event["id"], 1) == stored
    assert _events_of(store, "p2") == []
    assert found(store, "Patient", Has("AuditEvent", param("AuditEvent.patient"),
                                       c("_id", tok(events[0]["id"])))) == {"p1"}
    assert {v.id for v in store.read_many([("AuditEvent", e["id"]) for e in events])} == {
        e["id"] for e in events}
    assert store.history(HistoryQuery("AuditEvent"))[1] == 2
    assert store.search(SearchQuery("Provenance", count=0, total=True)).total == 1


def test_records_roll_back_with_their_unit_of_work(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.unit_of_work() as uow:
        uow.record("AuditEvent", _event("p1"))
        raise Boom
    assert _events_of(store, "p1") == []
    assert store.history(HistoryQuery("AuditEvent"))[1] == 0


# -- history ---------------------------------------------------------------------------------


def test_history(store: Store) -> None:
    put(store, "Patient", "a")
    put(store, "Patient", "b")
    put(store, "Patient", "a", {"active": True})
    time.sleep(0.003)
    since = put(store, "Practitioner", "d")
    time.sleep(0.003)
    delete(store, "Patient", "b")
    time.sleep(0.003)
    put(store, "Patient", "a", {"active": False})

    versions, total = store.history(HistoryQuery("Patient", "a"))
    assert total == 3 and [v.version for v in versions] == [3, 2, 1]
    assert versions[0].resource["active"] is False and versions[2].method == "PUT"

    versions, total = store.history(HistoryQuery("Patient"))
    assert total == 5
    assert [(v.id, v.version) for v in versions][:2] == [("a", 3), ("b", 2)]
    assert {(v.id, v.version) for v in versions} == {("a", 1), ("a", 2), ("a", 3),
                                                    ("b", 1), ("b", 2)}
    stamps = [v.last_updated for v in versions]
    assert stamps == sorted(stamps, reverse=True)

    everything, total = store.history(HistoryQuery())
    assert total == 6 and len(everything) == 6

    ms = date_range(since.last_updated)[0]
    recent, total = store.history(HistoryQuery(since_ms=ms))
    assert total == 3
    assert {(v.type, v.id, v.version) for v in recent} == {
        ("Practitioner", "d", 1), ("Patient", "b", 2), ("Patient", "a", 3)}
    assert store.history(HistoryQuery("Patient", since_ms=ms))[1] == 2
    before = ms - 1  # up to a time: what was written by then, for one resource and all
    assert {(v.type, v.id, v.version) for v in store.history(HistoryQuery(until_ms=before))[0]} == {
        ("Patient", "a", 1), ("Patient", "a", 2), ("Patient", "b", 1)}
    upto, _ = store.history(HistoryQuery("Patient", "a", until_ms=before))
    assert [v.version for v in upto] == [2, 1]
    assert store.history(HistoryQuery("Patient", since_ms=ms, until_ms=ms + 10**6))[1] == 2

    page1, total1 = store.history(HistoryQuery("Patient", count=2))
    page2, _ = store.history(HistoryQuery("Patient", count=2, offset=2))
    page3, _ = store.history(HistoryQuery("Patient", count=2, offset=4))
    assert total1 == 5 and [len(page1), len(page2), len(page3)] == [2, 2, 1]
    assert [(v.id, v.version) for v in page1 + page2 + page3] == [
        (v.id, v.version) for v in versions]
    assert store.history(HistoryQuery("Patient", count=0)) == ([], 5)
    assert store.history(HistoryQuery("Goal")) == ([], 0)


# -- search: tokens --------------------------------------------------------------------------


@pytest.fixture
def token_patients(store: Store) -> Store:
    def ident(system: str | None, value: str) -> dict[str, str]:
        return {"value": value} if system is None else {"system": system, "value": value}

    def language(code: str, display: str) -> list[dict[str, Any]]:
        return [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": code,
                                          "display": display}]}}]

    put(store, "Patient", "t1", {"identifier": [ident(FNR_SYSTEM, FNR_A)], "gender": "male",
                                 "communication": language("nb", "Norsk bokmål")})
    put(store, "Patient", "t2", {"identifier": [ident(None, FNR_A)], "gender": "female",
                                 "communication": language("nn", "Norsk nynorsk")})
    put(store, "Patient", "t3", {"identifier": [ident(OTHER_SYSTEM, FNR_A)],
                                 "gender": "female", "active": True,
                                 "communication": language("se", "Davvisámegiella")})
    put(store, "Patient", "t4", {"identifier": [ident(FNR_SYSTEM, FNR_B),
                                                ident(OTHER_SYSTEM, "x-1")],
                                 "active": False})
    put(store, "Patient", "t5", {"gender": "male"})
    return store


@pytest.mark.parametrize(("values", "expected"), [
    ([tok(FNR_A)], {"t1", "t2", "t3"}),
    ([tok(FNR_A, "")], {"t2"}),
    ([tok(FNR_A, FNR_SYSTEM)], {"t1"}),
    ([tok(None, FNR_SYSTEM)], {"t1", "t4"}),
    ([tok(None, "")], {"t2"}),
    ([tok(None, None)], {"t1", "t2", "t3", "t4"}),
    ([tok(FNR_A, OTHER_SYSTEM), tok(FNR_B, FNR_SYSTEM)], {"t3", "t4"}),
    ([tok(FNR_A, "urn:unknown")], set()),
    ([tok("x-1", FNR_SYSTEM)], set()),  # system and code must be on the same value
])
def test_token_system_and_code(token_patients: Store, values: list[TokenQuery],
                               expected: set[str]) -> None:
    assert found(token_patients, "Patient", c("Patient.identifier", *values)) == expected


def test_index_values_computed_beforehand_serve_only_that_resource(store: Store) -> None:
    """:meth:`Store.indexed` values serve a write of the very resource they were computed
    for (its stamped ``meta`` aside); for any other one the engine extracts them itself.
    The values given here differ from the resource's own, to show which were stored."""
    body = {"resourceType": "Patient", "gender": "male", "meta": {"versionId": "9"}}
    given = port.Indexed(store.indexed("Patient", "pre", body).resource,
                         IndexValues(tokens=[TokenValue("gender", GENDER_SYSTEM, "other")]))
    with store.unit_of_work() as uow:
        uow.create("Patient", body, id_="pre", indexed=given)
        uow.create("Patient", body, id_="other-id", indexed=given)
        uow.update("Patient", "changed", {**body, "gender": "female"}, indexed=given)
    assert found(store, "Patient", c("Patient.gender", tok("other"))) == {"pre"}
    assert found(store, "Patient", c("Patient.gender", tok("male"))) == {"other-id"}
    assert found(store, "Patient", c("Patient.gender", tok("female"))) == {"changed"}
    with store.unit_of_work() as uow:  # an update of the same resource, as computed before
        uow.update("Patient", "pre", {**body, "active": True}, indexed=given)
    assert found(store, "Patient", c("Patient.gender", tok("male"))) == {"other-id", "pre"}


def test_token_modifiers(token_patients: Store) -> None:
    store = token_patients
    assert found(store, "Patient", c("Patient.gender", tok("male"))) == {"t1", "t5"}
    assert found(store, "Patient", c("Patient.gender", tok("male", GENDER_SYSTEM))) == {
        "t1", "t5"}
    assert found(store, "Patient", c("Patient.gender", tok("male"), mod="not")) == {
        "t2", "t3", "t4"}
    assert found(store, "Patient", c("Patient.gender", tok("male"), tok("female"),
                                     mod="not")) == {"t4"}
    assert found(store, "Patient", c("Patient.identifier", tok(FNR_A, FNR_SYSTEM),
                                     mod="not")) == {"t2", "t3", "t4", "t5"}
    assert found(store, "Patient", c("Patient.active", tok("true"))) == {"t3"}
    assert found(store, "Patient", c("Patient.active", tok("false"))) == {"t4"}
    assert found(store, "Patient", c("Patient.language", tok(norm("Norsk")),
                                     mod="text")) == {"t1", "t2"}
    assert found(store, "Patient", c("Patient.language", tok(norm("norsk  NY")),
                                     mod="text")) == {"t2"}
    assert found(store, "Patient", c("Patient.language", tok(norm("Davvisáme")),
                                     mod="text")) == {"t3"}
    assert found(store, "Patient", c("Patient.language", tok(norm("bokmål")), mod="text")
                 ) == set()  # starts-with, not contains
    assert found(store, "Patient", c("Patient.active", MissingQuery(True),
                                     mod="missing")) == {"t1", "t2", "t5"}
    assert found(store, "Patient", c("Patient.active", MissingQuery(False),
                                     mod="missing")) == {"t3", "t4"}
    # AND of clauses
    assert found(store, "Patient", c("Patient.gender", tok("female")),
                 c("Patient.identifier", tok(FNR_A, OTHER_SYSTEM))) == {"t3"}


def test_id_and_ids(token_patients: Store) -> None:
    store = token_patients
    assert found(store, "Patient", c("_id", tok("t1"), tok("t3"), tok("zz"))) == {"t1", "t3"}
    assert found(store, "Patient", c("_id", tok("t1"), mod="not")) == {"t2", "t3", "t4", "t5"}
    assert found(store, "Practitioner", c("_id", tok("t1"))) == set()
    assert found(store, "Patient", ids=frozenset({"t1", "t2", "zz"})) == {"t1", "t2"}
    assert found(store, "Patient", c("Patient.gender", tok("female")),
                 ids=frozenset({"t1", "t2"})) == {"t2"}
    assert found(store, "Patient", ids=frozenset()) == set()


# -- search: strings, uris, numbers, quantities ----------------------------------------------


@pytest.fixture
def named_patients(store: Store) -> Store:
    put(store, "Patient", "p1", {"name": [{"family": "Åsheim", "given": ["Kari", "Åse"]}],
                                 "gender": "female", "birthDate": "1990-05-01"})
    put(store, "Patient", "p2", {"name": [{"family": "Ørnulfsen", "given": ["Ørnulf"]}],
                                 "gender": "male", "birthDate": "1985-01-01"})
    put(store, "Patient", "p3", {"name": [{"family": "Asen", "given": ["Per"]}],
                                 "gender": "female"})
    put(store, "Patient", "p4", {"name": [{"family": "Nordmann", "given": ["Ola Kristian"]}],
                                 "gender": "male", "birthDate": "2001-02-03"})
    put(store, "Patient", "p5", {"gender": "female", "birthDate": "1970"})
    put(store, "Patient", "p6", {"birthDate": "1999-12-31"})
    put(store, "Patient", "p7", {"gender": "female"})
    return store


@pytest.mark.parametrize(("key", "value", "modifier", "expected"), [
    ("Patient.name", "Åse", None, {"p1", "p3"}),
    ("Patient.name", "ase", None, {"p1", "p3"}),
    ("Patient.name", "Ørnulf", None, {"p2"}),
    ("Patient.name", "ørnulfsen", None, {"p2"}),
    ("Patient.name", "ola k", None, {"p4"}),
    ("Patient.name", "kristian", None, set()),
    ("Patient.name", "", None, {"p1", "p2", "p3", "p4"}),
    ("Patient.family", "as", None, {"p1", "p3"}),
    ("Patient.family", "kari", None, set()),
    ("Patient.name", "Åse", "exact", {"p1"}),
    ("Patient.name", "åse", "exact", set()),
    ("Patient.name", "Asen", "exact", {"p3"}),
    ("Patient.name", "Ase", "exact", set()),
    ("Patient.name", "heim", "contains", {"p1"}),
    ("Patient.name", "KRISTIAN", "contains", {"p4"}),
    ("Patient.name", "ulf", "contains", {"p2"}),
    ("Patient.name", "se", "contains", {"p1", "p2", "p3"}),
    ("Patient.name", "xyz", "contains", set()),
])
def test_strings(named_patients: Store, key: str, value: str, modifier: str | None,
                 expected: set[str]) -> None:
    query = StringQuery(value if modifier == "exact" else norm(value))
    assert found(named_patients, "Patient", c(key, query, mod=modifier)) == expected


def test_string_or_and_update_replaces_index(named_patients: Store) -> None:
    store = named_patients
    assert found(store, "Patient", c("Patient.name", StringQuery("per"),
                                     StringQuery("nord"))) == {"p3", "p4"}
    put(store, "Patient", "p3", {"name": [{"family": "Berg"}]})
    assert found(store, "Patient", c("Patient.name", StringQuery("asen"))) == set()
    assert found(store, "Patient", c("Patient.name", StringQuery("berg"))) == {"p3"}
    assert found(store, "Patient", c("Patient.gender", tok("female"))) == {"p1", "p5", "p7"}


def test_uris(store: Store) -> None:
    put(store, "Subscription", "s1", {"channel": {"endpoint": "https://app.example/hooks/plan"}})
    put(store, "Subscription", "s2", {"channel": {"endpoint": "https://app.example/hooks"}})
    put(store, "Subscription", "s3", {"channel": {"endpoint": "https://other.example/x"}})
    put(store, "Subscription", "s4", {"channel": {}})

    def uri(value: str, mod: str | None = None) -> set[str]:
        return found(store, "Subscription", c("Subscription.url", UriQuery(value), mod=mod))

    assert uri("https://app.example/hooks") == {"s2"}
    assert uri("https://app.example/hook") == set()
    assert uri("https://app.example/hooks", "below") == {"s1", "s2"}
    assert uri("https://app.example/hooks/plan/42", "above") == {"s1", "s2"}
    assert uri("https://app.example/hooks/p", "above") == {"s2"}
    assert uri("https://app.example", "above") == set()


@pytest.fixture
def goals(store: Store) -> Store:
    def goal(value: str, code: str, unit: str) -> dict[str, Any]:
        quantity = {"value": Decimal(value), "system": UCUM, "code": code, "unit": unit}
        return {"target": [{"detailQuantity": quantity}]}

    put(store, "Goal", "g1", goal("1.10", "kg", "kg"))
    put(store, "Goal", "g2", goal("5", "kg", "kg"))
    put(store, "Goal", "g3", goal("100", "mm[Hg]", "mmHg"))
    put(store, "Goal", "g4", goal("99.6", "kg", "kg"))
    put(store, "Goal", "g5", goal("150", "kg", "kg"))
    put(store, "Goal", "g6", {})
    put(store, "Goal", "g7", goal("99.5", "kg", "kg"))  # the low end of 100's range
    put(store, "Goal", "g8", goal("100.5", "kg", "kg"))  # just above 100's range
    return store


@pytest.mark.parametrize(("query", "expected"), [
    (qty("eq", "100"), {"g3", "g4", "g7"}),
    (qty("eq", "100.0"), {"g3"}),
    (qty("eq", "1.1"), {"g1"}),
    (qty("ne", "100"), {"g1", "g2", "g5", "g8"}),
    (qty("gt", "5"), {"g3", "g4", "g5", "g7", "g8"}),
    (qty("ge", "5"), {"g2", "g3", "g4", "g5", "g7", "g8"}),
    (qty("lt", "5"), {"g1"}),
    (qty("le", "5"), {"g1", "g2"}),
    (qty("sa", "100"), {"g5", "g8"}),
    (qty("eb", "100"), {"g1", "g2"}),
    (qty("ap", "100"), {"g3", "g4", "g7", "g8"}),
    (qty("eq", "100", UCUM, "kg"), {"g4", "g7"}),
    (qty("eq", "100", UCUM, "mm[Hg]"), {"g3"}),
    (qty("eq", "100", None, "mmHg"), {"g3"}),
    (qty("eq", "100", "urn:other", "kg"), set()),
    (qty("gt", "0", UCUM, "kg"), {"g1", "g2", "g4", "g5", "g7", "g8"}),
])
def test_quantities(goals: Store, query: QuantityQuery, expected: set[str]) -> None:
    assert found(goals, "Goal", c("Goal.target-quantity", query)) == expected


def test_numbers(store: Store) -> None:
    for order in (1, 2, 3):
        put(store, "Patient", f"n{order}", {"multipleBirthInteger": order})
    put(store, "Patient", "n0")

    def number(prefix: str, value: str) -> set[str]:
        return found(store, "Patient", c("Patient.birth-order", num(prefix, value)))

    assert number("eq", "2") == {"n2"}
    assert number("ne", "2") == {"n1", "n3"}
    assert number("gt", "1") == {"n2", "n3"}
    assert number("le", "2") == {"n1", "n2"}
    assert number("eq", "2.4") == set()
    assert found(store, "Patient", c("Patient.birth-order", num("eq", "1"), num("eq", "3"))
                 ) == {"n1", "n3"}


# -- search: dates ---------------------------------------------------------------------------

_PERIODS: dict[str, dict[str, str]] = {
    "a": {"start": "2024-01-01", "end": "2024-01-01"},
    "b": {"start": "2024-01-02", "end": "2024-01-02"},
    "c": {"start": "2024-01-03", "end": "2024-01-03"},
    "d": {"start": "2024-01-01T12:00:00Z", "end": "2024-01-02T12:00:00Z"},
    "e": {"start": "2023", "end": "2023"},
    "f": {"start": "2024-01-02"},  # no end
    "g": {"start": "2020-06-01", "end": "2020-06-01"},
    "h": {"start": "2024-01-02T23:59:59.999Z", "end": "2024-01-02T23:59:59.999Z"},
    "i": {"start": "2024-01-03T00:00:00.000Z", "end": "2024-01-03T00:00:00.000Z"},
    "j": {"start": "2024-01-01T23:59:59.999Z", "end": "2024-01-01T23:59:59.999Z"},
    "k": {"start": "2024-01-02T00:00:00.000Z", "end": "2024-01-02T00:00:00.000Z"},
    "l": {"end": "2024-01-02T12:00:00Z"},  # no start
    "n": {"start": "2024-01-01", "end": "2024-01-02"},  # ends with the query day
    "o": {"start": "2024-01-02", "end": "2024-01-03"},  # starts with the query day
}


@pytest.fixture
def periods(store: Store) -> Store:
    for id_, period in _PERIODS.items():
        put(store, "Task", id_, {"status": "ready", "executionPeriod": period})
    put(store, "Task", "m", {"status": "ready"})
    return store


@pytest.mark.parametrize(("prefix", "expected"), [
    ("eq", "bhk"),
    ("ne", "acdefgijlno"),
    ("gt", "cfio"),
    ("lt", "adegjln"),
    ("ge", "bcdfhiklno"),  # reaches into the day or beyond: d, l and n end in it
    ("le", "abdefghjklno"),  # f and o start in it
    ("sa", "ci"),
    ("eb", "aegj"),
    ("ap", "abcdefhijklno"),
])
def test_date_prefixes(periods: Store, prefix: str, expected: str) -> None:
    query = c("Task.period", date(prefix, "2024-01-02"))
    assert found(periods, "Task", query) == set(expected)


def test_date_precision_and_or(periods: Store) -> None:
    store = periods
    assert found(store, "Task", c("Task.period", date("eq", "2024-01"))) == set("abcdhijkno")
    assert found(store, "Task", c("Task.period", date("eq", "2024-01-02T00:00:00.000Z"))
                 ) == {"k"}
    assert found(store, "Task", c("Task.period", date("eq", "2024-01-02T12:00:00Z"))) == set()
    assert found(store, "Task", c("Task.period", date("eq", "2024"))) == set("abcdhijkno")
    assert found(store, "Task", c("Task.period", date("sa", "2024-01-03"),
                                  date("eb", "2023-01-01"))) == {"g"}
    assert found(store, "Task", c("Task.period", date("ge", "2024-01-01"),
                                  ), c("Task.period", date("le", "2024-01-01"))) == set("adjln")
    assert found(store, "Task", c("Task.period", MissingQuery(True), mod="missing")) == {"m"}


def test_date_approximately_is_at_least_a_day(store: Store) -> None:
    today = dt.datetime.now(dt.UTC).date()
    for offset in (-2, -1, 0, 1, 2):
        day = (today + dt.timedelta(days=offset)).isoformat()
        put(store, "Task", f"d{offset + 2}", {"authoredOn": day})
    query = c("Task.authored-on", date("ap", today.isoformat()))
    assert found(store, "Task", query) == {"d1", "d2", "d3"}
    far = today - dt.timedelta(days=20 * 365)
    put(store, "Task", "far", {"authoredOn": (far + dt.timedelta(days=300)).isoformat()})
    put(store, "Task", "farther", {"authoredOn": (far + dt.timedelta(days=900)).isoformat()})
    # 20 years away: the window is two years wide on each side
    assert found(store, "Task", c("Task.authored-on", date("ap", far.isoformat()))) == {"far"}


def test_last_updated(store: Store) -> None:
    stamps = []
    for id_ in ("u1", "u2", "u3"):
        stamps.append(put(store, "Patient", id_).last_updated)
        time.sleep(0.004)
    assert stamps == sorted(set(stamps))
    middle = stamps[1]
    expected = {"eq": {"u2"}, "ne": {"u1", "u3"}, "gt": {"u3"}, "lt": {"u1"},
                "ge": {"u2", "u3"}, "le": {"u1", "u2"}, "sa": {"u3"}, "eb": {"u1"},
                "ap": {"u1", "u2", "u3"}}
    for prefix, ids in expected.items():
        assert found(store, "Patient", c("_lastUpdated", date(prefix, middle))) == ids, prefix
    day = middle[:10]
    assert found(store, "Patient", c("_lastUpdated", date("eq", day))) == {"u1", "u2", "u3"}
    assert found(store, "Patient", c("_lastUpdated", date("gt", day))) == set()


# -- search: references, chains, _has --------------------------------------------------------


@pytest.fixture
def tasks(store: Store) -> Store:
    put(store, "Patient", "p1", {"name": [{"family": "Åsheim"}],
                                 "identifier": [{"system": FNR_SYSTEM, "value": FNR_A}],
                                 "generalPractitioner": [{"reference": "Practitioner/d1"}]})
    put(store, "Patient", "p2", {"name": [{"family": "Ørnulfsen"}]})
    put(store, "Practitioner", "d1", {"name": [{"family": "Lege"}]})
    put(store, "Practitioner", "p1", {"name": [{"family": "Ørnulfsen"}]})

    def task(status: str, **refs: Any) -> dict[str, Any]:
        return {"status": status, **refs}

    put(store, "Task", "r1", task("ready", **{"for": {"reference": "Patient/p1"}},
                                  owner={"reference": "Practitioner/d1"}))
    put(store, "Task", "r2", task("completed", **{"for": {"reference": "Patient/p2"}},
                                  owner={"reference": "Patient/p1"}))
    put(store, "Task", "r3", task("ready", owner={"reference": "Practitioner/p1"}))
    put(store, "Task", "r4", task("draft", **{"for": {
        "identifier": {"system": FNR_SYSTEM, "value": FNR_A}}}))
    put(store, "Task", "r5", task("ready", owner={
        "reference": "https://other.example/fhir/Practitioner/x9"}))
    put(store, "Task", "r6", task("cancelled", **{
        "for": {"reference": "Patient/p1/_history/2"}}))
    put(store, "Communication", "c1", {"status": "completed",
                                       "basedOn": [{"reference": "Task/r2"}]})
    put(store, "Communication", "c2", {"status": "in-progress",
                                       "basedOn": [{"reference": "Task/r1"}]})
    return store


def test_references(tasks: Store) -> None:
    store = tasks

    def task_ids(key: str, *values: QueryValue, mod: str | None = None) -> set[str]:
        return found(store, "Task", c(key, *values, mod=mod))

    assert task_ids("Task.owner", ref("Practitioner/d1")) == {"r1"}
    assert task_ids("Task.owner", ref("p1")) == {"r2", "r3"}
    assert task_ids("Task.owner", ref("Practitioner/p1")) == {"r3"}
    assert task_ids("Task.owner", ref("Patient/p1")) == {"r2"}
    assert task_ids("Task.owner", ref("Patient/d1")) == set()
    assert task_ids("Task.owner", ReferenceQuery(
        None, None, url="https://other.example/fhir/Practitioner/x9")) == {"r5"}
    assert task_ids("Task.for", ref("Patient/p1")) == {"r1", "r6"}
    assert task_ids("Task.for", ref("Patient/p1", version="2")) == {"r6"}
    assert task_ids("Task.for", ref("Patient/p1"), ref("Patient/p2")) == {"r1", "r2", "r6"}
    assert task_ids("Task.for", tok(FNR_A, FNR_SYSTEM), mod="identifier") == {"r4"}
    assert task_ids("Task.for", tok(FNR_A), mod="identifier") == {"r4"}
    assert task_ids("Task.for", tok(FNR_A, OTHER_SYSTEM), mod="identifier") == set()
    assert task_ids("Task.for", MissingQuery(True), mod="missing") == {"r3", "r4", "r5"}
    assert task_ids("Task.for", MissingQuery(False), mod="missing") == {"r1", "r2", "r6"}
    assert found(store, "Patient", c("Patient.general-practitioner", ref("Practitioner/d1"))
                 ) == {"p1"}


def test_chain(tasks: Store) -> None:
    store = tasks

    def chain(key: str, target: str, inner: Clause) -> set[str]:
        return found(store, "Task", Chain(param(key), target, inner))

    assert chain("Task.for", "Patient", c("Patient.name", StringQuery(norm("Ørn")))) == {"r2"}
    assert chain("Task.for", "Patient", c("Patient.identifier", tok(FNR_A, FNR_SYSTEM))
                 ) == {"r1", "r6"}
    assert chain("Task.for", "Patient", c("_id", tok("p2"))) == {"r2"}
    assert chain("Task.owner", "Practitioner", c("Practitioner.name", StringQuery("ørn"))
                 ) == {"r3"}
    assert chain("Task.owner", "Patient", c("Patient.name", StringQuery("ash"))) == {"r2"}
    assert found(store, "Task", Chain(param("Task.for"), "Patient",
                                      c("Patient.name", StringQuery("asheim"))),
                 c("Task.status", tok("ready"))) == {"r1"}
    delete(store, "Patient", "p2")
    assert chain("Task.for", "Patient", c("Patient.name", StringQuery("ørn"))) == set()


def test_has(tasks: Store) -> None:
    store = tasks
    ready = c("Task.status", tok("ready"))
    assert found(store, "Patient", Has("Task", param("Task.for"), ready)) == {"p1"}
    assert found(store, "Practitioner", Has("Task", param("Task.owner"), ready)) == {"d1", "p1"}
    assert found(store, "Patient", Has("Task", param("Task.owner"), c(
        "Task.status", tok("completed")))) == {"p1"}
    nested = Has("Task", param("Task.for"), Has("Communication", param("Communication.based-on"),
                                               c("Communication.status", tok("completed"))))
    assert found(store, "Patient", nested) == {"p2"}
    with_chain = Has("Task", param("Task.for"), Chain(
        param("Task.owner"), "Practitioner", c("Practitioner.name", StringQuery("lege"))))
    assert found(store, "Patient", with_chain) == {"p1"}
    delete(store, "Task", "r1")
    assert found(store, "Patient", Has("Task", param("Task.for"), ready)) == set()


# -- search: sort, paging, totals ------------------------------------------------------------


def _sorted(store: Store, *keys: tuple[str, bool], **kwargs: Any) -> list[str]:
    sort = [SortKey(param(key), descending) for key, descending in keys]
    return find(store, "Patient", sort=sort, **kwargs)


def test_sort(named_patients: Store) -> None:
    store = named_patients
    assert _sorted(store, ("Patient.family", False)) == ["p3", "p1", "p4", "p2", "p5", "p6",
                                                        "p7"]
    assert _sorted(store, ("Patient.family", True)) == ["p2", "p4", "p1", "p3", "p5", "p6",
                                                       "p7"]
    # multi-valued: smallest value ascending, largest descending
    assert _sorted(store, ("Patient.name", False))[:4] == ["p1", "p3", "p4", "p2"]
    assert _sorted(store, ("Patient.name", True))[:4] == ["p2", "p3", "p4", "p1"]
    assert _sorted(store, ("Patient.birthdate", False)) == ["p5", "p2", "p1", "p6", "p4",
                                                           "p3", "p7"]
    assert _sorted(store, ("Patient.birthdate", True)) == ["p4", "p6", "p1", "p2", "p5",
                                                          "p3", "p7"]
    assert _sorted(store, ("Patient.gender", False), ("Patient.birthdate", True)) == [
        "p1", "p5", "p3", "p7", "p4", "p2", "p6"]
    assert _sorted(store, ("Patient.gender", True), ("_id", True)) == [
        "p4", "p2", "p7", "p5", "p3", "p1", "p6"]
    assert _sorted(store, ("_id", False)) == [f"p{i}" for i in range(1, 8)]
    assert _sorted(store, ("Patient.gender", False), count=3, offset=2) == ["p5", "p7", "p2"]


def test_sort_by_reference_token_and_last_updated(tasks: Store) -> None:
    not_r5 = c("_id", tok("r5"), mod="not")  # its owner is an absolute URL, no target id
    by_owner = find(tasks, "Task", not_r5, sort=[SortKey(param("Task.owner"))])
    assert by_owner == ["r1", "r2", "r3", "r4", "r6"]  # d1 < p1 = p1 (then id), missing
    by_owner = find(tasks, "Task", not_r5, sort=[SortKey(param("Task.owner"), True)])
    assert by_owner == ["r2", "r3", "r1", "r4", "r6"]
    put(tasks, "Task", "r1", {"status": "ready"})
    by_update = find(tasks, "Task", sort=[SortKey(LAST_UPDATED, True)])
    assert by_update[0] == "r1"
    by_status = find(tasks, "Task", sort=[SortKey(param("Task.status"))])
    assert by_status == ["r6", "r2", "r4", "r1", "r3", "r5"]


def test_default_order_is_by_last_update(store: Store) -> None:
    for id_ in ("z", "y", "x"):
        put(store, "Patient", id_)
        time.sleep(0.003)
    assert find(store, "Patient") == ["z", "y", "x"]
    put(store, "Patient", "z", {"active": True})
    assert find(store, "Patient") == ["y", "x", "z"]


def test_paging_and_total(store: Store) -> None:
    with store.unit_of_work() as uow:
        for n in range(25):
            uow.update("Task", f"t{n:02d}", {"resourceType": "Task",
                                             "status": ("ready", "draft")[n % 2]})
    for sort in ([], [SortKey(param("Task.status"))]):
        pages = [store.search(SearchQuery("Task", sort=sort, count=10, offset=o, total=True))
                 for o in (0, 10, 20)]
        ids = [r["id"] for p in pages for r in p.resources]
        assert [len(p.resources) for p in pages] == [10, 10, 5]
        assert sorted(ids) == [f"t{n:02d}" for n in range(25)]
        assert {p.total for p in pages} == {25}
        again = store.search(SearchQuery("Task", sort=sort, count=10, offset=10))
        assert [r["id"] for r in again.resources] == ids[10:20]
        assert again.total is None
    ready = SearchQuery("Task", [c("Task.status", tok("ready"))], count=0, total=True)
    result = store.search(ready)
    assert (result.resources, result.total) == ([], 13)
    beyond = store.search(SearchQuery("Task", count=10, offset=30, total=True))
    assert (beyond.resources, beyond.total) == ([], 25)


def _keyset(result: SearchResult, at: int, snapshot_ms: int,
            backward: bool = False) -> Keyset:
    """The keyset page after (or before) the ``at`` th resource of ``result``."""
    assert result.keys is not None and len(result.keys) == len(result.resources)
    written = date_range(result.resources[at]["meta"]["lastUpdated"])[0]
    return Keyset(result.keys[at], snapshot_ms, backward, changed=written > snapshot_ms)


def _walk(store: Store, sort: list[SortKey], snapshot_ms: int,
          between: Callable[[int, list[str]], None] = lambda n, ids: None) -> list[str]:
    """Every id a walk by keyset pages of three finds, from the first page on; ``between``
    runs after each page (its number, the ids so far)."""
    ids: list[str] = []
    keyset: Keyset | None = None
    for n in range(20):
        result = store.search(SearchQuery("Task", sort=sort, count=3, keyset=keyset))
        ids += [r["id"] for r in result.resources]
        if not result.resources:
            return ids
        between(n, ids)
        keyset = _keyset(result, -1, snapshot_ms)
    raise AssertionError(f"paging did not end: {ids}")


SORTS = {
    "default": [], "-lastUpdated": [SortKey(LAST_UPDATED, True)], "-id": [SortKey(ID, True)],
    "lastUpdated,-id": [SortKey(LAST_UPDATED), SortKey(ID, True)],
    # by a search parameter, some without a value (last either way)
    "priority": [SortKey(param("Task.priority"))],
    "-authored-on,-lastUpdated": [SortKey(param("Task.authored-on"), True),
                                  SortKey(LAST_UPDATED, True)],
}


def _tasks(store: Store, count: int) -> None:
    for n in range(count):
        body: dict[str, Any] = {"status": "ready"}
        if n % 3:
            body["priority"] = ("routine", "urgent", "asap")[n % 3]
            body["authoredOn"] = f"2026-0{1 + n % 4}-01"
        put(store, "Task", f"k{n}", body)
        time.sleep(0.002)


@pytest.mark.parametrize("sort", SORTS.values(), ids=SORTS.keys())
def test_keyset_pages_neither_skip_nor_take_in_what_came_later(store: Store,
                                                               sort: list[SortKey]) -> None:
    _tasks(store, 9)
    before = find(store, "Task", sort=sort)
    snapshot = now_instant()[1]
    time.sleep(0.002)

    def write(page: int, seen: list[str]) -> None:
        if page == 0:  # a seen one and an unseen one changed, one deleted, one created
            unseen = [i for i in before if i not in seen]
            put(store, "Task", seen[0], {"status": "draft", "priority": "stat",
                                         "authoredOn": "2027-01-01"})
            put(store, "Task", unseen[0], {"status": "draft"})  # its sort values go
            delete(store, "Task", unseen[1])
            put(store, "Task", "later", {"status": "ready", "priority": "asap"})

    seen = _walk(store, sort, snapshot, write)
    deleted = [i for i in before if i not in seen]
    assert len(deleted) == 1 and "later" not in seen  # nothing else missed
    assert set(seen) == set(before) - set(deleted)
    # only a resource changed after it was seen may come again
    assert len(seen) - len(set(seen)) <= (0 if page_order(sort)[0][0] == "_id" else 1)
    first = store.search(SearchQuery("Task", sort=sort, count=1))
    counted = store.search(SearchQuery("Task", sort=sort, count=3, total=True,
                                       keyset=_keyset(first, 0, snapshot)))
    assert counted.total == 8  # the total is of the whole search as of the snapshot


@pytest.mark.parametrize("sort", SORTS.values(), ids=SORTS.keys())
def test_keyset_pages_before_a_resource_are_the_pages_walked_forward(
        store: Store, sort: list[SortKey]) -> None:
    _tasks(store, 5)
    with store.unit_of_work() as uow:  # some share a millisecond: the id decides
        for n in range(5, 8):
            uow.update("Task", f"k{n}", {"resourceType": "Task", "status": "ready"})
    snapshot = now_instant()[1]
    forward = _walk(store, sort, snapshot)
    assert sorted(forward) == [f"k{n}" for n in range(8)] and forward == find(store, "Task",
                                                                               sort=sort)
    last = store.search(SearchQuery("Task", sort=sort, count=100))
    backward: list[str] = [forward[-1]]
    keyset = _keyset(last, -1, snapshot, backward=True)
    while True:
        page = store.search(SearchQuery("Task", sort=sort, count=3, keyset=keyset))
        if not page.resources:
            break
        backward = [r["id"] for r in page.resources] + backward
        keyset = _keyset(page, 0, snapshot, backward=True)
    assert backward == forward


# -- reindex ---------------------------------------------------------------------------------


def test_reindex_replaces_the_stored_search_values(store: Store) -> None:
    put(store, "Patient", "a", {"gender": "female"})
    put(store, "Patient", "b", {"gender": "female"})
    put(store, "Patient", "gone", {"gender": "female"})
    delete(store, "Patient", "gone")
    female = c("Patient.gender", tok("female"))
    assert found(store, "Patient", female) == {"a", "b"}
    indexer = store.indexer

    def without_gender(resource: dict[str, Any]) -> Any:  # as if the parameter were new
        values = indexer(resource)
        values.tokens = [t for t in values.tokens if t.param != "gender"]
        return values

    store.indexer = without_gender
    assert store.reindex(batch=1) == 2  # every current resource, none deleted
    assert found(store, "Patient", female) == set()
    assert found(store, "Patient", c("Patient.gender", MissingQuery(True),
                                     mod="missing")) == {"a", "b"}
    store.indexer = indexer
    assert store.reindex() == 2
    assert found(store, "Patient", female) == {"a", "b"}
    assert store.read("Patient", "a").version == 1  # the resources themselves are as they were


def test_ensure_indexed_rebuilds_what_other_rules_built(store: Store) -> None:
    indexer = store.indexer
    female = c("Patient.gender", tok("female"))

    def without_gender(resource: dict[str, Any]) -> Any:  # the rules of an older server
        values = indexer(resource)
        values.tokens = [t for t in values.tokens if t.param != "gender"]
        return values

    assert store.ensure_indexed("old") == 0  # a new store: nothing to index, the rules noted
    assert store.ensure_indexed("old") is None
    store.indexer = without_gender
    put(store, "Patient", "a", {"gender": "female"})
    put(store, "Patient", "b", {"gender": "female"})
    assert found(store, "Patient", female) == set()
    told: list[str] = []
    store.indexer = indexer  # an upgrade: other rules
    assert store.ensure_indexed("new", log=told.append) == 2
    assert found(store, "Patient", female) == {"a", "b"}
    assert "indexing every resource again" in told[0] and "2 resources indexed" in told[-1]
    assert len(told) == 2  # progress is told every 10,000
    assert store.ensure_indexed("new") is None  # current: nothing done
    assert store.ensure_indexed("new", force=True) == 2
    assert store.kv_get(INDEX_NS, "rebuilding") is None  # the lease is given back


def test_ensure_indexed_waits_for_another_process_and_takes_over_a_lapsed_lease(
        store: Store) -> None:
    put(store, "Patient", "a", {"gender": "female"})
    store.kv_put(INDEX_NS, "built-with", {"fingerprint": "old"})
    # another process indexes (or died doing so): its lease lapses in 0.4 s
    assert store.kv_put(INDEX_NS, "rebuilding", {"pid": -1}, only_if_absent=True,
                        expires_ms=now_instant()[1] + 400)
    started = time.monotonic()
    assert store.ensure_indexed("new") == 1
    assert time.monotonic() - started >= 0.35
    assert store.kv_get(INDEX_NS, "built-with")["fingerprint"] == "new"  # type: ignore[index]


def test_ensure_indexed_goes_on_where_a_killed_process_stopped(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that dies while it indexes (gunicorn kills a worker that is slow to start)
    loses its current batch only: the next one goes on after the last batch done."""
    for id_ in ("a", "b", "c"):
        put(store, "Patient", id_)
    store.kv_put(INDEX_NS, "built-with", {"fingerprint": "old"})
    monkeypatch.setattr(port, "REINDEX_BATCH", 1)
    indexer, seen = store.indexer, []

    def dies_at_b(resource: dict[str, Any]) -> Any:
        if resource["id"] == "b":
            raise KeyboardInterrupt("killed")
        return indexer(resource)

    def noting(resource: dict[str, Any]) -> Any:
        seen.append(resource["id"])
        return indexer(resource)

    store.indexer = dies_at_b
    with pytest.raises(KeyboardInterrupt):
        store.ensure_indexed("new")
    assert store.kv_get(INDEX_NS, "built-with") == {"fingerprint": "old"}
    store.indexer = noting
    told: list[str] = []
    assert store.ensure_indexed("new", log=told.append) == 3  # "a" counted, not done again
    assert seen == ["b", "c"]
    assert "going on after 1" in told[0]
    assert store.kv_get(INDEX_NS, "progress") is None  # done: nothing left to go on from
    seen.clear()
    assert store.ensure_indexed("new", force=True) == 3 and seen == ["a", "b", "c"]


def _goal_subjects(base: str) -> Callable[[dict[str, Any]], IndexValues]:
    """An indexer of Goal.subject that reads absolute references below ``base`` as
    references to resources here (as the server does under its base URL)."""
    def index(resource: dict[str, Any]) -> IndexValues:
        out = IndexValues()
        literal = str((resource.get("subject") or {}).get("reference", ""))
        if literal.startswith(base + "/"):
            type_, id_ = literal[len(base) + 1:].split("/")
            out.references.append(ReferenceValue("subject", type_, id_, url=literal))
        elif "://" in literal:
            out.references.append(ReferenceValue("subject", "", "", url=literal))
        elif literal:
            type_, id_ = literal.split("/")
            out.references.append(ReferenceValue("subject", type_, id_))
        return out

    return index


def test_ensure_indexed_under_another_base_url_indexes_the_absolute_references_again(
        store: Store) -> None:
    old, new = "https://old.example/fhir", "https://planbro.example/fhir"
    store.indexer = _goal_subjects(old)
    assert store.ensure_indexed("rules", base=old) == 0
    put(store, "Goal", "here", {"subject": {"reference": f"{new}/Patient/p1"}})
    put(store, "Goal", "relative", {"subject": {"reference": "Patient/p1"}})
    by_subject = c("Goal.subject", ref("Patient/p1"))
    assert found(store, "Goal", by_subject) == {"relative"}
    seen: list[str] = []
    under_new = _goal_subjects(new)

    def noting(resource: dict[str, Any]) -> IndexValues:
        seen.append(resource["id"])
        return under_new(resource)

    store.indexer = noting
    told: list[str] = []
    assert store.ensure_indexed("rules", base=new, log=told.append) == 1
    assert seen == ["here"]  # only the resource with an absolute reference
    assert found(store, "Goal", by_subject) == {"here", "relative"}
    assert "absolute references" in told[0] and new in told[0]
    assert store.ensure_indexed("rules", base=new) is None
    assert store.ensure_indexed("other rules", base=new) == 2  # every resource again


def test_ensure_indexed_by_one_process_at_a_time(store: Store) -> None:
    """Threads stand in for processes: each store call is its own; only one indexes."""
    put(store, "Patient", "a", {"gender": "female"})
    store.kv_put(INDEX_NS, "built-with", {"fingerprint": "old"})
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda _i: store.ensure_indexed("new"), range(4)))
    assert sorted(counts, key=str) == [1, None, None, None]


# -- server records (key-value) ---------------------------------------------------------------


def test_kv_put_get_delete_list(store: Store) -> None:
    assert store.kv_get("clients", "a") is None
    assert store.kv_put("clients", "b", {"name": "B", "n": Decimal("1.10")})
    assert store.kv_put("clients", "a", {"name": "A"})
    assert store.kv_put("other", "a", {"name": "other"})
    assert store.kv_get("clients", "b") == {"name": "B", "n": Decimal("1.10")}
    assert [k for k, _ in store.kv_list("clients")] == ["a", "b"]
    assert store.kv_put("clients", "a", {"name": "A2"})  # replace
    assert store.kv_get("clients", "a") == {"name": "A2"}
    assert store.kv_delete("clients", "a") is True
    assert store.kv_delete("clients", "a") is False
    assert store.kv_get("clients", "a") is None
    assert store.kv_get("other", "a") == {"name": "other"}


def test_kv_only_if_absent_detects_replay_and_honours_expiry(store: Store) -> None:
    now = now_instant()[1]
    assert store.kv_put("jti", "x", {}, expires_ms=now + 60_000, only_if_absent=True)
    assert not store.kv_put("jti", "x", {}, expires_ms=now + 60_000, only_if_absent=True)
    # an expired entry is absent: reads do not see it and it can be taken again
    assert store.kv_put("jti", "old", {"v": 1}, expires_ms=now - 1)
    assert store.kv_get("jti", "old") is None
    assert store.kv_list("jti") == [("x", {})]
    assert store.kv_put("jti", "old", {"v": 2}, expires_ms=now + 60_000, only_if_absent=True)
    assert store.kv_get("jti", "old") == {"v": 2}
    # an entry without expiry is never taken over
    assert store.kv_put("jti", "forever", {})
    assert not store.kv_put("jti", "forever", {}, only_if_absent=True)


def test_kv_only_if_absent_is_atomic_under_concurrency(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    now = now_instant()[1]
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(
            lambda _: store.kv_put("jti", "race", {}, expires_ms=now + 60_000,
                                   only_if_absent=True), range(16)))
    assert wins.count(True) == 1
