"""Synthetic people with individual plans, as FHIR transaction entries.

Per person: a Patient with a synthetic fødselsnummer, a CarePlan of about 5 KB, a CareTeam,
three Goals, a Consent and three Tasks owned by one of a few municipalities, with statuses
that rotate so that every (owner, status) pair has about the same number of tasks.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from server.plans.identifiers import (
    ENH_SYSTEM,
    FNR_SYSTEM,
    synthetic_fnr,
    synthetic_orgnr,
)

RESOURCES_PER_PERSON = 10
TASK_STATUSES = ("requested", "accepted", "in-progress", "completed")
_FIRST_BIRTH_DATE = dt.date(1940, 1, 1)
_BIRTH_DATES = 20_000  # 1940 to 1994; then the next individual number on the same dates

_MEASURES = (
    "Hverdagsrehabilitering hjemme med trening i innkjøp, matlaging og dagsplan",
    "Poliklinisk oppfølging og samtale med kontaktsykepleier ved sykehuset",
    "Arbeidsavklaring og plan for gradvis tilbakeføring til arbeid i samarbeid med NAV",
    "Oppfølging hos fastlege med gjennomgang av medisiner og helsetilstand",
    "Støttekontakt to ettermiddager i uka for fritidsaktiviteter",
    "Praktisk bistand i hjemmet og tilrettelegging av bolig",
)
_DETAIL = (" Tiltaket gjennomføres i samråd med brukeren og pårørende, evalueres på hvert møte i "
           "ansvarsgruppen, og justeres når behovene endrer seg. Ansvarlig tjeneste melder fra "
           "til koordinator ved endringer, fravær eller når tiltaket ikke kan gjennomføres som "
           "planlagt, slik at planen holdes oppdatert.")
_NOTE = ("Planen er utarbeidet sammen med brukeren, som har bestemt målene og rekkefølgen på "
         "tiltakene. Koordinator kaller inn ansvarsgruppen til evaluering hver tredje måned, "
         "eller tidligere når brukeren, pårørende eller en av tjenestene ber om det. Brukeren "
         "har samtykket til at opplysningene i planen deles med de tjenestene som er oppført "
         "som deltakere, og kan når som helst trekke samtykket tilbake. Endringer i planen "
         "dokumenteres med dato og ansvarlig.")


def fnr_of(index: int) -> str:
    """The synthetic fødselsnummer of person ``index`` (distinct for every index)."""
    birth = _FIRST_BIRTH_DATE + dt.timedelta(days=index % _BIRTH_DATES)
    return synthetic_fnr(birth, index // _BIRTH_DATES)


def municipality(index: int) -> dict[str, Any]:
    orgnr = synthetic_orgnr(1000 + index)
    return {"resourceType": "Organization", "active": True, "name": f"Benk kommune {index + 1}",
            "identifier": [{"system": ENH_SYSTEM, "value": orgnr}], "type": [{"text": "Kommune"}]}


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _post(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]}}


def care_plan(patient: str, team: str, goals: list[str], org: str, index: int,
              status: str = "active") -> dict[str, Any]:
    """A CarePlan of about 5 KB (six activities with full descriptions)."""
    start = dt.date(2025, 1, 1) + dt.timedelta(days=index % 365)
    activities = [{"detail": {
        "status": "in-progress", "description": measure + "." + _DETAIL,
        "performer": [{"reference": org}], "goal": [{"reference": goals[i % len(goals)]}],
        "scheduledPeriod": {"start": start.isoformat(),
                            "end": (start + dt.timedelta(days=180)).isoformat()},
    }} for i, measure in enumerate(_MEASURES)]
    return {
        "resourceType": "CarePlan", "status": status, "intent": "plan",
        "category": [{"text": "Individuell plan"}],
        "title": f"Individuell plan {index}",
        "description": "Koordinerte tjenester fra kommune, sykehus, fastlege og NAV.",
        "subject": {"reference": patient},
        "period": {"start": start.isoformat(),
                   "end": (start + dt.timedelta(days=365)).isoformat()},
        "careTeam": [{"reference": team}], "goal": [{"reference": g} for g in goals],
        "activity": activities, "note": [{"text": _NOTE}],
    }


def person_entries(index: int, municipalities: list[str]) -> list[dict[str, Any]]:
    """Transaction entries for person ``index``; ``municipalities`` are Organization refs."""
    org = municipalities[index % len(municipalities)]
    patient, team, plan, consent = _urn(), _urn(), _urn(), _urn()
    goals = [_urn() for _ in range(3)]
    fnr = fnr_of(index)
    entries = [_post(patient, {
        "resourceType": "Patient", "identifier": [{"system": FNR_SYSTEM, "value": fnr}],
        "name": [{"family": f"Benk{index}", "given": ["Testperson"]}],
        "birthDate": (_FIRST_BIRTH_DATE + dt.timedelta(days=index % _BIRTH_DATES)).isoformat(),
    })]
    entries += [_post(goal, {
        "resourceType": "Goal", "lifecycleStatus": "active",
        "description": {"text": f"Delmål {n + 1} for person {index}"},
        "subject": {"reference": patient}, "expressedBy": {"reference": patient},
    }) for n, goal in enumerate(goals)]
    entries.append(_post(team, {
        "resourceType": "CareTeam", "status": "active", "subject": {"reference": patient},
        "participant": [{"role": [{"text": "Koordinator"}], "member": {"reference": org}}],
    }))
    entries.append(_post(consent, {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"text": "Samtykke til individuell plan"}],
        "patient": {"reference": patient}, "policyRule": {"text": "Samtykke"},
        "provision": {"type": "permit", "actor": [{"role": {"text": "Samarbeidspart"},
                                                   "reference": {"reference": org}}]},
    }))
    entries.append(_post(plan, care_plan(patient, team, goals, org, index)))
    entries += [_post(_urn(), {
        "resourceType": "Task", "intent": "order",
        "status": TASK_STATUSES[(index + n) % len(TASK_STATUSES)],
        "code": {"text": "Melding om behov for individuell plan"},
        "focus": {"reference": plan}, "for": {"reference": patient},
        "owner": {"reference": org},
    }) for n in range(3)]
    return entries


def transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def with_ids(entries: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(type, id, resource)`` for each entry, with new ids and every ``urn:uuid``
    reference replaced by ``Type/id`` (what a transaction does before it stores)."""
    ids = {e["fullUrl"]: (e["resource"]["resourceType"], str(uuid.uuid4())) for e in entries}

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: resolve(v) for k, v in node.items()}
            reference = out.get("reference")
            target = ids.get(reference) if isinstance(reference, str) else None
            if target:
                out["reference"] = f"{target[0]}/{target[1]}"
            return out
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return [(*ids[e["fullUrl"]], resolve(e["resource"])) for e in entries]
