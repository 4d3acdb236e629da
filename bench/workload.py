"""The measured operations, over HTTP and directly on the store.

Both sides run the same workload on the same data: read a CarePlan by id; find a person's
active plan by fødselsnummer (chained search, and the two-step variant: Patient by
identifier, then CarePlan by subject); find tasks by owner and status; read the newest page
of a person's access log (AuditEvents about them); create and update a CarePlan of about
5 KB; a 20-entry transaction (two new people).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import people
from measure import Client, Operation

from server.fhir.search.parse import parse_search
from server.fhir.search.registry import Registry
from server.plans.identifiers import FNR_SYSTEM
from server.store.port import Store

SEARCH_SIZES = (10, 100, 1000)


@dataclass(frozen=True)
class Person:
    index: int
    fnr: str
    patient: str
    plan: str
    team: str
    goals: tuple[str, ...]
    org: str


@dataclass
class Loaded:
    """What the load phase stored: the people and the municipalities (ids)."""

    people: list[Person] = field(default_factory=list)
    municipalities: list[str] = field(default_factory=list)
    next_index: itertools.count = field(default_factory=itertools.count)

    def plan_body(self, person: Person, *, status: str = "active") -> dict[str, Any]:
        return people.care_plan(f"Patient/{person.patient}", f"CareTeam/{person.team}",
                                [f"Goal/{g}" for g in person.goals],
                                f"Organization/{person.org}", person.index, status)

    def new_plan_body(self, person: Person) -> dict[str, Any]:
        """A draft plan (the same ~4 KB content) for a person not registered yet."""
        plan = self.plan_body(person, status="draft")
        plan["subject"] = {"reference": f"Patient/new-{uuid.uuid4()}"}
        return plan

    def new_people_entries(self, count: int) -> list[dict[str, Any]]:
        refs = [f"Organization/{m}" for m in self.municipalities]
        return [e for _ in range(count)
                for e in people.person_entries(next(self.next_index), refs)]

    def save(self, path: Path, load_info: dict[str, Any]) -> None:
        """Write the people, the municipalities, the number of the next new person and
        ``load_info`` (what the load measured) to ``path`` (JSON), for :meth:`read`. Takes
        that number: save when no more people will be made."""
        path.write_text(json.dumps({
            "people": [dataclasses.asdict(p) for p in self.people],
            "municipalities": self.municipalities, "next_index": next(self.next_index),
            "load": load_info}))

    @classmethod
    def read(cls, path: Path) -> tuple[Loaded, dict[str, Any]]:
        """What :meth:`save` wrote: the loaded data and the load's figures."""
        saved = json.loads(path.read_text())
        loaded = cls([Person(**{**p, "goals": tuple(p["goals"])}) for p in saved["people"]],
                     saved["municipalities"], itertools.count(saved["next_index"]))
        return loaded, saved["load"]


def _pickers(loaded: Loaded, concurrency: int) -> Callable[[int], Person]:
    rngs = [random.Random(1000 + t) for t in range(concurrency)]
    return lambda thread: rngs[thread].choice(loaded.people)


def _own_plans(loaded: Loaded, concurrency: int) -> Callable[[int], Person]:
    """Each thread updates its own share of the plans in turn (no two writers on one plan)."""
    shares = [itertools.cycle(loaded.people[t::concurrency] or loaded.people)
              for t in range(concurrency)]
    return lambda thread: next(shares[thread])


def _tasks_query(person: Person) -> list[tuple[str, str]]:
    """Tasks of the person's municipality in one of the four statuses (about a quarter of
    that municipality's tasks)."""
    status = people.TASK_STATUSES[person.index % len(people.TASK_STATUSES)]
    return [("owner", f"Organization/{person.org}"), ("status", status)]


def _access_log_query(person: Person) -> list[tuple[str, str]]:
    """The newest entries of a person's access log (AuditEvents about them)."""
    return [("patient", f"Patient/{person.patient}"), ("_sort", "-_lastUpdated"),
            ("_count", "20")]


