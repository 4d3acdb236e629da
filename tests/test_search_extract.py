"""Search-parameter registry and write-time extraction of index values."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from server.audit import store_indexer
from server.demo import examples
from server.fhir.conformance import evaluate as conformance_evaluate
from server.fhir.search.ast import (
    MAX_MS,
    MIN_MS,
    DateValue,
    IndexValues,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)
from server.fhir.search.extract import ElementModel, Unsupported, compile_fast
from server.fhir.search.normalize import (
    ReferenceParts,
    date_range,
    decimal_range,
    normalize_string,
    parse_reference,
    serving,
)
from server.fhir.search.registry import Registry, expression_for
from server.plans.rules import search_registry
from server.store.port import stamp

FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"
FNR = "15888512036"  # synthetic (month + 80), passes both modulus-11 checks
# the url as the R4 definition of the mothersMaidenName parameter has it
MOTHERS_MAIDEN_NAME = ("http://hl7.org/fhir/StructureDefinition/"
                       "patient-extensions-Patient-mothersMaidenName")
EVALUATION_DATE = "http://planbro.no/fhir/StructureDefinition/evaluation-date"


def fnr_is_valid(number: str) -> bool:
    digits = [int(c) for c in number]

    def check(weights: tuple[int, ...], count: int) -> int:
        rest = 11 - sum(w * d for w, d in zip(weights, digits[:count], strict=True)) % 11
        return 0 if rest == 11 else rest

    k1 = check((3, 7, 6, 1, 8, 9, 4, 5, 2), 9)
    k2 = check((5, 4, 3, 2, 7, 6, 5, 4, 3, 2), 10)
    return len(digits) == 11 and k1 == digits[9] and k2 == digits[10]


def ms(text: str) -> int:
    """Epoch milliseconds of an ISO instant (with offset)."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load_default()


def of(values: IndexValues, param: str) -> list[object]:
    return [v for group in (values.tokens, values.references, values.dates, values.strings,
                            values.uris, values.numbers, values.quantities)
            for v in group if v.param == param]


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------

CAREPLAN = {
    "resourceType": "CarePlan",
    "id": "ip-1",
    "meta": {
        "versionId": "3",
        "lastUpdated": "2024-05-02T08:30:00.000Z",
        "profile": ["http://planbro.no/fhir/StructureDefinition/individual-plan"],
        "tag": [{"system": "http://planbro.no/fhir/CodeSystem/plan-tag", "code": "ip",
                 "display": "Individuell plan"}],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                      "code": "R"}],
        "source": "http://kommune.example.no/fagsystem",
    },
    "extension": [{"url": EVALUATION_DATE, "valueDate": "2024-11-01"},
                  {"url": EVALUATION_DATE, "valueDate": "2025-04-01"}],
    "identifier": [{"system": "urn:oid:2.16.578.1.12.4.1.99", "value": "IP-2024-0001",
                    "type": {"text": "Plannummer"}}],
    "instantiatesCanonical": ["http://planbro.no/fhir/PlanDefinition/ip|1.0"],
    "instantiatesUri": ["http://planbro.no/veileder/ip"],
    "basedOn": [{"reference": "CarePlan/ip-0"}],
    "replaces": [{"reference": "CarePlan/ip-0/_history/4"}],
    "partOf": [{"reference": "http://other.example.no/fhir/CarePlan/77"}],
    "status": "active",
    "intent": "plan",
    "category": [{"coding": [{"system": "http://planbro.no/fhir/CodeSystem/plan-type",
                              "code": "IP", "display": "Individuell plan"}],
                  "text": "Individuell plan etter helse- og omsorgstjenesteloven"}],
    "title": "Individuell plan for Kari",
    "description": "Plan for koordinerte tjenester i hjemmet og på skolen.",
    "subject": {"reference": "Patient/p1", "display": "Kari Nordmann"},
    "encounter": {"reference": "Encounter/e1"},
    "period": {"start": "2024-05-01", "end": "2025-04-30"},
    "created": "2024-04-20T10:15:00+02:00",
    "author": {"reference": "Practitioner/coord-1"},
    "careTeam": [{"reference": "CareTeam/ct-1"}],
    "addresses": [{"reference": "Condition/c1"}, {"reference": "Condition/c2"}],
    "supportingInfo": [{"reference": "DocumentReference/d1"}],
    "goal": [{"reference": "Goal/g1"}, {"reference": "Goal/g2"}, {"reference": "Goal/g3"}],
    "activity": [
        {"detail": {
            "kind": "ServiceRequest",
            "code": {"coding": [{"system": "urn:oid:2.16.578.1.12.4.1.1.8655",
                                 "code": "HJSP", "display": "Hjemmesykepleie"}]},
            "status": "in-progress",
            "scheduledTiming": {"event": ["2024-05-06T09:00:00+02:00"],
                                "repeat": {"boundsPeriod": {"start": "2024-05-06",
                                                            "end": "2024-12-31"},
                                           "frequency": 2, "period": 1, "periodUnit": "wk"}},
            "performer": [{"reference": "Organization/kommune-hjemmetjeneste"}],
            "description": "Hjemmesykepleie to ganger i uken",
        }},
        {"detail": {
            "kind": "Task",
            "code": {"coding": [{"system": "http://planbro.no/fhir/CodeSystem/tiltak",
                                 "code": "skole", "display": "Tilrettelegging skole"}],
                     "text": "Tilrettelagt undervisning"},
            "status": "scheduled",
            "scheduledPeriod": {"start": "2024-08-15"},
            "performer": [{"reference": "Organization/skole-1"},
                          {"reference": "RelatedPerson/mor"}],
        }},
        {"reference": {"reference": "ServiceRequest/sr-1"}},
        {"reference": {"reference": "Task/t-9"}},
        {"detail": {
            "kind": "Appointment",
            "code": {"coding": [{"system": "http://planbro.no/fhir/CodeSystem/tiltak",
                                 "code": "evaluering", "display": "Evaluering"}]},
            "status": "not-started",
            "scheduledString": "Hvert halvår",
            "performer": [{"reference": "Practitioner/coord-1"}],
        }},
    ],
    "note": [{"text": "Kari ønsker at mor deltar i alle møter og at skolen informeres. " * 30}],
}

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "extension": [{
        "url": MOTHERS_MAIDEN_NAME,
        "valueString": "Ås"}],
    "identifier": [{"system": FNR_SYSTEM, "value": FNR,
                    "type": {"text": "Fødselsnummer"}}],
    "active": True,
    "name": [{"use": "official", "family": "Ødegård", "given": ["Kari", "Åse"],
              "prefix": ["Fru"], "text": "Kari  Åse Ødegård"}],
    "telecom": [{"system": "phone", "value": "+47 99 99 99 99", "use": "mobile"},
                {"system": "email", "value": "kari@example.no"}],
    "gender": "female",
    "birthDate": "1985-08-15",
    "address": [{"line": ["Storgata 1", "H0101"], "city": "Kongsvinger",
                 "postalCode": "2211", "country": "NO"}],
    "generalPractitioner": [{"reference": "Practitioner/fastlege"}],
    "managingOrganization": {"reference": "Organization/kommune",
                             "identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.101",
                                            "value": "999999999"}},
}


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_synthetic_fodselsnummer_passes_modulus_11() -> None:
    assert fnr_is_valid(FNR)
    assert not fnr_is_valid(FNR[:-1] + str((int(FNR[-1]) + 1) % 10))


