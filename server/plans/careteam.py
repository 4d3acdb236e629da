"""The plan's care team: the coordinator and who takes part.

* Exactly one current coordinator. A change ends the old coordinator's participation
  (``period.end``) and starts the new one's on the same CareTeam, so its history shows every
  coordinator; the team of an active or on-hold individual plan can never be written without
  exactly one current coordinator.
* ``POST CarePlan/{id}/$change-coordinator`` (``Parameters``: ``coordinator`` a
  PractitionerRole reference, optional ``date`` it takes effect, optional ``proposal`` the
  Task proposing it) changes the coordinator; only the responsible organisation may.
* The person proposes a coordinator with a Communication about the plan whose ``topic`` is
  ``task-code#coordinator-change`` (optionally naming the PractitionerRole in
  ``payload.contentReference``): it becomes a ``coordinator-change`` Task for the responsible
  organisation, which ``$change-coordinator`` with ``proposal`` completes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..fhir.outcome import FhirError
from ..fhir.service import FhirService, RequestContext, Result, WriteContext
from ..store.port import UnitOfWork, Version, format_instant
from .invariants import (
    COORDINATOR,
    INDIVIDUAL_PLAN,
    PARTICIPANT_ROLE,
    covers,
    has_coding,
    plan_kind,
)
from .lifecycle import OPEN
from .support import (
    TASK_CODE,
    TASK_OUTPUT,
    as_server,
    check_visible,
    coding,
    end_ms,
    now_ms,
    parameters,
    read_current,
    ref_id,
    ref_text,
    reference,
    require_acting_for,
    responsible_organization,
    single,
    start_ms,
    task_code,
)

COORDINATING_UNIT = "koordinerende-enhet"
CHANGE = "coordinator-change"


def install(service: FhirService) -> None:
    service.before_write.append(lambda w: _check_team(service, w))
    service.after_write.append(lambda w, v: _proposal(service, w, v))
    service.operations[("CarePlan", "change-coordinator")] = (
        lambda ctx, id_, body: change_coordinator_operation(service, ctx, id_, body))


# -- the team as data -------------------------------------------------------------------------


def _is_coordinator(participant: Mapping[str, Any]) -> bool:
    return any(has_coding(r, PARTICIPANT_ROLE, COORDINATOR) for r in participant.get("role", []))


def _current(participant: Mapping[str, Any], at_ms: int) -> bool:
    return covers(participant.get("period"), at_ms)


def _role(code: str) -> dict[str, Any]:
    return coding(PARTICIPANT_ROLE, code)


def appoint(team: Mapping[str, Any], member: Mapping[str, Any], at_ms: int,
            on_behalf_of: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``team`` with ``member`` the coordinator from ``at_ms``: every other coordinator whose
    participation has not ended by then ends just before it. Unchanged when ``member`` is
    already coordinator then (or appointed from a later date)."""
    wanted = ref_text(member)
    participants = list(team.get("participant", []))
    if any(_is_coordinator(p) and ref_text(p.get("member")) == wanted
           and _current_or_later(p, at_ms) for p in participants):
        return dict(team)
    ended = [{**p, "period": {**(p.get("period") or {}), "end": format_instant(at_ms - 1)}}
             if _is_coordinator(p) and _current_or_later(p, at_ms) else p
             for p in participants]
    new: dict[str, Any] = {"role": [_role(COORDINATOR)], "member": dict(member),
                           "period": {"start": format_instant(at_ms)}}
    if on_behalf_of:
        new["onBehalfOf"] = dict(on_behalf_of)
    return {**team, "participant": [*ended, new]}


def _current_or_later(participant: Mapping[str, Any], at_ms: int) -> bool:
    period = participant.get("period") or {}
    end = period.get("end")
    if not end:
        return True
    try:
        return at_ms <= end_ms(str(end))
    except (ValueError, TypeError):
        return False


def add_participant(team: Mapping[str, Any], member: Mapping[str, Any], role: str,
                    at_ms: int) -> dict[str, Any]:
    """``team`` with ``member`` taking part in ``role`` from ``at_ms`` (unchanged if it
    already does)."""
    wanted = ref_text(member)
    for p in team.get("participant", []):
        if (ref_text(p.get("member")) == wanted and _current(p, at_ms)
                and any(has_coding(r, PARTICIPANT_ROLE, role) for r in p.get("role", []))):
            return dict(team)
    return {**team, "participant": [*team.get("participant", []),
                                    {"role": [_role(role)], "member": dict(member),
                                     "period": {"start": format_instant(at_ms)}}]}


