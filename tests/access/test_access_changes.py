"""Changes of who may see what, and who may write what: a withdrawal takes effect on the
very next request, emergency access is time-limited, partial views are written back without
losing what the writer could not see, notifications before a plan, the person's own writes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from access_kit import EMERGENCY, World
from api.conftest import synthetic_fnr
from world import FNR_SYSTEM, consent, withdrawn

from server.access.labels import CONTENT_CLASS_SYSTEM, GOAL
from server.fhir.search.ast import IndexValues

REASON = "Unconscious in the emergency room; needs the plan's medication list"


def _bare(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def test_withdrawal_takes_effect_on_the_very_next_request(fresh: World) -> None:
    for caller in ("nav", "kommune", "self:active"):
        assert fresh.get(caller, "CarePlan/active").status_code == 200
    response = fresh.put("self:active", withdrawn(consent("active", "active")))
    assert response.status_code == 200, response.text
    for caller in ("nav", "kommune"):
        assert fresh.get(caller, "CarePlan/active").status_code == 404
        assert fresh.bundle(caller, "Goal?subject=Patient/active&_total=accurate")["total"] == 0
    assert fresh.get("self:active", "CarePlan/active").status_code == 200
    # giving consent again restores it
    again = consent("active", "active")
    assert fresh.put("self:active", again).status_code == 200
    assert fresh.get("nav", "CarePlan/active").status_code == 200


def test_limiting_consent_narrows_the_view_at_once(fresh: World) -> None:
    assert fresh.get("nav", "Condition/active-condition").status_code == 200
    assert fresh.put("self:active", consent("active", "limited")).status_code == 200
    assert fresh.get("nav", "Condition/active-condition").status_code == 404
    assert fresh.get("nav", "Goal/active-goal").status_code == 200


def test_an_included_version_is_shown_only_while_the_resource_is(fresh: World) -> None:
    """A versioned reference's _include gives that version (R4 search 3.1.1.4.13) as vread
    would: only of a resource the caller may see now."""
    condition = fresh.get("admin", "Condition/active-condition").json()
    assert fresh.put("admin", {**condition, "note": [{"text": "Bedre"}]}).status_code == 200
    task = fresh.get("admin", "Task/active-nav").json()
    task["focus"] = {"reference": "Condition/active-condition/_history/1"}
    assert fresh.put("admin", task).status_code == 200
    path = "Task?_id=active-nav&_include=Task:focus"

    def included(caller: str) -> list[tuple[str, str]]:
        return [(e["resource"]["id"], e["resource"]["meta"]["versionId"])
                for e in fresh.bundle(caller, path)["entry"] if e["search"]["mode"] == "include"]

    assert included("nav") == [("active-condition", "1")]
    assert fresh.put("self:active", consent("active", "limited")).status_code == 200
    assert included("nav") == []
    assert included("kommune") == [("active-condition", "1")]


def _emergency_events(world: World, person: str) -> list[dict[str, Any]]:
    bundle = world.bundle(f"self:{person}", f"AuditEvent?patient=Patient/{person}&_tag="
                          "http://planbro.no/fhir/CodeSystem/audit-flag|emergency&_count=100")
    return [e["resource"] for e in bundle.get("entry", [])]


def test_emergency_access_is_stated_logged_shown_and_time_limited(fresh: World) -> None:
    assert fresh.get("doctor", "CarePlan/active").status_code == 404
    stated = fresh.get("doctor", "CarePlan/active", headers={EMERGENCY: REASON})
    assert stated.status_code == 200
    assert len(stated.json()["activity"]) == 4  # the whole plan
    # the emergency lasts a while for this person only, without repeating the reason
    assert fresh.get("doctor", "Goal/active-goal").status_code == 200
    assert fresh.get("doctor", "Goal/limited-goal").status_code == 404
    # not the access log: that is the person's and the auditors'
    assert fresh.bundle("doctor", "AuditEvent?patient=Patient/active&_total=accurate")[
        "total"] == 0
    events = _emergency_events(fresh, "active")
    assert len(events) >= 2
    for event in events:
        assert event["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
        who = event["agent"][0]["who"]["identifier"]
        assert who == {"system": "urn:oid:2.16.578.1.12.4.1.4.4", "value": "9144889"}
        assert event["agent"][1]["who"]["identifier"]["value"] == "300000061"
        assert any(e["what"]["reference"] == "Patient/active" for e in event["entity"]
                   if "what" in e)
    assert any(d["valueString"] == REASON for e in events for e in e["entity"]
               for d in e.get("detail", []))
    assert _emergency_events(fresh, "limited") == []
    time.sleep(2.2)  # PLANBRO_EMERGENCY_SECONDS=2 in this world
    assert fresh.get("doctor", "Goal/active-goal").status_code == 404


def test_only_health_workers_may_state_an_emergency(fresh: World) -> None:
    refused = fresh.get("unrelated", "CarePlan/active", headers={EMERGENCY: REASON})
    assert refused.status_code == 403
    assert "HPR" in refused.json()["issue"][0]["diagnostics"]
    writes = fresh.put("doctor", _bare(fresh.get("admin", "Goal/active-goal").json()),
                       headers={EMERGENCY: REASON})
    assert writes.status_code == 403  # emergency access reads only


def test_partial_view_written_back_keeps_what_the_writer_could_not_see(fresh: World) -> None:
    whole = fresh.get("admin", "CarePlan/limited").json()
    mine = fresh.get("nav", "CarePlan/limited").json()
    assert len(mine["activity"]) == 1
    mine["activity"][0]["detail"]["description"] = "Arbeidstrening fire dager i uken"
    mine["activity"][0]["detail"]["status"] = "in-progress"
    written = fresh.put("nav", _bare(mine))
    assert written.status_code == 200, written.text
    assert len(written.json()["activity"]) == 4  # the stored plan keeps every measure
    stored = fresh.get("admin", "CarePlan/limited").json()
    assert [a["detail"]["description"] for a in stored["activity"]] == [
        "Arbeidstrening fire dager i uken"] + [
        a["detail"]["description"] for a in whole["activity"][1:]]
    assert stored["addresses"] == whole["addresses"] and stored["text"] == whole["text"]
    assert not any(c["code"] == "REDACTED" for c in stored["meta"]["security"])
    mine["title"] = "NAV's plan now"
    refused = fresh.put("nav", _bare(mine))
    assert refused.status_code == 403  # only the maintainers change the plan itself
    coordinator = fresh.get("kommune", "CarePlan/limited").json()
    coordinator["title"] = "Revidert plan"
    assert fresh.put("kommune", _bare(coordinator)).status_code == 200


def test_participants_write_their_own_measures(fresh: World) -> None:
    own = _bare(fresh.get("nav", "Task/active-nav").json())
    assert fresh.put("nav", {**own, "status": "completed"}).status_code == 200
    other = _bare(fresh.get("nav", "Task/active-kommune").json())
    assert fresh.put("nav", {**other, "status": "completed"}).status_code == 403
    assert fresh.put("nav", {**own, "owner": {"reference": "Organization/kommune"}}
                     ).status_code == 403  # cannot hand it over
    new = {**own, "id": None, "description": "New NAV measure"}
    new.pop("id")
    assert fresh.post("nav", "Task", new).status_code == 201
    assert fresh.post("nav", "Task", {**new, "owner": {"reference": "Organization/kommune"}}
                      ).status_code == 403
    assert fresh.post("unrelated", "Task", new).status_code == 403
    note = {"resourceType": "Communication", "status": "completed",
            "subject": {"reference": "Patient/active"},
            "payload": [{"contentString": "Møte neste uke"}]}
    assert fresh.post("nav", "Communication", note).status_code == 201
    assert fresh.post("unrelated", "Communication", note).status_code == 403


def test_a_person_writes_their_goals_notes_and_consents(fresh: World) -> None:
    goal = _bare(fresh.get("self:active", "Goal/active-goal").json())
    assert fresh.put("self:active", {**goal, "lifecycleStatus": "on-hold"}).status_code == 200
    new_goal = {**goal, "description": {"text": "Jeg vil lære å sykle"}}
    new_goal.pop("id")
    assert fresh.post("self:active", "Goal", new_goal).status_code == 201
    other = {**new_goal, "subject": {"reference": "Patient/limited"}}
    assert fresh.post("self:active", "Goal", other).status_code == 403
    other_goal = _bare(fresh.get("admin", "Goal/limited-goal").json())
    assert fresh.put("self:active", other_goal).status_code == 404
    note = {"resourceType": "Communication", "status": "completed",
            "subject": {"reference": "Patient/active"},
            "sender": {"reference": "Patient/active"},
            "payload": [{"contentString": "Jeg kan ikke komme på møtet"}]}
    created = fresh.post("self:active", "Communication", note)
    assert created.status_code == 201
    assert fresh.get("kommune", f"Communication/{created.json()['id']}").status_code == 200
    assert fresh.get("self:limited", f"Communication/{created.json()['id']}").status_code == 404


def test_notification_before_a_plan(fresh: World) -> None:
    person = {"resourceType": "Patient", "identifier": [
        {"system": FNR_SYSTEM, "value": synthetic_fnr(99)}], "name": [{"family": "Ny"}]}
    document = {"resourceType": "DocumentReference", "status": "current",
                "subject": {"reference": "urn:uuid:8a1c6e44-0000-4000-8000-000000000001"},
                "content": [{"attachment": {"contentType": "text/plain", "title": "Epikrise"}}]}
    task = fresh.get("admin", "Task/notice-task").json()
    task = {**_bare(task), "for": {"reference": "urn:uuid:8a1c6e44-0000-4000-8000-000000000001"},
            "focus": {"reference": "urn:uuid:8a1c6e44-0000-4000-8000-000000000002"}}
    task.pop("id")
    body = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:8a1c6e44-0000-4000-8000-000000000001", "resource": person,
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:8a1c6e44-0000-4000-8000-000000000002", "resource": document,
         "request": {"method": "POST", "url": "DocumentReference"}},
        {"resource": task, "request": {"method": "POST", "url": "Task"}}]}
    sent = fresh.post("hospital", "", body)
    assert sent.status_code == 200, sent.text
    refs = [e["response"]["location"].split("/_history")[0] for e in sent.json()["entry"]]
    for caller in ("hospital", "kommune"):
        assert all(fresh.get(caller, ref).status_code == 200 for ref in refs), caller
    for caller in ("nav", "unrelated"):
        assert all(fresh.get(caller, ref).status_code == 404 for ref in refs), caller
    pid = refs[0].split("/")[1]
    condition = {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                 "code": {"text": "Hjerneslag"}}
    assert fresh.post("unrelated", "Condition", condition).status_code == 403
    made = fresh.post("admin", "Condition", condition).json()
    for caller in ("hospital", "kommune"):  # nothing else of the person
        assert fresh.get(caller, f"Condition/{made['id']}").status_code == 404
    # the coordinating unit it is addressed to may start the plan (its care team)
    team = {"resourceType": "CareTeam", "status": "proposed",
            "subject": {"reference": f"Patient/{pid}"},
            "participant": [{"member": {"reference": "Organization/kommune"}}]}
    assert fresh.post("kommune", "CareTeam", team).status_code == 201
    assert fresh.post("hospital", "CareTeam", team).status_code == 403


def test_server_records_and_the_directory(fresh: World) -> None:
    event = {"resourceType": "AuditEvent", "type": {"code": "rest"},
             "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": True}],
             "source": {"observer": {"display": "x"}}}
    assert fresh.post("kommune", "AuditEvent", event).status_code == 403
    nav = _bare(fresh.get("nav", "Organization/nav").json())
    assert fresh.put("nav", {**nav, "name": "NAV Eksempel, avdeling øst"}).status_code == 200
    kommune = _bare(fresh.get("nav", "Organization/kommune").json())
    assert fresh.put("nav", {**kommune, "name": "Taken over"}).status_code == 403
    stolen = {**nav, "identifier": [{"system": "urn:oid:2.16.578.1.12.4.1.4.101",
                                     "value": "300000002"}]}
    assert fresh.put("nav", stolen).status_code == 403


def test_a_write_is_indexed_before_its_unit_of_work(fresh: World,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A created or updated resource's index values are extracted before the write lock,
    from the resource as the access layer labels it (inside the unit of work it is only
    compared); the values stored are still the stored resource's own."""
    store = fresh.planbro.store
    real = store.indexer
    seen: list[tuple[str, bool]] = []

    def indexer(resource: dict[str, Any]) -> IndexValues:
        seen.append((resource["resourceType"], store.in_unit_of_work()))
        return real(resource)

    monkeypatch.setattr(store, "indexer", indexer)
    goal = {"resourceType": "Goal", "lifecycleStatus": "proposed",
            "description": {"text": "Gå tur hver dag"}, "subject": {"reference": "Patient/active"}}
    created = fresh.post("admin", "Goal", goal)
    assert created.status_code == 201, created.text
    new = created.json()
    assert fresh.put("admin", {**new, "lifecycleStatus": "active"}).status_code == 200
    assert [s for s in seen if s[0] == "Goal"] == [("Goal", False), ("Goal", False)]
    label = f"{CONTENT_CLASS_SYSTEM}|{GOAL}"
    query = f"Goal?_id={new['id']}&lifecycle-status=active&_security={label}"
    assert fresh.ids("admin", query) == [f"Goal/{new['id']}"]

