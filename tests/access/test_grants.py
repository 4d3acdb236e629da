"""Deriving grants from care teams and consents, and partial views of a plan (pure)."""

from __future__ import annotations

import copy
from typing import Any

from world import care_team, consent, plan

from server.access.grants import (
    CARE_TEAM,
    Directory,
    Grants,
    care_team_grants,
    message_grant,
    notification_grant,
)
from server.access.labels import CONTENT_CLASS_SYSTEM, activity_class
from server.access.views import merge_hidden, plan_view
from server.fhir.search.normalize import period_range
from server.store.port import Version

ENH = "urn:oid:2.16.578.1.12.4.1.4.101"
HPR = "urn:oid:2.16.578.1.12.4.1.4.4"
KOMMUNE, NAV, SYKEHUS = "300000002", "300000029", "300000010"


class _Reader:
    """The directory resources the derivation reads."""

    def __init__(self) -> None:
        org = [("kommune", KOMMUNE), ("nav", NAV), ("sykehus", SYKEHUS)]
        self.data: dict[tuple[str, str], dict[str, Any]] = {
            ("Organization", i): {"resourceType": "Organization", "id": i,
                                  "identifier": [{"system": ENH, "value": n}]}
            for i, n in org}
        self.data[("Practitioner", "siri")] = {"resourceType": "Practitioner", "id": "siri",
                                               "identifier": [{"system": HPR, "value": "111"}]}
        self.data[("Practitioner", "ola-lege")] = {
            "resourceType": "Practitioner", "id": "ola-lege",
            "identifier": [{"system": HPR, "value": "8765432"}]}
        self.data[("PractitionerRole", "koordinator-siri")] = {
            "resourceType": "PractitionerRole", "id": "koordinator-siri",
            "practitioner": {"reference": "Practitioner/siri"},
            "organization": {"reference": "Organization/kommune"}}

    def read(self, type_: str, id_: str) -> Version | None:
        found = self.data.get((type_, id_))
        return None if found is None else Version(type_, id_, 1, "", False, found)

    def search(self, query: Any) -> Any:
        raise AssertionError("not used")


def _grants(teams: list[dict], consents: list[dict], plans: list[dict] | None = None
            ) -> dict[str, dict[str, Any]]:
    derived = care_team_grants("p", teams, consents, plans or [], Directory(_Reader()))
    return {g["holders"][0]: g for g in derived}


def test_participants_with_consent_get_grants() -> None:
    grants = _grants([care_team("p")], [consent("p", "active")])
    assert set(grants) == {KOMMUNE, NAV, f"{KOMMUNE}/8765432"}
    assert grants[KOMMUNE]["maintain"] and not grants[NAV]["maintain"]
    assert sorted(grants[NAV]["classes"]) == ["goal", "health", "measure", "plan"]
    assert grants[KOMMUNE]["period"]["start"] == period_range("2026-09-01", None)[0]
    assert grants[KOMMUNE]["kind"] == "care-team" and grants[KOMMUNE]["person"] == "p"
    assert "Consent/p" in grants[NAV]["basis"] and "CareTeam/p" in grants[NAV]["basis"]


def test_a_limited_consent_limits_the_classes() -> None:
    grants = _grants([care_team("p")], [consent("p", "limited")])
    assert sorted(grants[NAV]["classes"]) == ["goal", "plan"]
    assert sorted(grants[KOMMUNE]["classes"]) == ["goal", "health", "measure", "plan"]


def test_no_grant_without_both_care_team_and_consent() -> None:
    assert _grants([care_team("p")], []) == {}
    refused = consent("p", "active")
    refused["provision"]["type"] = "deny"
    assert _grants([care_team("p")], [refused]) == {}
    team = care_team("p")
    team["participant"] = [p for p in team["participant"]
                           if p["member"]["reference"] != "Organization/nav"]
    assert NAV not in _grants([team], [consent("p", "active")])  # consented, not on the team


class _Unit(_Reader):
    """A unit of work holding stored grants (found by person), for :meth:`Grants.sync_person`."""

    def __init__(self) -> None:
        super().__init__()
        self.grants: dict[str, dict[str, Any]] = {}

    def search(self, query: Any) -> Any:
        class Found:
            resources = list(self.grants.values())
        return Found()

    def update(self, type_: str, id_: str, resource: dict[str, Any]) -> None:
        self.grants[id_] = resource

    def delete(self, type_: str, id_: str) -> None:
        del self.grants[id_]


def test_sync_looks_up_consents_and_plans_only_for_a_person_with_a_care_team() -> None:
    found = {"CareTeam": [care_team("p")], "Consent": [consent("p", "active")],
             "CarePlan": [plan("p")]}
    asked: list[str] = []

    def lookup(reader: Any, type_: str, params: dict[str, str]) -> list[dict[str, Any]]:
        asked.append(type_)
        return found[type_]

    unit = _Unit()
    Grants(lookup).sync_person(unit, "p")  # type: ignore[arg-type]
    assert asked == ["CareTeam", "Consent", "CarePlan"]
    assert {g["kind"] for g in unit.grants.values()} == {CARE_TEAM} and len(unit.grants) == 3
    asked.clear()
    found["CareTeam"] = []  # the team is ended: its grants go, and nothing else is read
    Grants(lookup).sync_person(unit, "p")  # type: ignore[arg-type]
    assert asked == ["CareTeam"] and unit.grants == {}


