"""The life of the plan's workflow Tasks: the hospital's notification (answered by the green
form), a transfer of responsibility, and a proposed coordinator change.

Each is a request from its ``requester`` to its ``owner`` about one plan (``focus``) and one
person (``for``), which never change. Status moves (R4 task-status):

    draft -> requested -> received -> accepted -> in-progress -> completed
    requested/received/accepted -> completed (answered at once)
    requested/received/accepted/in-progress -> rejected | cancelled; in-progress -> failed

The owner receives, accepts, rejects, starts, completes or fails it; the requester cancels it
(checked when the caller acts for an organisation). Completed, rejected, cancelled, failed and
entered-in-error are final (and their answer - outputs, reason - fixed). A completed Task
names the coordinator (output ``koordinator``, a PractitionerRole) and gets the plan's care
team as output ``ansvarsgruppe``; completing it, in the same unit of work
(:func:`hand_over`), appoints that coordinator on the plan's team with the owner taking part
as coordinating unit, and:

* a notification (the green form): when the plan is still the hospital's, the municipality
  becomes responsible for it;
* a transfer: the owner becomes responsible; the previous responsible organisation's
  participation ends unless the person's consent to share names it as a recipient;
* a coordinator proposal: nothing more.

A rejected, cancelled or failed transfer ends the participation the receiving organisation
began for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..fhir.outcome import FhirError, Issue, issue
from ..fhir.service import FhirService, RequestContext, WriteContext
from ..store.port import UnitOfWork, format_instant
from .careteam import (
    COORDINATING_UNIT,
    add_participant,
    appoint,
    end_participation,
    plan_team,
    update_team,
)
from .invariants import consent_in_force, covers
from .lifecycle import OPEN
from .support import (
    TASK_OUTPUT,
    acts_for,
    as_server,
    codes,
    now_ms,
    read_current,
    ref_id,
    ref_text,
    reference,
    responsible_organization,
    set_responsible_organization,
    start_ms,
    task_code,
)

OPEN_TASK = ("draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold")
FINAL = ("completed", "rejected", "cancelled", "failed", "entered-in-error")
TASK_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "draft": ("requested", "cancelled", "entered-in-error"),
    "requested": ("received", "accepted", "completed", "rejected", "cancelled",
                  "entered-in-error"),
    "received": ("accepted", "completed", "rejected", "cancelled", "entered-in-error"),
    "accepted": ("in-progress", "completed", "rejected", "cancelled", "entered-in-error"),
    "ready": ("in-progress", "completed", "cancelled", "entered-in-error"),
    "in-progress": ("on-hold", "completed", "failed", "cancelled", "entered-in-error"),
    "on-hold": ("in-progress", "cancelled", "entered-in-error"),
}
REQUESTER_MOVES = ("requested", "cancelled")
IMMUTABLE = ("code", "for", "focus", "requester", "owner")
ANSWER = ("output", "statusReason", "executionPeriod")  # fixed once the Task is final
NOTIFICATION = "ip-notification"
TRANSFER = "transfer"
COORDINATOR_CHANGE = "coordinator-change"
WORKFLOW_CODES = (NOTIFICATION, TRANSFER, COORDINATOR_CHANGE)


def install(service: FhirService) -> None:
    service.before_write.append(lambda w: _task_update(service, w))


def _task_update(service: FhirService, write: WriteContext) -> None:
    """Updates of workflow Tasks: the status rules, and what a completed one does."""
    if write.type != "Task" or write.previous is None or write.previous.resource is None:
        return
    before = write.previous.resource
    code = task_code(before)
    if code not in WORKFLOW_CODES:
        return
    if write.resource is None:
        raise FhirError.of(409, f"A {code} Task is a record of the plan's workflow; cancel it "
                           "instead of deleting it", code="business-rule")
    task = write.resource
    moved = check_update(service, write, before, task)
    if moved in ("rejected", "cancelled", "failed") and code == TRANSFER:
        _withdraw_receiver(service, write, task)
    if moved != "completed":
        return
    role, plan = check_completion(write.uow, task)
    if plan is None:
        return
    if plan.get("status") not in OPEN:
        raise FhirError.of(422, f"CarePlan/{plan['id']} is {plan.get('status')}; only an open "
                           "plan gets a coordinator", code="business-rule",
                           expression="Task.focus")
    if code == TRANSFER:
        previous = responsible_organization(plan)
        patient_id = ref_id(plan.get("subject"), "Patient") or ""
        keeps = previous is None or consent_keeps(service, write.uow, patient_id, previous)
        hand_over(service, write.ctx, write.uow, task, role, plan, takes_over=True,
                  ends_previous=not keeps)
    else:
        hand_over(service, write.ctx, write.uow, task, role, plan,
                  takes_over=code == NOTIFICATION and _answered_for_requester(task, plan),
                  ends_previous=False)


def _answered_for_requester(task: Mapping[str, Any], plan: Mapping[str, Any]) -> bool:
    """Whether the plan is (still) the notifying organisation's: the green form then hands it
    to the municipality."""
    return responsible_organization(plan) in (None, ref_id(task.get("requester"),
                                                            "Organization"))


def check_update(service: FhirService, write: WriteContext, before: Mapping[str, Any],
                 task: dict[str, Any]) -> str | None:
    """Check an update of a workflow Task (422 / 403 otherwise) and stamp it; the status it
    moves to (None: it stays)."""
    problems = _changed_fields(before, task)
    old, new = str(before.get("status")), str(task.get("status"))
    if old != new:
        problems += _move_problems(old, new)
    if problems:
        raise FhirError(422, problems)
    if old == new:
        return None
    _check_actor(service, write, task, new)
    _stamp(task, new)
    return new


def _withdraw_receiver(service: FhirService, write: WriteContext,
                       task: Mapping[str, Any]) -> None:
    """A transfer that did not happen: the receiving organisation's participation, begun for
    it, ends."""
    owner = ref_id(task.get("owner"), "Organization")
    plan_id = ref_id(task.get("focus"), "CarePlan")
    plan = write.uow.read("CarePlan", plan_id) if plan_id else None
    team_id = plan_team(plan.resource) if plan is not None and plan.resource else None
    if owner is None or team_id is None:
        return
    team = read_current(write.uow, "CareTeam", team_id, "CarePlan.careTeam")
    since = start_ms(str(task.get("authoredOn")), "Task.authoredOn")
    update_team(service, as_server(write.ctx), write.uow,
                end_participation(team, owner, now_ms(), since_ms=since))


def _changed_fields(before: Mapping[str, Any], task: Mapping[str, Any]) -> list[Issue]:
    problems = [issue(f"Task.{name} cannot change: the request stays the same request; "
                      "cancel it and send a new one", code="business-rule",
                      expression=f"Task.{name}")
                for name in IMMUTABLE
                if _ref_or_value(before.get(name)) != _ref_or_value(task.get(name))]
    if before.get("status") in FINAL:
        problems += [issue(f"Task.{name} cannot change: the Task is {before.get('status')}",
                           code="business-rule", expression=f"Task.{name}")
                     for name in ANSWER if before.get(name) != task.get(name)]
    return problems


def _ref_or_value(value: Any) -> Any:
    text = ref_text(value)
    return text if text is not None else value


def _move_problems(old: str, new: str) -> list[Issue]:
    allowed = TASK_TRANSITIONS.get(old, ())
    if new in allowed:
        return []
    if old in FINAL:
        text = f"The Task is {old}, which is final; it cannot become {new}"
    else:
        text = f"A {old} Task cannot become {new}; allowed: {', '.join(allowed)}"
    return [issue(text, code="business-rule", expression="Task.status")]


def _check_actor(service: FhirService, write: WriteContext, task: Mapping[str, Any],
                 new: str) -> None:
    party = "requester" if new in REQUESTER_MOVES else "owner"
    org_id = ref_id(task.get(party), "Organization")
    if org_id is None and party == "requester" and ref_id(task.get(party), "Patient"):
        return  # the person's own proposal: scopes decide who may cancel it
    if not acts_for(service, write.uow, write.ctx, org_id):
        raise FhirError.of(403, f"Only the Task's {party} ({ref_text(task.get(party))}) may "
                           f"make it {new}", code="forbidden", expression="Task.status")


def _stamp(task: dict[str, Any], new: str) -> None:
    now = format_instant(now_ms())
    task["lastModified"] = now
    period = dict(task.get("executionPeriod") or {})
    if new in ("accepted", "in-progress", "completed") and not period.get("start"):
        period["start"] = now
    if new in FINAL and not period.get("end"):
        period["end"] = now
    if period:
        task["executionPeriod"] = period


def coordinator_output(task: Mapping[str, Any]) -> Any:
    for output in task.get("output", []):
        if "koordinator" in codes(output.get("type"), TASK_OUTPUT):
            return output.get("valueReference")
    return None


def check_completion(uow: UnitOfWork, task: dict[str, Any]) -> tuple[dict[str, Any],
                                                                      dict[str, Any] | None]:
    """The coordinator (PractitionerRole) a completed Task names, and the plan it focuses
    (None when it focuses no plan); adds the plan's care team as output ``ansvarsgruppe``."""
    member = coordinator_output(task)
    role_id = ref_id(member, "PractitionerRole")
    if role_id is None:
        raise FhirError.of(422, "A completed Task names the appointed coordinator: output "
                           "'koordinator' with a PractitionerRole reference", code="required",
                           expression="Task.output")
    role = read_current(uow, "PractitionerRole", role_id, "Task.output")
    plan_id = ref_id(task.get("focus"), "CarePlan")
    if plan_id is None:
        return role, None
    plan = read_current(uow, "CarePlan", plan_id, "Task.focus")
    team_id = plan_team(plan)
    given = [o for o in task.get("output", []) if "ansvarsgruppe" in codes(o.get("type"),
                                                                          TASK_OUTPUT)]
    if team_id is not None and not given:
        task["output"] = [*task.get("output", []), {
            "type": {"coding": [{"system": TASK_OUTPUT, "code": "ansvarsgruppe"}]},
            "valueReference": reference("CareTeam", team_id)}]
    elif team_id is not None and any(ref_id(o.get("valueReference"), "CareTeam") != team_id
                                     for o in given):
        raise FhirError.of(422, f"The care team output must be the plan's care team, "
                           f"CareTeam/{team_id}", code="business-rule", expression="Task.output")
    return role, plan