def test_every_offered_parameter_is_compiled_to_the_fast_path(registry: Registry) -> None:
    coverage = registry.coverage()
    assert coverage.fast >= 350
    assert coverage.fallback == 0
    skipped = "\n".join(coverage.skipped)
    for expected in ("DocumentReference.relationship: composite", "Resource._filter: special",
                     "Patient.age: no expression", "Bundle.composition:", "DomainResource._text"):
        assert expected in skipped


def test_params_include_resource_level_and_row_parameters(registry: Registry) -> None:
    params = registry.params("CarePlan")
    for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "subject",
                 "patient", "activity-code", "date"):
        assert code in params
    assert params["_id"].expression == "" and params["_id"].type == "token"
    assert params["_lastUpdated"].expression == "" and params["_lastUpdated"].type == "date"
    assert params["_tag"].expression == "Resource.meta.tag"
    for code in ("_text", "_content", "_list", "_query", "_filter"):
        assert code not in params
    assert registry.param("DocumentReference", "relationship") is None
    assert registry.param("Patient", "age") is None
    assert registry.param("Unknown", "name") is None and registry.params("Unknown") == {}


def test_param_metadata(registry: Registry) -> None:
    patient = registry.param("CarePlan", "patient")
    assert patient is not None
    assert patient.expression == "CarePlan.subject.where(resolve() is Patient)"
    assert patient.targets == ("Patient", "Group")
    assert patient.modifiers == ("missing", "identifier")
    assert registry.param("Patient", "email").expression == (  # type: ignore[union-attr]
        "Patient.telecom.where(system='email')")
    assert registry.param("Patient", "family").modifiers == (  # type: ignore[union-attr]
        "missing", "exact", "contains")
    assert registry.param("CarePlan", "category").modifiers == (  # type: ignore[union-attr]
        "missing", "not", "text")
    assert registry.param("CarePlan", "status").modifiers == (  # type: ignore[union-attr]
        "missing", "not")
    assert registry.param("CarePlan", "instantiates-uri").modifiers == (  # type: ignore[union-attr]
        "missing", "below", "above")
    assert registry.param("CarePlan", "date").modifiers == ("missing",)  # type: ignore[union-attr]
    canonical = registry.param("CarePlan", "instantiates-canonical")
    assert canonical is not None and canonical.modifiers == ("missing",)


def test_expression_is_narrowed_to_the_type() -> None:
    expression = ("Patient.address | Person.address | (Practitioner.deceased as dateTime)"
                  " | Resource.meta.tag")
    assert expression_for(expression, "Patient") == "Patient.address | Resource.meta.tag"
    assert expression_for(expression, "Practitioner") == (
        "(Practitioner.deceased as dateTime) | Resource.meta.tag")
    assert expression_for("Goal.start", "Patient") == ""


