"""While the plan lives on: coordinator change (also proposed by the person), transfer of
responsibility between organisations, evaluation, and the person's own goals."""

from __future__ import annotations

import copy
from typing import Any

from plansupport import (
    EXT,
    ORGS,
    REJECTION,
    ROLE,
    TASK_CODE,
    TASK_OUTPUT,
    Running,
    consent,
    created,
    days_from_now,
    goal,
    person,
    plan_bundle,
    today,
)

from server.plans.identifiers import ENH_SYSTEM
from server.plans.invariants import current_coordinators


def _active_plan(planbro: Running, seq: int) -> tuple[str, dict[str, Any]]:
    response = planbro.post("kommune", "", plan_bundle(person("p", seq), status="active"))
    patient_id = created(response, "Patient")[0]
    plan = planbro.read("kommune", f"CarePlan/{created(response, 'CarePlan')[0]}")
    assert plan["status"] == "active"
    return patient_id, plan


def _team(planbro: Running, plan: dict[str, Any], party: str = "admin") -> dict[str, Any]:
    return planbro.read(party, plan["careTeam"][0]["reference"])


def _coordinator_now(team: dict[str, Any]) -> list[str]:
    return [p["member"]["reference"] for p in current_coordinators(team)]


def _params(**values: Any) -> dict[str, Any]:
    parameter = []
    for name, value in values.items():
        if isinstance(value, dict) and "reference" in value:
            parameter.append({"name": name, "valueReference": value})
        elif isinstance(value, dict):
            parameter.append({"name": name, "valueIdentifier": value})
        elif isinstance(value, list):
            parameter.extend({"name": name, "part": part} for part in value)
        elif len(str(value)) == 10 and str(value)[4] == "-":
            parameter.append({"name": name, "valueDate": value})
        else:
            parameter.append({"name": name, "valueString": value})
    return {"resourceType": "Parameters", "parameter": parameter}


def _role(key: str) -> dict[str, str]:
    return {"reference": f"PractitionerRole/{key}-rolle"}


def _participants(team: dict[str, Any], org: str) -> list[dict[str, Any]]:
    ref = f"Organization/{org}"
    return [p for p in team["participant"]
            if ref in (p["member"]["reference"], p.get("onBehalfOf", {}).get("reference"))]


def _share_with(planbro: Running, patient_id: str, *actors: str) -> None:
    """The person's consent now permits sharing with ``actors`` (taken by the municipality)."""
    current = planbro.search("admin", f"Consent?patient=Patient/{patient_id}")[0]
    updated = {**consent(f"Patient/{patient_id}", actors=actors), "id": current["id"]}
    planbro.ok(planbro.put("admin", updated))


# -- the coordinator --------------------------------------------------------------------------


def test_a_coordinator_change_ends_one_and_starts_the_other(planbro: Running) -> None:
    _, plan = _active_plan(planbro, 61)
    assert _coordinator_now(_team(planbro, plan)) == ["PractitionerRole/siri-rolle"]
    path = f"CarePlan/{plan['id']}/$change-coordinator"
    assert planbro.post("nykommune", path, _params(coordinator=_role("per"))).status_code == 404
    team = planbro.ok(planbro.post("kommune", path, _params(coordinator=_role("per"))), 200)
    assert _coordinator_now(team) == ["PractitionerRole/per-rolle"]
    siri = next(p for p in team["participant"]
                if p["member"]["reference"] == "PractitionerRole/siri-rolle")
    assert siri["period"]["end"]
    history = planbro.read("kommune", f"{plan['careTeam'][0]['reference']}/_history")
    assert history["total"] == 2
    # a change from a later date: the current coordinator stays until then
    later = _params(coordinator=_role("siri"), date=days_from_now(10))
    team = planbro.ok(planbro.post("kommune", path, later), 200)
    assert _coordinator_now(team) == ["PractitionerRole/per-rolle"]


def test_the_team_of_an_active_plan_keeps_exactly_one_coordinator(planbro: Running) -> None:
    _, plan = _active_plan(planbro, 62)
    team = _team(planbro, plan, "kommune")
    without = {**team, "participant": [p for p in team["participant"]
                                       if p["role"][0]["coding"][0]["code"] != "koordinator"]}
    refused = planbro.put("kommune", without)
    assert refused.status_code == 422 and "not 0" in refused.json()["issue"][0]["diagnostics"]
    two = copy.deepcopy(team)
    two["participant"].append({"role": [{"coding": [{"system": ROLE, "code": "koordinator"}]}],
                               "member": _role("per"), "period": {"start": today()}})
    assert planbro.put("kommune", two).status_code == 422


