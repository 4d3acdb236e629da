"""The hospital's notification that a person needs an individual plan, and its follow-up.

**The notification** is one transaction Bundle from the hospital: the person (conditional
create on the national identifier), the person's consent, the goals it has mapped, and a
notification Task (``ip-notification-task``) addressed to the municipality's coordinating
unit (``owner``), with a due date. The hospital's contribution to the plan - a draft plan
with its goals, measures and care team - travels *contained* in the Task, referenced by
``Task.focus`` (``#id``; its care team ``#id`` from the contained plan's ``careTeam``),
because the hospital cannot know whether the person already has a plan elsewhere. The server
attaches it in the same unit of work:

* the person has no open plan of that kind: the contribution becomes the person's plan (a
  new draft plan and care team);
* the person has an open plan: its goals, measures, problems, supporting information and
  notes, and its care team's participants (except a coordinator: the plan keeps its own), are
  added to that plan. A second plan is never created.

``Task.focus`` then references the plan, the contributed goals are listed as the Task's
``input`` (the hospital may list more there, such as the person's consent), and the contained
contribution is dropped. The
transaction response is the transport receipt: accepted (the Task as stored), or an
OperationOutcome naming what is wrong (``Bundle.entry[n].resource.contained[i]...`` for the
contribution).

**Due date.** A notification or transfer Task without ``restriction.period.end`` gets the
configured default, the same time of day a number of Norwegian working days after
``authoredOn`` (set to now when absent). This runs before profile validation, which requires
the due date.

**Overdue.** A notification with no green form after its due date is found by
``Task?code=<task-code>|ip-notification&status=requested,received,accepted,in-progress&
due-date=lt<now>`` (for the municipality add ``owner``, for the hospital ``requester``).
:func:`send_reminders` sends the municipality one reminder Communication per overdue
notification per interval; its identifier (``<CANON>/sid/reminder``, ``Task/<id>/<n>``) is a
unique key in the store, so no reminder is ever sent twice, also across restarts and
processes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..fhir import model
from ..fhir.outcome import FhirError, Issue
from ..fhir.search.normalize import serving
from ..fhir.service import FhirService, RequestContext, WriteContext
from ..store.port import UniqueConflict, UnitOfWork, format_instant, new_id
from .calendar import add_working_days
from .careteam import merge_participants, plan_team, update_team
from .invariants import CANON, COORDINATOR, PARTICIPANT_ROLE, has_coding, plan_kind
from .lifecycle import open_plans
from .settings import WorkflowSettings
from .support import (
    TASK_CODE,
    as_server,
    coding,
    ref_id,
    ref_text,
    reference,
    start_ms,
    task_code,
    with_keys,
)
from .tasks import NOTIFICATION, TRANSFER

REMINDER_SYSTEM = f"{CANON}/sid/reminder"
CONTRIBUTED_GOAL = "Bidrag til planen: mål"
OPEN_NOTIFICATION = ("requested", "received", "accepted", "in-progress")
_REMINDER_KEY = "reminder:"
_MERGED_LISTS = ("goal", "addresses", "supportingInfo")


def install(service: FhirService, settings: WorkflowSettings) -> None:
    # First among the validators: the profile requires the due date this fills in.
    service.validators.insert(0, lambda resource, _profiles: fill_due_date(resource, settings))
    service.before_write.append(lambda w: _notification_created(service, w))
    service.before_write.append(_reminder_keys)


# -- the due date -----------------------------------------------------------------------------


def fill_due_date(resource: dict[str, Any], settings: WorkflowSettings) -> list[Issue]:
    """Give a notification or transfer Task without a due date the default one (in place).
    Never reports an issue."""
    if resource.get("resourceType") != "Task" or task_code(resource) not in (NOTIFICATION,
                                                                             TRANSFER):
        return []
    restriction = resource.get("restriction")
    period = restriction.get("period") if isinstance(restriction, dict) else None
    if isinstance(period, dict) and period.get("end"):
        return []
    due = default_due(resource, settings)
    if due is None:
        return []
    restriction = dict(restriction) if isinstance(restriction, dict) else {}
    restriction["period"] = {**(period if isinstance(period, dict) else {}), "end": due}
    resource["restriction"] = restriction
    return []


def default_due(task: dict[str, Any], settings: WorkflowSettings) -> str | None:
    """The default due date for ``task`` (sets ``authoredOn`` to now when absent)."""
    zone = settings.zone
    authored = task.get("authoredOn")
    if authored is None:
        now = dt.datetime.now(zone).replace(microsecond=0)
        task["authoredOn"] = now.isoformat()
        return add_working_days(now, settings.due_working_days).isoformat()
    text = str(authored)
    if len(text) == 10:  # a date: the due date is a date
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            return None
        start = dt.datetime(day.year, day.month, day.day, tzinfo=zone)
        return add_working_days(start, settings.due_working_days).date().isoformat()
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        return None  # not a dateTime: base validation reports it
    local = (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).astimezone(zone)
    return add_working_days(local, settings.due_working_days).isoformat()


# -- the notification and the hospital's contribution -----------------------------------------


def _notification_created(service: FhirService, write: WriteContext) -> None:
    task = write.resource
    if (write.type != "Task" or write.previous is not None or task is None
            or task_code(task) != NOTIFICATION):
        return
    patient_id = ref_id(task.get("for"), "Patient")
    if patient_id is None:
        raise FhirError.of(422, "A notification is for a Patient", code="required",
                           expression="Task.for")
    focus = ref_text(task.get("focus")) or ""
    if focus.startswith("#"):
        plan_id = attach_contribution(service, write.ctx, write.uow, task, patient_id,
                                      focus[1:])
        task["focus"] = reference("CarePlan", plan_id, "Individuell plan")
    elif ref_id(task.get("focus"), "CarePlan"):
        _check_focus(service, write.uow, task, patient_id)


def _check_focus(service: FhirService, uow: UnitOfWork, task: Mapping[str, Any],
                 patient_id: str) -> None:
    plan_id = ref_id(task.get("focus"), "CarePlan")
    found = service.lookup(uow, "CarePlan", {"_id": str(plan_id)})
    if not found or ref_id(found[0].get("subject"), "Patient") != patient_id:
        raise FhirError.of(422, f"Task.focus must be a plan of Patient/{patient_id}",
                           code="business-rule", expression="Task.focus")


def attach_contribution(service: FhirService, ctx: RequestContext, uow: UnitOfWork,
                        task: dict[str, Any], patient_id: str, local_id: str) -> str:
    """Attach the contribution contained in ``task`` as ``#local_id`` to the person's plan
    (a new draft plan when there is none); drops it from the Task and returns the plan id."""
    contained = list(task.get("contained", []))
    index = _contained_index(contained, local_id, "CarePlan")
    if index is None:
        raise FhirError.of(422, f"Task.focus #{local_id} is not a CarePlan contained in the "
                           "Task", code="not-found", expression="Task.focus")
    plan = dict(contained[index])
    where = f"Task.contained[{index}]"
    kind = plan_kind(plan)
    _check_contribution(service, plan, kind, patient_id, where)
    team_ref = ref_text((plan.get("careTeam") or [{}])[0]) or ""
    team_index = (_contained_index(contained, team_ref[1:], "CareTeam")
                  if team_ref.startswith("#") else None)
    team = dict(contained[team_index]) if team_index is not None else None
    paths = {"CarePlan": where, "CareTeam": f"Task.contained[{team_index}]"}
    server = as_server(ctx)
    existing = open_plans(service, uow, patient_id, kind)
    try:
        if existing:
            plan_id = _attach(service, server, uow, existing[0], plan, team)
        else:
            plan_id = _create(service, server, uow, plan, team, patient_id)
    except FhirError as exc:
        raise _repath(exc, paths) from exc
    _record_goals(task, plan)
    used = {index} | ({team_index} if team_index is not None else set())
    rest = [c for i, c in enumerate(contained) if i not in used]
    if rest:
        task["contained"] = rest
    else:
        task.pop("contained", None)
    return plan_id


def _record_goals(task: dict[str, Any], plan: Mapping[str, Any]) -> None:
    """List the contributed goals as the Task's inputs: the Task keeps what the hospital
    contributed after the contained plan is dropped."""
    have = {ref_text(i.get("valueReference")) for i in task.get("input", [])}
    added = [{"type": {"text": CONTRIBUTED_GOAL}, "valueReference": dict(g)}
             for g in plan.get("goal", []) if ref_text(g) not in have]
    if added:
        task["input"] = [*task.get("input", []), *added]


def _contained_index(contained: list[Any], local_id: str, type_: str) -> int | None:
    for index, resource in enumerate(contained):
        if (isinstance(resource, dict) and resource.get("id") == local_id
                and resource.get("resourceType") == type_):
            return index
    return None


def _check_contribution(service: FhirService, plan: dict[str, Any], kind: str | None,
                        patient_id: str, where: str) -> None:
    if kind is None:
        raise FhirError.of(422, "The contribution is an individual plan or SIP (category "
                           "individuell-plan or sip)", code="business-rule",
                           expression=f"{where}.category")
    if ref_id(plan.get("subject"), "Patient") != patient_id:
        raise FhirError.of(422, f"The contribution is a plan for the notification's person, "
                           f"Patient/{patient_id}", code="business-rule",
                           expression=f"{where}.subject")
    if plan.get("status") != "draft":
        raise FhirError.of(422, "The contribution is a draft: the municipality makes the plan "
                           "active with the person", code="business-rule",
                           expression=f"{where}.status")
    body = {k: v for k, v in plan.items() if k != "id"}
    if str(ref_text((plan.get("careTeam") or [{}])[0]) or "").startswith("#"):
        # the contained team becomes a CareTeam of its own: validate the plan as it will be
        body["careTeam"] = [{"reference": "CareTeam/contributed"}]
    issues = model.validate(body, type_="CarePlan", id_=None, mode="create")
    for validator in service.validators:
        issues += validator(body, ())
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise _repath(FhirError(422, errors), {"CarePlan": where})


def _create(service: FhirService, ctx: RequestContext, uow: UnitOfWork, plan: dict[str, Any],
            team: dict[str, Any] | None, patient_id: str) -> str:
    team_body = {k: v for k, v in (team or _minimal_team(plan)).items() if k != "id"}
    team_body.setdefault("subject", {"reference": f"Patient/{patient_id}"})
    team_id = new_id()
    service.create_in(uow, ctx, "CareTeam", team_body, id_=team_id)
    body = {k: v for k, v in plan.items() if k != "id"}
    body["careTeam"] = [reference("CareTeam", team_id)]
    written = service.create_in(uow, ctx, "CarePlan", body)
    assert written.version is not None
    return written.version.id


def _minimal_team(plan: Mapping[str, Any]) -> dict[str, Any]:
    return {"resourceType": "CareTeam", "status": "active", "subject": plan.get("subject"),
            "participant": [{"role": [coding(PARTICIPANT_ROLE, "bruker")],
                             "member": plan.get("subject")}]}


def _attach(service: FhirService, ctx: RequestContext, uow: UnitOfWork,
            existing: dict[str, Any], plan: Mapping[str, Any],
            team: Mapping[str, Any] | None) -> str:
    merged = merge_plan(existing, plan)
    if merged != existing:
        service.update_in(uow, ctx, "CarePlan", str(existing["id"]), merged,
                          if_match=int(existing["meta"]["versionId"]))
    team_id = plan_team(existing)
    if team is not None and team_id is not None:
        current = uow.read("CareTeam", team_id)
        if current is not None and current.resource is not None:
            joining = [p for p in team.get("participant", [])
                       if not any(has_coding(r, PARTICIPANT_ROLE, COORDINATOR)
                                  for r in p.get("role", []))]
            update_team(service, ctx, uow, merge_participants(current.resource, joining))
    return str(existing["id"])


def merge_plan(existing: Mapping[str, Any], contribution: Mapping[str, Any]) -> dict[str, Any]:
    """``existing`` plus what ``contribution`` adds: goals, problems and supporting
    information it does not reference yet, its measures and its notes."""
    merged = dict(existing)
    for name in _MERGED_LISTS:
        have = [ref_text(r) for r in existing.get(name, [])]
        added = [r for r in contribution.get(name, []) if ref_text(r) not in have]
        if added:
            merged[name] = [*existing.get(name, []), *added]
    activities = [a for a in contribution.get("activity", [])
                  if a not in existing.get("activity", [])]
    if activities:
        merged["activity"] = [*existing.get("activity", []), *activities]
    notes = [n for n in contribution.get("note", []) if n not in existing.get("note", [])]
    if notes:
        merged["note"] = [*existing.get("note", []), *notes]
    return merged


def _repath(exc: FhirError, paths: Mapping[str, str]) -> FhirError:
    """``exc`` with issue locations of the contained resources (``CarePlan.goal`` ->
    ``Task.contained[0].goal``)."""
    issues = []
    for item in exc.issues:
        expression = []
        for expr in item.expression:
            head, dot, rest = expr.partition(".")
            target = paths.get(head)
            expression.append(f"{target}{dot}{rest}" if target else expr)
        issues.append(Issue(item.severity, item.code,
                            f"The hospital's contribution: {item.diagnostics}",
                            tuple(expression)))
    return FhirError(exc.status, issues, dict(exc.headers))


# -- overdue notifications and reminders ------------------------------------------------------


def overdue_params(now: int) -> dict[str, str]:
    """Search parameters of the notifications without a green form after their due date."""
    return {"code": f"{TASK_CODE}|{NOTIFICATION}", "status": ",".join(OPEN_NOTIFICATION),
            "due-date": f"lt{format_instant(now)}"}


def _reminder_keys(write: WriteContext) -> None:
    if write.type != "Communication" or write.resource is None:
        return
    keys = [f"{_REMINDER_KEY}{i['value']}" for i in write.resource.get("identifier", [])
            if isinstance(i, dict) and i.get("system") == REMINDER_SYSTEM and i.get("value")]
    if keys:
        write.keys = with_keys(write.keys, _REMINDER_KEY, keys)


def send_reminders(service: FhirService, settings: WorkflowSettings, now: int,
                   base_url: str = "", page: int = 100) -> int:
    """Send a reminder for every overdue notification that has none for the current
    interval; returns how many were sent now. Which reminders of a page of notifications
    exist already is found with one search, without the write lock; only those that do not
    are written (each in a unit of work whose unique key stops a second writer)."""
    # a reminder copies its Task's person: the configured public base tells an absolute
    # reference to this server from another server's here, as a request's URL does there
    serving(service.config.base_url)
    sent = 0
    offset = 0
    while True:
        params = {**overdue_params(now), "_sort": "due-date", "_offset": str(offset)}
        tasks = service.lookup(service.store, "Task", params, limit=page)
        due = [_reminder(settings, task, now) for task in tasks]
        there = _sent(service, [value for value, _ in due])
        for value, message in due:
            if value not in there:
                sent += _send(service, value, message, base_url)
        if len(tasks) < page:
            return sent
        offset += page


def _sent(service: FhirService, values: list[str]) -> set[str]:
    """Which of the reminder identifiers ``values`` are stored already."""
    if not values:
        return set()
    found = service.lookup(service.store, "Communication", {
        "identifier": ",".join(f"{REMINDER_SYSTEM}|{v}" for v in values)}, limit=len(values))
    return {i["value"] for c in found for i in c.get("identifier", [])
            if isinstance(i, dict) and i.get("system") == REMINDER_SYSTEM and "value" in i}


def _reminder(settings: WorkflowSettings, task: Mapping[str, Any],
              now: int) -> tuple[str, dict[str, Any]]:
    """(identifier value, Communication) of the reminder about overdue ``task`` for the
    current interval."""
    due = str((task.get("restriction") or {}).get("period", {}).get("end", ""))
    number = int((now - start_ms(due, "Task.restriction.period.end"))
                 // (settings.reminder_interval_s * 1000))
    value = f"Task/{task['id']}/{number}"
    message = {
        "resourceType": "Communication",
        "identifier": [{"system": REMINDER_SYSTEM, "value": value}],
        "status": "completed",
        "topic": {**coding(TASK_CODE, NOTIFICATION), "text": "Påminnelse: grønt skjema mangler"},
        "subject": task.get("for"),
        "about": [reference("Task", str(task["id"]))],
        "recipient": [task.get("owner")],
        "sent": format_instant(now),
        "payload": [{"contentString": (
            f"Påminnelse: meldingen om behov for individuell plan (Task/{task['id']}) er ikke "
            f"besvart med grønt skjema innen fristen {due}.")}],
    }
    if task.get("requester"):
        message["sender"] = task["requester"]
    return value, message


def _send(service: FhirService, value: str, message: dict[str, Any], base_url: str) -> int:
    """Store a reminder unless one with its identifier is there; 1 when this stored it."""
    ctx = RequestContext(base_url=base_url)
    service.ensure_valid(message, "Communication", None, "create")  # before the write lock
    try:
        with service.unit_of_work(ctx) as uow:
            written = service.create_in(uow, ctx, "Communication", message, if_none_exist=[
                ("identifier", f"{REMINDER_SYSTEM}|{value}")], validated=True)
    except UniqueConflict:
        return 0  # another process sent it at the same moment
    return 0 if written.matched else 1