# ---------------------------------------------------------------------------------------------
# Extraction by resource
# ---------------------------------------------------------------------------------------------


def test_careplan(registry: Registry) -> None:
    values = registry.extract(CAREPLAN)
    assert of(values, "status") == [TokenValue("status", "", "active")]
    assert of(values, "category") == [
        TokenValue("category", "http://planbro.no/fhir/CodeSystem/plan-type", "IP",
                   "individuell plan"),
        TokenValue("category", "", "", "individuell plan etter helse- og omsorgstjenesteloven"),
    ]
    assert of(values, "identifier") == [
        TokenValue("identifier", "urn:oid:2.16.578.1.12.4.1.99", "IP-2024-0001", "plannummer")]
    assert TokenValue("activity-code", "http://planbro.no/fhir/CodeSystem/tiltak", "skole",
                      "tilrettelegging skole") in values.tokens
    assert TokenValue("activity-code", "", "", "tilrettelagt undervisning") in values.tokens
    assert of(values, "_tag") == [TokenValue("_tag", "http://planbro.no/fhir/CodeSystem/plan-tag",
                                             "ip", "individuell plan")]
    assert of(values, "_security")[0].code == "R"  # type: ignore[attr-defined]
    assert of(values, "subject") == [ReferenceValue("subject", "Patient", "p1")]
    assert of(values, "patient") == [ReferenceValue("patient", "Patient", "p1")]
    assert of(values, "replaces") == [ReferenceValue("replaces", "CarePlan", "ip-0", "", "4")]
    # another server's plan: its URL only (it names no plan here)
    assert of(values, "part-of") == [ReferenceValue(
        "part-of", "", "", "http://other.example.no/fhir/CarePlan/77")]
    assert of(values, "instantiates-canonical") == [ReferenceValue(
        "instantiates-canonical", "", "", "http://planbro.no/fhir/PlanDefinition/ip", "1.0")]
    assert [r.target_id for r in of(values, "goal")] == ["g1", "g2", "g3"]  # type: ignore
    assert {r.target_type for r in of(values, "performer")} == {  # type: ignore[attr-defined]
        "Organization", "RelatedPerson", "Practitioner"}
    assert of(values, "activity-reference") == [
        ReferenceValue("activity-reference", "ServiceRequest", "sr-1"),
        ReferenceValue("activity-reference", "Task", "t-9")]
    assert of(values, "date") == [
        DateValue("date", ms("2024-05-01T00:00:00+00:00"), ms("2025-05-01T00:00:00+00:00") - 1)]
    assert of(values, "activity-date") == [
        DateValue("activity-date", ms("2024-05-06T07:00:00+00:00"),
                  ms("2024-05-06T07:00:01+00:00") - 1),  # Timing.event (+02:00)
        DateValue("activity-date", ms("2024-05-06T00:00:00+00:00"),
                  ms("2025-01-01T00:00:00+00:00") - 1),  # Timing.repeat.boundsPeriod
        DateValue("activity-date", ms("2024-08-15T00:00:00+00:00"), MAX_MS),  # open Period
    ]  # scheduledString is not a date
    assert of(values, "_profile") == [
        UriValue("_profile", "http://planbro.no/fhir/StructureDefinition/individual-plan")]
    assert of(values, "_source") == [UriValue("_source", "http://kommune.example.no/fagsystem")]
    assert of(values, "instantiates-uri") == [
        UriValue("instantiates-uri", "http://planbro.no/veileder/ip")]
    assert of(values, "_id") == [] and of(values, "_lastUpdated") == []


def test_patient(registry: Registry) -> None:
    values = registry.extract(PATIENT)
    assert of(values, "identifier") == [
        TokenValue("identifier", FNR_SYSTEM, FNR, "fodselsnummer")]
    assert of(values, "family") == [StringValue("family", "odegard", "Ødegård")]
    assert of(values, "given") == [StringValue("given", "kari", "Kari"),
                                   StringValue("given", "ase", "Åse")]
    assert [s.norm for s in of(values, "name")] == [  # type: ignore[attr-defined]
        "odegard", "kari", "ase", "fru", "kari ase odegard"]
    assert [s.norm for s in of(values, "address")] == [  # type: ignore[attr-defined]
        "storgata 1", "h0101", "kongsvinger", "2211", "no"]
    assert of(values, "address-city") == [StringValue("address-city", "kongsvinger",
                                                      "Kongsvinger")]
    assert of(values, "mothersMaidenName") == [StringValue("mothersMaidenName", "as", "Ås")]
    assert of(values, "email") == [TokenValue("email", "", "kari@example.no")]
    assert of(values, "phone") == [TokenValue("phone", "", "+47 99 99 99 99")]
    assert len(of(values, "telecom")) == 2
    assert of(values, "gender") == [TokenValue("gender", "", "female")]
    assert of(values, "active") == [TokenValue("active", "", "true")]
    assert of(values, "deceased") == [TokenValue("deceased", "", "false")]
    assert of(values, "birthdate") == [DateValue(
        "birthdate", ms("1985-08-15T00:00:00+00:00"), ms("1985-08-16T00:00:00+00:00") - 1)]
    assert of(values, "general-practitioner") == [
        ReferenceValue("general-practitioner", "Practitioner", "fastlege")]
    assert of(values, "organization") == [
        TokenValue("organization", "urn:oid:2.16.578.1.12.4.1.4.101", "999999999",
                   identifier=True),
        ReferenceValue("organization", "Organization", "kommune")]
    assert "organization" in values.params()


