"""One Patient per person, one open plan per person (a unique key in the store), the plan's
status rules, and revocation when the person's consent is withdrawn - over HTTP."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from plansupport import (
    EXT,
    STATUS_REASON,
    Running,
    created,
    full_plan,
    person,
    plan_bundle,
    today,
)

from server.plans import lifecycle
from server.plans.identifiers import FNR_SYSTEM


def _make(planbro: Running, seq: int, party: str = "kommune",
          **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """A person with a plan made by ``party``: (Patient id, the plan)."""
    response = planbro.post(party, "", plan_bundle(person("p", seq), **kwargs))
    patient_id = created(response, "Patient")[0]
    plan_id = created(response, "CarePlan")[0]
    return patient_id, planbro.read("admin", f"CarePlan/{plan_id}")


def _ended(plan: dict[str, Any], status: str, reason: str, end: str) -> dict[str, Any]:
    out = copy.deepcopy(plan)
    out["status"] = status
    out["extension"].append({"url": f"{EXT}/ip-status-reason", "valueCodeableConcept": {
        "coding": [{"system": STATUS_REASON, "code": reason}]}})
    out["period"]["end"] = end
    return out


def _plans_of(planbro: Running, patient_id: str) -> list[dict[str, Any]]:
    return planbro.search("admin", f"CarePlan?subject=Patient/{patient_id}")


# -- one Patient per person -------------------------------------------------------------------


def test_the_same_person_registered_twice_is_one_patient(planbro: Running) -> None:
    kari = person("kari", 1)
    first = planbro.ok(planbro.post("admin", "Patient", kari.patient()), 201)
    again = planbro.post("admin", "Patient", kari.patient())
    assert again.status_code == 409, again.text
    assert f"Patient/{first['id']}" in again.json()["issue"][0]["diagnostics"]
    found = planbro.post("admin", "Patient", kari.patient(),
                         **{"If-None-Exist": kari.criteria})
    assert found.status_code == 200 and found.json()["id"] == first["id"]
    matches = planbro.search("admin", f"Patient?identifier={FNR_SYSTEM}|{kari.fnr}")
    assert [p["id"] for p in matches] == [first["id"]]


def test_another_identifier_of_the_same_patient_may_be_updated(planbro: Running) -> None:
    kari = person("kari", 2)
    created_patient = planbro.ok(planbro.post("admin", "Patient", kari.patient()), 201)
    created_patient["name"][0]["given"] = ["Kari", "Marie"]
    assert planbro.put("admin", created_patient).status_code == 200


# -- one open plan per person -----------------------------------------------------------------


def test_a_second_plan_is_refused_naming_the_existing_one(planbro: Running) -> None:
    patient_id, plan = _make(planbro, 3)
    team = plan["careTeam"][0]["reference"]
    second = full_plan(f"Patient/{patient_id}", team, [plan["goal"][0]["reference"]])
    refused = planbro.post("kommune", "CarePlan", second)
    assert refused.status_code == 409, refused.text
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert f"CarePlan/{plan['id']}" in outcome["issue"][0]["diagnostics"]
    # an organisation that may not see the person's plan learns only that there is one
    hidden = planbro.post("hospital", "CarePlan", second)
    assert hidden.status_code == 409, hidden.text
    assert plan["id"] not in hidden.text
    criteria = (f"subject=Patient/{patient_id}&status=draft,active,on-hold"
                "&category=http://planbro.no/fhir/CodeSystem/plan-category|individuell-plan")
    existing = planbro.post("kommune", "CarePlan", second, **{"If-None-Exist": criteria})
    assert existing.status_code == 200 and existing.json()["id"] == plan["id"]
    assert [p["id"] for p in _plans_of(planbro, patient_id)] == [plan["id"]]


def test_a_person_may_have_an_individual_plan_and_a_sip(planbro: Running) -> None:
    patient_id, plan = _make(planbro, 4)
    sip = full_plan(f"Patient/{patient_id}", plan["careTeam"][0]["reference"],
                    [plan["goal"][0]["reference"]], kind="sip")
    planbro.ok(planbro.post("kommune", "CarePlan", sip), 201)
    assert planbro.post("kommune", "CarePlan", sip).status_code == 409


def test_organisations_creating_plans_at_the_same_moment_only_one_wins(
        planbro: Running) -> None:
    patient_id, plan = _make(planbro, 5)
    planbro.ok(planbro.put("admin", _ended(plan, "completed", "ikke-behov", today())))
    body = full_plan(f"Patient/{patient_id}", plan["careTeam"][0]["reference"],
                     [plan["goal"][0]["reference"]])
    parties = ["kommune", "admin"] * 4
    results: list[Any] = [None] * len(parties)
    barrier = threading.Barrier(len(parties))

    def create(index: int) -> None:
        barrier.wait()
        results[index] = planbro.post(parties[index], "CarePlan", body)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(parties))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * (len(parties) - 1), [r.text for r in results]
    winner = next(r.json()["id"] for r in results if r.status_code == 201)
    for party, result in zip(parties, results, strict=True):
        if result.status_code == 409 and winner not in result.text:
            # an engine may report the collision as a transaction conflict to retry: the
            # retry then names the plan that won
            result = planbro.post(party, "CarePlan", body)
        assert result.status_code in (201, 409)
        if result.status_code == 409:
            assert f"CarePlan/{winner}" in result.json()["issue"][0]["diagnostics"]
    open_plans = [p for p in _plans_of(planbro, patient_id) if p["status"] in lifecycle.OPEN]
    assert [p["id"] for p in open_plans] == [winner]


def test_the_store_enforces_the_one_plan_key(planbro: Running,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the friendly check before writing (as when two writers race past it), the
    store's unique key still refuses the second open plan."""
    patient_id, plan = _make(planbro, 6)
    monkeypatch.setattr(lifecycle, "_check_no_other_open_plan", lambda *args: None)
    second = full_plan(f"Patient/{patient_id}", plan["careTeam"][0]["reference"],
                       [plan["goal"][0]["reference"]])
    refused = planbro.post("kommune", "CarePlan", second)
    assert refused.status_code == 409, refused.text
    text = refused.json()["issue"][0]["diagnostics"]
    assert f"CarePlan/{plan['id']}" in text and lifecycle.plan_key(
        "individuell-plan", patient_id) in text


