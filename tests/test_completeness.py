"""``$completeness``: the plan item by item against the regulation (mappings/)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.fhir.outcome import FhirError
from server.plans.completeness import completeness, gather_related, load_mapping

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "profiles" / "examples"
CANON = "http://planbro.no/fhir"
SD = f"{CANON}/StructureDefinition/"

Json = dict[str, Any]


def _example(name: str) -> Json:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))  # type: ignore


def _items(report: Json) -> dict[str, dict[str, list[Any]]]:
    """item id -> part name -> values."""
    out = {}
    for p in report["parameter"]:
        if p["name"] != "item":
            continue
        parts: dict[str, list[Any]] = {}
        for part in p["part"]:
            value = next(v for k, v in part.items() if k.startswith("value"))
            parts.setdefault(part["name"], []).append(value)
        out[parts["id"][0]] = parts
    return out


def _param(report: Json, name: str) -> Any:
    p = next(p for p in report["parameter"] if p["name"] == name)
    return next(v for k, v in p.items() if k.startswith("value"))


def _unfulfilled(report: Json) -> set[str]:
    return {i for i, parts in _items(report).items() if parts["fulfilled"] == [False]}


# -- Rut's SIP as the source writes it ------------------------------------------------------------


def _rut() -> tuple[Json, dict[str, list[Json]]]:
    related = {"Goal": [_example("Goal-rut-mal"), _example("Goal-rut-delmal-1")],
               "CareTeam": [], "Consent": [], "Task": [], "Provenance": []}
    return _example("CarePlan-rut-sip"), related


def test_ruts_sip_shows_what_the_source_lacks() -> None:
    report = completeness(*_rut())
    assert report["resourceType"] == "Parameters"
    assert _param(report, "variant") == "sip"
    assert _param(report, "complete") is False
    items = _items(report)
    assert list(items) == [f"sip-{n}" for n in range(1, 10)]
    # No overall-responsible principal, no named coordinator, no consent, no signature:
    assert items["sip-4"]["missing"] == ["Det framgår inte vilken huvudman som har det "
                                         "övergripande ansvaret"]
    assert items["sip-5"]["missing-en"] == ["No coordinator is appointed"]
    assert items["sip-8"]["missing-en"] == ["The person's consent is not recorded"]
    assert items["sip-9"]["missing-en"] == ["The plan is not signed"]
    # Nor does it say which principal answers for each measure (the form names units only):
    assert items["sip-2"]["missing-en"] == [
        "Measure 'Kartlägga situationer som gör Rut orolig': it does not say which principal "
        "is responsible",
        "Measure 'Notera vart Rut ska vända sig vid vilka situationer, på ett sätt som Rut "
        "förstår': it does not say which principal is responsible",
    ]
    # What the source has: the measures, a dated goal with its sub-goal, follow-up dates.
    assert _unfulfilled(report) == {"sip-2", "sip-3", "sip-4", "sip-5", "sip-8", "sip-9"}
    assert items["sip-4"]["label-en"] == ["Which principal has overall responsibility for the "
                                          "plan"]
    assert "CarePlan.extension sip-overall-responsible" in items["sip-4"]["carrier"]


def _complete_sip() -> tuple[Json, dict[str, list[Json]]]:
    """Rut's SIP with what the source lacks filled in."""
    plan, related = _rut()
    plan = copy.deepcopy(plan)
    plan["extension"] = [{"url": SD + "sip-overall-responsible",
                          "valueReference": {"reference": "Organization/kommun"}}]
    for activity in plan["activity"]:
        activity["extension"].append({"url": SD + "sip-responsibility", "valueCodeableConcept": {
            "coding": [{"system": f"{CANON}/CodeSystem/sip-responsibility", "code": "kommun"}]}})
    plan["careTeam"] = [{"reference": "CareTeam/rut"}]
    role = {"coding": [{"system": f"{CANON}/CodeSystem/participant-role", "code": "koordinator"}]}
    related["CareTeam"] = [{"resourceType": "CareTeam", "id": "rut", "status": "active",
                            "participant": [{"role": [role],
                                             "member": {"reference": "PractitionerRole/s"},
                                             "period": {"start": "2013-04-25"}}]}]
    related["Consent"] = [{"resourceType": "Consent", "status": "active", "category": [
        {"coding": [{"system": f"{CANON}/CodeSystem/consent-scope", "code": "plan-making"}]}],
        "patient": {"reference": "Patient/rut"}, "provision": {"type": "permit"}}]
    related["Provenance"] = [{"resourceType": "Provenance",
                              "target": [{"reference": "CarePlan/rut-sip"}],
                              "recorded": "2013-04-25T15:00:00+02:00",
                              "agent": [{"who": {"reference": "Patient/rut"}}],
                              "signature": [{"type": [{"system": "urn:iso-astm:E1762-95:2013",
                                                       "code": "1.2.840.10065.1.12.1.7"}],
                                             "when": "2013-04-25T15:00:00+02:00",
                                             "who": {"reference": "Patient/rut"}}]}]
    return plan, related