@pytest.mark.parametrize(("deceased", "expected"), [
    ({}, "false"),
    ({"deceasedBoolean": False}, "false"),
    ({"deceasedBoolean": True}, "true"),
    ({"deceasedDateTime": "2024-02-03"}, "true"),
])
def test_patient_deceased(registry: Registry, deceased: dict[str, object],
                          expected: str) -> None:
    values = registry.extract({"resourceType": "Patient", **deceased})
    assert of(values, "deceased") == [TokenValue("deceased", "", expected)]
    death = of(values, "death-date")
    assert death == ([DateValue("death-date", ms("2024-02-03T00:00:00+00:00"),
                                ms("2024-02-04T00:00:00+00:00") - 1)]
                     if "deceasedDateTime" in deceased else [])


def test_reference_identifier_is_only_a_token_of_the_reference_param() -> None:
    values = IndexValues(tokens=[TokenValue("organization", "s", "v", identifier=True)])
    assert values.params() == set()


def test_task(registry: Registry) -> None:
    task = {
        "resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1b4e28ba-2fa1"}],
        "code": {"coding": [{"system": "http://planbro.no/fhir/CodeSystem/task-type",
                             "code": "ip-notification", "display": "Melding om behov for IP"}]},
        "focus": {"reference": "CarePlan/ip-1"},
        "for": {"reference": "Patient/p1"},
        "authoredOn": "2024-05-02T09:00:00Z",
        "lastModified": "2024-05-03T12:30:15.250Z",
        "executionPeriod": {"start": "2024-05-02"},
        "requester": {"reference": "Organization/sykehus"},
        "owner": {"identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.101",
                                 "value": "964338531"}, "display": "Kommunen"},
        "businessStatus": {"text": "Venter på grønt skjema"},
        "basedOn": [{"reference": "urn:uuid:0b0e2b6e-7a3c-4f51-9f5e-3a9c2d1e1f00"}],
        "partOf": [{"reference": "#inner"}],
    }
    values = registry.extract(task)
    assert of(values, "patient") == [ReferenceValue("patient", "Patient", "p1")]
    assert of(values, "subject") == [ReferenceValue("subject", "Patient", "p1")]
    assert of(values, "focus") == [ReferenceValue("focus", "CarePlan", "ip-1")]
    assert of(values, "owner") == [TokenValue("owner", "urn:oid:2.16.578.1.12.4.1.4.101",
                                              "964338531", identifier=True)]
    assert of(values, "based-on") == [ReferenceValue(
        "based-on", "", "", "urn:uuid:0b0e2b6e-7a3c-4f51-9f5e-3a9c2d1e1f00")]
    assert of(values, "part-of") == []  # contained references are not indexed
    assert of(values, "business-status") == [
        TokenValue("business-status", "", "", "venter pa gront skjema")]
    assert of(values, "modified") == [DateValue(
        "modified", ms("2024-05-03T12:30:15.250+00:00"), ms("2024-05-03T12:30:15.250+00:00"))]
    assert of(values, "period") == [DateValue("period", ms("2024-05-02T00:00:00+00:00"),
                                              MAX_MS)]
    group_task = dict(task, **{"for": {"reference": "Group/g1"}})
    assert of(registry.extract(group_task), "patient") == []
    assert of(registry.extract(group_task), "subject") == [
        ReferenceValue("subject", "Group", "g1")]


def test_goal_start_as_date(registry: Registry) -> None:
    goal = {"resourceType": "Goal", "lifecycleStatus": "active", "startDate": "2024-06",
            "target": [{"dueDate": "2024-12-31"}, {"dueDuration": {"value": 3}}],
            "subject": {"reference": "Patient/p1"}, "description": {"text": "Gå til skolen"}}
    values = registry.extract(goal)
    assert of(values, "start-date") == [DateValue(
        "start-date", ms("2024-06-01T00:00:00+00:00"), ms("2024-07-01T00:00:00+00:00") - 1)]
    assert of(values, "target-date") == [DateValue(
        "target-date", ms("2024-12-31T00:00:00+00:00"), ms("2025-01-01T00:00:00+00:00") - 1)]
    coded = dict(goal, startCodeableConcept={"text": "ved utskrivning"})
    del coded["startDate"]
    assert of(registry.extract(coded), "start-date") == []


