"""The service's extension points, seen through the API: before_write / after_write hooks run
inside the unit of work, may refuse a write, and roll back with it."""

from __future__ import annotations

from server.fhir.outcome import FhirError, Issue, issue
from server.fhir.service import WriteContext
from server.store.port import Version

from .conftest import Fhir, patient


def test_hooks_see_every_write(fhir: Fhir) -> None:
    seen: list[tuple[str, str, str | None, bool, int]] = []

    def before(ctx: WriteContext) -> None:
        assert ctx.ctx.principal.kind == "system"  # the authenticated caller
        assert ctx.ctx.base_url == fhir.base
        previous = ctx.previous.version if ctx.previous else None
        seen.append(("before", ctx.interaction, previous, ctx.resource is None, 0))

    def after(ctx: WriteContext, version: Version) -> None:
        seen.append(("after", ctx.interaction, None, version.deleted, version.version))

    service = fhir.planbro.service
    service.before_write.append(before)
    service.after_write.append(after)
    created = fhir.create(patient(1))
    fhir.put(f"Patient/{created['id']}", created)
    fhir.patch(f"Patient/{created['id']}", [{"op": "add", "path": "/active", "value": True}])
    fhir.delete(f"Patient/{created['id']}")
    assert seen == [
        ("before", "create", None, False, 0), ("after", "create", None, False, 1),
        ("before", "update", 1, False, 0), ("after", "update", None, False, 2),
        ("before", "patch", 2, False, 0), ("after", "patch", None, False, 3),
        ("before", "delete", 3, True, 0), ("after", "delete", None, True, 4),
    ]


def test_before_write_may_refuse_and_adjust(fhir: Fhir) -> None:
    def rule(ctx: WriteContext) -> None:
        assert ctx.resource is not None
        if ctx.resource.get("gender") == "unknown":
            raise FhirError.of(422, "Gender must be known here", code="business-rule",
                               expression="Patient.gender")
        ctx.resource.setdefault("active", True)

    fhir.planbro.service.before_write.append(rule)
    refused = fhir.post("Patient", patient(2, gender="unknown"))
    assert refused.status_code == 422
    assert refused.json()["issue"][0]["code"] == "business-rule"
    assert fhir.create(patient(3))["active"] is True
    assert len(fhir.ids("Patient")) == 1


def test_failing_after_write_rolls_back_the_transaction(fhir: Fhir) -> None:
    calls: list[str] = []

    def audit(ctx: WriteContext, version: Version) -> None:
        calls.append(ctx.type)
        if ctx.type == "Goal":
            raise FhirError.of(409, "Audit refused", code="conflict")

    fhir.planbro.service.after_write.append(audit)
    before = fhir.versions()
    response = fhir.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(4), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Goal", "lifecycleStatus": "active",
                      "description": {"text": "Gå tur"},
                      "subject": {"reference": "Patient/x"}},
         "request": {"method": "POST", "url": "Goal"}},
    ]})
    assert response.status_code == 409
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert calls == ["Patient", "Goal"]
    assert fhir.versions() == before


def test_validators_refuse_writes_and_report_in_validate(fhir: Fhir) -> None:
    asked: list[tuple[str, ...]] = []

    def profile_check(resource: dict, profiles: tuple[str, ...]) -> list[Issue]:
        asked.append(profiles)
        if "birthDate" not in resource:
            return [issue("birthDate is required by the profile", code="required",
                          expression="Patient.birthDate")]
        return []

    fhir.planbro.service.validators.append(profile_check)
    refused = fhir.post("Patient", patient(5))
    assert refused.status_code == 422
    assert refused.json()["issue"][0]["expression"] == ["Patient.birthDate"]
    assert fhir.post("Patient", patient(6, birthDate="1990-01-01")).status_code == 201
    report = fhir.post("Patient/$validate", {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": patient(7)},
                      {"name": "profile", "valueUri": "http://example.org/p"}]})
    assert report.status_code == 200
    expressions = [i.get("expression") for i in report.json()["issue"]]
    assert ["Patient.birthDate"] in expressions
    assert ["Patient.meta.profile"] in expressions  # the unknown profile, from our profiles
    assert asked == [(), (), ("http://example.org/p",)]
    assert len(fhir.ids("Patient")) == 1


def test_unique_keys_set_by_a_hook(fhir: Fhir) -> None:
    def one_per_family(ctx: WriteContext) -> None:
        if ctx.resource is not None:
            ctx.keys = (f"family:{ctx.resource['name'][0]['family']}",)

    fhir.planbro.service.before_write.append(one_per_family)
    first = fhir.create(patient(8, family="Unik"))
    duplicate = fhir.post("Patient", patient(9, family="Unik"))
    assert duplicate.status_code == 409
    assert first["id"] in duplicate.json()["issue"][0]["diagnostics"]
    fhir.delete(f"Patient/{first['id']}")
    assert fhir.post("Patient", patient(9, family="Unik")).status_code == 201