def test_completed_sip_is_complete() -> None:
    report = completeness(*_complete_sip())
    assert _unfulfilled(report) == set()
    assert _param(report, "complete") is True


def test_measure_by_others_must_name_who() -> None:
    plan, related = _complete_sip()
    concept = plan["activity"][1]["extension"][1]["valueCodeableConcept"]
    concept["coding"][0]["code"] = "annan"
    del plan["activity"][1]["detail"]["performer"]
    report = completeness(plan, related)
    assert _unfulfilled(report) == {"sip-3"}


# -- a Norwegian individual plan ------------------------------------------------------------------


def _kari() -> tuple[Json, dict[str, list[Json]]]:
    related = {
        "Goal": [_example("Goal-kari-hovedmal"), _example("Goal-kari-delmal-arbeid")],
        "CareTeam": [_example("CareTeam-kari")],
        "Consent": [_example("Consent-kari"), _example("Consent-kari-2025")],
        "Task": [], "Provenance": [],
    }
    return _example("CarePlan-kari"), related


def test_complete_individual_plan() -> None:
    report = completeness(*_kari())
    assert _param(report, "variant") == "individuell-plan"
    assert _param(report, "plan") == {"reference": "CarePlan/kari"}
    assert _param(report, "complete") is True
    items = _items(report)
    assert list(items) == [f"ip-{n}" for n in range(1, 10)]
    assert all("missing" not in parts and "note" not in parts for parts in items.values())
    assert items["ip-3"]["label"] == ["Hvem som har ansvaret for å sikre samordningen av og "
                                      "fremdriften i arbeidet med planen"]


def _drop_description(plan: Json, related: dict[str, list[Json]]) -> None:
    del plan["description"]


def _drop_care_team_reference(plan: Json, related: dict[str, list[Json]]) -> None:
    del plan["careTeam"]


def _drop_responsible_organization(plan: Json, related: dict[str, list[Json]]) -> None:
    plan["extension"] = [e for e in plan["extension"]
                         if e["url"] != SD + "ip-responsible-organization"]


def _drop_persons_own_measure(plan: Json, related: dict[str, list[Json]]) -> None:
    del plan["activity"][1]


def _drop_extent(plan: Json, related: dict[str, list[Json]]) -> None:
    del plan["activity"][0]["detail"]["scheduledTiming"]


def _drop_how(plan: Json, related: dict[str, list[Json]]) -> None:
    del plan["activity"][2]["detail"]["description"]


def _drop_evaluation_dates(plan: Json, related: dict[str, list[Json]]) -> None:
    plan["extension"] = [e for e in plan["extension"] if e["url"] != SD + "ip-evaluation-date"]


def _only_withdrawn_consent(plan: Json, related: dict[str, list[Json]]) -> None:
    related["Consent"] = [_example("Consent-kari-2025")]


def _no_cooperating_providers(plan: Json, related: dict[str, list[Json]]) -> None:
    team = copy.deepcopy(related["CareTeam"][0])
    team["participant"] = [p for p in team["participant"]
                           if p["member"]["reference"].startswith(("Patient/", "RelatedPerson/"))]
    role = {"coding": [{"system": f"{CANON}/CodeSystem/participant-role", "code": "koordinator"}]}
    team["participant"].append({"role": [role], "member": {"reference": "Practitioner/siri"}})
    related["CareTeam"] = [team]


