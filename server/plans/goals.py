"""The person's own goals join the plan.

A new Goal for a person with an open plan joins that plan (``CarePlan.goal``, in the same
unit of work) when the person wrote it themself, or when it is a sub-goal
(``ip-parent-goal``) of one of the plan's goals. Who may change which parts of a plan (each
party its own measures) is decided by access control (:mod:`server.access.writes`).
"""

from __future__ import annotations

from ..fhir.service import FhirService, WriteContext
from ..store.port import Version
from .invariants import INDIVIDUAL_PLAN, plan_kind
from .lifecycle import open_plans
from .support import EXT_PARENT_GOAL, as_server, caller_patient, extensions, ref_id, ref_text
from .support import reference as make_reference


def install(service: FhirService) -> None:
    service.after_write.append(lambda w, v: _goal_joins_plan(service, w, v))


def _goal_joins_plan(service: FhirService, write: WriteContext, version: Version) -> None:
    goal = version.resource
    if write.type != "Goal" or write.previous is not None or goal is None:
        return
    patient_id = ref_id(goal.get("subject"), "Patient")
    if patient_id is None:
        return
    plans = open_plans(service, write.uow, patient_id)
    parents = {ref_text(e.get("valueReference")) for e in extensions(goal, EXT_PARENT_GOAL)}
    by_parent = [p for p in plans if parents & {ref_text(g) for g in p.get("goal", [])}]
    written_by_person = caller_patient(write.ctx) == patient_id
    chosen = by_parent or (sorted(plans, key=lambda p: plan_kind(p) != INDIVIDUAL_PLAN)[:1]
                           if written_by_person else [])
    for plan in chosen:
        joined = dict(plan)
        joined["goal"] = [*plan.get("goal", []), make_reference("Goal", version.id)]
        service.update_in(write.uow, as_server(write.ctx), "CarePlan", str(plan["id"]), joined,
                          if_match=int(plan["meta"]["versionId"]))