# -- the plan's life --------------------------------------------------------------------------


def test_the_life_of_a_plan_and_its_history(planbro: Running) -> None:
    patient_id, plan = _make(planbro, 7)
    pid = plan["id"]

    def move(status: str, **changes: Any) -> dict[str, Any]:
        current = planbro.read("kommune", f"CarePlan/{pid}")
        return planbro.ok(planbro.put("kommune", {**current, "status": status, **changes}))

    move("active")
    move("on-hold")
    move("active")
    current = planbro.read("kommune", f"CarePlan/{pid}")
    refused = planbro.put("kommune", {**current, "status": "completed"})
    assert refused.status_code == 422
    texts = " ".join(i["diagnostics"] for i in refused.json()["issue"])
    assert "reason" in texts and "period.end" in texts
    planbro.ok(planbro.put("kommune", _ended(current, "completed", "periode-utlopt", today())))
    closed = planbro.read("kommune", f"CarePlan/{pid}")
    reopened = planbro.put("kommune", {**closed, "status": "active"})
    assert reopened.status_code == 422
    assert "never reopens" in reopened.json()["issue"][0]["diagnostics"]
    history = planbro.read("kommune", f"CarePlan/{pid}/_history")
    statuses = [e["resource"]["status"] for e in reversed(history["entry"])]
    assert statuses == ["draft", "active", "on-hold", "active", "completed"]
    # the key is released: the person may get a new plan
    again = full_plan(f"Patient/{patient_id}", plan["careTeam"][0]["reference"],
                      [plan["goal"][0]["reference"]])
    planbro.ok(planbro.post("kommune", "CarePlan", again), 201)


