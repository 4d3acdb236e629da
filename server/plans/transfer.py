"""Transfer of responsibility for a plan: hospital -> municipality, municipality ->
municipality when the person moves, child -> adult services.

``POST CarePlan/{id}/$transfer`` with ``Parameters``: ``organization`` (the receiving
organisation: a reference, or its organisation number as ``valueIdentifier``), optional
``reason`` (text) and ``due`` (date; default: the configured number of working days). The
responsible organisation asks; the answer is a ``transfer`` Task (201), requested by the
responsible organisation and owned by the receiving one. A plan has at most one open transfer
(a unique key on the plan).

While it considers the transfer, the receiving organisation takes part in the plan's care team
(as a service provider; what it sees is up to the person's consent); if the transfer is
rejected or cancelled, that participation ends. The receiving side confirms like with the
green form: it accepts the Task and completes it
naming its coordinator (output ``koordinator``), or rejects it with a reason. Completion, in
the same unit of work (:mod:`server.plans.tasks`): the SAME plan continues with the receiving
organisation responsible, the new coordinator appointed (the old one's participation ended),
the receiving organisation on the care team as coordinating unit; the previous organisation's
participation ends - unless the person's consent to share information names it as a
recipient, in which case it keeps taking part. Plan, care team and Task versions show every
step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..fhir.outcome import FhirError
from ..fhir.service import FhirService, RequestContext, Result, WriteContext
from ..store.port import UnitOfWork, format_instant
from .careteam import add_participant, plan_team, takes_part, update_team
from .lifecycle import OPEN
from .support import (
    ORG_NUMBER_SYSTEMS,
    TASK_CODE,
    check_visible,
    coding,
    now_ms,
    parameters,
    read_current,
    ref_id,
    reference,
    require_acting_for,
    responsible_organization,
    single,
    task_code,
    with_keys,
)
from .tasks import OPEN_TASK, TRANSFER

_KEY = "open-transfer:"
SERVICE_PROVIDER = "tjenesteyter"


def install(service: FhirService) -> None:
    service.before_write.append(lambda w: _transfer_keys(service, w))
    service.operations[("CarePlan", "transfer")] = (
        lambda ctx, id_, body: transfer_operation(service, ctx, id_, body))


def transfer_operation(service: FhirService, ctx: RequestContext, plan_id: str,
                       body: Any) -> Result:
    params = parameters(body, "transfer")
    target = params.get("organization", [])
    if len(target) != 1:
        raise FhirError.of(400, "$transfer needs one 'organization': the receiving "
                           "organisation", code="required",
                           expression="Parameters.parameter:organization")
    reason = single(params, "reason", "valueString", "transfer")
    due = single(params, "due", "valueDate", "transfer") or single(
        params, "due", "valueDateTime", "transfer")
    check_visible(service, ctx, "CarePlan", plan_id)
    with service.unit_of_work(ctx) as uow:
        plan = read_current(uow, "CarePlan", plan_id, "CarePlan")
        if plan.get("status") not in OPEN:
            raise FhirError.of(422, f"CarePlan/{plan_id} is {plan.get('status')}: only an open "
                               "plan is transferred", code="business-rule",
                               expression="CarePlan.status")
        current = responsible_organization(plan)
        require_acting_for(service, uow, ctx, current, "transfer this plan")
        receiving = _receiving(service, uow, target[0])
        if receiving == current:
            raise FhirError.of(422, f"Organization/{receiving} is already responsible for the "
                               "plan", code="business-rule",
                               expression="Parameters.parameter:organization")
        task: dict[str, Any] = {
            "resourceType": "Task", "status": "requested", "intent": "order",
            "code": coding(TASK_CODE, TRANSFER, "Overføring av ansvar for planen"),
            "focus": reference("CarePlan", plan_id), "for": plan.get("subject"),
            "authoredOn": format_instant(now_ms()), "owner": reference("Organization", receiving),
            "description": "Overføring av ansvaret for individuell plan",
        }
        if current:
            task["requester"] = reference("Organization", current)
        if reason:
            task["reasonCode"] = {"text": str(reason)}
        if due:
            task["restriction"] = {"period": {"end": str(due)}}
        written = service.create_in(uow, ctx, "Task", task)
        _invite(service, ctx, uow, plan, receiving)
    return service.write_result(ctx, written)


def _invite(service: FhirService, ctx: RequestContext, uow: UnitOfWork,
            plan: Mapping[str, Any], receiving: str) -> None:
    """The receiving organisation takes part in the plan's care team while it considers the
    transfer (what it then sees is up to the person's consent)."""
    team_id = plan_team(plan)
    if team_id is None:
        return
    team = read_current(uow, "CareTeam", team_id, "CarePlan.careTeam")
    at = now_ms()
    if not takes_part(team, receiving, at):
        update_team(service, ctx, uow, add_participant(
            team, reference("Organization", receiving), SERVICE_PROVIDER, at))


def _receiving(service: FhirService, uow: UnitOfWork, param: Mapping[str, Any]) -> str:
    where = "Parameters.parameter:organization"
    if "valueReference" in param:
        org_id = ref_id(param["valueReference"], "Organization")
        if org_id is None:
            raise FhirError.of(400, "organization must reference an Organization",
                               code="value", expression=where)
        read_current(uow, "Organization", org_id, where)
        return org_id
    identifier = param.get("valueIdentifier") or {}
    if identifier.get("system") in ORG_NUMBER_SYSTEMS and identifier.get("value"):
        found = service.lookup(uow, "Organization", {
            "identifier": f"{identifier['system']}|{identifier['value']}"})
        if len(found) == 1:
            return str(found[0]["id"])
        raise FhirError.of(422, f"{len(found)} organisations have the organisation number "
                           f"{identifier['value']}", code="not-found", expression=where)
    raise FhirError.of(400, "organization is a valueReference or a valueIdentifier with an "
                       "organisation number", code="value", expression=where)


def _transfer_keys(service: FhirService, write: WriteContext) -> None:
    """A plan has one open transfer; a new one is asked by the plan's responsible
    organisation and is for the plan's person."""
    task = write.resource
    if write.type != "Task" or task is None or task_code(task) != TRANSFER:
        return
    plan_id = ref_id(task.get("focus"), "CarePlan")
    if plan_id is None:
        raise FhirError.of(422, "A transfer is about a plan (Task.focus = the CarePlan)",
                           code="required", expression="Task.focus")
    if write.previous is None:
        plan = read_current(write.uow, "CarePlan", plan_id, "Task.focus")
        _check_new(plan, task)
        _check_no_other(service, write, plan_id)
    keys = [f"{_KEY}CarePlan/{plan_id}"] if task.get("status") in OPEN_TASK else []
    write.keys = with_keys(write.keys, _KEY, keys)


def _check_new(plan: Mapping[str, Any], task: Mapping[str, Any]) -> None:
    if task.get("status") != "requested":
        raise FhirError.of(422, "A transfer is asked as requested", code="business-rule",
                           expression="Task.status")
    if ref_id(task.get("for"), "Patient") != ref_id(plan.get("subject"), "Patient"):
        raise FhirError.of(422, "Task.for must be the plan's person", code="business-rule",
                           expression="Task.for")
    if ref_id(task.get("requester"), "Organization") != responsible_organization(plan):
        raise FhirError.of(422, "A transfer is asked by the plan's responsible organisation",
                           code="business-rule", expression="Task.requester")
    if ref_id(task.get("owner"), "Organization") is None:
        raise FhirError.of(422, "A transfer is owned by the receiving Organization",
                           code="required", expression="Task.owner")


def _check_no_other(service: FhirService, write: WriteContext, plan_id: str) -> None:
    found = [t for t in service.lookup(write.uow, "Task", {
        "focus": f"CarePlan/{plan_id}", "code": f"{TASK_CODE}|{TRANSFER}",
        "status": ",".join(OPEN_TASK)}) if t["id"] != write.id]
    if found:
        raise FhirError.of(409, f"CarePlan/{plan_id} is already being transferred: "
                           f"Task/{found[0]['id']} ({found[0].get('status')})",
                           code="duplicate", expression="Task.focus")
