#!/usr/bin/env python3
"""Generate the deliberately broken examples in ``profiles/examples/invalid/``.

Each variant is a valid example from ``profiles/examples/`` with one JSON Patch applied, and the
error it must cause. ``expectations.json`` records, per file: the source example, the profile to
validate against, what is wrong, the issues Planbro's validator must report (FHIRPath
``expression`` and issue ``code``, at least these), and a text the official HAPI FHIR
validator's error must contain. Run ``python scripts/gen_examples.py`` after changing the
variants or the examples; ``--check`` only reports stale files.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "profiles" / "examples"
INVALID = EXAMPLES / "invalid"
SD = "http://planbro.no/fhir/StructureDefinition/"
TASK_CODE = "http://planbro.no/fhir/CodeSystem/task-code"
SIP_RESPONSIBILITY = SD + "sip-responsibility"


@dataclass(frozen=True)
class Variant:
    name: str
    source: str
    profile: str  # profile id
    description: str
    patch: tuple[dict[str, Any], ...]
    expression: str  # where Planbro reports the error
    code: str  # the OperationOutcome issue code
    hapi: str  # a text HAPI's error message contains


def replace(path: str, value: Any) -> dict[str, Any]:
    return {"op": "replace", "path": path, "value": value}


def remove(path: str) -> dict[str, Any]:
    return {"op": "remove", "path": path}


def add(path: str, value: Any) -> dict[str, Any]:
    return {"op": "add", "path": path, "value": value}


V = Variant
VARIANTS: tuple[Variant, ...] = (
    # -- individual plan
    V("careplan-no-careteam", "CarePlan-kari.json", "ip-careplan",
      "An individual plan names its care team (CarePlan.careTeam 1..1)",
      (remove("/careTeam"),), "CarePlan.careTeam", "required", "CarePlan.careTeam"),
    V("careplan-active-without-period", "CarePlan-kari.json", "ip-careplan",
      "An active plan has a plan period (ip-cp-1)",
      (remove("/period"),), "CarePlan", "invariant", "ip-cp-1"),
    V("careplan-measure-without-performer", "CarePlan-kari.json", "ip-careplan",
      "Every measure names who is responsible (activity.detail.performer 1..*)",
      (remove("/activity/0/detail/performer"),), "CarePlan.activity[0].detail.performer",
      "required", "CarePlan.activity.detail.performer"),
    V("careplan-measure-without-schedule", "CarePlan-kari.json", "ip-careplan",
      "Every measure states when and how much (activity.detail.scheduled[x] 1..1)",
      (remove("/activity/0/detail/scheduledTiming"),), "CarePlan.activity[0].detail",
      "required", "CarePlan.activity.detail.scheduled[x]"),
    V("careplan-without-plan-category", "CarePlan-kari.json", "ip-careplan",
      "A plan claiming ip-careplan carries the individuell-plan category",
      (replace("/category", [{"text": "Behandlingsplan"}]),), "CarePlan.category",
      "required", "individualPlan"),
    V("careplan-intent-proposal", "CarePlan-kari.json", "ip-careplan",
      "The intent of an individual plan is 'plan'",
      (replace("/intent", "proposal"),), "CarePlan.intent", "value", "CarePlan.intent"),
    V("careplan-evaluation-date-as-text", "CarePlan-kari.json", "ip-careplan",
      "An evaluation date is a dateTime, not free text",
      (replace("/extension/1", {"url": SD + "ip-evaluation-date", "valueString": "mars 2027"}),),
      "CarePlan.extension[1].valueString", "structure", "ip-evaluation-date"),
    V("careplan-no-responsible-organization", "CarePlan-kari.json", "ip-careplan",
      "An individual plan names the organisation responsible for it",
      (remove("/extension/0"),), "CarePlan.extension", "required", "responsibleOrganization"),
    V("careplan-performer-device", "CarePlan-kari.json", "ip-careplan",
      "A device cannot be responsible for a measure",
      (replace("/activity/0/detail/performer/0", {"reference": "Device/pumpe"}),),
      "CarePlan.activity[0].detail.performer[0].reference", "value", "Device"),
    V("careplan-subject-group", "CarePlan-kari.json", "ip-careplan",
      "An individual plan is for one person, not a group",
      (replace("/subject", {"reference": "Group/familie"}),), "CarePlan.subject.reference",
      "value", "Group"),
    # -- care team
    V("careteam-two-coordinators", "CareTeam-kari.json", "ip-careteam",
      "Exactly one participant is coordinator now (the former one's period has no end)",
      (remove("/participant/2/period/end"),), "CareTeam", "invariant", "ip-ct-1"),
    V("careteam-no-current-coordinator", "CareTeam-kari.json", "ip-careteam",
      "Exactly one participant is coordinator now (the current one's period has ended)",
      (add("/participant/1/period/end", "2026-10-01"),), "CareTeam", "invariant", "ip-ct-1"),
    V("careteam-practitioner-without-organization", "CareTeam-kari.json", "ip-careteam",
      "A practitioner participant names the organisation they act for (ip-ct-2)",
      (remove("/participant/3/onBehalfOf"),), "CareTeam.participant[3]", "invariant",
      "ip-ct-2"),
    V("careteam-without-subject", "CareTeam-kari.json", "ip-careteam",
      "The care team is for the person of the plan",
      (remove("/subject"),), "CareTeam.subject", "required", "CareTeam.subject"),
    # -- consent
    V("consent-rejected-but-permits", "Consent-jonas-avslag.json", "ip-consent",
      "A refused consent denies (ip-con-1)",
      (replace("/provision/type", "permit"),), "Consent", "invariant", "ip-con-1"),
    V("consent-withdrawn-but-active", "Consent-kari-2025.json", "ip-consent",
      "A withdrawn consent is inactive (ip-con-2)",
      (replace("/status", "active"),), "Consent", "invariant", "ip-con-2"),
    V("consent-without-form", "Consent-kari.json", "ip-consent",
      "The consent says whether it was given orally or in writing",
      (remove("/category/2"),), "Consent.category", "required", "form"),
    V("consent-sharing-without-actor", "Consent-kari.json", "ip-consent",
      "Consent to share names who may receive the information (ip-con-5)",
      (remove("/provision/provision/0/actor"),), "Consent.provision", "invariant", "ip-con-5"),
    V("consent-unknown-scope-code", "Consent-kari.json", "ip-consent",
      "The consent scope is a code of the consent-scope code system",
      (replace("/category/0/coding/0/code", "alt"),), "Consent.category[0].coding", "value",
      "consent-scope"),
    # -- notification
    V("task-without-due-date", "Task-melding-kari.json", "ip-notification-task",
      "The notification has a due date (restriction.period.end)",
      (replace("/restriction/period", {"start": "2026-08-20"}),),
      "Task.restriction.period.end", "required", "Task.restriction.period.end"),
    V("task-owner-practitioner", "Task-melding-kari.json", "ip-notification-task",
      "The notification is addressed to an organisation (the coordinating unit)",
      (replace("/owner", {"reference": "Practitioner/siri"}),), "Task.owner.reference",
      "value", "Practitioner"),
    V("task-rejected-without-reason", "Task-melding-kari.json", "ip-notification-task",
      "A rejected notification gives the reason (ip-task-1)",
      (replace("/status", "rejected"),), "Task", "invariant", "ip-task-1"),
    V("task-completed-without-coordinator", "Task-melding-kari-besvart.json",
      "ip-notification-task",
      "The green form names the appointed coordinator (ip-task-2)",
      (remove("/output/0"),), "Task", "invariant", "ip-task-2"),
    V("task-wrong-code", "Task-melding-kari.json", "ip-notification-task",
      "A notification task carries the ip-notification code",
      (replace("/code", {"coding": [{"system": TASK_CODE, "code": "transfer"}]}),),
      "Task.code.coding", "value", "Task.code"),
    V("task-coordinator-not-a-role", "Task-melding-kari-besvart.json", "ip-notification-task",
      "The appointed coordinator is a PractitionerRole (person and organisation)",
      (replace("/output/0/valueReference", {"reference": "Practitioner/siri"}),),
      "Task.output[0].valueReference.reference", "value", "Practitioner"),
    # -- identifiers
    V("patient-bad-fnr-check-digit", "Patient-kari.json", "no-patient",
      "The fødselsnummer's second check digit is wrong",
      (replace("/identifier/0/value", "14838700006"),), "Patient.identifier[0]", "invariant",
      "no-id-1"),
    V("patient-without-national-id", "Patient-kari.json", "no-patient",
      "The person has neither fødselsnummer nor D-number (no-pat-1)",
      (replace("/identifier", [{"system": "http://example.org/mrn", "value": "4711"}]),),
      "Patient", "invariant", "no-pat-1"),
    V("patient-dnr-bad-check-digit", "Patient-jonas.json", "no-patient",
      "The D-number's first check digit is wrong",
      (replace("/identifier/0/value", "54838710071"),), "Patient.identifier[0]", "invariant",
      "no-id-1"),
    V("organization-bad-orgnr", "Organization-kommune.json", "no-organization",
      "The organisation number's check digit is wrong",
      (replace("/identifier/0/value", "300000003"),), "Organization.identifier[0]",
      "invariant", "no-id-1"),
    V("practitioner-bad-hpr", "Practitioner-siri.json", "no-practitioner",
      "An HPR number is 7 to 9 digits",
      (replace("/identifier/0/value", "98765AB"),), "Practitioner.identifier[0]",
      "invariant", "no-id-1"),
    # -- goals
    V("goal-without-expressed-by", "Goal-kari-hovedmal.json", "ip-goal",
      "A goal in an individual plan says whose goal it is",
      (remove("/expressedBy"),), "Goal.expressedBy", "required", "Goal.expressedBy"),
    V("goal-parent-not-a-goal", "Goal-kari-delmal-arbeid.json", "ip-goal",
      "A sub-goal's parent is a Goal",
      (replace("/extension/0/valueReference", {"reference": "CarePlan/kari"}),),
      "Goal.extension[0].valueReference.reference", "value", "CarePlan"),
    # -- SIP
    V("sip-measure-without-follow-up", "CarePlan-rut-sip.json", "sip-careplan",
      "Every SIP measure has a follow-up date",
      (remove("/activity/1/extension"),), "CarePlan.activity[1].extension", "required",
      "CarePlan.activity.extension"),
    V("sip-measure-without-responsible", "CarePlan-rut-sip.json", "sip-careplan",
      "Every SIP measure names who is responsible (Ansvarig)",
      (remove("/activity/1/detail/performer"),), "CarePlan.activity[1].detail.performer",
      "required", "CarePlan.activity.detail.performer"),
    V("sip-unknown-responsibility", "CarePlan-rut-sip.json", "sip-careplan",
      "The principal responsible for a measure is kommun, region or annan",
      (add("/activity/0/extension/-", {
          "url": SIP_RESPONSIBILITY,
          "valueCodeableConcept": {"coding": [{
              "system": "http://planbro.no/fhir/CodeSystem/sip-responsibility",
              "code": "landsting"}]}}),),
      "CarePlan.activity[0].extension[1].valueCodeableConcept.coding", "value",
      "sip-responsibility"),
    V("careplan-unknown-content-class", "CarePlan-kari.json", "ip-careplan",
      "A measure's content class is plan, goal, measure or health",
      (replace("/activity/2/extension/0/valueCodeableConcept/coding/0/code", "hemmelig"),),
      "CarePlan.activity[2].extension[0].valueCodeableConcept.coding", "value",
      "content-class"),
    # -- a profile the server does not know
    V("unknown-profile", "CarePlan-kari.json", "ip-careplan-unknown",
      "A resource claiming a profile the server does not know is refused",
      (replace("/meta/profile", [SD + "ip-careplan-unknown"]),), "CarePlan.meta.profile",
      "not-supported", "ip-careplan-unknown"),
)


def build() -> dict[str, Any]:
    """Every generated file by name, with ``expectations.json``."""
    out: dict[str, Any] = {}
    expectations: dict[str, Any] = {}
    for v in VARIANTS:
        source = json.loads((EXAMPLES / v.source).read_text(encoding="utf-8"))
        broken = jsonpatch.apply_patch(copy.deepcopy(source), list(v.patch))
        broken["id"] = v.name
        name = f"{v.name}.json"
        out[name] = broken
        expectations[name] = {
            "source": v.source, "profile": SD + v.profile, "description": v.description,
            "expect": [{"expression": v.expression, "code": v.code}], "hapi": v.hapi,
        }
    out["expectations.json"] = expectations
    return out


def render(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="report stale files, write nothing")
    args = ap.parse_args()
    files = build()
    stale = sorted(n for n, d in files.items()
                   if not (INVALID / n).exists() or (INVALID / n).read_text() != render(d))
    extra = sorted(p.name for p in INVALID.glob("*.json") if p.name not in files)
    if args.check:
        for name in stale + extra:
            print(f"stale: profiles/examples/invalid/{name}")
        return 1 if stale or extra else 0
    INVALID.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (INVALID / name).write_text(render(files[name]))
    for name in extra:
        (INVALID / name).unlink()
    print(f"{len(files) - 1} broken variants, {len(stale)} written -> {INVALID}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