def test_condition_onset(registry: Registry) -> None:
    condition = {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                 "onsetPeriod": {"start": "2023-11-05T08:00:00+01:00"},
                 "abatementString": "i bedring",
                 "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                      "code": "F84.0"}]}}
    values = registry.extract(condition)
    assert of(values, "onset-date") == [DateValue(
        "onset-date", ms("2023-11-05T07:00:00+00:00"), MAX_MS)]
    assert of(values, "abatement-string") == [
        StringValue("abatement-string", "i bedring", "i bedring")]
    assert of(values, "code") == [TokenValue("code", "http://hl7.org/fhir/sid/icd-10", "F84.0")]
    dated = {"resourceType": "Condition", "onsetDateTime": "2023-11",
             "onsetAge": {"value": 7, "unit": "år", "system": "http://unitsofmeasure.org",
                          "code": "a"}}
    values = registry.extract(dated)
    assert of(values, "onset-date") == [DateValue(
        "onset-date", ms("2023-11-01T00:00:00+00:00"), ms("2023-12-01T00:00:00+00:00") - 1)]
    assert of(values, "onset-age") == [
        QuantityValue("onset-age", Decimal(7), "http://unitsofmeasure.org", "a", "år")]
    ranged = {"resourceType": "Condition",
              "onsetRange": {"low": {"value": Decimal("2.5"), "code": "a"},
                             "high": {"value": 4, "code": "a"}}}
    assert [q.value for q in of(registry.extract(ranged), "onset-age")] == [  # type: ignore
        Decimal("2.5"), Decimal(4)]


def test_consent_provision_actor(registry: Registry) -> None:
    consent = {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2024-05-01T12:00:00+02:00",
        "organization": [{"reference": "Organization/kommune"}],
        "provision": {
            "type": "permit",
            "period": {"start": "2024-05-01", "end": "2025-04-30"},
            "actor": [{"role": {"text": "mottaker"},
                       "reference": {"reference": "Organization/nav"}},
                      {"role": {"text": "mottaker"},
                       "reference": {"reference": "Practitioner/fastlege"}}],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                    "code": "access"}]}],
            "provision": [{"actor": [{"reference": {"reference": "Organization/nested"}}]}],
        },
    }
    values = registry.extract(consent)
    assert of(values, "actor") == [ReferenceValue("actor", "Organization", "nav"),
                                   ReferenceValue("actor", "Practitioner", "fastlege")]
    assert of(values, "patient") == [ReferenceValue("patient", "Patient", "p1")]
    assert of(values, "action")[0].code == "access"  # type: ignore[attr-defined]
    assert of(values, "period") == [DateValue("period", ms("2024-05-01T00:00:00+00:00"),
                                              ms("2025-05-01T00:00:00+00:00") - 1)]
    assert of(values, "date") == [DateValue("date", ms("2024-05-01T10:00:00+00:00"),
                                            ms("2024-05-01T10:00:01+00:00") - 1)]
    assert of(values, "organization") == [ReferenceValue("organization", "Organization",
                                                         "kommune")]


def test_audit_event(registry: Registry) -> None:
    audit = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                 "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R", "recorded": "2024-05-02T10:11:12.345+02:00", "outcome": "0",
        "agent": [{"who": {"reference": "Practitioner/coord-1"}, "name": "Kari Koordinator",
                   "requestor": True, "altId": "hpr-123",
                   "policy": ["http://planbro.no/policy/ip"]},
                  {"who": {"reference": "Patient/p1"}, "requestor": False}],
        "source": {"observer": {"reference": "Device/planbro"}},
        "entity": [{"what": {"reference": "CarePlan/ip-1"}, "name": "Individuell plan"},
                   {"what": {"reference": "Patient/p2"}}],
    }
    values = registry.extract(audit)
    assert of(values, "patient") == [ReferenceValue("patient", "Patient", "p1"),
                                     ReferenceValue("patient", "Patient", "p2")]
    assert of(values, "agent") == [ReferenceValue("agent", "Practitioner", "coord-1"),
                                   ReferenceValue("agent", "Patient", "p1")]
    assert of(values, "date") == [DateValue("date", ms("2024-05-02T08:11:12.345+00:00"),
                                            ms("2024-05-02T08:11:12.345+00:00"))]
    assert of(values, "type") == [TokenValue(
        "type", "http://terminology.hl7.org/CodeSystem/audit-event-type", "rest",
        "restful operation")]
    assert of(values, "action") == [TokenValue("action", "", "R")]
    assert of(values, "altid") == [TokenValue("altid", "", "hpr-123")]
    assert of(values, "agent-name") == [StringValue("agent-name", "kari koordinator",
                                                    "Kari Koordinator")]
    assert of(values, "policy") == [UriValue("policy", "http://planbro.no/policy/ip")]
    assert of(values, "source") == [ReferenceValue("source", "Device", "planbro")]


def test_practitioner_telecom(registry: Registry) -> None:
    practitioner = {"resourceType": "Practitioner",
                    "identifier": [{"system": "urn:oid:2.16.578.1.12.4.1.4.4",
                                    "value": "9144889"}],
                    "name": [{"family": "Lege", "given": ["Fast"]}],
                    "telecom": [{"system": "email", "value": "fastlege@example.no"},
                                {"system": "phone", "value": "62 00 00 00"},
                                {"system": "fax", "value": "62 00 00 01"}]}
    values = registry.extract(practitioner)
    assert of(values, "email") == [TokenValue("email", "", "fastlege@example.no")]
    assert of(values, "phone") == [TokenValue("phone", "", "62 00 00 00")]
    assert [t.code for t in of(values, "telecom")] == [  # type: ignore[attr-defined]
        "fastlege@example.no", "62 00 00 00", "62 00 00 01"]
    assert of(values, "family") == [StringValue("family", "lege", "Lege")]


