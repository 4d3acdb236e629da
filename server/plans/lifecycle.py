"""One person, one plan: identity, the one-open-plan rule and the plan's life.

* **One Patient per person.** A Patient holds the unique key of each national identifier it
  carries (fødselsnummer, D-number, Swedish personnummer), so the same person cannot be
  registered twice: a second create is 409 naming the existing Patient, and a conditional
  create (``If-None-Exist: identifier=...``) finds it.
* **One open plan per person and kind.** An individual plan or SIP that is open (draft,
  active, on-hold) holds the key ``open-plan:<kind>:Patient/<id>``; the store enforces it on
  every engine, so of two organisations creating a plan at the same moment only one succeeds.
  The other gets 409 naming the existing plan (with ``If-None-Exist`` matching the open plan,
  that plan is returned).
* **Lifecycle.** A plan is created draft or active. draft -> active (the activation rules of
  :mod:`server.plans.rules` apply); active <-> on-hold; an open plan may go back to draft for
  revision; -> completed needs the reason (``ip-status-reason``, a completion code) and the
  end date (``period.end``); -> revoked needs a consent reason and, for an individual plan,
  that no consent to making it is in force. Completed, revoked and entered-in-error plans are
  closed: they never reopen. The person and the kind of a plan never change. An open plan is
  not deleted (it is ended instead).
* **Consent withdrawn -> plan revoked.** When the person's last consent to making the plan
  stops being in force (withdrawn) or the person refuses, the person's open plans are revoked
  in the same unit of work, with reason and end date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..fhir.outcome import FhirError, Issue, issue
from ..fhir.service import FhirService, RequestContext, WriteContext
from ..store.port import Version, format_instant
from .identifiers import PERSON_SYSTEMS
from .invariants import INDIVIDUAL_PLAN, consent_in_force, plan_kind
from .support import (
    EXT_STATUS_REASON,
    EXT_WITHDRAWAL,
    STATUS_REASON,
    as_server,
    codes,
    extensions,
    now_ms,
    ref_id,
    replace_extensions,
    with_keys,
)

OPEN = ("draft", "active", "on-hold")
CLOSED = ("completed", "revoked", "entered-in-error")
COMPLETION_REASONS = ("periode-utlopt", "ikke-behov", "brukers-onske")
REVOCATION_REASONS = ("samtykke-trukket", "samtykke-avslatt")
_KIND_TEXT = {INDIVIDUAL_PLAN: "individual plan", "sip": "SIP"}
_PERSON_KEY = "person:"
_PLAN_KEY = "open-plan:"

# status before -> statuses it may become (None: a new plan).
TRANSITIONS: dict[str | None, tuple[str, ...]] = {
    None: ("draft", "active"),
    "draft": ("draft", "active", "completed", "revoked", "entered-in-error"),
    "active": ("active", "on-hold", "draft", "completed", "revoked", "entered-in-error"),
    "on-hold": ("on-hold", "active", "draft", "completed", "revoked", "entered-in-error"),
    "completed": ("completed",),
    "revoked": ("revoked",),
    "entered-in-error": ("entered-in-error",),
}


def install(service: FhirService) -> None:
    service.before_write.append(lambda w: _person_keys(service, w))
    service.before_write.append(lambda w: check_plan_write(service, w))
    service.after_write.append(lambda w, v: _consent_changed(service, w, v))


# -- one Patient per person -------------------------------------------------------------------


def person_keys(patient: Mapping[str, Any]) -> list[str]:
    return [f"{_PERSON_KEY}{i['system']}|{i['value']}" for i in patient.get("identifier", [])
            if isinstance(i, Mapping) and i.get("system") in PERSON_SYSTEMS and i.get("value")]


def _person_keys(service: FhirService, write: WriteContext) -> None:
    if write.type != "Patient" or write.resource is None:
        return
    keys = person_keys(write.resource)
    for key in keys:
        identifier = key.removeprefix(_PERSON_KEY)
        found = [p for p in service.lookup(write.uow, "Patient", {"identifier": identifier})
                 if p["id"] != write.id]
        if found:
            known = str(found[0]["id"])
            named = (f" as Patient/{known}" if _visible(service, write.ctx, "Patient", known)
                     else "")
            raise FhirError.of(409, f"The person with identifier {identifier} is already "
                               f"registered{named}; a person is one Patient (use a "
                               "conditional create to find it)",
                               code="duplicate", expression="Patient.identifier")
    write.keys = with_keys(write.keys, _PERSON_KEY, keys)


# -- the plan ---------------------------------------------------------------------------------


def open_plans(service: FhirService, reader: Any, patient_id: str,
               kind: str | None = None) -> list[dict[str, Any]]:
    """The person's open individual plans and SIPs (of ``kind`` only, when given)."""
    found = service.lookup(reader, "CarePlan", {"subject": f"Patient/{patient_id}",
                                                "status": ",".join(OPEN)})
    return [p for p in found if plan_kind(p) is not None
            and (kind is None or plan_kind(p) == kind)]


