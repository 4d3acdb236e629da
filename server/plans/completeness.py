"""Is a plan complete? Item by item against the regulation (``$completeness``).

The items, their labels and the checks that decide them are data in
``mappings/regulation-items.json``: the nine items of the Norwegian regulation for an
individual plan, and for a Swedish SIP the four statutory items plus the SIP process items
(coordinator, dated goals, follow-up, consent, signature). This module only evaluates them.

A check runs on the plan or on the related resources of one type and is either FHIRPath or a
named predicate (logic that needs the clock or several fields, see :data:`PREDICATES`):

* ``{"on": "CarePlan", "fhirpath": ...}``: holds on the plan;
* ``{"on": "CarePlan", "each": "activity", "fhirpath": ...}``: holds for every measure; each
  failing measure is named in the report (``{name}`` in the message);
* ``{"on": "Goal", "quantifier": "any" | "all", "fhirpath" | "predicate": ...}``: holds for
  some related resource (``any``; none at all fails) or for every one (``all``);
* ``{"any_of": [check, ...]}``: one of the checks holds.

``level`` is ``required`` (the item is unfulfilled without it) or ``recommended`` (reported as
a note). The report is a FHIR Parameters resource, one ``item`` part per item.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from server.fhir.conformance import evaluate, holds
from server.fhir.outcome import FhirError
from server.fhir.search.normalize import parse_reference

from .invariants import Lookup, consent_in_force, one_current_coordinator, plan_kind

MAPPING = Path(__file__).resolve().parents[2] / "mappings" / "regulation-items.json"

PREDICATES: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "one-current-coordinator": lambda team: one_current_coordinator(team) is None,
    "consent-to-plan": lambda consent: consent_in_force(consent, "plan-making"),
    "consent-to-share": lambda consent: consent_in_force(consent, "information-sharing"),
}

Resource = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """The result of one check: whether it holds and, if not, the messages."""

    ok: bool
    messages: tuple[dict[str, str], ...] = ()


@cache
def load_mapping(path: Path = MAPPING) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def completeness(plan: Mapping[str, Any], related: Mapping[str, list[Resource]],
                 mapping: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The completeness report of ``plan`` as a Parameters resource.

    ``related`` holds the plan's resources by type: its ``CareTeam`` and ``Goal`` resources,
    the person's ``Consent`` resources, and the ``Task`` and ``Provenance`` resources about
    the plan (see :func:`gather_related`). Raises a 422 :class:`FhirError` for a CarePlan that
    is neither an individual plan nor a SIP."""
    kind = plan_kind(plan)
    variants = (mapping or load_mapping())["variants"]
    if kind not in variants:
        raise FhirError.of(422, "The CarePlan is not an individual plan or SIP (no "
                                "individuell-plan or sip category)", code="business-rule",
                           expression="CarePlan.category")
    variant = variants[kind]
    language = variant["language"]
    resources: dict[str, list[Resource]] = {"CarePlan": [dict(plan)]}
    resources.update({k: list(v) for k, v in related.items() if k != "CarePlan"})
    items = [_item(item, plan, resources, language) for item in variant["items"]]
    complete = all(_fulfilled(part) for part in items)
    parameters: list[dict[str, Any]] = []
    if plan.get("id"):
        parameters.append({"name": "plan",
                           "valueReference": {"reference": f"CarePlan/{plan['id']}"}})
    parameters += [
        {"name": "variant", "valueCode": kind},
        {"name": "profile", "valueCanonical": variant["profile"]},
        {"name": "source", "valueString": variant["source"]},
        {"name": "complete", "valueBoolean": complete},
    ]
    parameters += items
    return {"resourceType": "Parameters", "parameter": parameters}


def gather_related(plan: Mapping[str, Any], lookup: Lookup,
                   mapping: Mapping[str, Any] | None = None) -> dict[str, list[Resource]]:
    """Fetch what :func:`completeness` needs about ``plan`` with ``lookup`` (a FHIR search):
    the referenced care teams and goals, the person's consents, and the tasks and
    provenance whose focus or target is the plan."""
    kind = plan_kind(plan)
    variants = (mapping or load_mapping())["variants"]
    wanted = {t for item in variants.get(kind, {}).get("items", [])
              for t in _types(item["checks"])} - {"CarePlan"}
    plan_ref = f"CarePlan/{plan['id']}" if plan.get("id") else None
    queries: dict[str, dict[str, str] | None] = {
        "CareTeam": _ids_query(plan.get("careTeam", []), "CareTeam"),
        "Goal": _ids_query(plan.get("goal", []), "Goal"),
        "Consent": _subject_query(plan),
        "Task": {"focus": plan_ref} if plan_ref else None,
        "Provenance": {"target": plan_ref} if plan_ref else None,
    }
    out: dict[str, list[Resource]] = {}
    for rtype in sorted(wanted):
        query = queries.get(rtype)
        out[rtype] = lookup(rtype, query) if query else []
    return out