MISSING_IN_TURN: dict[str, tuple[Callable[[Json, dict[str, list[Json]]], None], str]] = {
    "ip-1": (_drop_description, "Resources and needs are not described"),
    "ip-2": (_drop_care_team_reference, "The plan names no care team"),
    "ip-3": (_drop_responsible_organization,
             "The organisation responsible for the plan is not stated"),
    "ip-4": (_drop_persons_own_measure, "The person's own contribution is not described (no "
                                        "measure performed by the person)"),
    "ip-5": (_drop_extent, "Measure 'Arbeidstrening i kantine; NAV-kontakten følger opp hver "
                           "måned.' has no extent (schedule or quantity)"),
    "ip-6": (_drop_how, "Measure 'nr 3' does not describe how it is carried out"),
    "ip-7": (_drop_evaluation_dates, "No time of evaluation is agreed"),
    "ip-8": (_only_withdrawn_consent, "No consent to making the plan is recorded"),
    "ip-9": (_no_cooperating_providers, "The care team shows no cooperating providers, "
                                        "institutions or agencies"),
}


def test_every_item_is_tested_missing() -> None:
    ids = [i["id"] for i in load_mapping()["variants"]["individuell-plan"]["items"]]
    assert sorted(MISSING_IN_TURN) == sorted(ids)


@pytest.mark.parametrize("item", sorted(MISSING_IN_TURN))
def test_each_item_missing_in_turn(item: str) -> None:
    plan, related = _kari()
    plan = copy.deepcopy(plan)
    related = copy.deepcopy(related)
    change, message = MISSING_IN_TURN[item]
    change(plan, related)
    report = completeness(plan, related)
    assert _unfulfilled(report) == {item}
    assert message in _items(report)[item]["missing-en"]
    assert _param(report, "complete") is False


def test_evaluation_task_counts_as_evaluation_time() -> None:
    plan, related = _kari()
    _drop_evaluation_dates(plan, related)
    related["Task"] = [{"resourceType": "Task", "status": "requested", "intent": "plan",
                        "code": {"coding": [{"system": f"{CANON}/CodeSystem/task-code",
                                             "code": "evaluation"}]},
                        "focus": {"reference": "CarePlan/kari"}}]
    assert _unfulfilled(completeness(plan, related)) == set()


def test_recommended_content_is_a_note_not_a_gap() -> None:
    plan, related = _kari()
    consent = copy.deepcopy(related["Consent"][0])
    consent["category"] = [c for c in consent["category"]
                           if c["coding"][0]["code"] != "information-sharing"]
    related["Consent"] = [consent]
    report = completeness(plan, related)
    assert _unfulfilled(report) == set()
    assert _items(report)["ip-8"]["note-en"] == [
        "No consent to share information with named participants is recorded"]


def test_an_ordinary_care_plan_has_no_completeness() -> None:
    plan = copy.deepcopy(_example("CarePlan-kari"))
    plan["category"] = [{"text": "Behandlingsplan"}]
    with pytest.raises(FhirError) as err:
        completeness(plan, {})
    assert err.value.status == 422


def test_gather_related_runs_the_searches_the_report_needs() -> None:
    calls: list[tuple[str, dict[str, str]]] = []

    def lookup(rtype: str, params: dict[str, str]) -> list[Json]:
        calls.append((rtype, params))
        return []

    related = gather_related(_example("CarePlan-kari"), lookup)
    assert set(related) == {"CareTeam", "Goal", "Consent", "Task"}
    assert sorted(calls) == [
        ("CareTeam", {"_id": "kari"}),
        ("Consent", {"patient": "Patient/kari"}),
        ("Goal", {"_id": "kari-hovedmal,kari-delmal-arbeid"}),
        ("Task", {"focus": "CarePlan/kari"}),
    ]
    calls.clear()
    related = gather_related(_example("CarePlan-rut-sip"), lookup)
    assert "Provenance" in related and ("Provenance", {"target": "CarePlan/rut-sip"}) in calls
    assert ("CareTeam", {"_id": ""}) not in calls  # no care team referenced: no search