def plan_key(kind: str, patient_id: str) -> str:
    return f"{_PLAN_KEY}{kind}:Patient/{patient_id}"


def check_plan_write(service: FhirService, write: WriteContext) -> None:
    """The one-open-plan key and the lifecycle rules for a write of an individual plan/SIP."""
    if write.type != "CarePlan":
        return
    previous = write.previous.resource if write.previous is not None else None
    if write.resource is None:
        if previous is not None and plan_kind(previous) and previous.get("status") in OPEN:
            raise FhirError.of(409, f"CarePlan/{write.id} is an open {_kind(previous)}; end it "
                               "(completed, revoked or entered-in-error) instead of deleting it",
                               code="business-rule")
        return
    plan = write.resource
    kind = plan_kind(plan)
    if kind is None:
        if previous is not None and plan_kind(previous):
            raise _refuse("The category of an individual plan or SIP cannot be removed",
                          "CarePlan.category")
        return
    problems = transition_problems(service, write.uow, previous, plan)
    if problems:
        raise FhirError(422, problems)
    patient_id = ref_id(plan.get("subject"), "Patient")
    mine: list[str] = []
    if patient_id and plan.get("status") in OPEN:
        _check_no_other_open_plan(service, write, kind, patient_id)
        mine.append(plan_key(kind, patient_id))
    write.keys = with_keys(write.keys, _PLAN_KEY, mine)


def _check_no_other_open_plan(service: FhirService, write: WriteContext, kind: str,
                              patient_id: str) -> None:
    """The person's open plan of ``kind`` holds the key (the store keeps it unique; this
    names the plan that holds it)."""
    holder = write.uow.key_holder(plan_key(kind, patient_id))
    if holder is None or holder == ("CarePlan", write.id):
        return
    other_id = holder[1]
    other = write.uow.read("CarePlan", other_id)
    status = other.resource.get("status") if other is not None and other.resource else None
    named = (f"CarePlan/{other_id} ({status})"
             if _visible(service, write.ctx, "CarePlan", other_id) else "one")
    raise FhirError.of(
        409, f"Patient/{patient_id} already has an open {_KIND_TEXT[kind]}: {named}. A "
        "person has one plan; add to that plan instead", code="duplicate",
        expression="CarePlan.subject")


def _visible(service: FhirService, ctx: RequestContext, type_: str, id_: str) -> bool:
    """Whether the caller may read ``type_/id_`` (a conflict names only what it may see)."""
    try:
        service.read(ctx, type_, id_)
    except FhirError:
        return False
    return True


def transition_problems(service: FhirService, reader: Any, previous: Mapping[str, Any] | None,
                        plan: Mapping[str, Any]) -> list[Issue]:
    """Why ``previous`` may not become ``plan`` (empty: it may)."""
    before = previous.get("status") if previous is not None else None
    after = str(plan.get("status"))
    if previous is not None:
        if previous.get("subject", {}).get("reference") != plan.get("subject", {}).get(
                "reference"):
            return [issue("A plan belongs to one person: its subject cannot change",
                          code="business-rule", expression="CarePlan.subject")]
        if plan_kind(previous) != plan_kind(plan):
            return [issue("A plan cannot change between individual plan and SIP",
                          code="business-rule", expression="CarePlan.category")]
    allowed = TRANSITIONS.get(before, ())
    if after not in allowed:
        where = "a new plan" if before is None else f"a {before} plan"
        return [issue(f"{where.capitalize()} cannot become {after}; allowed: "
                      f"{', '.join(allowed) or 'no change'}"
                      + (". A closed plan never reopens: start a new plan" if before in CLOSED
                         else ""), code="business-rule", expression="CarePlan.status")]
    if after == before:
        return []
    if after == "completed":
        return _ending_problems(plan, COMPLETION_REASONS, "completed")
    if after == "revoked":
        problems = _ending_problems(plan, REVOCATION_REASONS, "revoked")
        return problems + _consent_still_given(service, reader, plan)
    return []


