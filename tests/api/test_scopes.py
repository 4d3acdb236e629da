"""SMART scopes on the FHIR API, over HTTP with real tokens from the token endpoint: every
interaction needs its permission, and so does every batch/transaction entry and every
included type; query-restricted scopes narrow what is read."""

from __future__ import annotations

import requests
from live import system_token

from .conftest import Fhir, patient

ADMIN = "planbro/admin"


def _as(fhir: Fhir, scope: str) -> requests.Session:
    """A session of an administrative system with ``scope``: these tests are about scopes,
    not about whose data a system may see (tests/access)."""
    session = requests.Session()
    token = system_token(fhir.planbro.auth, scope=f"{scope} {ADMIN}")
    session.headers.update({"Authorization": f"Bearer {token}",
                            "Content-Type": "application/fhir+json"})
    return session


def _goal(pid: str, category: str) -> dict:
    return {"resourceType": "Goal", "lifecycleStatus": "active",
            "category": [{"coding": [{"system": "http://example.org/goal-kind",
                                      "code": category}]}],
            "description": {"text": f"A {category} goal"},
            "subject": {"reference": f"Patient/{pid}"}}


def test_no_token_is_401_with_a_challenge_and_metadata_is_open(fhir: Fhir) -> None:
    anonymous = requests.get(fhir.url("Patient"), timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.json()["resourceType"] == "OperationOutcome"
    forged = requests.get(fhir.url("Patient"), timeout=30,
                          headers={"Authorization": "Bearer not.a.token"})
    assert forged.status_code == 401
    assert requests.get(fhir.url("metadata"), timeout=30).status_code == 200


def test_each_interaction_needs_its_permission(fhir: Fhir) -> None:
    pid = fhir.create(patient(1))["id"]
    reader = _as(fhir, "system/Patient.r")
    assert reader.get(fhir.url(f"Patient/{pid}"), timeout=30).status_code == 200
    assert reader.get(fhir.url(f"Patient/{pid}/_history/1"), timeout=30).status_code == 200
    refused = reader.get(fhir.url("Patient"), timeout=30)  # search needs s
    assert refused.status_code == 403
    assert "system/Patient.s" in refused.json()["issue"][0]["diagnostics"]
    assert reader.post(fhir.url("Patient"), json=patient(2), timeout=30).status_code == 403
    assert reader.delete(fhir.url(f"Patient/{pid}"), timeout=30).status_code == 403
    writer = _as(fhir, "system/Patient.cu")
    assert writer.post(fhir.url("Patient"), json=patient(3), timeout=30).status_code == 201
    # a conditional create searches first, so it also needs s
    conditional = writer.post(fhir.url("Patient"), json=patient(4), timeout=30,
                              headers={"If-None-Exist": "identifier=x|y"})
    assert conditional.status_code == 403
    v1 = _as(fhir, "system/*.read")
    assert v1.get(fhir.url("Patient"), timeout=30).status_code == 200


def test_every_batch_and_transaction_entry_is_checked(fhir: Fhir) -> None:
    pid = fhir.create(patient(5))["id"]
    session = _as(fhir, "system/Patient.rs system/Goal.c")
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _goal(pid, "a"), "request": {"method": "POST", "url": "Goal"}},
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}}]}
    before = fhir.versions()
    refused = session.post(fhir.base, json=transaction, timeout=30)
    assert refused.status_code == 403
    assert fhir.versions() == before  # all or nothing
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"request": {"method": "GET", "url": "Goal"}}]}
    answer = session.post(fhir.base, json=batch, timeout=30).json()
    assert [e["response"]["status"][:3] for e in answer["entry"]] == ["200", "403"]


def test_included_types_need_read_permission(fhir: Fhir) -> None:
    pid = fhir.create(patient(6))["id"]
    fhir.create(_goal(pid, "a"))
    goals_only = _as(fhir, "system/Goal.rs")
    assert goals_only.get(fhir.url("Goal"), timeout=30).status_code == 200
    included = goals_only.get(fhir.url("Goal?_include=Goal:subject"), timeout=30)
    assert included.status_code == 403
    both = _as(fhir, "system/Goal.rs system/Patient.r")
    # Goal:subject may bring Patients and Organizations: both need read permission
    assert both.get(fhir.url("Goal?_include=Goal:subject"), timeout=30).status_code == 403
    bundle = both.get(fhir.url("Goal?_include=Goal:subject:Patient"), timeout=30).json()
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"Goal", "Patient"}


def test_a_query_restricted_scope_narrows_searches_and_reads(fhir: Fhir) -> None:
    pid = fhir.create(patient(7))["id"]
    work = fhir.create(_goal(pid, "work"))["id"]
    health = fhir.create(_goal(pid, "health"))["id"]
    restricted = _as(fhir, "system/Goal.rs?category=http://example.org/goal-kind|work")
    found = restricted.get(fhir.url("Goal"), timeout=30).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [work]
    assert found["total"] == 1
    assert restricted.get(fhir.url(f"Goal/{work}"), timeout=30).status_code == 200
    hidden = restricted.get(fhir.url(f"Goal/{health}"), timeout=30)
    assert hidden.status_code == 404  # existence is not revealed


def test_profile_search_parameters_are_searchable(fhir: Fhir) -> None:
    capability = requests.get(fhir.url("metadata"), timeout=30).json()
    careplan = next(r for r in capability["rest"][0]["resource"] if r["type"] == "CarePlan")
    names = {p["name"] for p in careplan["searchParam"]}
    assert {"evaluation-date", "responsible-organization"} <= names
    assert any(op["name"] == "completeness" for op in careplan["operation"])
    assert fhir.get("CarePlan?evaluation-date=le2030-01-01").status_code == 200
    assert fhir.get("Task?due-date=lt2030-01-01").status_code == 200
