"""Test data for the access tests: synthetic people with an individual plan each, built from
the profiles' example plan (``profiles/examples``, Kari's), in different consent states.

Every person ``key`` has ``Patient/key``, ``CareTeam/key`` (the municipality's coordinator,
NAV, the GP on behalf of the municipality), ``Consent/key``, ``Goal/key-goal``,
``Condition/key-condition`` (health information), ``CarePlan/key`` (measures by NAV, by the
person, by the municipality and by the GP; it addresses the condition), ``Task/key-nav``
(a measure NAV owns, about the condition) and ``Task/key-kommune`` (one the municipality
owns). Consent states: ``active`` (NAV sees everything), ``limited`` (NAV sees the plan and
goals only: ``securityLabel`` plan, goal), ``withdrawn`` (the consent was withdrawn).

``notice`` is a person without a plan: the hospital's notification to the municipality, the
discharge document it carries, and a condition nobody but administrators sees.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from api.conftest import synthetic_fnr

from server.access.labels import CONTENT_CLASS_SYSTEM

EXAMPLES = Path(__file__).resolve().parents[2] / "profiles" / "examples"
FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"
ORGS = {"kommune": "300000002", "nav": "300000029", "hospital": "300000010",
        "unrelated": "300000061"}
GP_HPR = "8765432"
STATES = ("active", "limited", "withdrawn")
SEEDS = {"active": 11, "limited": 12, "withdrawn": 13, "notice": 14}
CONDITION_CODE = "http://example.org/test-codes|"


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def fnr(key: str) -> str:
    return synthetic_fnr(SEEDS[key])


def _retarget(node: Any, key: str) -> Any:
    """Every reference to Kari's resources now names ``key``'s."""
    if isinstance(node, dict):
        out = {k: _retarget(v, key) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str):
            out["reference"] = {"Patient/kari": f"Patient/{key}",
                                "CareTeam/kari": f"CareTeam/{key}",
                                "Goal/kari-hovedmal": f"Goal/{key}-goal",
                                "Goal/kari-delmal-arbeid": f"Goal/{key}-goal"}.get(ref, ref)
        return out
    if isinstance(node, list):
        return [_retarget(v, key) for v in node]
    return node


def _without(items: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [i for i in items if text not in json.dumps(i)]


def patient(key: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": key,
            "identifier": [{"system": FNR_SYSTEM, "value": fnr(key)}],
            "name": [{"family": "Testperson", "given": [key.capitalize()]}]}


def care_team(key: str) -> dict[str, Any]:
    team = _retarget(example("CareTeam-kari"), key)
    team["id"] = key
    team["participant"] = _without(team["participant"], "RelatedPerson/anne")
    return team


def consent(key: str, state: str) -> dict[str, Any]:
    c = _retarget(example("Consent-kari"), key)
    c["id"] = key
    nested = _without(c["provision"]["provision"], "RelatedPerson/anne")
    for provision in nested:  # NAV: everything, or (limited) the plan and the goals
        if "Organization/nav" in json.dumps(provision):
            provision.pop("securityLabel", None)
            if state == "limited":
                provision["securityLabel"] = [
                    {"system": CONTENT_CLASS_SYSTEM, "code": "plan"},
                    {"system": CONTENT_CLASS_SYSTEM, "code": "goal"}]
    c["provision"]["provision"] = nested
    return c


def withdrawn(c: dict[str, Any]) -> dict[str, Any]:
    """A consent as the person withdraws it (ip-consent: inactive, withdrawal date)."""
    out = copy.deepcopy(c)
    out["status"] = "inactive"
    out["extension"] = [{"url": "http://planbro.no/fhir/StructureDefinition/"
                                "ip-consent-withdrawal", "valueDateTime": "2026-10-01"}]
    out["provision"]["period"]["end"] = "2026-10-01"
    return out


def goal(key: str) -> dict[str, Any]:
    g = _retarget(example("Goal-kari-hovedmal"), key)
    g["id"] = f"{key}-goal"
    return g


def condition(key: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": f"{key}-condition",
            "code": {"coding": [{"system": "http://example.org/test-codes",
                                 "code": f"cond-{key}"}], "text": "Moderat depresjon"},
            "subject": {"reference": f"Patient/{key}"}}


def plan(key: str) -> dict[str, Any]:
    p = _retarget(example("CarePlan-kari"), key)
    p["id"] = key
    p["activity"] = _without(p["activity"], "RelatedPerson/anne")
    p["addresses"] = [{"reference": f"Condition/{key}-condition"}]
    p["text"] = {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml">Plan for the person</div>'}
    return p


def task(key: str, owner: str) -> dict[str, Any]:
    return {"resourceType": "Task", "id": f"{key}-{owner}", "status": "in-progress",
            "intent": "plan", "description": f"A measure {owner} answers for",
            "for": {"reference": f"Patient/{key}"},
            "focus": {"reference": f"Condition/{key}-condition"},
            "owner": {"reference": f"Organization/{owner}"}}


def person_resources(key: str, state: str) -> list[dict[str, Any]]:
    """The resources of a person with a plan, as first written (the consent still active)."""
    return [patient(key), care_team(key), consent(key, state), goal(key), condition(key),
            plan(key), task(key, "nav"), task(key, "kommune")]


def notice_resources() -> list[dict[str, Any]]:
    key = "notice"
    notification = _retarget(example("Task-melding-kari"), key)
    notification["id"] = "notice-task"
    notification["focus"] = {"reference": "DocumentReference/notice-doc"}
    document = {"resourceType": "DocumentReference", "id": "notice-doc", "status": "current",
                "subject": {"reference": "Patient/notice"},
                "content": [{"attachment": {"contentType": "text/plain",
                                            "title": "Utskrivningsnotat"}}]}
    return [patient(key), document, notification, condition(key)]


def transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction of updates (PUT) keeping the resources' ids."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}


# The resources of the matrix: kind -> (type, id of person ``key``)
KINDS: dict[str, Any] = {
    "Patient": lambda k: ("Patient", k),
    "CarePlan": lambda k: ("CarePlan", k),
    "Goal": lambda k: ("Goal", f"{k}-goal"),
    "Condition": lambda k: ("Condition", f"{k}-condition"),
    "Task-nav": lambda k: ("Task", f"{k}-nav"),
    "Task-kommune": lambda k: ("Task", f"{k}-kommune"),
    "CareTeam": lambda k: ("CareTeam", k),
    "Consent": lambda k: ("Consent", k),
}
NOTICE_KINDS: dict[str, tuple[str, str]] = {
    "Patient": ("Patient", "notice"),
    "Task-notification": ("Task", "notice-task"),
    "DocumentReference": ("DocumentReference", "notice-doc"),
    "Condition": ("Condition", "notice-condition"),
}