def test_questionnaire_response_item_subject(registry: Registry) -> None:
    is_subject = "http://hl7.org/fhir/StructureDefinition/questionnaireresponse-isSubject"
    response = {"resourceType": "QuestionnaireResponse", "status": "completed",
                "item": [{"linkId": "1", "extension": [{"url": is_subject, "valueBoolean": True}],
                          "answer": [{"valueReference": {"reference": "Patient/p1"}}]},
                         {"linkId": "2",
                          "answer": [{"valueReference": {"reference": "Patient/x"}}]}]}
    assert of(registry.extract(response), "item-subject") == [
        ReferenceValue("item-subject", "Patient", "p1")]


def test_duplicate_values_are_dropped(registry: Registry) -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "Dahl"}, {"family": "Dahl"}]}
    assert of(registry.extract(patient), "family") == [StringValue("family", "dahl", "Dahl")]


def test_invalid_data_values_are_skipped(registry: Registry) -> None:
    patient = {"resourceType": "Patient", "birthDate": "15.08.1985", "gender": 7,
               "name": "not a list of HumanName"}
    values = registry.extract(patient)
    assert of(values, "birthdate") == [] and of(values, "gender") == []
    assert of(values, "name") == []


def test_references_for_include(registry: Registry) -> None:
    refs = registry.references(CAREPLAN, "care-team")
    assert refs == [ReferenceValue("care-team", "CareTeam", "ct-1")]
    with pytest.raises(KeyError):
        registry.references(CAREPLAN, "status")
    with pytest.raises(KeyError):
        registry.references(CAREPLAN, "no-such-param")


def test_extraction_does_not_modify_the_resource(registry: Registry) -> None:
    before = copy.deepcopy(CAREPLAN)
    registry.extract(CAREPLAN)
    assert before == CAREPLAN


# ---------------------------------------------------------------------------------------------
# Our own SearchParameters
# ---------------------------------------------------------------------------------------------


def test_add_extension_parameter() -> None:
    registry = Registry.load_default()
    registry.add({"resourceType": "SearchParameter", "code": "evaluation-date", "type": "date",
                  "base": ["CarePlan"], "url": "http://planbro.no/fhir/SearchParameter/ed",
                  "expression": f"CarePlan.extension('{EVALUATION_DATE}').value"})
    param = registry.param("CarePlan", "evaluation-date")
    assert param is not None and param.url == "http://planbro.no/fhir/SearchParameter/ed"
    assert of(registry.extract(CAREPLAN), "evaluation-date") == [
        DateValue("evaluation-date", ms("2024-11-01T00:00:00+00:00"),
                  ms("2024-11-02T00:00:00+00:00") - 1),
        DateValue("evaluation-date", ms("2025-04-01T00:00:00+00:00"),
                  ms("2025-04-02T00:00:00+00:00") - 1)]
    assert registry.coverage().fallback == 0


def test_add_of_type_and_replace() -> None:
    registry = Registry.load_default()
    registry.add({"code": "date", "type": "date", "base": ["CarePlan"],
                  "expression": f"CarePlan.extension('{EVALUATION_DATE}').value.ofType(date)"
                                " | CarePlan.created"})
    assert of(registry.extract(CAREPLAN), "date") == [
        DateValue("date", ms("2024-11-01T00:00:00+00:00"), ms("2024-11-02T00:00:00+00:00") - 1),
        DateValue("date", ms("2025-04-01T00:00:00+00:00"), ms("2025-04-02T00:00:00+00:00") - 1),
        DateValue("date", ms("2024-04-20T08:15:00+00:00"), ms("2024-04-20T08:15:01+00:00") - 1)]
    assert registry.param("CareTeam", "date").expression == "CareTeam.period"  # type: ignore


def test_add_uses_fhirpathpy_for_other_forms() -> None:
    registry = Registry.load_default()
    registry.add({"code": "family-select", "type": "string", "base": ["Patient"],
                  "expression": "Patient.name.select(family)"})
    coverage = registry.coverage()
    assert coverage.fallback == 1
    assert of(registry.extract(PATIENT), "family-select") == [
        StringValue("family-select", "odegard", "Ødegård")]
    registry.add({"code": "rank", "type": "number", "base": ["Patient"],
                  "expression": "Patient.extension.select(value).count()"})
    assert of(registry.extract(PATIENT), "rank") == [NumberValue("rank", Decimal(1))]


PERSON = {"resourceType": "Patient", "active": True, "gender": "female",
          "identifier": [{"system": "urn:b", "value": "1"}]}