def hand_over(service: FhirService, ctx: RequestContext, uow: UnitOfWork,
              task: Mapping[str, Any], role: Mapping[str, Any], plan: dict[str, Any], *,
              takes_over: bool, ends_previous: bool) -> None:
    """Apply a completed Task to its plan: the named coordinator is appointed and the owner
    takes part as coordinating unit; with ``takes_over`` the owner becomes the responsible
    organisation (and manages the care team), and with ``ends_previous`` the previous
    responsible organisation's participation ends."""
    at = now_ms()
    owner = ref_id(task.get("owner"), "Organization")
    previous = responsible_organization(plan)
    team_id = plan_team(plan)
    if team_id is not None:
        team = read_current(uow, "CareTeam", team_id, "CarePlan.careTeam")
        updated = appoint(team, reference("PractitionerRole", str(role["id"]),
                                          task_display(task)), at, role.get("organization"))
        if owner:
            updated = add_participant(updated, reference("Organization", owner),
                                      COORDINATING_UNIT, at)
            if takes_over:
                updated["managingOrganization"] = [reference("Organization", owner)]
        if ends_previous and previous and previous != owner:
            updated = end_participation(updated, previous, at)
        update_team(service, as_server(ctx), uow, updated)
    if takes_over and owner and previous != owner:
        changed = dict(plan)
        set_responsible_organization(changed, owner, (task.get("owner") or {}).get("display"))
        service.update_in(uow, as_server(ctx), "CarePlan", str(plan["id"]), changed,
                          if_match=int(plan["meta"]["versionId"]))


def task_display(task: Mapping[str, Any]) -> str | None:
    member = coordinator_output(task)
    return member.get("display") if isinstance(member, Mapping) else None


def consent_keeps(service: FhirService, uow: UnitOfWork, patient_id: str,
                  org_id: str) -> bool:
    """Whether the person's consent to share information, in force, names ``org_id`` as a
    permitted recipient now (then it keeps taking part after a transfer)."""
    at = now_ms()
    for consent in service.lookup(uow, "Consent", {"patient": f"Patient/{patient_id}"}):
        if not consent_in_force(consent, "information-sharing", at):
            continue
        for provision in (consent.get("provision") or {}).get("provision", []):
            if provision.get("type") == "permit" and covers(provision.get("period"), at) and any(
                    ref_id(a.get("reference"), "Organization") == org_id
                    for a in provision.get("actor", [])):
                return True
    return False

