"""Plan rules the generic profile validator cannot express well in FHIRPath, and the rules
that need other resources.

Importing this module registers, under the invariant keys of ``profiles/``:

* ``no-id-1``: Norwegian identifiers (fødselsnummer, D-number, HPR, organisation number,
  RESH, HER) are valid for their system, by :func:`identifier_problems`;
* ``ip-ct-1``: exactly one care-team participant is coordinator now (role *koordinator*,
  participant period covering the current instant, partial dates taken as their whole span);
* ``ip-cp-1``: an active plan has a plan period with a start.

:func:`activation_problems` checks what an active individual plan needs from other resources:
the person identified by fødselsnummer or D-number, the person's consent to making the plan in
force, and a care team with one current coordinator. A SIP is not held to these: its consent
is documented in each party's own record system, and ``$completeness`` reports what the plan
itself lacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from server.fhir.conformance import register_invariant
from server.fhir.outcome import Issue, issue
from server.fhir.search.normalize import parse_reference, period_range

from .identifiers import DNR_SYSTEM, FNR_SYSTEM, identifier_problems

CANON = "http://planbro.no/fhir"
PARTICIPANT_ROLE = f"{CANON}/CodeSystem/participant-role"
PLAN_CATEGORY = f"{CANON}/CodeSystem/plan-category"
CONSENT_SCOPE = f"{CANON}/CodeSystem/consent-scope"
COORDINATOR = "koordinator"
INDIVIDUAL_PLAN = "individuell-plan"
SIP = "sip"

Lookup = Callable[[str, dict[str, str]], list[dict[str, Any]]]
"""A FHIR search the caller runs for us: ``lookup("Consent", {"patient": "Patient/1"})``
returns the matching resources (a read is ``{"_id": "1"}``)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def has_coding(concept: Any, system: str, code: str) -> bool:
    """Whether a CodeableConcept has the coding ``system|code``."""
    if not isinstance(concept, Mapping):
        return False
    return any(isinstance(c, Mapping) and c.get("system") == system and c.get("code") == code
               for c in concept.get("coding", []))


def covers(period: Any, at_ms: int) -> bool:
    """Whether a FHIR Period (None: always) covers the instant ``at_ms``."""
    if not isinstance(period, dict):
        return True
    try:
        lo, hi = period_range(period.get("start"), period.get("end"))
    except (ValueError, TypeError):
        return False
    return lo <= at_ms <= hi


def current_coordinators(care_team: Mapping[str, Any], at_ms: int | None = None) -> list[Any]:
    """The participants of ``care_team`` with role *koordinator* whose period covers now."""
    at = _now_ms() if at_ms is None else at_ms
    return [p for p in care_team.get("participant", [])
            if isinstance(p, dict)
            and any(has_coding(r, PARTICIPANT_ROLE, COORDINATOR) for r in p.get("role", []))
            and covers(p.get("period"), at)]


@register_invariant("no-id-1")
def valid_identifier(identifier: Any) -> str | None:
    if not isinstance(identifier, dict):
        return None
    return identifier_problems(identifier.get("system"), identifier.get("value"))


@register_invariant("ip-ct-1")
def one_current_coordinator(care_team: Any) -> str | None:
    count = len(current_coordinators(care_team)) if isinstance(care_team, dict) else 0
    if count == 1:
        return None
    return "no participant is coordinator now" if count == 0 else \
        f"{count} participants are coordinator now"


@register_invariant("ip-cp-1")
def period_when_active(plan: Any) -> str | None:
    if not isinstance(plan, dict) or plan.get("status") != "active":
        return None
    period = plan.get("period")
    if isinstance(period, dict) and period.get("start"):
        return None
    return "the plan is active but has no period start"


def plan_kind(plan: Mapping[str, Any]) -> str | None:
    """``individuell-plan``, ``sip`` or None, from the plan's category."""
    for kind in (INDIVIDUAL_PLAN, SIP):
        if any(has_coding(c, PLAN_CATEGORY, kind) for c in plan.get("category", [])):
            return kind
    return None


def ref_id(reference: Any, type_: str) -> str | None:
    """The id of ``reference`` (a FHIR Reference) when it is a literal ``type_`` reference."""
    if not isinstance(reference, Mapping) or not isinstance(reference.get("reference"), str):
        return None
    parts = parse_reference(reference["reference"])
    if parts is None or parts.target_type != type_:
        return None
    return parts.target_id


def consent_in_force(consent: Mapping[str, Any], scope: str, at_ms: int | None = None) -> bool:
    """An active consent of ``scope`` (consent-scope code) that permits and covers now."""
    at = _now_ms() if at_ms is None else at_ms
    provision = consent.get("provision") if isinstance(consent.get("provision"), dict) else {}
    return (consent.get("status") == "active"
            and any(has_coding(c, CONSENT_SCOPE, scope) for c in consent.get("category", []))
            and provision.get("type") == "permit"
            and covers(provision.get("period"), at))


def activation_problems(plan: Mapping[str, Any], lookup: Lookup) -> list[Issue]:
    """What keeps ``plan`` from being active, judged from the resources it depends on.

    Empty unless the plan is an active individual plan. ``lookup`` reads the person, the
    person's consents and the plan's care team."""
    if plan.get("status") != "active" or plan_kind(plan) != INDIVIDUAL_PLAN:
        return []
    patient_id = ref_id(plan.get("subject"), "Patient")
    if patient_id is None:
        return [issue("An active individual plan needs a subject that references a Patient",
                      code="required", expression="CarePlan.subject")]
    problems = _identity_problems(patient_id, lookup)
    consents = lookup("Consent", {"patient": f"Patient/{patient_id}"})
    if not any(consent_in_force(c, "plan-making") for c in consents):
        problems.append(issue(
            "The plan cannot be active without the person's consent to making it: no active "
            "Consent with category plan-making that permits and covers today",
            code="business-rule", expression="CarePlan.status"))
    return problems + _coordinator_problems(plan, lookup)


def _identity_problems(patient_id: str, lookup: Lookup) -> list[Issue]:
    found = lookup("Patient", {"_id": patient_id})
    if not found:
        return [issue(f"Patient/{patient_id} is not known", code="not-found",
                      expression="CarePlan.subject")]
    identifiers = [i for i in found[0].get("identifier", []) if isinstance(i, dict)
                   and i.get("system") in (FNR_SYSTEM, DNR_SYSTEM)]
    if not identifiers:
        return [issue("The person of an individual plan must be identified by fødselsnummer or "
                      "D-number", code="business-rule", expression="CarePlan.subject")]
    bad = [p for i in identifiers if (p := identifier_problems(i["system"], i.get("value")))]
    if len(bad) == len(identifiers):
        return [issue(f"The person's identifier is not valid: {bad[0]}", code="business-rule",
                      expression="CarePlan.subject")]
    return []


def _coordinator_problems(plan: Mapping[str, Any], lookup: Lookup) -> list[Issue]:
    teams = [t for t in plan.get("careTeam", []) if ref_id(t, "CareTeam")]
    if not teams:
        return [issue("An active individual plan needs its care team (CarePlan.careTeam)",
                      code="required", expression="CarePlan.careTeam")]
    team_id = ref_id(teams[0], "CareTeam")
    found = lookup("CareTeam", {"_id": str(team_id)})
    if not found:
        return [issue(f"CareTeam/{team_id} is not known", code="not-found",
                      expression="CarePlan.careTeam[0]")]
    problem = one_current_coordinator(found[0])
    if problem:
        return [issue(f"An active individual plan needs exactly one current coordinator: "
                      f"{problem}", code="business-rule", expression="CarePlan.careTeam[0]")]
    return []