@pytest.mark.parametrize(("expression", "expected"), [
    ("active or gender = 'male'", [True]),
    ("gender = 'male' or active", [True]),
    ("gender = 'male' or active = false", [False]),
    ("birthDate = @2000-01-01 or gender = 'male'", []),
    ("birthDate = @2000-01-01 or active", [True]),
    ("gender = 'male' and active or gender = 'female'", [True]),
    ("gender = 'male' and (active or gender = 'female')", [False]),
    ("identifier.where(system = 'urn:a' or system = 'urn:b').exists()", [True]),
    ("identifier.where(system = 'urn:a' or value = '2').exists()", [False]),
])
def test_or_is_three_valued_and_binds_less_than_and(expression: str,
                                                    expected: list[bool]) -> None:
    fhirpath = expression.replace("@2000-01-01", "'2000-01-01'")
    try:
        evaluate, _, _ = compile_fast(fhirpath, "Patient", ElementModel.load_default())
    except Unsupported:
        pytest.fail(f"{fhirpath} is not compiled")
    assert [value for value, _ in evaluate(PERSON)] == expected
    assert conformance_evaluate(expression, PERSON) == expected  # as fhirpathpy has it


def test_add_indexer_and_is() -> None:
    registry = Registry.load_default()
    registry.add({"code": "first-family", "type": "string", "base": ["Patient"],
                  "expression": "Patient.name[1].family"})
    registry.add({"code": "deceased-flag", "type": "token", "base": ["Patient"],
                  "expression": "Patient.deceased is boolean"})
    patient = {"resourceType": "Patient", "name": [{"family": "Berg"}, {"family": "Dahl"}],
               "deceasedBoolean": False}
    values = registry.extract(patient)
    assert of(values, "first-family") == [StringValue("first-family", "dahl", "Dahl")]
    assert of(values, "deceased-flag") == [TokenValue("deceased-flag", "", "true")]
    assert registry.coverage().fallback == 0


@pytest.mark.parametrize(("param_type", "expression", "expected"), [
    ("token", "Patient.identifier.select(type)",
     [TokenValue("x", "", "", "fodselsnummer")]),
    ("token", "Patient.identifier.select($this)",
     [TokenValue("x", FNR_SYSTEM, FNR, "fodselsnummer")]),
    ("token", "Patient.telecom.select($this)",
     [TokenValue("x", "", "+47 99 99 99 99"), TokenValue("x", "", "kari@example.no")]),
    ("token", "Patient.meta.tag.select($this)", [TokenValue("x", "urn:t", "vip", "vip")]),
    ("reference", "Patient.generalPractitioner.select($this)",
     [ReferenceValue("x", "Practitioner", "fastlege")]),
    ("string", "Patient.address.select($this)",
     [StringValue("x", n, e) for n, e in (("storgata 1", "Storgata 1"), ("h0101", "H0101"),
                                          ("kongsvinger", "Kongsvinger"), ("2211", "2211"),
                                          ("no", "NO"))]),
    ("date", "Patient.birthDate.select($this)",
     [DateValue("x", ms("1985-08-15T00:00:00+00:00"), ms("1985-08-16T00:00:00+00:00") - 1)]),
    ("uri", "Patient.meta.tag.select(system)", [UriValue("x", "urn:t")]),
    ("reference", "Patient.meta.tag.select(system)", [ReferenceValue("x", "", "", "urn:t")]),
    ("token", "Patient.active.select($this)", [TokenValue("x", "", "true")]),
])
def test_fallback_values_are_typed_by_shape(param_type: str, expression: str,
                                            expected: list[object]) -> None:
    registry = Registry.load_default()
    registry.add({"code": "x", "type": param_type, "base": ["Patient"], "expression": expression})
    assert registry.coverage().fallback == 1
    patient = dict(PATIENT, meta={"tag": [{"system": "urn:t", "code": "vip", "display": "VIP"}]})
    assert of(registry.extract(patient), "x") == expected


def test_fallback_periods_and_ranges() -> None:
    registry = Registry.load_default()
    registry.add({"code": "x", "type": "date", "base": ["Condition"],
                  "expression": "Condition.onset.select($this)"})
    registry.add({"code": "y", "type": "quantity", "base": ["Condition"],
                  "expression": "Condition.abatement.select($this)"})
    condition = {"resourceType": "Condition", "onsetPeriod": {"end": "2024"},
                 "abatementRange": {"low": {"value": 1, "code": "a"}}}
    values = registry.extract(condition)
    assert of(values, "x") == [DateValue("x", MIN_MS, ms("2025-01-01T00:00:00+00:00") - 1)]
    assert of(values, "y") == [QuantityValue("y", Decimal(1), "", "a")]


