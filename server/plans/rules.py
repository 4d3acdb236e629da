"""The individual-plan rules the FHIR service enforces, wired in by :func:`install`.

- every write is checked against our local profiles (claimed or assigned by rule);
- an individual plan may only become (and stay) active when the regulation's conditions
  hold: the person's consent, exactly one current coordinator, a period (``invariants``),
  and - on the change to active - every required content item of the checklist
  (``completeness``); a SIP's gaps are reported, not refused;
- ``GET CarePlan/{id}/$completeness`` returns the checklist report, and ``$validate`` of a
  CarePlan includes it; both judge the plan on what the caller may see (its partial view, its
  scopes), so the report tells nobody of content hidden from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..fhir.conformance import PROFILES_DIR, Conformance
from ..fhir.outcome import FhirError, Issue, issue
from ..fhir.search.registry import Registry
from ..fhir.service import FhirService, Reader, RequestContext, Result, WriteContext
from .completeness import completeness, gather_related
from .invariants import INDIVIDUAL_PLAN, activation_problems, plan_kind


def install(service: FhirService, conformance: Conformance | None = None) -> Conformance:
    """Load the profiles (unless given) and register the checks, hooks and operations on
    ``service``, whose registry is :func:`search_registry`'s (it offers the profiles' search
    parameters)."""
    conformance = conformance or Conformance.load(PROFILES_DIR)
    service.validators.append(conformance.validate)
    service.profiles.update(conformance.profiles_by_type())
    service.before_write.append(lambda w: _check_plan(service, w))
    service.operations[("CarePlan", "completeness")] = (
        lambda ctx, id_, _body: _completeness_operation(service, ctx, id_))
    service.report_hooks.append(lambda ctx, reader, resource:
                                _completeness_issues(service, ctx, reader, resource))
    return conformance


def search_registry(conformance: Conformance | None = None) -> Registry:
    """The search parameters the server offers and indexes: the official R4 ones and those
    our profiles define (``conformance``, loaded when not given)."""
    registry = Registry.load_default()
    for search_parameter in (conformance or Conformance.load(PROFILES_DIR)).search_parameters():
        registry.add(search_parameter)
    return registry


def _lookup(service: FhirService, reader: Reader,  # type: ignore[no-untyped-def]
            ctx: RequestContext | None = None):
    """Searches for the rules: everything, or (``ctx``) what that caller may see."""
    return lambda type_, params: service.lookup(reader, type_, params, ctx=ctx)


def _check_plan(service: FhirService, write: WriteContext) -> None:
    plan = write.resource
    if write.type != "CarePlan" or plan is None:
        return
    plan = {**plan, "id": write.id}
    lookup = _lookup(service, write.uow)
    problems = activation_problems(plan, lookup)
    becoming_active = plan.get("status") == "active" and (
        write.previous is None or (write.previous.resource or {}).get("status") != "active")
    # Norwegian individual plans only: the regulation makes the content a condition. A SIP's
    # gaps (Rut's, as the source writes it) are reported by $completeness, not refused.
    if becoming_active and plan_kind(plan) == INDIVIDUAL_PLAN:
        problems += _missing_items(completeness(plan, gather_related(plan, lookup)))
    if problems:
        raise FhirError(422, problems)


def _missing_items(report: Mapping[str, Any]) -> list[Issue]:
    """One issue per required content item the report finds missing."""
    out = []
    for item in report["parameter"]:
        if item["name"] != "item":
            continue
        parts = item["part"]
        if next(p["valueBoolean"] for p in parts if p["name"] == "fulfilled"):
            continue
        label = next(p["valueString"] for p in parts if p["name"] == "label-en")
        missing = [p["valueString"] for p in parts if p["name"] == "missing-en"]
        carriers = [p["valueString"] for p in parts if p["name"] == "carrier"]
        out.append(issue(f"Required plan content missing - {label}: {'; '.join(missing)}",
                         code="business-rule", expression=carriers or None))
    return out


def _completeness_operation(service: FhirService, ctx: RequestContext, id_: str) -> Result:
    found = service.read(ctx, "CarePlan", id_)
    plan = found.body or {}
    related = gather_related(plan, _lookup(service, service.store, ctx))
    return Result(200, completeness(plan, related))


def _completeness_issues(service: FhirService, ctx: RequestContext, reader: Reader,
                         resource: Mapping[str, Any]) -> list[Issue]:
    """The checklist inside ``$validate`` of a CarePlan: missing items as warnings (judged
    on what the caller may see)."""
    if resource.get("resourceType") != "CarePlan" or plan_kind(resource) is None:
        return []
    report = completeness(resource, gather_related(resource, _lookup(service, reader, ctx)))
    return [Issue("warning", i.code, i.diagnostics, i.expression)
            for i in _missing_items(report)]
