"""Synthetic people with individual plans, as FHIR transaction entries.

Every person's plan follows Kari's individual plan in ``profiles/examples`` (so each write is
checked against our profiles, as in production): a Patient with a synthetic fødselsnummer, an
active individual plan of about 5 KB, a CareTeam with a coordinator, three Goals, a Consent
and three notification Tasks owned by one of a few municipalities, with statuses that rotate
so that every (owner, status) pair has about the same number of tasks, due four weeks after
the run (none is overdue: the server's reminder scan has nothing to send, as on most days,
instead of a reminder for every task competing with the measured requests). The
organisations and personnel the plans name are the demo's (loaded first).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from server.demo import examples
from server.plans.identifiers import (
    ENH_SYSTEM,
    FNR_SYSTEM,
    synthetic_fnr,
    synthetic_orgnr,
)

RESOURCES_PER_PERSON = 10
TASK_STATUSES = ("requested", "received", "accepted", "in-progress")
_FIRST_BIRTH_DATE = dt.date(1940, 1, 1)
_BIRTH_DATES = 20_000  # 1940 to 1994; then the next individual number on the same dates

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


def _template(type_: str, id_: str) -> dict[str, Any]:
    found = next(r for r in examples() if r["resourceType"] == type_ and r["id"] == id_)
    return {k: v for k, v in found.items() if k != "id"}


# Kari's individual plan from profiles/examples is the pattern of every person's plan.
_PATIENT = _template("Patient", "kari")
_GOALS = (_template("Goal", "kari-hovedmal"), _template("Goal", "kari-delmal-arbeid"),
          _template("Goal", "kari-delmal-arbeid"))
_CARE_TEAM = _template("CareTeam", "kari")
_CONSENT = _template("Consent", "kari")
_PLAN = _template("CarePlan", "kari")
_TASK = {**_template("Task", "melding-kari"), "restriction": {"period": {
    "end": (dt.date.today() + dt.timedelta(weeks=4)).isoformat()}}}


def _rewire(node: Any, refs: dict[str, str]) -> Any:
    """A copy of ``node`` with the references in ``refs`` pointing elsewhere."""
    if isinstance(node, dict):
        out = {k: _rewire(v, refs) for k, v in node.items()}
        if isinstance(out.get("reference"), str) and out["reference"] in refs:
            out["reference"] = refs[out["reference"]]
            out.pop("display", None)
        return out
    if isinstance(node, list):
        return [_rewire(v, refs) for v in node]
    return node


def care_plan(patient: str, team: str, goals: list[str], org: str, index: int,
              status: str = "active") -> dict[str, Any]:
    """A Norwegian individual plan (ip-careplan) of about 5 KB: Kari's plan for another
    person, with the plan's notes written out."""
    plan = _rewire(_PLAN, {"Patient/kari": patient, "CareTeam/kari": team,
                           "Goal/kari-hovedmal": goals[0], "Goal/kari-delmal-arbeid": goals[1]})
    plan["status"] = status
    plan["title"] = f"Individuell plan {index}"
    plan["note"] = [*plan.get("note", []), {"text": _NOTE}, {"text": _DETAIL.strip()}]
    return plan


def person_entries(index: int, municipalities: list[str]) -> list[dict[str, Any]]:
    """Transaction entries for person ``index``: Patient, three Goals (one main goal, two
    sub-goals), CareTeam, Consent, an active individual plan, and three notification Tasks
    owned by one of ``municipalities`` (Organization refs) with rotating statuses."""
    org = municipalities[index % len(municipalities)]
    patient, team, plan, consent = _urn(), _urn(), _urn(), _urn()
    goals = [_urn() for _ in range(3)]
    refs = {"Patient/kari": patient, "CareTeam/kari": team, "CarePlan/kari": plan,
            "Goal/kari-hovedmal": goals[0], "Goal/kari-delmal-arbeid": goals[0]}
    person = {**_PATIENT, "identifier": [{"system": FNR_SYSTEM, "value": fnr_of(index)}],
              "name": [{"family": f"Benk{index}", "given": ["Testperson"]}],
              "birthDate": (_FIRST_BIRTH_DATE + dt.timedelta(days=index % _BIRTH_DATES)
                            ).isoformat()}
    entries = [_post(patient, person)]
    entries += [_post(goal, _rewire(template, refs))
                for goal, template in zip(goals, _GOALS, strict=True)]
    entries.append(_post(team, _rewire(_CARE_TEAM, refs)))
    entries.append(_post(consent, _rewire(_CONSENT, refs)))
    entries.append(_post(plan, care_plan(patient, team, goals, org, index)))
    entries += [_post(_urn(), {
        **_rewire(_TASK, {**refs, "Organization/kommune": org}),
        "status": TASK_STATUSES[(index + n) % len(TASK_STATUSES)],
        "focus": {"reference": plan}}) for n in range(3)]
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