def _ending_problems(plan: Mapping[str, Any], reasons: tuple[str, ...],
                     status: str) -> list[Issue]:
    problems = []
    found = [code for ext in extensions(plan, EXT_STATUS_REASON)
             for code in codes(ext.get("valueCodeableConcept"), STATUS_REASON)]
    if not any(code in reasons for code in found):
        problems.append(issue(
            f"A {status} plan needs its reason: extension ip-status-reason with a "
            f"plan-status-reason code ({', '.join(reasons)})", code="required",
            expression="CarePlan.extension"))
    period = plan.get("period")
    if not isinstance(period, Mapping) or not period.get("end"):
        problems.append(issue(f"A {status} plan needs the date it ended (period.end)",
                              code="required", expression="CarePlan.period.end"))
    return problems


def _consent_still_given(service: FhirService, reader: Any,
                         plan: Mapping[str, Any]) -> list[Issue]:
    patient_id = ref_id(plan.get("subject"), "Patient")
    if plan_kind(plan) != INDIVIDUAL_PLAN or patient_id is None:
        return []
    if any(consent_in_force(c, "plan-making")
           for c in service.lookup(reader, "Consent", {"patient": f"Patient/{patient_id}"})):
        return [issue("The person's consent to the plan is in force: a plan is revoked when "
                      "the consent is withdrawn (withdraw the Consent), or completed",
                      code="business-rule", expression="CarePlan.status")]
    return []


def _refuse(text: str, expression: str) -> FhirError:
    return FhirError.of(422, text, code="business-rule", expression=expression)


def _kind(plan: Mapping[str, Any]) -> str:
    return _KIND_TEXT.get(plan_kind(plan) or "", "plan")


# -- consent withdrawn or refused -------------------------------------------------------------


def _consent_changed(service: FhirService, write: WriteContext, version: Version) -> None:
    if write.type != "Consent":
        return
    before = write.previous.resource if write.previous is not None else None
    after = version.resource
    consent = after or before or {}
    patient_id = ref_id(consent.get("patient"), "Patient")
    if patient_id is None:
        return
    withdrawn = (before is not None and consent_in_force(before, "plan-making")
                 and (after is None or not consent_in_force(after, "plan-making")))
    refused = after is not None and after.get("status") == "rejected" and (
        before is None or before.get("status") != "rejected")
    if not (withdrawn or refused):
        return
    consents = service.lookup(write.uow, "Consent", {"patient": f"Patient/{patient_id}"})
    if any(consent_in_force(c, "plan-making") for c in consents):
        return
    reason = "samtykke-trukket" if withdrawn else "samtykke-avslatt"
    ended = _withdrawal_date(after) or format_instant(now_ms())
    for plan in open_plans(service, write.uow, patient_id):
        revoke(service, write.ctx, write.uow, plan, reason, ended)


def _withdrawal_date(consent: Mapping[str, Any] | None) -> str | None:
    for ext in extensions(consent or {}, EXT_WITHDRAWAL):
        if ext.get("valueDateTime"):
            return str(ext["valueDateTime"])
    return None


def revoke(service: FhirService, ctx: RequestContext, uow: Any, plan: Mapping[str, Any],
           reason: str, ended: str) -> None:
    """Revoke an open plan (a new version: status, reason and end date)."""
    revoked = dict(plan)
    revoked["status"] = "revoked"
    replace_extensions(revoked, EXT_STATUS_REASON, [{
        "url": EXT_STATUS_REASON,
        "valueCodeableConcept": {"coding": [{"system": STATUS_REASON, "code": reason}]}}])
    revoked["period"] = {**(plan.get("period") or {}), "end": ended}
    version = int(plan["meta"]["versionId"])
    service.update_in(uow, as_server(ctx), "CarePlan", str(plan["id"]), revoked,
                      if_match=version)