@pytest.mark.parametrize("status", ["on-hold", "completed", "revoked", "unknown"])
def test_a_plan_is_created_draft_or_active(planbro: Running, status: str) -> None:
    patient_id, plan = _make(planbro, 8)
    planbro.ok(planbro.put("admin", _ended(plan, "completed", "ikke-behov", today())))
    body = full_plan(f"Patient/{patient_id}", plan["careTeam"][0]["reference"],
                     [plan["goal"][0]["reference"]], status=status)
    refused = planbro.post("kommune", "CarePlan", body)
    assert refused.status_code in (400, 422), refused.text
    assert any("status" in " ".join(i.get("expression", [])) or "status" in i["diagnostics"]
               for i in refused.json()["issue"])


def test_the_person_and_kind_of_a_plan_never_change(planbro: Running) -> None:
    _, plan = _make(planbro, 9)
    other = planbro.ok(planbro.post("admin", "Patient", person("o", 10).patient()), 201)
    moved = planbro.put("kommune", {**plan, "subject": {"reference": f"Patient/{other['id']}"}})
    assert moved.status_code == 422
    assert moved.json()["issue"][0]["expression"] == ["CarePlan.subject"]


def test_an_open_plan_is_ended_not_deleted(planbro: Running) -> None:
    _, plan = _make(planbro, 11)
    refused = planbro.request("admin", "DELETE", f"CarePlan/{plan['id']}")
    assert refused.status_code == 409, refused.text
    assert planbro.read("admin", f"CarePlan/{plan['id']}")["status"] == "draft"


# -- consent ----------------------------------------------------------------------------------


def test_withdrawn_consent_revokes_the_plan(planbro: Running) -> None:
    patient_id, plan = _make(planbro, 12, status="active")
    assert plan["status"] == "active"
    manual = planbro.put("kommune", _ended(plan, "revoked", "samtykke-trukket", today()))
    assert manual.status_code == 422  # the consent is still in force
    consent = planbro.search("admin", f"Consent?patient=Patient/{patient_id}")[0]
    consent["status"] = "inactive"
    consent["extension"] = [{"url": f"{EXT}/ip-consent-withdrawal",
                             "valueDateTime": today()}]
    planbro.ok(planbro.put("kommune", consent))
    # without the person's consent the municipality no longer sees the plan
    assert planbro.get("kommune", f"CarePlan/{plan['id']}").status_code == 404
    revoked = planbro.read("admin", f"CarePlan/{plan['id']}")
    assert revoked["status"] == "revoked"
    assert revoked["period"]["end"] == today()
    reason = next(e for e in revoked["extension"] if e["url"].endswith("ip-status-reason"))
    assert reason["valueCodeableConcept"]["coding"][0]["code"] == "samtykke-trukket"
    history = planbro.read("admin", f"CarePlan/{plan['id']}/_history")
    assert [e["resource"]["status"] for e in history["entry"]][:2] == ["revoked", "active"]


def test_a_refusal_revokes_the_draft(planbro: Running) -> None:
    patient_id, plan = _make(planbro, 13, "admin", with_consent=False)
    refusal = {
        "resourceType": "Consent", "status": "rejected",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [
            {"coding": [{"system": "http://planbro.no/fhir/CodeSystem/consent-scope",
                         "code": "plan-making"}]},
            {"coding": [{"system": "http://planbro.no/fhir/CodeSystem/consent-form",
                         "code": "muntlig"}]}],
        "patient": {"reference": f"Patient/{patient_id}"}, "dateTime": today(),
        "performer": [{"reference": f"Patient/{patient_id}"}],
        "organization": [{"reference": "Organization/kommune"}],
        "policy": [{"uri": "https://lovdata.no/dokument/SF/forskrift/2011-12-16-1256"}],
        "provision": {"type": "deny"}}
    planbro.ok(planbro.post("admin", "Consent", refusal), 201)
    revoked = planbro.read("admin", f"CarePlan/{plan['id']}")
    assert revoked["status"] == "revoked"
    reason = next(e for e in revoked["extension"] if e["url"].endswith("ip-status-reason"))
    assert reason["valueCodeableConcept"]["coding"][0]["code"] == "samtykke-avslatt"
