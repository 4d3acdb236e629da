"""JSON Patch (PATCH application/json-patch+json), plain and conditional."""

from __future__ import annotations

from .conftest import FNR_SYSTEM, Fhir, patient, synthetic_fnr


def test_patch_applies_and_versions(fhir: Fhir) -> None:
    pid = fhir.create(patient(1))["id"]
    response = fhir.patch(f"Patient/{pid}", [
        {"op": "replace", "path": "/name/0/family", "value": "Haugen"},
        {"op": "add", "path": "/gender", "value": "female"},
    ])
    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == 'W/"2"'
    body = response.json()
    assert body["name"][0]["family"] == "Haugen"
    assert body["gender"] == "female"
    history = fhir.search(f"Patient/{pid}/_history")
    assert history["entry"][0]["request"]["method"] == "PATCH"


def test_patch_with_if_match(fhir: Fhir) -> None:
    pid = fhir.create(patient(2))["id"]
    op = [{"op": "add", "path": "/active", "value": True}]
    assert fhir.patch(f"Patient/{pid}", op, headers={"If-Match": 'W/"5"'}).status_code == 412
    assert fhir.patch(f"Patient/{pid}", op, headers={"If-Match": 'W/"1"'}).status_code == 200


def test_bad_patch_document_is_400(fhir: Fhir) -> None:
    pid = fhir.create(patient(3))["id"]
    for doc in ([{"op": "frobnicate", "path": "/a"}], {"op": "add"},
                [{"op": "add", "path": "/gender"}], [{"op": "add", "path": "gender",
                                                     "value": "male"}]):
        response = fhir.patch(f"Patient/{pid}", doc)
        assert response.status_code == 400, doc
        assert response.json()["resourceType"] == "OperationOutcome"
    not_json = fhir.patch(f"Patient/{pid}", "[{")
    assert not_json.status_code == 400
    assert fhir.get(f"Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_patch_that_cannot_apply_is_422(fhir: Fhir) -> None:
    pid = fhir.create(patient(4))["id"]
    failing_test = fhir.patch(f"Patient/{pid}", [
        {"op": "add", "path": "/active", "value": True},
        {"op": "test", "path": "/name/0/family", "value": "Someone else"},
    ])
    assert failing_test.status_code == 422
    issue = failing_test.json()["issue"][0]
    assert issue["expression"] == ["Patch[1]"]
    missing = fhir.patch(f"Patient/{pid}", [{"op": "remove", "path": "/telecom"}])
    assert missing.status_code == 422
    # a well-formed path whose parent is not there: 422 too, naming the path, not the data
    no_parent = fhir.patch(f"Patient/{pid}", [{"op": "add", "path": "/telecom/0/system",
                                               "value": "phone"}])
    assert no_parent.status_code == 422
    text = no_parent.json()["issue"][0]["diagnostics"]
    assert "/telecom/0/system" in text and "Nordmann" not in text and "{" not in text
    for element in ("id", "resourceType"):
        response = fhir.patch(f"Patient/{pid}", [{"op": "replace", "path": f"/{element}",
                                                  "value": "Other"}])
        assert response.status_code == 422
    current = fhir.get(f"Patient/{pid}").json()
    assert current["meta"]["versionId"] == "1"
    assert "active" not in current


def test_patch_result_is_validated(fhir: Fhir) -> None:
    pid = fhir.create(patient(5))["id"]
    response = fhir.patch(f"Patient/{pid}", [{"op": "add", "path": "/gender",
                                              "value": "often"}])
    assert response.status_code == 400
    assert "Patient.gender" in response.json()["issue"][0]["expression"]


def test_patch_missing_or_deleted_resource(fhir: Fhir) -> None:
    op = [{"op": "add", "path": "/active", "value": True}]
    assert fhir.patch("Patient/nobody", op).status_code == 404
    pid = fhir.create(patient(6))["id"]
    fhir.delete(f"Patient/{pid}")
    assert fhir.patch(f"Patient/{pid}", op).status_code == 410


def test_patch_media_types(fhir: Fhir) -> None:
    pid = fhir.create(patient(7))["id"]
    op = [{"op": "add", "path": "/active", "value": True}]
    fhirpath = fhir.patch(f"Patient/{pid}", {"resourceType": "Parameters"},
                          content_type="application/fhir+json")
    assert fhirpath.status_code == 415
    assert "FHIRPath" in fhirpath.json()["issue"][0]["diagnostics"]
    assert fhir.patch(f"Patient/{pid}", op, content_type="text/plain").status_code == 415


def test_conditional_patch(fhir: Fhir) -> None:
    pid = fhir.create(patient(8))["id"]
    fhir.create(patient(9, family="Dahl"))
    fhir.create(patient(10, family="Dahl"))
    op = [{"op": "add", "path": "/active", "value": False}]
    query = f"identifier={FNR_SYSTEM}|{synthetic_fnr(8)}"
    response = fhir.patch(f"Patient?{query}", op)
    assert response.status_code == 200
    assert response.json()["id"] == pid
    assert response.json()["active"] is False
    assert fhir.patch("Patient?family=Dahl", op).status_code == 412
    assert fhir.patch(f"Patient?identifier={FNR_SYSTEM}|{synthetic_fnr(77)}",
                      op).status_code == 404
