"""FHIR R4 resource validation (server.fhir.model)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from server.fhir import jsonio, model
from server.fhir.model import ensure_valid, validate
from server.fhir.outcome import FhirError

FIXTURES = Path(__file__).parent / "fixtures"
VALID = ["careplan", "careteam", "patient", "task", "consent", "goal", "organization",
         "bundle_transaction"]


def load(name: str) -> dict[str, Any]:
    return jsonio.loads((FIXTURES / f"model_{name}.json").read_text(encoding="utf-8"))


def found(resource: Any, **kwargs: Any) -> list[tuple[str, str]]:
    """(expression, code) of every error, in order."""
    return [(i.expression[0] if i.expression else "", i.code)
            for i in validate(resource, **kwargs) if i.severity == "error"]


def careplan(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = load("careplan")
    change(data)
    return data


def detail(data: dict[str, Any]) -> dict[str, Any]:
    return data["activity"][0]["detail"]


def minimal_careplan(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p1"}, **extra}


# ----------------------------------------------------------------------------- valid input


@pytest.mark.parametrize("name", VALID)
def test_realistic_resources_are_valid(name: str) -> None:
    data = load(name)
    assert validate(data) == []
    ensure_valid(data)


def test_fixture_patient_has_a_mod11_fodselsnummer() -> None:
    fnr = load("patient")["identifier"][0]["value"]
    digits = [int(c) for c in fnr]
    k1 = (11 - sum(d * w for d, w in zip(digits, [3, 7, 6, 1, 8, 9, 4, 5, 2], strict=False))
          % 11) % 11
    k2 = (11 - sum(d * w for d, w in zip(digits, [5, 4, 3, 2, 7, 6, 5, 4, 3, 2],
                                         strict=False)) % 11) % 11
    assert (k1, k2) == (digits[9], digits[10])


def test_decimals_and_integers_as_parsed_by_jsonio_are_accepted() -> None:
    data = jsonio.loads(
        '{"resourceType":"Patient","extension":['
        '{"url":"http://e.org/a","valueDecimal":1.10},{"url":"http://e.org/b","valueDecimal":3},'
        '{"url":"http://e.org/c","valueInteger":-7},{"url":"http://e.org/d","valueDecimal":1e2}]}'
    )
    assert isinstance(data["extension"][0]["valueDecimal"], Decimal)
    assert validate(data) == []


def test_the_input_is_never_mutated() -> None:
    data = load("careplan")
    data["foo"] = [None, {}]
    data["contained"].append({"resourceType": "Medication", "id": "m", "bad": 1})
    before = copy.deepcopy(data)
    assert validate(data)
    assert data == before
    assert isinstance(detail(data)["quantity"]["value"], Decimal)


# ----------------------------------------------------------------------------- structure


def test_unknown_element() -> None:
    assert found(careplan(lambda d: d.update(foo=1))) == [("CarePlan.foo", "structure")]


def test_unknown_element_in_backbone_element() -> None:
    data = careplan(lambda d: detail(d).update(colour="red"))
    assert found(data) == [("CarePlan.activity[0].detail.colour", "structure")]


def test_string_true_is_not_a_boolean() -> None:
    data = careplan(lambda d: detail(d).update(doNotPerform="true"))
    assert found(data) == [("CarePlan.activity[0].detail.doNotPerform", "structure")]


def test_number_for_string() -> None:
    assert found(careplan(lambda d: d.update(title=5))) == [("CarePlan.title", "structure")]


def test_string_for_integer() -> None:
    data = careplan(lambda d: detail(d)["scheduledTiming"]["repeat"].update(frequency="2"))
    path = "CarePlan.activity[0].detail.scheduledTiming.repeat.frequency"
    assert found(data) == [(path, "structure")]


@pytest.mark.parametrize(("value", "code"), [
    (True, "structure"), (Decimal("2.0"), "structure"), (0, "value"), (2**31, "value"),
])
def test_integers_are_json_integers_in_range(value: Any, code: str) -> None:
    data = careplan(lambda d: detail(d)["scheduledTiming"]["repeat"].update(frequency=value))
    path = "CarePlan.activity[0].detail.scheduledTiming.repeat.frequency"
    assert found(data) == [(path, code)]


@pytest.mark.parametrize("value", ["1.5", True])
def test_decimal_must_be_a_json_number(value: Any) -> None:
    data = careplan(lambda d: detail(d)["quantity"].update(value=value))
    assert found(data) == [("CarePlan.activity[0].detail.quantity.value", "structure")]


@pytest.mark.parametrize("value", ["2024-13-01", "2024-02-30", "01.02.2024", "2024-01-01T10:00"])
def test_bad_date_time(value: str) -> None:
    assert found(careplan(lambda d: d.update(created=value))) == [("CarePlan.created", "value")]


def test_dates_keep_their_r4_partial_forms() -> None:
    for value in ("2024", "2024-02", "2024-02-29", "2016-12-31T23:59:60Z"):
        assert found(careplan(lambda d, v=value: d.update(created=v))) == []


def test_array_for_max_one() -> None:
    data = careplan(lambda d: d.update(subject=[d["subject"]]))
    assert found(data) == [("CarePlan.subject", "structure")]


def test_object_for_max_many() -> None:
    data = careplan(lambda d: d.update(goal={"reference": "Goal/g1"}))
    assert found(data) == [("CarePlan.goal", "structure")]


def test_missing_required_elements() -> None:
    data = careplan(lambda d: [d.pop(k) for k in ("status", "intent", "subject")])
    assert sorted(found(data)) == [("CarePlan.intent", "required"),
                                   ("CarePlan.status", "required"),
                                   ("CarePlan.subject", "required")]


def test_missing_required_in_backbone_element() -> None:
    data = careplan(lambda d: detail(d).pop("status"))
    assert found(data) == [("CarePlan.activity[0].detail.status", "required")]


def test_empty_string() -> None:
    assert found(careplan(lambda d: d.update(title=""))) == [("CarePlan.title", "value")]


def test_null() -> None:
    assert found(careplan(lambda d: d.update(title=None))) == [("CarePlan.title", "structure")]


def test_null_in_array() -> None:
    data = careplan(lambda d: d["goal"].append(None))
    assert found(data) == [("CarePlan.goal[2]", "structure")]


def test_empty_object_and_empty_array() -> None:
    data = careplan(lambda d: d.update(period={}, instantiatesUri=[]))
    assert found(data) == [("CarePlan.instantiatesUri", "structure"),
                           ("CarePlan.period", "structure")]


def test_element_with_only_an_id() -> None:
    data = careplan(lambda d: d.update(period={"id": "p"}))
    assert found(data) == [("CarePlan.period", "structure")]


def test_choice_type_with_wrong_suffix() -> None:
    data = careplan(lambda d: detail(d).update(scheduledDate="2024-05-01"))
    assert found(data) == [("CarePlan.activity[0].detail.scheduledDate", "structure")]


def test_only_one_choice_type() -> None:
    data = careplan(lambda d: detail(d).update(scheduledString="mondays"))
    assert found(data) == [("CarePlan.activity[0].detail.scheduledString", "structure")]


def test_content_reference_recurses() -> None:
    data = load("consent")
    data["provision"]["provision"][0]["type"] = "maybe"
    data["provision"]["provision"][0]["provision"] = [{"colour": "red"}]
    assert found(data) == [("Consent.provision.provision[0].type", "code-invalid"),
                           ("Consent.provision.provision[0].provision[0].colour", "structure")]


def test_questionnaire_response_nested_items() -> None:
    data = {"resourceType": "QuestionnaireResponse", "status": "completed", "item": [
        {"linkId": "1", "item": [{"linkId": "1.1", "answer": [
            {"valueInteger": True, "item": [{"linkId": "x", "foo": 1}]}]}]}]}
    assert found(data) == [
        ("QuestionnaireResponse.item[0].item[0].answer[0].valueInteger", "structure"),
        ("QuestionnaireResponse.item[0].item[0].answer[0].item[0].foo", "structure"),
    ]


def test_absurd_nesting_is_an_issue_not_a_crash() -> None:
    data: dict[str, Any] = {"resourceType": "QuestionnaireResponse", "status": "completed"}
    item = data
    for i in range(500):
        item["item"] = [{"linkId": str(i)}]
        item = item["item"][0]
    assert found(data) == [("QuestionnaireResponse", "structure")]


# ----------------------------------------------------------------------------- primitive extensions


def test_primitive_extension_on_a_required_element_counts_as_present() -> None:
    ext = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                          "valueCode": "unknown"}]}
    data = careplan(lambda d: [d.pop("status"), d.update(_status=ext)])
    assert found(data) == []


def test_primitive_extension_errors() -> None:
    data = load("patient")
    data["_birthDate"] = {"extension": [{"valueString": "x"}]}
    data["_active"] = [{"id": "a"}]
    data["_name"] = {"id": "x"}
    assert found(data) == [("Patient.birthDate.extension[0].url", "required"),
                           ("Patient._active", "structure"),
                           ("Patient._name", "structure")]


def test_primitive_array_nulls_must_align() -> None:
    data = load("patient")
    data["name"][0]["given"] = ["Ola", None, "Jon"]
    data["name"][0]["_given"] = [None, None, {"id": "g3"}]
    assert found(data) == [("Patient.name[0].given[1]", "structure")]
    data["name"][0]["_given"] = [None, {"id": "g2"}]
    assert ("Patient.name[0]._given", "structure") in found(data)


# ----------------------------------------------------------------------------- bindings


def test_bad_status_code_against_required_binding() -> None:
    issues = validate(careplan(lambda d: d.update(status="ongoing")))
    assert [(i.expression, i.code) for i in issues] == [(("CarePlan.status",), "code-invalid")]
    assert "ongoing" in issues[0].diagnostics
    assert "http://hl7.org/fhir/ValueSet/request-status" in issues[0].diagnostics


def test_codeable_concept_required_binding() -> None:
    system = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    data = {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"system": system, "code": "activ"}]},
            "verificationStatus": {"text": "confirmed"}}
    assert found(data) == [("Condition.clinicalStatus", "code-invalid"),
                           ("Condition.verificationStatus", "code-invalid")]
    data["clinicalStatus"]["coding"].insert(0, {"code": "x"})
    data["clinicalStatus"]["coding"][1]["code"] = "active"
    del data["verificationStatus"]
    assert found(data) == []


def test_unenumerable_value_sets_are_listed() -> None:
    assert "http://hl7.org/fhir/ValueSet/mimetypes" in model.unenforced_bindings()


# ----------------------------------------------------------------------------- references


def test_reference_to_a_type_that_is_not_allowed() -> None:
    data = careplan(lambda d: d.update(subject={"reference": "Practitioner/1"}))
    issues = validate(data)
    assert [(i.expression, i.code) for i in issues] == [(("CarePlan.subject.reference",),
                                                         "value")]
    assert "Patient" in issues[0].diagnostics and "Practitioner" in issues[0].diagnostics


@pytest.mark.parametrize("ref", [
    "Patient/p1", "Patient/p1/_history/3", "https://fhir.example.no/r4/Patient/p1",
    "urn:uuid:0b6d8f3e-5a1c-4c7e-9f2a-1d3b5e7a9c01", "Patient?identifier=urn:oid:1.2|123",
])
def test_reference_forms(ref: str) -> None:
    assert found(minimal_careplan(subject={"reference": ref})) == []


@pytest.mark.parametrize("ref", [
    "Patient/", "Patient/a b", "patient/p1", "Pasient/p1", "urn:uuid:123", "p1",
    "Practitioner/x",
])
def test_bad_references(ref: str) -> None:
    assert found(minimal_careplan(subject={"reference": ref})) == [
        ("CarePlan.subject.reference", "value")]


def test_reference_type_element() -> None:
    assert found(minimal_careplan(subject={"type": "Practitioner", "display": "x"})) == [
        ("CarePlan.subject.type", "value")]
    assert found(minimal_careplan(subject={"reference": "Patient/1", "type": "Group"})) == [
        ("CarePlan.subject.type", "value")]
    assert found(minimal_careplan(subject={"type": "Patient", "identifier": {"value": "1"}})) \
        == []


def test_local_references_check_the_contained_resource() -> None:
    data = careplan(lambda d: d["contributor"].append({"reference": "#nobody"}))
    assert found(data) == [("CarePlan.contributor[2].reference", "invariant")]
    data = careplan(lambda d: d.update(subject={"reference": "#mor"}))
    assert found(data) == [("CarePlan.subject.reference", "value")]


# ----------------------------------------------------------------------------- resource rules


def test_resource_type_must_match_the_url() -> None:
    assert found(load("careplan"), type_="Patient") == [("CarePlan.resourceType", "invalid")]


@pytest.mark.parametrize(("body", "expected"), [
    ({"resourceType": "Medication"}, [("Resource.resourceType", "not-supported")]),
    ({"resourceType": "Pasient"}, [("Resource.resourceType", "not-supported")]),
    ({"name": "x"}, [("Resource.resourceType", "required")]),
    ([{"resourceType": "Patient"}], [("", "structure")]),
])
def test_unsupported_or_missing_resource_type(body: Any, expected: list[Any]) -> None:
    assert found(body) == expected


def test_update_requires_the_matching_id() -> None:
    data = load("careplan")
    assert found(data, mode="update", id_="ip-ola-2024") == []
    assert found(data, mode="update", id_="other") == [("CarePlan.id", "invalid")]
    del data["id"]
    assert found(data, mode="update", id_="ip-ola-2024") == [("CarePlan.id", "required")]
    assert found(data, mode="create") == []


def test_body_id_is_allowed_on_create_but_must_be_an_id() -> None:
    assert found(minimal_careplan(id="anything-1"), id_="ignored") == []
    assert found(minimal_careplan(id="a b")) == [("CarePlan.id", "value")]
    assert found(minimal_careplan(id="x" * 65)) == [("CarePlan.id", "value")]


def test_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        validate(minimal_careplan(), mode="upsert")


def test_contained_resource_error_path() -> None:
    data = careplan(lambda d: d["contained"][0].update(gender="mal", foo=1))
    assert found(data) == [("CarePlan.contained[0].gender", "code-invalid"),
                           ("CarePlan.contained[0].foo", "structure")]


def test_contained_resource_rules() -> None:
    inner = {"resourceType": "Patient", "id": "x"}
    data = {"resourceType": "Patient", "link": [{"other": {"reference": "#"}, "type": "seealso"}],
            "contained": [{"resourceType": "Patient", "contained": [inner],
                           "meta": {"versionId": "1"}}]}
    assert found(data) == [("Patient.contained[0].id", "required"),
                           ("Patient.contained[0].contained", "invariant"),
                           ("Patient.contained[0].meta", "invariant")]


def test_unreferenced_contained_resource_is_a_warning() -> None:
    data = careplan(lambda d: [d.update(contributor=[{"reference": "Patient/ola"}]),
                               d["activity"][1]["detail"]["performer"].pop()])
    issues = validate(data)
    assert [(i.severity, i.expression) for i in issues] == [("warning",
                                                             ("CarePlan.contained[0]",))]
    ensure_valid(data)


def test_extension_without_url() -> None:
    data = careplan(lambda d: d["extension"][0].pop("url"))
    assert found(data) == [("CarePlan.extension[0].url", "required")]


def test_extension_needs_value_or_extensions_not_both() -> None:
    data = careplan(lambda d: d["extension"].extend([
        {"url": "http://e.org/a"},
        {"url": "http://e.org/b", "valueString": "x", "extension": [{"url": "c",
                                                                      "valueString": "y"}]},
    ]))
    assert found(data) == [("CarePlan.extension[2]", "invariant"),
                           ("CarePlan.extension[3]", "invariant")]


def test_modifier_extension_is_validated_like_extension() -> None:
    data = careplan(lambda d: detail(d).update(modifierExtension=[{"valueBoolean": "yes"}]))
    assert found(data) == [
        ("CarePlan.activity[0].detail.modifierExtension[0].valueBoolean", "structure"),
        ("CarePlan.activity[0].detail.modifierExtension[0].url", "required"),
    ]


def test_narrative_and_meta() -> None:
    data = careplan(lambda d: [d["text"].update(div="just text", status="done"),
                               d["meta"].update(lastUpdated="2024-03-01")])
    assert found(data) == [("CarePlan.meta.lastUpdated", "value"),
                           ("CarePlan.text.status", "code-invalid"),
                           ("CarePlan.text.div", "value")]


def test_bundle_entries_are_validated_with_their_path() -> None:
    data = load("bundle_transaction")
    data["entry"][1]["resource"]["status"] = "nope"
    del data["entry"][0]["request"]
    data["entry"][2]["fullUrl"] = data["entry"][1]["fullUrl"]
    assert found(data) == [("Bundle.entry[1].resource.status", "code-invalid"),
                           ("Bundle.entry[0].request", "invariant"),
                           ("Bundle.entry[2].fullUrl", "invariant")]


def test_all_issues_are_returned_at_once() -> None:
    def break_it(d: dict[str, Any]) -> None:
        d.pop("intent")
        d.update(status="ongoing", foo=1, created="yesterday", subject={"reference": "Goal/1"})
        detail(d).update(doNotPerform="false")
        d["contained"][0]["gender"] = "mal"

    assert sorted(found(careplan(break_it))) == [
        ("CarePlan.activity[0].detail.doNotPerform", "structure"),
        ("CarePlan.contained[0].gender", "code-invalid"),
        ("CarePlan.created", "value"),
        ("CarePlan.foo", "structure"),
        ("CarePlan.intent", "required"),
        ("CarePlan.status", "code-invalid"),
        ("CarePlan.subject.reference", "value"),
    ]


# ----------------------------------------------------------------------------- R4B net


def test_r4b_model_checks_resources_we_have_no_r4_definition_for() -> None:
    data = careplan(lambda d: [
        d["contained"].append({"resourceType": "Medication", "id": "med", "colour": "red"}),
        detail(d).update(productReference={"reference": "#med"}),
    ])
    issues = validate(data)
    assert [(i.expression, i.code) for i in issues] == [(("CarePlan.contained[1].colour",),
                                                         "structure")]
    assert "R4B" in issues[0].diagnostics


def test_walker_wins_where_r4_and_r4b_differ() -> None:
    # Extension.valueMeta exists in R4, not in R4B.
    data = careplan(lambda d: d["extension"].append(
        {"url": "http://e.org/m", "valueMeta": {"versionId": "1"}}))
    assert validate(data) == []


def test_r4b_net_runs_only_where_the_walker_has_no_definition(
        monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    r4b_class = model._r4b_class

    def spy(rtype: str) -> Any:
        checked.append(rtype)
        return r4b_class(rtype)

    monkeypatch.setattr(model, "_r4b_class", spy)
    assert validate(careplan(lambda d: None)) == []
    assert validate(careplan(lambda d: d.update(foo=1)))
    assert checked == []
    validate(careplan(lambda d: [
        d["contained"].append({"resourceType": "Medication", "id": "med"}),
        detail(d).update(productReference={"reference": "#med"}),
    ]))
    assert "CarePlan" in checked


def test_no_duplicate_issue_from_the_r4b_net() -> None:
    assert found(careplan(lambda d: d.update(foo=1, _bar={"id": "1"}))) == [
        ("CarePlan.foo", "structure"), ("CarePlan._bar", "structure")]


# ----------------------------------------------------------------------------- ensure_valid, speed


def test_ensure_valid_raises_400_with_all_issues() -> None:
    with pytest.raises(FhirError) as caught:
        ensure_valid(careplan(lambda d: d.update(status="x", intent="y")), type_="CarePlan")
    assert caught.value.status == 400
    assert [i.expression for i in caught.value.issues] == [("CarePlan.status",),
                                                           ("CarePlan.intent",)]
    assert caught.value.to_outcome()["resourceType"] == "OperationOutcome"


def test_definitions_are_compiled_once() -> None:
    assert model._schema() is model._schema()