def test_periods_end_grants_by_themselves() -> None:
    team = care_team("p")
    for participant in team["participant"]:
        if participant["member"]["reference"] == "Organization/nav":
            participant["period"] = {"start": "2026-01-01", "end": "2026-12-31"}
    grants = _grants([team], [consent("p", "active")])
    assert grants[NAV]["period"] == {"start": period_range("2026-09-01", None)[0],
                                     "end": period_range(None, "2026-12-31")[1]}


def test_roles_and_deny_provisions() -> None:
    c = consent("p", "active")
    c["organization"] = []
    c["provision"]["provision"] = [
        {"type": "permit", "actor": [{"role": {"coding": [{
            "system": "http://planbro.no/fhir/CodeSystem/participant-role",
            "code": "koordinator"}]}, "reference": {"reference": "CareTeam/p"}}]},
        {"type": "permit", "actor": [{"role": {"coding": [{"code": "IRCP"}]},
                                      "reference": {"reference": "Organization/nav"}}]},
        {"type": "deny", "securityLabel": [{"system": CONTENT_CLASS_SYSTEM, "code": "health"}],
         "actor": [{"role": {"coding": [{"code": "IRCP"}]},
                    "reference": {"reference": "Organization/nav"}}]}]
    grants = _grants([care_team("p")], [c])
    assert sorted(grants[NAV]["classes"]) == ["goal", "measure", "plan"]
    assert grants[KOMMUNE]["maintain"]  # holds the coordinator role


def test_notification_grant_covers_what_it_carries() -> None:
    task = {"resourceType": "Task", "id": "n1",
            "code": {"coding": [{"system": "http://planbro.no/fhir/CodeSystem/task-code",
                                 "code": "ip-notification"}]},
            "for": {"reference": "Patient/p"}, "focus": {"reference": "DocumentReference/d"},
            "requester": {"reference": "Organization/sykehus"},
            "owner": {"reference": "Organization/kommune"},
            "output": [{"type": {"text": "x"},
                        "valueReference": {"reference": "CareTeam/p"}}]}
    grant = notification_grant(task, Directory(_Reader()))
    assert grant is not None
    assert grant["holders"] == [SYKEHUS, KOMMUNE] and grant["received"] == [KOMMUNE]
    assert grant["covers"] == ["Task/n1", "Patient/p", "DocumentReference/d", "CareTeam/p"]
    assert notification_grant({**task, "code": {"text": "other"}}, Directory(_Reader())) is None
    for status in ("completed", "rejected", "cancelled"):  # answered: the Task and its outcome
        answered = notification_grant({**task, "status": status}, Directory(_Reader()))
        assert answered is not None
        assert answered["holders"] == [SYKEHUS, KOMMUNE]
        assert answered["covers"] == ["Task/n1"] and "received" not in answered


def test_a_message_about_a_notification_is_seen_by_its_sender_and_recipients() -> None:
    reader = _Reader()
    reader.data[("Task", "n1")] = {
        "resourceType": "Task", "id": "n1",
        "code": {"coding": [{"system": "http://planbro.no/fhir/CodeSystem/task-code",
                             "code": "ip-notification"}]}}
    reader.data[("Task", "t2")] = {"resourceType": "Task", "id": "t2"}
    message = {"resourceType": "Communication", "id": "m1",
               "subject": {"reference": "Patient/p"}, "about": [{"reference": "Task/n1"}],
               "sender": {"reference": "Organization/sykehus"},
               "recipient": [{"reference": "Organization/kommune"}]}
    grant = message_grant(message, Directory(reader))
    assert grant is not None and grant["person"] == "p"
    assert grant["holders"] == [SYKEHUS, KOMMUNE]
    assert grant["covers"] == ["Communication/m1"] and grant["basis"] == ["Task/n1"]
    ordinary = {**message, "about": [{"reference": "Task/t2"}]}  # not about a notification
    assert message_grant(ordinary, Directory(reader)) is None


def test_partial_plan_view_and_merge_back() -> None:
    whole = plan("p")
    mine = lambda a: "Organization/nav" in str(a)  # noqa: E731
    # the municipality's talks with a psychiatric nurse are marked health care (extension);
    # the GP's appointment is health care because a health worker performs it
    assert [activity_class(a) for a in whole["activity"]] == [
        "measure", "measure", "health", "health"]
    seen = plan_view(whole, {"plan", "goal"}, mine)
    assert len(seen["activity"]) == 1 and "addresses" not in seen and "text" not in seen
    assert plan_view(whole, {"plan", "goal", "measure", "health"}, mine) is whole
    with_measures = plan_view(whole, {"plan", "goal", "measure"}, mine)
    assert len(with_measures["activity"]) == 2
    edited = copy.deepcopy(seen)
    edited["activity"][0]["detail"]["status"] = "completed"
    edited["activity"].append({"detail": {"description": "Ny", "status": "not-started",
                                          "performer": [{"reference": "Organization/nav"}]}})
    merged = merge_hidden(edited, whole, {"plan", "goal"}, mine)
    assert len(merged["activity"]) == 5
    assert merged["activity"][0]["detail"]["status"] == "completed"
    assert merged["activity"][1:4] == whole["activity"][1:4]
    assert merged["addresses"] == whole["addresses"] and merged["text"] == whole["text"]
    assert "REDACTED" not in str(merged.get("meta"))
