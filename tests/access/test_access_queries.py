"""The caller's view inside every kind of query: totals and paging, _include, _revinclude,
chains, _has, history (instance, type, system), parameters that look inside a plan, and the
partial view of a plan."""

from __future__ import annotations

from typing import Any

import pytest
from access_kit import World
from world import FNR_SYSTEM, fnr

ALL_PEOPLE = "Patient/active,Patient/limited,Patient/withdrawn,Patient/notice"


def _pages(world: World, caller: str, path: str) -> list[list[str]]:
    pages, url = [], path
    while url:
        bundle = world.bundle(caller, url)
        pages.append([e["resource"]["id"] for e in bundle.get("entry", [])])
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
        assert len(pages) < 10
    return pages


@pytest.mark.parametrize(("caller", "goals", "conditions"), [
    ("admin", 3, 4), ("kommune", 2, 2), ("nav", 2, 1), ("hospital", 0, 0),
    ("unrelated", 0, 0), ("self:limited", 1, 1)])
def test_totals_and_paging_count_only_what_is_visible(world: World, caller: str, goals: int,
                                                      conditions: int) -> None:
    found = world.bundle(caller, f"Goal?subject={ALL_PEOPLE}&_total=accurate&_count=1")
    assert found["total"] == goals
    pages = _pages(world, caller, f"Goal?subject={ALL_PEOPLE}&_count=1")
    assert sum(len(p) for p in pages) == goals
    assert all(len(p) == 1 for p in pages[:goals])
    counted = world.bundle(caller, f"Condition?subject={ALL_PEOPLE}&_summary=count")
    assert counted["total"] == conditions


def test_include_brings_only_what_the_caller_sees(world: World) -> None:
    path = "Task?_id=limited-nav&_include=Task:focus&_include=Task:patient"
    assert world.ids("nav", path, "include") == ["Patient/limited"]  # not the Condition
    assert sorted(world.ids("kommune", path, "include")) == [
        "Condition/limited-condition", "Patient/limited"]
    iterate = "Goal?_id=limited-goal&_include=Goal:subject&_revinclude:iterate=Task:patient"
    assert world.ids("nav", iterate, "include") == ["Patient/limited", "Task/limited-nav"]


def test_an_id_is_ambiguous_only_among_what_the_caller_sees(world: World) -> None:
    """A person's Patient, plan, care team and consent share an id: a bare id (Task.focus
    may refer to any type) is refused as ambiguous (R4 search 3.1.1.4.12) for a caller who
    sees them, and is no question for one who sees none, whom the refusal would tell that
    they exist."""
    response = world.get("kommune", "Task?focus=limited")
    assert response.status_code == 400, response.text
    assert "CarePlan/limited and CareTeam/limited and Consent/limited and Patient/limited" in (
        response.json()["issue"][0]["diagnostics"])
    assert world.ids("kommune", "Task?focus:Patient=limited") == []
    assert world.ids("unrelated", "Task?focus=limited") == []


def test_revinclude_brings_only_what_the_caller_sees(world: World) -> None:
    path = "Patient?_id=limited&_revinclude=Condition:subject&_revinclude=Task:patient"
    assert sorted(world.ids("nav", path, "include")) == ["Task/limited-nav"]
    assert sorted(world.ids("kommune", path, "include")) == [
        "Condition/limited-condition", "Task/limited-kommune", "Task/limited-nav"]
    assert world.ids("hospital", path) == []


def test_chains_reach_only_what_the_caller_sees(world: World) -> None:
    by_person = "Goal?subject:Patient.identifier={}|{}"
    assert world.ids("nav", by_person.format(FNR_SYSTEM, fnr("limited"))) == ["Goal/limited-goal"]
    assert world.ids("nav", by_person.format(FNR_SYSTEM, fnr("withdrawn"))) == []
    # the inner type is one NAV may not see for this person: no match through it
    through_condition = "Task?focus:Condition.code=http://example.org/test-codes|cond-limited"
    assert world.ids("nav", through_condition) == []
    assert sorted(world.ids("kommune", through_condition)) == [
        "Task/limited-kommune", "Task/limited-nav"]


def test_has_reaches_only_what_the_caller_sees(world: World) -> None:
    path = "Patient?_has:Condition:subject:code=http://example.org/test-codes|cond-{}"
    assert world.ids("nav", path.format("limited")) == []  # no leak of the diagnosis
    assert world.ids("nav", path.format("active")) == ["Patient/active"]
    assert world.ids("kommune", path.format("limited")) == ["Patient/limited"]
    assert world.ids("unrelated", path.format("active")) == []
    nested = ("Patient?_has:Task:patient:focus:Condition.code="
              "http://example.org/test-codes|cond-limited")
    assert world.ids("nav", nested) == []
    assert world.ids("kommune", nested) == ["Patient/limited"]


