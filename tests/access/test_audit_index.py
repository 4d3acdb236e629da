"""The AuditEvents the server writes are indexed straight from their known elements
(:func:`server.audit.events.event_values`): the values must be those the registry's
extractors find by evaluating each search parameter's expression."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from server.access.caller import Caller
from server.access.index import AccessIndexer
from server.audit import store_indexer
from server.audit.events import ETREAT, HSYSADMIN, PATRQT, TREAT, Access, audit_event, event_values
from server.fhir.search.ast import IndexValues
from server.fhir.search.registry import Registry
from server.store.port import stamp

CALLERS = {
    "patient": Caller("patient", client_id="app", patient="p1"),
    "health worker": Caller("practitioner", client_id="ehr", organization="300000002",
                            practitioner="1234567"),
    "emergency": Caller("practitioner", client_id="ehr", organization="300000002",
                        practitioner="1234567", emergency="Akutt innleggelse"),
    "system": Caller("system", client_id="nav-system", organization="889640782"),
    "admin": Caller("admin", client_id="import"),
    "auditor": Caller("system", client_id="tilsyn", auditor=True),
    "no client": Caller("system", organization="300000061"),
}
INTERACTIONS = ("read", "vread", "search-type", "create", "update", "patch", "delete",
                "history-instance", "history-type", "operation", "batch-entry")
RESOURCES = ((), ("CarePlan/c1/_history/2",),
             ("Patient/p1/_history/3", "Goal/g1", "Task/t1/_history/1"),
             tuple(f"Goal/g{i}/_history/1" for i in range(60)))


def _events() -> list[dict[str, Any]]:
    out = []
    for (name, caller), interaction, person, resources, query, outcome in itertools.product(
            CALLERS.items(), INTERACTIONS, ("p1", None), RESOURCES,
            (None, "Task?owner=Organization/o1&status=requested"), ("0", "4", "8")):
        purpose = {"patient": PATRQT, "emergency": ETREAT, "admin": HSYSADMIN}.get(name, TREAT)
        access = Access(caller, interaction, "2026-11-23T01:00:00.123Z", person, resources,
                        query, outcome, None if outcome == "0" else "Nei, æ-ø-å",
                        purpose, caller.emergency)
        out.append(stamp(audit_event(access), "AuditEvent", "e1", 1,
                         "2026-11-23T01:00:00.200Z"))
    return out


def _as_sets(values: IndexValues) -> dict[str, set[Any]]:
    return {name: set(getattr(values, name)) for name in
            ("tokens", "references", "dates", "strings", "uris", "numbers", "quantities")}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load_default()


def test_the_values_of_the_servers_audit_events_are_the_registrys(registry: Registry) -> None:
    events = _events()
    assert len(events) == 7 * 11 * 2 * 4 * 2 * 3
    direct, generic = store_indexer(registry), AccessIndexer(registry.extract, registry)
    for event in events:
        fast = event_values(event)
        assert fast is not None, event
        assert _as_sets(fast) == _as_sets(registry.extract(event)), event
        assert _as_sets(direct(event)) == _as_sets(generic(event)), event


@pytest.mark.parametrize("change", [
    {"meta": {"security": [{"system": "http://x", "code": "R"}]}},
    {"agent": [{"who": {"reference": "Patient/p1"}, "network": {"address": "10.0.0.1"}}]},
    {"entity": [{"what": {"reference": "Patient/p1"}, "name": "Kari"}]},
    {"source": {"observer": {"display": "Planbro"}, "site": "Bergen"}},
    {"language": "nb"},
    {"agent": {"who": {"reference": "Patient/p1"}}},
])
def test_other_audit_events_are_left_to_the_registry(registry: Registry,
                                                     change: dict[str, Any]) -> None:
    event = {**_events()[0], **change}
    assert event_values(event) is None
    assert _as_sets(store_indexer(registry)(event)) == _as_sets(
        AccessIndexer(registry.extract, registry)(event))
