"""$validate (never stores anything) and the generated CapabilityStatement."""

from __future__ import annotations

import json

from server.fhir.conformance import PROFILES_DIR

from .conftest import Fhir, patient


def test_validate_valid_resource(fhir: Fhir) -> None:
    before = fhir.versions()
    response = fhir.post("Patient/$validate", patient(1))
    assert response.status_code == 200
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [i["severity"] for i in body["issue"]] == ["information"]
    assert fhir.versions() == before
    assert fhir.ids("Patient") == []


def test_validate_reports_every_issue(fhir: Fhir) -> None:
    response = fhir.post("Patient/$validate", {**patient(2), "gender": "x", "birthDate": "y"})
    assert response.status_code == 200
    expressions = {e for i in response.json()["issue"] for e in i.get("expression", [])}
    assert {"Patient.gender", "Patient.birthDate"} <= expressions
    assert fhir.versions() == 0


def test_validate_parameters_and_modes(fhir: Fhir) -> None:
    pid = fhir.create(patient(3))["id"]
    before = fhir.versions()
    update_ok = fhir.post(f"Patient/{pid}/$validate", {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": {**patient(3), "id": pid}},
                      {"name": "mode", "valueCode": "update"}]})
    assert [i["severity"] for i in update_ok.json()["issue"]] == ["information"]
    wrong_id = fhir.post(f"Patient/{pid}/$validate", {**patient(3), "id": "other"})
    assert any(i["severity"] == "error" for i in wrong_id.json()["issue"])
    delete = fhir.post(f"Patient/{pid}/$validate", {
        "resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]})
    assert delete.status_code == 200
    profile = fhir.post("Patient/$validate", {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": patient(4)},
                      {"name": "profile",
                       "valueUri": "http://example.org/StructureDefinition/unknown"}]})
    assert profile.status_code == 200
    unknown = profile.json()["issue"][0]  # an unknown profile cannot be satisfied
    assert unknown["severity"] == "error"
    assert "http://example.org/StructureDefinition/unknown" in unknown["diagnostics"]
    bad_mode = fhir.post("Patient/$validate", {
        "resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "sing"}]})
    assert bad_mode.status_code == 400
    assert fhir.get(f"Patient/{pid}").json()["meta"]["versionId"] == "1"
    assert fhir.versions() == before


def test_metadata_lists_every_type_and_parameter(fhir: Fhir) -> None:
    response = fhir.get("metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert "json" in statement["format"]
    rest = statement["rest"][0]
    assert rest["mode"] == "server"
    # where to get a token, for clients that look here rather than in smart-configuration
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    oauth = {e["url"]: e["valueUri"] for e in rest["security"]["extension"][0]["extension"]}
    smart = fhir.get(".well-known/smart-configuration").json()
    assert oauth["token"] == smart["token_endpoint"]
    assert oauth["authorize"] == smart["authorization_endpoint"]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch",
                                                         "history-system"}
    registry = fhir.planbro.registry
    by_type = {r["type"]: r for r in rest["resource"]}
    assert set(by_type) == set(registry.types)
    for type_, resource in by_type.items():
        params = {p["name"]: p for p in resource["searchParam"]}
        assert set(params) == set(registry.params(type_)), type_
        for code, param in registry.params(type_).items():
            assert params[code]["type"] == param.type
            assert params[code].get("definition", "") == param.url
        assert {i["code"] for i in resource["interaction"]} >= {
            "read", "vread", "update", "patch", "delete", "create", "search-type",
            "history-instance", "history-type"}
        assert resource["versioning"] == "versioned-update"
        assert resource["conditionalDelete"] == "single"
        assert resource["conditionalRead"] == "full-support"
        assert resource["conditionalCreate"] and resource["conditionalUpdate"]
        assert resource["operation"][0]["name"] == "validate"
    assert "CarePlan:subject" in by_type["CarePlan"]["searchInclude"]
    assert "Goal:subject" in by_type["Patient"]["searchRevInclude"]
    assert "Goal:subject" not in by_type["Practitioner"]["searchRevInclude"]


def test_metadata_lists_the_profiles_each_type_is_checked_against(fhir: Fhir) -> None:
    """supportedProfile: the resource profiles of profiles/ (the server loads them all), each
    one a profile the server validates against."""
    published: dict[str, set[str]] = {}
    for file in PROFILES_DIR.glob("StructureDefinition-*.json"):
        definition = json.loads(file.read_text(encoding="utf-8"))
        if definition["kind"] == "resource":
            published.setdefault(definition["type"], set()).add(definition["url"])
    assert {"CarePlan", "Patient", "Task"} <= set(published)
    by_type = {r["type"]: r for r in fhir.get("metadata").json()["rest"][0]["resource"]}
    listed = {type_: set(r["supportedProfile"]) for type_, r in by_type.items()
              if "supportedProfile" in r}
    assert listed == published
    for type_, urls in listed.items():
        for url in urls:
            check = fhir.post(f"{type_}/$validate", {"resourceType": "Parameters", "parameter": [
                {"name": "resource", "resource": {"resourceType": type_}},
                {"name": "profile", "valueUri": url}]})
            assert check.status_code == 200
            assert not any(i["code"] == "not-supported" for i in check.json()["issue"]), url