def end_participation(team: Mapping[str, Any], org_id: str, at_ms: int, *,
                      since_ms: int | None = None) -> dict[str, Any]:
    """``team`` with every current participation of ``Organization/org_id`` - as member or
    on its behalf - ended just before ``at_ms`` (with ``since_ms``: only those that began
    then or later)."""
    wanted = f"Organization/{org_id}"
    participants = []
    for p in team.get("participant", []):
        if (wanted in (ref_text(p.get("member")), ref_text(p.get("onBehalfOf")))
                and _current_or_later(p, at_ms) and _began_since(p, since_ms)):
            p = {**p, "period": {**(p.get("period") or {}), "end": format_instant(at_ms - 1)}}
        participants.append(p)
    return {**team, "participant": participants}


def _began_since(participant: Mapping[str, Any], since_ms: int | None) -> bool:
    if since_ms is None:
        return True
    start = (participant.get("period") or {}).get("start")
    try:
        return bool(start) and start_ms(str(start), "CareTeam.participant.period") >= since_ms
    except FhirError:
        return False


def takes_part(team: Mapping[str, Any], org_id: str, at_ms: int) -> bool:
    """Whether ``Organization/org_id`` takes part now (as member or on whose behalf)."""
    wanted = f"Organization/{org_id}"
    return any(wanted in (ref_text(p.get("member")), ref_text(p.get("onBehalfOf")))
               and _current(p, at_ms) for p in team.get("participant", []))


def merge_participants(team: Mapping[str, Any],
                       extra: list[Mapping[str, Any]]) -> dict[str, Any]:
    """``team`` plus the participants of ``extra`` it does not have yet (same member and
    roles)."""
    def signature(p: Mapping[str, Any]) -> tuple[Any, ...]:
        roles = sorted(f"{c.get('system')}|{c.get('code')}" for r in p.get("role", [])
                       for c in r.get("coding", []))
        return ref_text(p.get("member")), tuple(roles)

    have = {signature(p) for p in team.get("participant", [])}
    added = [dict(p) for p in extra if signature(p) not in have]
    return {**team, "participant": [*team.get("participant", []), *added]}


# -- rules ------------------------------------------------------------------------------------


def _check_team(service: FhirService, write: WriteContext) -> None:
    """The team of an open, active individual plan keeps exactly one current coordinator."""
    if write.type != "CareTeam" or write.previous is None:
        return
    plans = service.lookup(write.uow, "CarePlan", {"care-team": f"CareTeam/{write.id}",
                                                   "status": "active,on-hold"})
    if not any(plan_kind(p) == INDIVIDUAL_PLAN for p in plans):
        return
    if write.resource is None:
        raise FhirError.of(409, f"CareTeam/{write.id} is the team of an active individual plan "
                           "and cannot be deleted", code="business-rule")
    at = now_ms()
    count = sum(1 for p in write.resource.get("participant", [])
                if _is_coordinator(p) and _current(p, at))
    if count != 1:
        raise FhirError.of(422, f"The team of an active individual plan needs exactly one "
                           f"current coordinator, not {count}; change the coordinator with "
                           "CarePlan/$change-coordinator", code="business-rule",
                           expression="CareTeam.participant")


def plan_team(plan: Mapping[str, Any]) -> str | None:
    for ref in plan.get("careTeam", []):
        found = ref_id(ref, "CareTeam")
        if found:
            return found
    return None


def update_team(service: FhirService, ctx: RequestContext, uow: UnitOfWork,
                team: dict[str, Any]) -> Version | None:
    """Store ``team`` as a new version if it differs from the current one."""
    current = uow.read("CareTeam", str(team["id"]))
    if current is not None and current.resource is not None and _same(current.resource, team):
        return current
    version = int(team["meta"]["versionId"]) if team.get("meta", {}).get("versionId") else None
    written = service.update_in(uow, ctx, "CareTeam", str(team["id"]), team, if_match=version)
    return written.version


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    strip = ("meta",)
    return ({k: v for k, v in a.items() if k not in strip}
            == {k: v for k, v in b.items() if k not in strip})


# -- $change-coordinator ----------------------------------------------------------------------


def change_coordinator_operation(service: FhirService, ctx: RequestContext, plan_id: str,
                                 body: Any) -> Result:
    params = parameters(body, "change-coordinator")
    member = single(params, "coordinator", "valueReference", "change-coordinator",
                    required=True)
    when = params.get("date", [{}])[0]
    proposal = single(params, "proposal", "valueReference", "change-coordinator")
    service.guard.check(ctx, "update", "CareTeam")
    check_visible(service, ctx, "CarePlan", plan_id)
    with service.unit_of_work(ctx) as uow:
        plan = read_current(uow, "CarePlan", plan_id, "CarePlan")
        _require_open(plan)
        require_acting_for(service, uow, ctx, responsible_organization(plan),
                           "change the coordinator of this plan")
        at = _effective(when)
        role = _coordinator_role(uow, member)
        team = _team_of(uow, plan)
        updated = appoint(team, reference("PractitionerRole", role["id"],
                                          (member or {}).get("display")), at,
                          role.get("organization"))
        version = update_team(service, ctx, uow, updated)
        if proposal is not None:
            _complete_proposal(service, ctx, uow, plan_id, proposal, role["id"])
    assert version is not None
    return Result(200, version.resource)


