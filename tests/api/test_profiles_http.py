"""The local profiles enforced on every write, over HTTP: every example is accepted, every
broken variant is refused with an OperationOutcome naming the path, and nothing is stored;
the regulation checklist through $completeness and $validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import Fhir, patient

EXAMPLES = Path(__file__).resolve().parents[2] / "profiles" / "examples"
INVALID = EXAMPLES / "invalid"
EXPECTATIONS: dict[str, Any] = json.loads((INVALID / "expectations.json").read_text())
# Broken only for the profile: the server completes these before validating them (a
# notification without a due date gets the default one, see server.plans.notification).
COMPLETED_BY_SERVER = {"task-without-due-date.json"}


def _examples() -> list[dict[str, Any]]:
    resources = [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))]
    # Plans last: activating one reads its consent and care team.
    return sorted(resources, key=lambda r: r["resourceType"] == "CarePlan")


def _load_examples(fhir: Fhir) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in _examples()]}
    response = fhir.post("", bundle)
    assert response.status_code == 200, response.text


def test_every_example_is_accepted(fhir: Fhir) -> None:
    for resource in _examples():
        response = fhir.put(f"{resource['resourceType']}/{resource['id']}", resource)
        assert response.status_code == 201, (resource["id"], response.text)


@pytest.mark.parametrize("name", sorted(set(EXPECTATIONS) - COMPLETED_BY_SERVER))
def test_every_broken_variant_is_refused_and_nothing_stored(fhir: Fhir, name: str) -> None:
    _load_examples(fhir)
    broken = json.loads((INVALID / name).read_text())
    rtype = broken["resourceType"]
    before = fhir.versions()
    response = fhir.post(rtype, broken)
    assert response.status_code in (400, 422), response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    found = {(tuple(i.get("expression", [])), i["code"]) for i in body["issue"]
             if i["severity"] == "error"}
    for expected in EXPECTATIONS[name]["expect"]:
        assert any(expected["expression"] in expr and code == expected["code"]
                   for expr, code in found), (name, body)
    assert fhir.versions() == before


def test_a_plan_claiming_nothing_is_held_to_the_individual_plan_profile(fhir: Fhir) -> None:
    _load_examples(fhir)
    plan = json.loads((EXAMPLES / "CarePlan-kari.json").read_text())
    plan.pop("meta", None)
    plan.pop("id")
    del plan["careTeam"]
    response = fhir.post("CarePlan", {**plan, "status": "draft"})
    assert response.status_code == 422, response.text
    assert any(i.get("expression") == ["CarePlan.careTeam"] for i in response.json()["issue"])


def test_completeness_of_ruts_sip_shows_what_the_source_lacks(fhir: Fhir) -> None:
    _load_examples(fhir)
    report = fhir.get("CarePlan/rut-sip/$completeness")
    assert report.status_code == 200, report.text
    params = report.json()["parameter"]
    assert next(p["valueBoolean"] for p in params if p["name"] == "complete") is False
    missing = " ".join(part["valueString"] for p in params if p["name"] == "item"
                       for part in p["part"] if part["name"] == "missing-en").lower()
    for lack in ("overall", "coordinator", "consent"):
        assert lack in missing, missing


def test_completeness_of_a_complete_norwegian_plan(fhir: Fhir) -> None:
    _load_examples(fhir)
    params = fhir.get("CarePlan/kari/$completeness").json()["parameter"]
    assert next(p["valueBoolean"] for p in params if p["name"] == "complete") is True


def test_activation_without_the_required_content_is_refused_with_the_report(
        fhir: Fhir) -> None:
    _load_examples(fhir)
    plan = fhir.get("CarePlan/kari").json()
    draft = {**plan, "status": "draft", "extension": [  # no evaluation dates (item 7)
        e for e in plan.get("extension", []) if not e["url"].endswith("ip-evaluation-date")]}
    assert fhir.put("CarePlan/kari", draft).status_code == 200
    before = fhir.versions()
    refused = fhir.put("CarePlan/kari", {**draft, "status": "active"})
    assert refused.status_code == 422, refused.text
    assert any("evaluat" in i["diagnostics"].lower() for i in refused.json()["issue"])
    assert fhir.versions() == before
    # $validate reports the same checklist without storing anything
    report = fhir.post("CarePlan/$validate", {**draft, "status": "active"})
    assert report.status_code == 200
    assert any(i["severity"] in ("error", "warning") for i in report.json()["issue"])
    assert fhir.versions() == before


def test_completeness_needs_a_known_plan(fhir: Fhir) -> None:
    assert fhir.get("CarePlan/nope/$completeness").status_code == 404
    assert fhir.get("Patient/x/$completeness").status_code == 404


def test_batch_entries_invoke_operations(fhir: Fhir) -> None:
    """A batch entry may invoke an operation, answered as the same request to its URL:
    $validate of a type or of an instance (POST), an instance operation (GET); an unknown
    operation and a wrong method fail that entry only. A transaction refuses operations
    (its entries are processed in the order of their methods) and stores nothing."""
    _load_examples(fhir)
    pid, plan = fhir.create(patient(17))["id"], "kari"
    stored = fhir.get(f"Patient/{pid}").json()
    response = fhir.post("", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {**patient(18), "gender": "x"},
         "request": {"method": "POST", "url": "Patient/$validate"}},
        {"resource": stored, "request": {"method": "POST", "url": f"Patient/{pid}/$validate"}},
        {"request": {"method": "GET", "url": f"CarePlan/{plan}/$completeness"}},
        {"request": {"method": "GET", "url": f"CarePlan/{plan}/$no-such-operation"}},
        {"request": {"method": "DELETE", "url": f"Patient/{pid}/$validate"}},
    ]})
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "200 OK", "200 OK", "200 OK", "404 Not Found", "400 Bad Request"]
    invalid, valid = entries[0]["resource"], entries[1]["resource"]
    assert any(i["severity"] == "error" and "Patient.gender" in i.get("expression", [])
               for i in invalid["issue"])
    assert not any(i["severity"] in ("error", "fatal") for i in valid["issue"])
    direct = fhir.get(f"CarePlan/{plan}/$completeness").json()
    assert entries[2]["resource"]["parameter"] == direct["parameter"]
    assert entries[3]["response"]["outcome"]["issue"][0]["code"] == "not-supported"
    assert entries[4]["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[4].request.method"]
    before = fhir.versions()
    refused = fhir.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(19), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": f"CarePlan/{plan}/$completeness"}}]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["issue"][0]["expression"] == ["Bundle.entry[1].request.url"]
    assert fhir.versions() == before