def test_the_person_proposes_a_coordinator(planbro: Running) -> None:
    patient_id, plan = _active_plan(planbro, 63)
    planbro.sign_in(patient_id)
    proposal = {
        "resourceType": "Communication", "status": "completed",
        "topic": {"coding": [{"system": TASK_CODE, "code": "coordinator-change"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "about": [{"reference": f"CarePlan/{plan['id']}"}],
        "sender": {"reference": f"Patient/{patient_id}"},
        "recipient": [{"reference": "Organization/kommune"}],
        "payload": [{"contentString": "Jeg ønsker Per som koordinator"},
                    {"contentReference": _role("per")}]}
    planbro.ok(planbro.post("person", "Communication", proposal), 201)
    tasks = planbro.search("kommune", f"Task?code={TASK_CODE}|coordinator-change"
                                      "&owner=Organization/kommune&status=requested")
    assert len(tasks) == 1
    task = tasks[0]
    assert task["requester"] == {"reference": f"Patient/{patient_id}"}
    assert task["input"][0]["valueReference"] == _role("per")
    path = f"CarePlan/{plan['id']}/$change-coordinator"
    body = _params(coordinator=_role("per"), proposal={"reference": f"Task/{task['id']}"})
    team = planbro.ok(planbro.post("kommune", path, body), 200)
    assert _coordinator_now(team) == ["PractitionerRole/per-rolle"]
    done = planbro.read("kommune", f"Task/{task['id']}")
    assert done["status"] == "completed"
    assert done["output"][0]["valueReference"]["reference"] == "PractitionerRole/per-rolle"


# -- transfer ---------------------------------------------------------------------------------


def _transfer(planbro: Running, plan: dict[str, Any], to: str) -> dict[str, Any]:
    body = _params(organization={"system": ENH_SYSTEM, "value": ORGS[to][0]},
                   reason="Personen flytter")
    return planbro.ok(planbro.post("kommune", f"CarePlan/{plan['id']}/$transfer", body), 201)


def _confirm(planbro: Running, party: str, task: dict[str, Any], coordinator: str) -> None:
    found = planbro.read(party, f"Task/{task['id']}")
    planbro.ok(planbro.put(party, {**found, "status": "accepted"}))
    found = planbro.read(party, f"Task/{task['id']}")
    planbro.ok(planbro.put(party, {**found, "status": "completed", "output": [{
        "type": {"coding": [{"system": TASK_OUTPUT, "code": "koordinator"}]},
        "valueReference": _role(coordinator)}]}))


def test_a_transfer_to_the_municipality_the_person_moves_to(planbro: Running) -> None:
    patient_id, plan = _active_plan(planbro, 64)
    _share_with(planbro, patient_id, "nykommune")  # the person agrees; kommune took it
    task = _transfer(planbro, plan, "nykommune")
    assert (task["status"], task["owner"]["reference"], task["requester"]["reference"]) == (
        "requested", "Organization/nykommune", "Organization/kommune")
    assert task["restriction"]["period"]["end"]
    again = planbro.post("kommune", f"CarePlan/{plan['id']}/$transfer", _params(
        organization={"reference": "Organization/voksen"}))
    assert again.status_code == 409, again.text
    inbox = planbro.search("nykommune", f"Task?owner=Organization/nykommune"
                                        f"&code={TASK_CODE}|transfer&status=requested")
    assert [t["id"] for t in inbox] == [task["id"]]
    _confirm(planbro, "nykommune", task, "berit")
    moved = planbro.read("nykommune", f"CarePlan/{plan['id']}")
    responsible = next(e for e in moved["extension"]
                       if e["url"] == f"{EXT}/ip-responsible-organization")
    assert responsible["valueReference"]["reference"] == "Organization/nykommune"
    team = _team(planbro, moved)
    assert _coordinator_now(team) == ["PractitionerRole/berit-rolle"]
    assert team["managingOrganization"] == [{"reference": "Organization/nykommune"}]
    assert all(p.get("period", {}).get("end") for p in _participants(team, "kommune"))
    # the old municipality's access ends: the consent does not name it
    assert planbro.get("kommune", f"CarePlan/{plan['id']}").status_code == 404
    assert len(planbro.search("admin", f"CarePlan?subject=Patient/{patient_id}")) == 1
    history = planbro.read("admin", f"CarePlan/{plan['id']}/_history")
    assert history["total"] == 2


def test_the_old_organisation_stays_when_the_consent_names_it(planbro: Running) -> None:
    patient_id, plan = _active_plan(planbro, 65)
    _share_with(planbro, patient_id, "kommune", "voksen")
    task = _transfer(planbro, plan, "voksen")  # child -> adult services
    _confirm(planbro, "voksen", task, "vera")
    team = _team(planbro, plan)
    assert _coordinator_now(team) == ["PractitionerRole/vera-rolle"]
    kept = [p for p in _participants(team, "kommune")
            if p["member"]["reference"] == "Organization/kommune"]
    assert kept and not any(p.get("period", {}).get("end") for p in kept)
    assert planbro.get("kommune", f"CarePlan/{plan['id']}").status_code == 200


def test_a_rejected_transfer_changes_nothing(planbro: Running) -> None:
    patient_id, plan = _active_plan(planbro, 66)
    _share_with(planbro, patient_id, "kommune", "nykommune")
    task = _transfer(planbro, plan, "nykommune")
    assert _participants(_team(planbro, plan), "nykommune")
    found = planbro.read("nykommune", f"Task/{task['id']}")
    planbro.ok(planbro.put("nykommune", {**found, "status": "rejected", "statusReason": {
        "coding": [{"system": REJECTION, "code": "feil-mottaker"}]}}))
    team = _team(planbro, plan)
    assert all(p["period"].get("end") for p in _participants(team, "nykommune"))
    assert _coordinator_now(team) == ["PractitionerRole/siri-rolle"]
    assert planbro.get("nykommune", f"CarePlan/{plan['id']}").status_code == 404
    _transfer(planbro, plan, "voksen")  # the plan may be transferred again


# -- evaluation -------------------------------------------------------------------------------


def test_an_evaluation_updates_goals_and_sets_the_next_date(planbro: Running) -> None:
    _, plan = _active_plan(planbro, 67)
    plan["extension"] = [e for e in plan["extension"]
                         if e["url"] != f"{EXT}/ip-evaluation-date"] + [
        {"url": f"{EXT}/ip-evaluation-date", "valueDateTime": days_from_now(-1)}]
    plan = planbro.ok(planbro.put("kommune", plan))
    due = (f"CarePlan?evaluation-date=le{today()}&responsible-organization=Organization/kommune"
           "&status=active")
    assert plan["id"] in [p["id"] for p in planbro.search("kommune", due)]
    goal_ref = plan["goal"][0]
    path = f"CarePlan/{plan['id']}/$evaluate"
    progress = [{"name": "goal", "valueReference": goal_ref},
                {"name": "achievement", "valueCodeableConcept": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/goal-achievement",
                    "code": "improving"}]}},
                {"name": "note", "valueString": "Klarer mer selv"}]
    wrong = planbro.post("kommune", path, _params(date=today(), next=days_from_now(-5)))
    assert wrong.status_code == 422
    stranger = [{"name": "goal", "valueReference": {"reference": "Goal/other"}},
                progress[1]]
    assert planbro.post("kommune", path, _params(
        date=today(), next=days_from_now(180), goal=[stranger])).status_code == 422
    assert planbro.post("nykommune", path, _params(
        date=today(), next=days_from_now(180))).status_code == 404
    record = planbro.ok(planbro.post("kommune", path, _params(
        date=today(), next=days_from_now(180), goal=[progress], note="Godt i gang")), 201)
    assert record["status"] == "completed"
    assert record["code"]["coding"][0]["code"] == "evaluation"
    evaluated = planbro.read("kommune", goal_ref["reference"])
    assert evaluated["achievementStatus"]["coding"][0]["code"] == "improving"
    assert evaluated["note"][-1]["text"] == "Klarer mer selv"
    after = planbro.read("kommune", f"CarePlan/{plan['id']}")
    dates = [e["valueDateTime"] for e in after["extension"]
             if e["url"] == f"{EXT}/ip-evaluation-date"]
    assert dates == [days_from_now(180)]
    assert plan["id"] not in [p["id"] for p in planbro.search("kommune", due)]
    upcoming = due.replace(f"le{today()}", f"le{days_from_now(200)}")
    assert plan["id"] in [p["id"] for p in planbro.search("kommune", upcoming)]


# -- the person's goals -----------------------------------------------------------------------


def test_the_persons_own_goal_and_sub_goals_join_the_plan(planbro: Running) -> None:
    patient_id, plan = _active_plan(planbro, 68)
    planbro.sign_in(patient_id)
    mine = planbro.ok(planbro.post("person", "Goal", goal(f"Patient/{patient_id}",
                                                          "Jeg vil gå på ski i vinter")), 201)
    sub = goal(f"Patient/{patient_id}", "Gå 2 km hver dag", extension=[{
        "url": f"{EXT}/ip-parent-goal", "valueReference": {"reference": f"Goal/{mine['id']}"}}])
    child = planbro.ok(planbro.post("kommune", "Goal", sub), 201)
    other = planbro.ok(planbro.post("kommune", "Goal", goal(f"Patient/{patient_id}",
                                                            "Et mål uten plan")), 201)
    goals = [g["reference"] for g in planbro.read("person", f"CarePlan/{plan['id']}")["goal"]]
    assert f"Goal/{mine['id']}" in goals and f"Goal/{child['id']}" in goals
    assert f"Goal/{other['id']}" not in goals
