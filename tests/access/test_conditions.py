"""The search conditions the access layer compiles into queries, on the engines: AllOf and
AnyOf, a chain whose inner condition is a ``_has`` (resource -> its person <- a grant), deep
nesting, and history narrowed to what a caller sees.

On the ``store`` fixture (the embedded engine, and MongoDB when MONGODB_URI is set), and on
the MongoDB compiler through the filter evaluator of ``test_mongo_query``."""

from __future__ import annotations

from typing import Any

import pytest
from store_kit import PARAMS, index_resource
from test_mongo_query import doc, found, matches, run_id_pipeline

from server.fhir.search.ast import (
    AllOf,
    AnyOf,
    Chain,
    Clause,
    Condition,
    Has,
    SearchQuery,
    StringQuery,
    TokenQuery,
)
from server.store.mongo_query import scope_filter
from server.store.port import HistoryQuery, Store

NAME, GENDER = PARAMS["Patient.name"], PARAMS["Patient.gender"]
TASK_STATUS, TASK_FOR = PARAMS["Task.status"], PARAMS["Task.for"]
GOAL_STATUS, GOAL_SUBJECT = PARAMS["Goal.lifecycle-status"], PARAMS["Goal.subject"]

RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "p1", "name": [{"family": "Ola"}], "gender": "male"},
    {"resourceType": "Patient", "id": "p2", "name": [{"family": "Kari"}], "gender": "female"},
    {"resourceType": "Patient", "id": "p3", "name": [{"family": "Per"}]},
    {"resourceType": "Task", "id": "t1", "status": "ready", "for": {"reference": "Patient/p1"}},
    {"resourceType": "Task", "id": "t2", "status": "completed",
     "for": {"reference": "Patient/p2"}},
    {"resourceType": "Task", "id": "t3", "status": "ready", "for": {"reference": "Patient/p3"}},
    {"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active",
     "subject": {"reference": "Patient/p1"}},
    {"resourceType": "Goal", "id": "g2", "lifecycleStatus": "cancelled",
     "subject": {"reference": "Patient/p2"}},
]


def _name(text: str) -> Clause:
    return Clause(NAME, None, (StringQuery(text),))


def _token(param: Any, code: str, modifier: str | None = None) -> Clause:
    return Clause(param, modifier, (TokenQuery(None, code),))


def _person_with_active_goal() -> Chain:
    """Tasks whose person has an active goal: the shape of an access condition."""
    return Chain(TASK_FOR, "Patient", Has("Goal", GOAL_SUBJECT, _token(GOAL_STATUS, "active")))


CASES: list[tuple[str, list[Condition], set[str]]] = [
    ("Patient", [AnyOf((_name("ola"), _name("kari")))], {"p1", "p2"}),
    ("Patient", [AnyOf(())], set()),
    ("Patient", [AllOf(())], {"p1", "p2", "p3"}),
    ("Patient", [AllOf((_name("ola"), _token(GENDER, "male")))], {"p1"}),
    ("Patient", [AllOf((_name("ola"), _token(GENDER, "female")))], set()),
    ("Patient", [AnyOf((AllOf((_name("ola"), _token(GENDER, "male"))), _name("per")))],
     {"p1", "p3"}),
    # a branch that is a predicate (:not), not an index lookup
    ("Patient", [AnyOf((_token(GENDER, "male", "not"), _name("ola")))], {"p1", "p2", "p3"}),
    ("Patient", [AnyOf((AllOf((_token(GENDER, "female", "not"), _name("per"))),
                        _name("kari")))], {"p2", "p3"}),
    ("Task", [_person_with_active_goal()], {"t1"}),
    ("Task", [_token(TASK_STATUS, "ready"), AnyOf((_person_with_active_goal(),
                                                   Chain(TASK_FOR, "Patient", _name("per"))))],
     {"t1", "t3"}),
    ("Patient", [Has("Task", TASK_FOR, AllOf((_token(TASK_STATUS, "ready"),
                                              _person_with_active_goal())))], {"p1"}),
]


def _deep(levels: int) -> Condition:
    """Patients with a Task for a Patient with a Task for ... (``levels`` chains and _has)."""
    cond: Condition = _name("ola")
    for _ in range(levels):
        cond = Has("Task", TASK_FOR, AllOf((Chain(TASK_FOR, "Patient", cond),
                                            AnyOf((_token(TASK_STATUS, "ready"),)))))
    return cond


def _load(store: Store) -> None:
    with store.unit_of_work() as uow:
        for resource in RESOURCES:
            uow.update(resource["resourceType"], resource["id"], resource)


@pytest.mark.parametrize(("type_", "conditions", "expected"), CASES)
def test_conditions_on_the_engines(store: Store, type_: str, conditions: list[Condition],
                                   expected: set[str]) -> None:
    _load(store)
    result = store.search(SearchQuery(type_, conditions, total=True, count=100))
    assert {r["id"] for r in result.resources} == expected
    assert result.total == len(expected)


@pytest.mark.parametrize(("type_", "conditions", "expected"), CASES)
def test_conditions_on_the_mongodb_compiler(type_: str, conditions: list[Condition],
                                            expected: set[str]) -> None:
    docs = [doc(r["id"], index_resource(r), type_=r["resourceType"]) for r in RESOURCES]
    assert found(docs, *conditions, type_=type_) == expected


def test_deep_nesting_compiles_on_the_engines(store: Store) -> None:
    _load(store)
    for levels in (1, 4, 12):
        found_ids = {r["id"] for r in store.search(SearchQuery("Patient", [_deep(levels)],
                                                               count=10)).resources}
        assert found_ids == {"p1"}, levels


def test_history_narrowed_to_a_view(store: Store) -> None:
    _load(store)
    with store.unit_of_work() as uow:
        uow.update("Task", "t1", {**RESOURCES[3], "status": "in-progress"})
        uow.update("Task", "t3", {**RESOURCES[5], "status": "in-progress"})
        uow.delete("Goal", "g2")

    def listed(**scope: Any) -> tuple[set[tuple[str, str, int]], int]:
        versions, total = store.history(HistoryQuery(count=100, **scope))
        return {(v.type, v.id, v.version) for v in versions}, total

    everything, total = listed()
    assert total == len(everything) == 11
    ready_now = SearchQuery("Task", [_token(TASK_STATUS, "in-progress"),
                                     _person_with_active_goal()])
    found_versions, total = listed(types=["Goal"], within=[ready_now])
    assert found_versions == {("Task", "t1", 1), ("Task", "t1", 2), ("Goal", "g1", 1),
                              ("Goal", "g2", 1), ("Goal", "g2", 2)}
    assert total == 5
    assert listed(types=[], within=[])[1] == 0
    task_only, total = store.history(HistoryQuery("Task", None, within=[ready_now], types=[]))
    assert {(v.id, v.version) for v in task_only} == {("t1", 1), ("t1", 2)} and total == 2


def test_history_scope_on_the_mongodb_compiler() -> None:
    docs = [doc(r["id"], index_resource(r), type_=r["resourceType"]) for r in RESOURCES]
    history = [{"type": d["type"], "id": d["id"], "version": 1} for d in docs]

    def resolve(pipeline: Any) -> list[str]:
        return run_id_pipeline(docs, pipeline)

    scope = scope_filter(["Goal"], [SearchQuery("Task", [_person_with_active_goal()])],
                         resolve, 0)
    assert {(h["type"], h["id"]) for h in history if matches(h, scope)} == {
        ("Task", "t1"), ("Goal", "g1"), ("Goal", "g2")}
    nothing = scope_filter([], [], resolve, 0)
    assert not [h for h in history if matches(h, nothing)]