def _effective(param: Mapping[str, Any]) -> int:
    value = param.get("valueDateTime") or param.get("valueDate")
    if not value:
        return now_ms()
    return start_ms(str(value), "Parameters.parameter:date")


def _require_open(plan: Mapping[str, Any]) -> None:
    if plan_kind(plan) is None or plan.get("status") not in OPEN:
        raise FhirError.of(422, f"CarePlan/{plan.get('id')} is not an open individual plan or "
                           f"SIP (status {plan.get('status')})", code="business-rule",
                           expression="CarePlan.status")


def _coordinator_role(uow: UnitOfWork, member: Any) -> dict[str, Any]:
    role_id = ref_id(member, "PractitionerRole")
    if role_id is None:
        raise FhirError.of(422, "The coordinator is a PractitionerRole (the person in the role "
                           "and organisation they coordinate for)", code="invalid",
                           expression="Parameters.parameter:coordinator")
    role = read_current(uow, "PractitionerRole", role_id, "Parameters.parameter:coordinator")
    if role.get("active") is False:
        raise FhirError.of(422, f"PractitionerRole/{role_id} is not active", code="business-rule",
                           expression="Parameters.parameter:coordinator")
    return role


def _team_of(uow: UnitOfWork, plan: Mapping[str, Any]) -> dict[str, Any]:
    team_id = plan_team(plan)
    if team_id is None:
        raise FhirError.of(422, f"CarePlan/{plan.get('id')} has no care team", code="required",
                           expression="CarePlan.careTeam")
    return read_current(uow, "CareTeam", team_id, "CarePlan.careTeam")


def _complete_proposal(service: FhirService, ctx: RequestContext, uow: UnitOfWork,
                       plan_id: str, proposal: Any, role_id: str) -> None:
    task_id = ref_id(proposal, "Task")
    task = read_current(uow, "Task", task_id or "-", "Parameters.parameter:proposal")
    if task_code(task) != CHANGE or ref_id(task.get("focus"), "CarePlan") != plan_id:
        raise FhirError.of(422, f"Task/{task_id} is not a coordinator proposal for this plan",
                           code="invalid", expression="Parameters.parameter:proposal")
    if task.get("status") in ("completed", "rejected", "cancelled"):
        raise FhirError.of(422, f"Task/{task_id} is already {task.get('status')}",
                           code="business-rule", expression="Parameters.parameter:proposal")
    done = {**task, "status": "completed", "lastModified": format_instant(now_ms()),
            "output": [{"type": coding(TASK_OUTPUT, "koordinator"),
                        "valueReference": reference("PractitionerRole", role_id)}]}
    service.update_in(uow, ctx, "Task", str(task["id"]), done,
                      if_match=int(task["meta"]["versionId"]))


# -- the person proposes a coordinator --------------------------------------------------------


def _proposal(service: FhirService, write: WriteContext, version: Version) -> None:
    message = version.resource
    if (write.type != "Communication" or write.previous is not None or message is None
            or not has_coding(message.get("topic"), TASK_CODE, CHANGE)):
        return
    plan_id = next((p for p in (ref_id(a, "CarePlan") for a in message.get("about", [])) if p),
                   None)
    if plan_id is None:
        raise FhirError.of(422, "A coordinator proposal is about the plan (Communication.about "
                           "= the CarePlan)", code="required", expression="Communication.about")
    plan = read_current(write.uow, "CarePlan", plan_id, "Communication.about")
    if ref_text(message.get("subject")) != ref_text(plan.get("subject")):
        raise FhirError.of(422, "A coordinator proposal is about the plan of its subject",
                           code="business-rule", expression="Communication.subject")
    owner = responsible_organization(plan)
    task: dict[str, Any] = {
        "resourceType": "Task", "status": "requested", "intent": "proposal",
        "code": coding(TASK_CODE, CHANGE), "basedOn": [reference("Communication", version.id)],
        "focus": reference("CarePlan", plan_id), "for": plan.get("subject"),
        "authoredOn": format_instant(now_ms()),
        "requester": message.get("sender") or plan.get("subject"),
        "description": "Forslag om koordinator",
    }
    if owner:
        task["owner"] = reference("Organization", owner)
    proposed = [p["contentReference"] for p in message.get("payload", [])
                if ref_id(p.get("contentReference"), "PractitionerRole")]
    texts = [p["contentString"] for p in message.get("payload", []) if p.get("contentString")]
    inputs = [{"type": coding(TASK_OUTPUT, "koordinator"), "valueReference": r}
              for r in proposed]
    inputs += [{"type": {"text": "begrunnelse"}, "valueString": t} for t in texts]
    if inputs:
        task["input"] = inputs
    service.create_in(write.uow, as_server(write.ctx), "Task", task)