@pytest.mark.parametrize("definition", [
    {"resourceType": "Patient", "code": "x", "type": "token", "base": ["Patient"],
     "expression": "Patient.gender"},
    {"code": "x", "type": "token", "base": ["Patient"]},
    {"code": "x", "type": "composite", "base": ["Patient"], "expression": "Patient.name"},
    {"code": "x", "type": "token", "base": ["Location"], "expression": "Location.status"},
    {"code": "x", "type": "date", "base": ["Patient"], "expression": "Patient.gender"},
    {"code": "x", "type": "token", "base": ["Patient"], "expression": "Patient.nosuch.where("},
    {"code": "x", "type": "string", "base": ["Patient"],
     "expression": "Patient.generalPractitioner.resolve().name"},
    {"code": "x", "type": "token", "base": ["CarePlan"],
     "expression": f"CarePlan.extension('{EVALUATION_DATE}').value.ofType(date)"},
    {"code": "_id", "type": "token", "base": ["Resource"], "expression": "Resource.id"},
    {"type": "token", "base": ["Patient"], "expression": "Patient.gender"},
])
def test_add_rejects_what_cannot_be_offered(definition: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Registry.load_default().add(definition)


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "lo", "hi"), [
    ("2024", "2024-01-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
    ("2024-02", "2024-02-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"),
    ("2024-12", "2024-12-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
    ("2024-02-29", "2024-02-29T00:00:00+00:00", "2024-03-01T00:00:00+00:00"),
    ("2024-05-01T10:00", "2024-05-01T10:00:00+00:00", "2024-05-01T10:01:00+00:00"),
    ("2024-05-01T10:00:00+02:00", "2024-05-01T08:00:00+00:00", "2024-05-01T08:00:01+00:00"),
    ("2024-05-01T10:00:00-05:30", "2024-05-01T15:30:00+00:00", "2024-05-01T15:30:01+00:00"),
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00+00:00", "2024-05-01T10:00:01+00:00"),
    ("2024-05-01T10:00:00.5Z", "2024-05-01T10:00:00.5+00:00", "2024-05-01T10:00:00.6+00:00"),
    ("2024-05-01T10:00:00.123456Z", "2024-05-01T10:00:00.123+00:00",
     "2024-05-01T10:00:00.124+00:00"),
    ("1969-12-31", "1969-12-31T00:00:00+00:00", "1970-01-01T00:00:00+00:00"),
])
def test_date_range(text: str, lo: str, hi: str) -> None:
    assert date_range(text) == (ms(lo), ms(hi) - 1)


def test_date_range_limits() -> None:
    assert date_range("0001") == (MIN_MS, ms("0002-01-01T00:00:00+00:00") - 1)
    assert date_range("9999")[1] == MAX_MS
    assert date_range("9999-12-31T23:59:59-10:00")[1] == MAX_MS
    assert date_range("2024-01-01") == (
        int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000),
        int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1000) - 1)


@pytest.mark.parametrize("text", ["", "24", "2023-02-29", "2024-13", "2024-00-10",
                                  "2024-05-01T24:00:00Z", "2024-05-01T10:60Z",
                                  "2024-05-01T10:00:00+15:00", "2024-05-01 10:00",
                                  "0000", "2024-5-1", "2024-05-01T10"])
def test_date_range_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        date_range(text)


def test_normalize_string() -> None:
    assert normalize_string("  Kari\tÅse  ØDEGÅRD ") == "kari ase odegard"
    # letters Unicode does not decompose, read as their base letters (root collation order)
    assert normalize_string("Sørensen Bærum STRAẞE Łódź Þórður Œuvre") == \
        "sorensen baerum strasse lodz thordur oeuvre"
    assert normalize_string("Ñoño Müller-Lüdenscheidt") == "nono muller-ludenscheidt"
    assert normalize_string("Plain Text") == "plain text"


def test_decimal_range() -> None:
    assert decimal_range(Decimal("100")) == (Decimal("99.5"), Decimal("100.5"))
    assert decimal_range(Decimal("100.00")) == (Decimal("99.995"), Decimal("100.005"))
    assert decimal_range(Decimal("1e2")) == (Decimal("50"), Decimal("150"))
    assert decimal_range(Decimal("-0.5")) == (Decimal("-0.55"), Decimal("-0.45"))


def test_parse_reference() -> None:
    assert parse_reference("#x") is None
    assert parse_reference("Patient?identifier=x") is None
    url = "https://fhir.example.no/r4/Patient/p1/_history/3"
    assert parse_reference(url) == ReferenceParts(url=url)  # no base known: another server's
    for base in ("https://fhir.example.no/r4", "https://fhir.example.no/r4/"):
        serving(base)
        try:
            assert parse_reference(url) == ReferenceParts("Patient", "p1", url, "3")
            other = "https://fhir.example.no/other/Patient/p1"
            assert parse_reference(other) == ReferenceParts(url=other)
            odd = "https://fhir.example.no/r4/Patient/p1/extra"
            assert parse_reference(odd) == ReferenceParts(url=odd)
        finally:
            serving(None)
    ref = parse_reference("urn:oid:2.16.578.1.12.4.1.4.101")
    assert ref is not None and (ref.target_type, ref.url) == (
        "", "urn:oid:2.16.578.1.12.4.1.4.101")
    ref = parse_reference("http://example.no/no/type/here")
    assert ref is not None and ref.target_type == "" and ref.url


def test_index_values_do_not_depend_on_the_meta_a_write_stamps() -> None:
    """A write may store index values computed before it stamped ``meta.versionId`` and
    ``meta.lastUpdated`` (:class:`server.store.port.Indexed`): no parameter of the server's
    indexer may read them."""
    indexer = store_indexer(search_registry())
    for resource in examples():
        type_, id_ = resource["resourceType"], resource["id"]
        first = indexer(stamp(resource, type_, id_, 1, "2020-01-02T03:04:05.678Z"))
        later = indexer(stamp(resource, type_, id_, 12, "2031-06-07T08:09:10.111Z"))
        assert first == later, f"{type_}/{id_}"
        assert first.tokens or first.references, f"{type_}/{id_}"  # it did extract