# -- evaluation -----------------------------------------------------------------------------------


def _item(item: Mapping[str, Any], plan: Mapping[str, Any],
          resources: Mapping[str, list[Resource]], language: str) -> dict[str, Any]:
    missing: list[dict[str, str]] = []
    notes: list[dict[str, str]] = []
    for check in item["checks"]:
        outcome = _run(check, resources)
        if not outcome.ok:
            (missing if check.get("level", "required") == "required" else notes).extend(
                outcome.messages)
    parts: list[dict[str, Any]] = [
        {"name": "id", "valueCode": item["id"]},
        {"name": "label", "valueString": item["label"][language]},
        {"name": "label-en", "valueString": item["label"]["en"]},
        {"name": "fulfilled", "valueBoolean": not missing},
    ]
    parts += [{"name": "carrier", "valueString": c} for c in item["carriers"]]
    for name, texts in (("missing", missing), ("note", notes)):
        for text in texts:
            parts.append({"name": name, "valueString": text[language]})
            parts.append({"name": f"{name}-en", "valueString": text["en"]})
    return {"name": "item", "part": parts}


def _fulfilled(item: Mapping[str, Any]) -> bool:
    return any(p["name"] == "fulfilled" and p["valueBoolean"] for p in item["part"])


def _run(check: Mapping[str, Any], resources: Mapping[str, list[Resource]]) -> Outcome:
    if "any_of" in check:
        ok = any(_run(c, resources).ok for c in check["any_of"])
        return _verdict(ok, check)
    targets = resources.get(check["on"], [])
    if "each" in check:
        return _each(check, targets[0] if targets else {})
    quantifier = check.get("quantifier")
    if quantifier is None:
        return _verdict(bool(targets) and _test(check, targets[0]), check)
    results = [(r, _test(check, r)) for r in targets]
    if quantifier == "any":
        return _verdict(any(passed for _, passed in results), check)
    failed = [_named(check["missing"], _name(r, i))
              for i, (r, passed) in enumerate(results) if not passed]
    return Outcome(not failed, tuple(failed))


def _verdict(ok: bool, check: Mapping[str, Any]) -> Outcome:
    """A whole-check outcome; alternatives inside ``any_of`` carry no message of their own."""
    return Outcome(ok, () if ok or "missing" not in check else (check["missing"],))


def _each(check: Mapping[str, Any], resource: Mapping[str, Any]) -> Outcome:
    nodes = resource.get(check["each"], [])
    if not nodes:
        return Outcome(True)
    verdicts = _per_node(check["each"], check["fhirpath"], resource)
    failed = [_named(check["missing"], _name(node, i))
              for i, (node, ok) in enumerate(zip(nodes, verdicts, strict=False)) if not ok]
    return Outcome(not failed, tuple(failed))


def _per_node(each: str, expression: str, resource: Mapping[str, Any]) -> list[bool]:
    """Evaluate ``expression`` for every ``each`` element in the context of the whole
    resource (so choice types such as ``scheduled[x]`` resolve), one verdict per element."""
    return [v is True for v in evaluate(f"{each}.select(iif({expression}, true, false))",
                                        resource)]


def _test(check: Mapping[str, Any], resource: Mapping[str, Any]) -> bool:
    if "predicate" in check:
        return PREDICATES[check["predicate"]](resource)
    return holds(check["fhirpath"], resource)


def _named(missing: Mapping[str, str], name: str) -> dict[str, str]:
    return {lang: text.replace("{name}", name) for lang, text in missing.items()}


def _name(node: Mapping[str, Any], index: int) -> str:
    """A human name for a measure or goal in messages: its text, else its position."""
    detail = node.get("detail") if isinstance(node.get("detail"), dict) else {}
    for candidate in (detail.get("description"), (detail.get("code") or {}).get("text"),
                      (node.get("description") or {}).get("text")
                      if isinstance(node.get("description"), dict) else None):
        if isinstance(candidate, str) and candidate:
            return candidate
    return f"nr {index + 1}"


def _types(checks: list[Mapping[str, Any]]) -> set[str]:
    out: set[str] = set()
    for check in checks:
        out |= _types(check["any_of"]) if "any_of" in check else {check["on"]}
    return out


def _ids_query(references: Any, rtype: str) -> dict[str, str] | None:
    ids = []
    for ref in references if isinstance(references, list) else []:
        text = ref.get("reference") if isinstance(ref, dict) else None
        parts = parse_reference(text) if isinstance(text, str) else None
        if parts is not None and parts.target_type == rtype:
            ids.append(parts.target_id)
    return {"_id": ",".join(ids)} if ids else None


def _subject_query(plan: Mapping[str, Any]) -> dict[str, str] | None:
    subject = plan.get("subject")
    text = subject.get("reference", "") if isinstance(subject, dict) else ""
    return {"patient": text} if "Patient/" in text else None
