"""Prefer: return=minimal | representation | OperationOutcome on writes."""

from __future__ import annotations

import pytest

from .conftest import Fhir, patient


def _prefer(value: str) -> dict[str, str]:
    return {"Prefer": f"return={value}"}


def test_minimal_has_headers_but_no_body(fhir: Fhir) -> None:
    response = fhir.post("Patient", patient(1), headers=_prefer("minimal"))
    assert response.status_code == 201
    assert response.content == b""
    assert response.headers["ETag"] == 'W/"1"'
    location = response.headers["Location"]
    assert fhir.get(location).status_code == 200
    pid = location.split("/")[-3]
    update = fhir.put(f"Patient/{pid}", {**patient(1), "id": pid}, headers=_prefer("minimal"))
    assert update.status_code == 200
    assert update.content == b""
    assert update.headers["ETag"] == 'W/"2"'


@pytest.mark.parametrize("prefer", [None, "representation"])
def test_representation_is_the_default(fhir: Fhir, prefer: str | None) -> None:
    headers = _prefer(prefer) if prefer else {}
    response = fhir.post("Patient", patient(2), headers=headers)
    assert response.status_code == 201
    assert response.json()["resourceType"] == "Patient"


def test_operation_outcome(fhir: Fhir) -> None:
    response = fhir.post("Patient", patient(3), headers=_prefer("OperationOutcome"))
    assert response.status_code == 201
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "information"
    pid = response.headers["Location"].split("/")[-3]
    assert pid in body["issue"][0]["diagnostics"]
    deleted = fhir.delete(f"Patient/{pid}", headers=_prefer("OperationOutcome"))
    assert deleted.status_code == 200
    assert deleted.json()["issue"][0]["severity"] == "information"


def test_patch_and_delete_with_minimal(fhir: Fhir) -> None:
    pid = fhir.create(patient(4))["id"]
    patched = fhir.patch(f"Patient/{pid}", [{"op": "add", "path": "/active", "value": True}],
                         headers=_prefer("minimal"))
    assert patched.status_code == 200
    assert patched.content == b""
    assert fhir.delete(f"Patient/{pid}", headers=_prefer("minimal")).status_code == 204