def _q(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{k}={quote(v, safe='/:')}" for k, v in params)


def http_operations(clients: Callable[[int], Client], loaded: Loaded,
                    concurrency: int) -> dict[str, Operation]:
    """The workload over HTTP; ``clients(thread)`` is that thread's keep-alive client."""
    pick, own = _pickers(loaded, concurrency), _own_plans(loaded, concurrency)

    def read(t: int) -> None:
        clients(t).request("GET", f"/CarePlan/{pick(t).plan}")

    def plan_by_fnr(t: int) -> None:
        fnr = pick(t).fnr
        found = clients(t).request("GET", "/CarePlan?" + _q(
            [("subject:Patient.identifier", f"{FNR_SYSTEM}|{fnr}"), ("status", "active")]))
        _expect_one(found, fnr)

    def plan_by_fnr_two_step(t: int) -> None:
        fnr = pick(t).fnr
        patients = clients(t).request("GET", "/Patient?" + _q(
            [("identifier", f"{FNR_SYSTEM}|{fnr}")]))
        patient_id = _expect_one(patients, fnr)["id"]
        _expect_one(clients(t).request(
            "GET", f"/CarePlan?subject=Patient/{patient_id}&status=active"), fnr)

    def tasks(t: int) -> None:
        clients(t).request("GET", "/Task?" + _q(_tasks_query(pick(t))))

    def access_log(t: int) -> None:
        clients(t).request("GET", "/AuditEvent?" + _q(_access_log_query(pick(t))))

    def create(t: int) -> None:
        # A draft plan for someone who has none yet (each person may have one open plan):
        # a new plan starts as a draft, as the workflow requires.
        clients(t).request("POST", "/CarePlan", loaded.new_plan_body(pick(t)))

    def update(t: int) -> None:
        person = own(t)
        body = loaded.plan_body(person) | {"id": person.plan}
        clients(t).request("PUT", f"/CarePlan/{person.plan}", body)

    def transaction(t: int) -> None:
        clients(t).request("POST", "", people.transaction(loaded.new_people_entries(2)))

    return {"read CarePlan by id": read, "search plan by fnr (chained)": plan_by_fnr,
            "search plan by fnr (two-step)": plan_by_fnr_two_step,
            "search tasks by owner+status": tasks, "access log of a person": access_log,
            "create CarePlan (5 KB)": create,
            "update CarePlan (5 KB)": update, "transaction (20 entries)": transaction}


def _expect_one(bundle: dict[str, Any] | None, fnr: str) -> dict[str, Any]:
    entries = (bundle or {}).get("entry") or []
    if len(entries) != 1:
        raise AssertionError(f"{len(entries)} matches for {fnr}, expected 1")
    return entries[0]["resource"]


def direct_operations(store: Store, registry: Registry, loaded: Loaded,
                      concurrency: int) -> dict[str, Operation]:
    """The same workload on the store in-process: no HTTP, no Flask, no FHIR service."""
    pick, own = _pickers(loaded, concurrency), _own_plans(loaded, concurrency)

    def search(type_: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return store.search(parse_search(registry, type_, params).query).resources

    def read(t: int) -> None:
        if store.read("CarePlan", pick(t).plan) is None:
            raise AssertionError("plan not found")

    def plan_by_fnr(t: int) -> None:
        fnr = pick(t).fnr
        _one(search("CarePlan", [("subject:Patient.identifier", f"{FNR_SYSTEM}|{fnr}"),
                                 ("status", "active")]), fnr)

    def plan_by_fnr_two_step(t: int) -> None:
        fnr = pick(t).fnr
        patient = _one(search("Patient", [("identifier", f"{FNR_SYSTEM}|{fnr}")]), fnr)
        _one(search("CarePlan", [("subject", f"Patient/{patient['id']}"),
                                 ("status", "active")]), fnr)

    def tasks(t: int) -> None:
        search("Task", _tasks_query(pick(t)))

    def access_log(t: int) -> None:
        search("AuditEvent", _access_log_query(pick(t)))

    def create(t: int) -> None:
        with store.unit_of_work() as uow:
            uow.create("CarePlan", loaded.new_plan_body(pick(t)))

    def update(t: int) -> None:
        person = own(t)
        with store.unit_of_work() as uow:
            uow.update("CarePlan", person.plan, loaded.plan_body(person) | {"id": person.plan})

    def transaction(t: int) -> None:
        resolved = people.with_ids(loaded.new_people_entries(2))
        with store.unit_of_work() as uow:
            for type_, id_, resource in resolved:
                uow.create(type_, resource, id_=id_)

    return {"read CarePlan by id": read, "search plan by fnr (chained)": plan_by_fnr,
            "search plan by fnr (two-step)": plan_by_fnr_two_step,
            "search tasks by owner+status": tasks, "access log of a person": access_log,
            "create CarePlan (5 KB)": create,
            "update CarePlan (5 KB)": update, "transaction (20 entries)": transaction}


def _one(resources: list[dict[str, Any]], fnr: str) -> dict[str, Any]:
    if len(resources) != 1:
        raise AssertionError(f"{len(resources)} matches for {fnr}, expected 1")
    return resources[0]


def search_size_params(count: int) -> list[tuple[str, str]]:
    """A search that matches three Goals per person, one page of ``count`` results."""
    return [("lifecycle-status", "active"), ("_count", str(count))]