def test_history_shows_only_what_the_caller_sees(world: World) -> None:
    def versions(caller: str, path: str) -> set[str]:
        bundle = world.bundle(caller, path)
        assert bundle["total"] >= len(bundle.get("entry", []))
        return {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in bundle.get("entry", []) if "resource" in e}

    nav_conditions = versions("nav", "Condition/_history?_count=100")
    assert "Condition/active-condition" in nav_conditions
    assert not nav_conditions & {"Condition/limited-condition", "Condition/withdrawn-condition",
                                 "Condition/notice-condition"}
    assert world.bundle("nav", "Condition/_history?_count=0")["total"] == 1
    everything = versions("nav", "_history?_count=1000")
    assert "Goal/limited-goal" in everything
    assert not {r for r in everything if "withdrawn" in r or "notice" in r}
    assert not {r for r in everything if r.startswith(("AuditEvent/", "Provenance/"))}
    assert versions("unrelated", "_history?_count=1000") <= {
        r for r in versions("admin", "_history?_count=1000")
        if r.split("/")[0] in ("Organization", "Practitioner", "PractitionerRole")}


def test_parameters_inside_a_plan_match_only_whole_plans(world: World) -> None:
    path = "CarePlan?performer=Organization/kommune&subject={}"
    assert world.ids("nav", path.format("Patient/active")) == ["CarePlan/active"]
    assert world.ids("nav", path.format("Patient/limited")) == []  # NAV sees part of it
    assert world.ids("kommune", path.format("Patient/limited")) == ["CarePlan/limited"]
    conditions = "CarePlan?condition=Condition/{}-condition"
    assert world.ids("nav", conditions.format("limited")) == []
    assert world.ids("nav", conditions.format("active")) == ["CarePlan/active"]


def _descriptions(plan: dict[str, Any]) -> list[str]:
    return [a["detail"]["description"] for a in plan.get("activity", [])]


def test_partial_view_of_a_plan(world: World) -> None:
    whole = world.get("admin", "CarePlan/limited").json()
    seen = world.get("nav", "CarePlan/limited").json()
    nav_measures = [a["detail"]["description"] for a in whole["activity"]
                    if a["detail"]["performer"][0]["reference"] == "Organization/nav"]
    assert _descriptions(seen) == nav_measures  # only its own measures (no "measure" class)
    assert len(_descriptions(whole)) == 4
    assert "addresses" not in seen and "text" not in seen  # no condition, no narrative
    assert seen["goal"] == whole["goal"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "REDACTED", "display": "redacted"} in seen["meta"]["security"]
    assert world.get("nav", "CarePlan/active").json()["activity"] == whole["activity"] or (
        len(world.get("nav", "CarePlan/active").json()["activity"]) == 4)
    included = world.bundle("nav", "Goal?_id=limited-goal&_revinclude=CarePlan:goal")
    plan = next(e["resource"] for e in included["entry"]
                if e["resource"]["resourceType"] == "CarePlan")
    assert _descriptions(plan) == nav_measures
    history = world.bundle("nav", "CarePlan/limited/_history")
    assert all(_descriptions(e["resource"]) == nav_measures for e in history["entry"])
    vread = world.get("nav", "CarePlan/limited/_history/1").json()
    assert _descriptions(vread) == nav_measures
    assert "addresses" in world.get("self:limited", "CarePlan/limited").json()


def test_resources_carry_their_content_class(world: World) -> None:
    labels = {}
    for path in ("Condition/limited-condition", "Goal/limited-goal", "Task/limited-nav",
                 "CarePlan/limited", "Task/notice-task"):
        security = world.get("admin", path).json()["meta"]["security"]
        labels[path] = [c["code"] for c in security
                        if c["system"] == "http://planbro.no/fhir/CodeSystem/content-class"]
    assert labels == {"Condition/limited-condition": ["health"], "Goal/limited-goal": ["goal"],
                      "Task/limited-nav": ["measure"], "CarePlan/limited": ["plan"],
                      "Task/notice-task": ["health"]}
    search = "Goal?_security=http://planbro.no/fhir/CodeSystem/content-class|goal&_total=accurate"
    assert world.bundle("nav", search)["total"] == world.bundle("nav", "Goal?_total=accurate")[
        "total"]


def _checklist(world: World, caller: str, plan: str) -> dict[str, bool]:
    report = world.get(caller, f"CarePlan/{plan}/$completeness")
    assert report.status_code == 200, report.text
    return {item["part"][0]["valueCode"]: item["part"][3]["valueBoolean"]
            for item in report.json()["parameter"] if item["name"] == "item"}


def test_the_checklist_judges_what_the_caller_sees(world: World) -> None:
    """NAV's limited view hides the person's own measure, so NAV's checklist says that item
    is missing instead of telling NAV it exists; those who see the whole plan see it
    fulfilled; those who see nothing get 404."""
    whole = _checklist(world, "kommune", "limited")
    assert all(whole.values()), whole
    assert _checklist(world, "admin", "limited") == whole
    limited = _checklist(world, "nav", "limited")
    assert limited == {**whole, "ip-4": False}
    assert _checklist(world, "nav", "active") == whole  # NAV sees the whole of this plan
    assert world.get("hospital", "CarePlan/limited/$completeness").status_code == 404
