"""Conditional create, update and delete (R4 http.html#cond-update and friends)."""

from __future__ import annotations

from .conftest import FNR_SYSTEM, Fhir, patient, synthetic_fnr


def _by_identifier(seed: int) -> str:
    return f"identifier={FNR_SYSTEM}|{synthetic_fnr(seed)}"


def test_conditional_create(fhir: Fhir) -> None:
    headers = {"If-None-Exist": _by_identifier(1)}
    first = fhir.post("Patient", patient(1), headers=headers)
    assert first.status_code == 201
    again = fhir.post("Patient", patient(1), headers=headers)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["meta"]["versionId"] == "1"
    fhir.create(patient(2, family="Olsen"))
    fhir.create(patient(3, family="Olsen"))
    versions = fhir.versions()
    several = fhir.post("Patient", patient(4), headers={"If-None-Exist": "family=Olsen"})
    assert several.status_code == 412
    assert several.json()["resourceType"] == "OperationOutcome"
    assert fhir.versions() == versions


def test_conditional_create_with_bad_criteria(fhir: Fhir) -> None:
    versions = fhir.versions()
    response = fhir.post("Patient", patient(5), headers={"If-None-Exist": "shoe-size=44"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["shoe-size"]
    assert fhir.versions() == versions


def test_conditional_update(fhir: Fhir) -> None:
    query = _by_identifier(6)
    created = fhir.put(f"Patient?{query}", patient(6))
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = fhir.put(f"Patient?{query}", {**patient(6), "gender": "female"})
    assert updated.status_code == 200
    assert updated.json()["id"] == pid
    assert updated.json()["meta"]["versionId"] == "2"
    same_id = fhir.put(f"Patient?{query}", {**patient(6), "id": pid, "active": True})
    assert same_id.status_code == 200
    other_id = fhir.put(f"Patient?{query}", {**patient(6), "id": "someone-else"})
    assert other_id.status_code == 400
    stale = fhir.put(f"Patient?{query}", patient(6), headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412


def test_conditional_update_with_body_id_and_no_match(fhir: Fhir) -> None:
    response = fhir.put(f"Patient?{_by_identifier(7)}", {**patient(7), "id": "given-id"})
    assert response.status_code == 201
    assert response.json()["id"] == "given-id"


def test_conditional_update_does_not_replace_a_resource_the_criteria_miss(fhir: Fhir) -> None:
    """No match, and the body's id names an existing resource that does not match: 409, and
    that resource is left as it was (R5 http.html states this case; an upsert by business
    identifier must not overwrite another record)."""
    fhir.put("Patient/kept-as-is", {**patient(8), "id": "kept-as-is"})
    response = fhir.put(f"Patient?{_by_identifier(9)}", {**patient(9), "id": "kept-as-is"})
    assert response.status_code == 409
    assert response.json()["issue"][0]["expression"] == ["Patient.id"]
    kept = fhir.get("Patient/kept-as-is").json()
    assert kept["meta"]["versionId"] == "1"
    assert kept["identifier"][0]["value"] == synthetic_fnr(8)
    # a deleted id may be written again (update as create)
    assert fhir.delete("Patient/kept-as-is").status_code == 204
    again = fhir.put(f"Patient?{_by_identifier(9)}", {**patient(9), "id": "kept-as-is"})
    assert again.status_code == 201


def test_conditional_update_several_matches(fhir: Fhir) -> None:
    fhir.create(patient(8, family="Hansen"))
    fhir.create(patient(9, family="Hansen"))
    versions = fhir.versions()
    response = fhir.put("Patient?family=Hansen", patient(10, family="Hansen"))
    assert response.status_code == 412
    assert fhir.versions() == versions


def test_conditional_update_needs_criteria(fhir: Fhir) -> None:
    response = fhir.put("Patient", patient(11))
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_conditional_delete(fhir: Fhir) -> None:
    pid = fhir.create(patient(12))["id"]
    fhir.create(patient(13, family="Berg"))
    fhir.create(patient(14, family="Berg"))
    versions = fhir.versions()
    assert fhir.delete("Patient?family=Berg").status_code == 412
    assert fhir.delete(f"Patient?{_by_identifier(99)}").status_code == 204
    assert fhir.versions() == versions
    assert fhir.delete(f"Patient?{_by_identifier(12)}").status_code == 204
    assert fhir.get(f"Patient/{pid}").status_code == 410
    assert fhir.delete("Patient").status_code == 400
