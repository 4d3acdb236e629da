"""Evaluating a plan at its agreed dates.

A plan's agreed evaluations are its ``ip-evaluation-date`` extensions (plan level; on a
measure, that measure's follow-up date). ``CarePlan?evaluation-date=le<date>`` with
``responsible-organization=Organization/<unit>&status=active`` lists a coordinating unit's
plans due for evaluation.

``POST CarePlan/{id}/$evaluate`` records an evaluation. ``Parameters``:

* ``date`` (date/dateTime, default now): when it took place;
* ``next`` (date/dateTime, required, after ``date``): the next agreed evaluation;
* ``goal`` (repeating), parts ``goal`` (reference to one of the plan's goals),
  ``achievement`` (CodeableConcept, R4 goal-achievement) and optional ``note`` (string);
* ``note`` (string): the summary.

In one unit of work: each goal gets its achievement status (and the note); the plan's agreed
evaluation dates up to ``date`` are done and ``next`` is added, with the summary as a note;
and a completed ``evaluation`` Task records it (focus the plan, outputs the goals evaluated
and the next date). Only the responsible organisation records an evaluation. The answer is
the evaluation Task (201).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..fhir.outcome import FhirError
from ..fhir.service import FhirService, RequestContext, Result
from ..store.port import UnitOfWork, format_instant
from .invariants import plan_kind
from .support import (
    EXT_EVALUATION,
    TASK_CODE,
    check_visible,
    coding,
    date_value,
    extensions,
    now_ms,
    parameters,
    read_current,
    ref_id,
    reference,
    replace_extensions,
    require_acting_for,
    responsible_organization,
    start_ms,
)

EVALUATION = "evaluation"
_OP = "evaluate"


def install(service: FhirService) -> None:
    service.operations[("CarePlan", _OP)] = (
        lambda ctx, id_, body: evaluate_operation(service, ctx, id_, body))


def evaluate_operation(service: FhirService, ctx: RequestContext, plan_id: str,
                       body: Any) -> Result:
    params = parameters(body, _OP)
    when = date_value(params.get("date", [None])[0]) or format_instant(now_ms())
    upcoming = date_value(params.get("next", [None])[0])
    if upcoming is None:
        raise FhirError.of(400, "$evaluate needs 'next': the next agreed evaluation",
                           code="required", expression="Parameters.parameter:next")
    at = start_ms(when, "Parameters.parameter:date")
    if start_ms(upcoming, "Parameters.parameter:next") <= at:
        raise FhirError.of(422, "The next evaluation comes after this one", code="value",
                           expression="Parameters.parameter:next")
    summary = next((p.get("valueString") for p in params.get("note", [])), None)
    check_visible(service, ctx, "CarePlan", plan_id)
    with service.unit_of_work(ctx) as uow:
        plan = read_current(uow, "CarePlan", plan_id, "CarePlan")
        if plan_kind(plan) is None or plan.get("status") not in ("active", "on-hold"):
            raise FhirError.of(422, f"CarePlan/{plan_id} is not an active plan (status "
                               f"{plan.get('status')}); only an active plan is evaluated",
                               code="business-rule", expression="CarePlan.status")
        require_acting_for(service, uow, ctx, responsible_organization(plan),
                           "record an evaluation of this plan")
        goals = _goal_results(plan, params.get("goal", []))
        for goal_id, (achievement, note) in goals.items():
            _update_goal(service, ctx, uow, goal_id, achievement, note, when)
        _update_plan(service, ctx, uow, plan, at, upcoming, when, summary)
        written = service.create_in(uow, ctx, "Task", _record(plan, goals, when, upcoming,
                                                              summary))
    return service.write_result(ctx, written)


def _goal_results(plan: Mapping[str, Any], given: list[dict[str, Any]]
                  ) -> dict[str, tuple[dict[str, Any], str | None]]:
    """goal id -> (achievement, note), for goals of the plan only."""
    planned = {ref_id(g, "Goal") for g in plan.get("goal", [])}
    out: dict[str, tuple[dict[str, Any], str | None]] = {}
    for index, param in enumerate(given):
        parts = {p.get("name"): p for p in param.get("part", []) if isinstance(p, dict)}
        where = f"Parameters.parameter:goal[{index}]"
        goal_id = ref_id((parts.get("goal") or {}).get("valueReference"), "Goal")
        achievement = (parts.get("achievement") or {}).get("valueCodeableConcept")
        if goal_id is None or not isinstance(achievement, dict):
            raise FhirError.of(400, "Each goal part names the goal (valueReference) and its "
                               "achievement (valueCodeableConcept)", code="required",
                               expression=where)
        if goal_id not in planned:
            raise FhirError.of(422, f"Goal/{goal_id} is not a goal of this plan",
                               code="business-rule", expression=where)
        out[goal_id] = (achievement, (parts.get("note") or {}).get("valueString"))
    return out


def _update_goal(service: FhirService, ctx: RequestContext, uow: UnitOfWork, goal_id: str,
                 achievement: dict[str, Any], note: str | None, when: str) -> None:
    goal = read_current(uow, "Goal", goal_id, "Parameters.parameter:goal")
    goal["achievementStatus"] = achievement
    if note:
        goal["note"] = [*goal.get("note", []), {"time": when, "text": note}]
    service.update_in(uow, ctx, "Goal", goal_id, goal, if_match=int(goal["meta"]["versionId"]))


def _update_plan(service: FhirService, ctx: RequestContext, uow: UnitOfWork,
                 plan: dict[str, Any], at: int, upcoming: str, when: str,
                 summary: str | None) -> None:
    later = [e for e in extensions(plan, EXT_EVALUATION)
             if e.get("valueDateTime") and start_ms(str(e["valueDateTime"]),
                                                    "CarePlan.extension") > at]
    if all(e["valueDateTime"] != upcoming for e in later):
        later.append({"url": EXT_EVALUATION, "valueDateTime": upcoming})
    later.sort(key=lambda e: start_ms(str(e["valueDateTime"]), "CarePlan.extension"))
    replace_extensions(plan, EXT_EVALUATION, later)
    text = f"Evaluert {when}" + (f": {summary}" if summary else "")
    plan["note"] = [*plan.get("note", []), {"time": when, "text": text}]
    service.update_in(uow, ctx, "CarePlan", str(plan["id"]), plan,
                      if_match=int(plan["meta"]["versionId"]))


def _record(plan: Mapping[str, Any], goals: Mapping[str, Any], when: str, upcoming: str,
            summary: str | None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "resourceType": "Task", "status": "completed", "intent": "plan",
        "code": coding(TASK_CODE, EVALUATION, "Evaluering av planen"),
        "focus": reference("CarePlan", str(plan["id"])), "for": plan.get("subject"),
        "authoredOn": when, "lastModified": format_instant(now_ms()),
        "executionPeriod": {"start": when, "end": when},
        "output": [*({"type": {"text": "evaluert mål"}, "valueReference": reference("Goal", g)}
                     for g in goals),
                   {"type": {"text": "neste evaluering"}, "valueDateTime": upcoming}],
    }
    owner = responsible_organization(plan)
    if owner:
        task["owner"] = reference("Organization", owner)
    if summary:
        task["note"] = [{"time": when, "text": summary}]
    return task
