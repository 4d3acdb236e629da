"""What the access layer indexes at write time, beside the search values of each resource.

Every person's resource gets, in the engine's own index tables/arrays (so that the access
conditions compile into the storage query on every engine):

- ``_person`` (reference to ``Patient``): whose data it is - the Patient itself, or the
  Patient the type's ``patient`` search parameter names (the Patient compartment), or, for a
  Provenance, the person its :data:`PERSON_EXTENSION` names;
- ``_class`` (token in ``content-class``): its content class (:mod:`.labels`);
- ``_responsible`` (reference): for measures (Task, ServiceRequest), who answers for them.

Access grants (:mod:`.grants`) are stored as resources of the server-internal type
:data:`GRANT_TYPE` (not a FHIR type: never served), indexed by ``person``, ``covers``,
``scope`` (``holder|class``), ``period`` and ``kind``. None of these parameters is in the
search registry, so no client can search by them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..fhir.search.ast import (
    MAX_MS,
    MIN_MS,
    DateValue,
    IndexValues,
    ReferenceValue,
    SearchParam,
    TokenValue,
)
from ..fhir.search.normalize import parse_reference
from ..fhir.search.registry import Registry
from .labels import (
    CLASSES,
    CONTENT_CLASS_SYSTEM,
    PERSON_TYPES,
    RESPONSIBLE_PARAMS,
    content_class,
)

GRANT_TYPE = "AccessGrant"
PERSON_EXTENSION = "http://planbro.no/fhir/StructureDefinition/provenance-person"
"""Extension (valueReference to a Patient) the server puts on the Provenance it writes: the
person whose data the recorded write changed."""

PERSON = SearchParam("_person", "reference", ("Resource",), targets=("Patient",))
CLASS = SearchParam("_class", "token", ("Resource",))
RESPONSIBLE = SearchParam("_responsible", "reference", tuple(RESPONSIBLE_PARAMS))

GRANT_PERSON = SearchParam("person", "reference", (GRANT_TYPE,), targets=("Patient",))
GRANT_COVERS = SearchParam("covers", "reference", (GRANT_TYPE,))
GRANT_SCOPE = SearchParam("scope", "token", (GRANT_TYPE,))
GRANT_PERIOD = SearchParam("period", "date", (GRANT_TYPE,))
GRANT_KIND = SearchParam("kind", "token", (GRANT_TYPE,))

ANY, FULL, MAINTAIN, NOTICE, RECEIVED = "any", "full", "maintain", "notice", "received"
"""Scope codes of a grant beside its classes: ``any`` (every grant for a person), ``full``
(all classes), ``maintain`` (keeps the plan), ``notice`` (a notification's parties: what it
carries), ``received`` (the notification's addressee)."""


def persons(registry: Registry, resource: dict[str, Any],
            values: IndexValues | None = None) -> list[str]:
    """The ids of the Patients whose data ``resource`` is ([] when it is nobody's);
    ``values``: its search values, when they are at hand (they hold its ``patient``)."""
    type_ = resource.get("resourceType")
    if type_ not in PERSON_TYPES:
        return []
    if type_ == "Patient":
        return [str(resource["id"])] if resource.get("id") else []
    if type_ == "Provenance":
        refs = [e.get("valueReference", {}).get("reference") for e in
                resource.get("extension") or [] if e.get("url") == PERSON_EXTENSION]
        parts = [parse_reference(r) for r in refs if isinstance(r, str)]
        return [p.target_id for p in parts
                if p is not None and p.target_type == "Patient" and p.target_id]
    if values is not None:
        found = [r for r in values.references if r.param == "patient"]
    else:
        try:
            found = registry.references(resource, "patient")
        except KeyError:
            return []
    return list(dict.fromkeys(r.target_id for r in found
                              if r.target_type == "Patient" and r.target_id))


def responsible(registry: Registry, resource: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, id) of those responsible for a measure."""
    code = RESPONSIBLE_PARAMS.get(str(resource.get("resourceType")))
    if code is None:
        return []
    return [(r.target_type, r.target_id) for r in registry.references(resource, code)
            if r.target_type and r.target_id]


def grant_scopes(grant: dict[str, Any]) -> list[tuple[str, str]]:
    """(holder, code) pairs a stored grant answers to."""
    classes = [c for c in grant.get("classes") or [] if c in CLASSES]
    codes = list(classes)
    if grant.get("kind") == "notification":
        codes.append(NOTICE)
    else:
        codes.append(ANY)
        if set(classes) >= set(CLASSES):
            codes.append(FULL)
        if grant.get("maintain"):
            codes.append(MAINTAIN)
    received = set(grant.get("received") or [])
    out = [(holder, code) for holder in grant.get("holders") or [] for code in codes]
    out += [(holder, RECEIVED) for holder in grant.get("holders") or [] if holder in received]
    return out


def grant_values(grant: dict[str, Any]) -> IndexValues:
    """The index values of a stored grant."""
    values = IndexValues()
    if grant.get("person"):
        values.references.append(ReferenceValue("person", "Patient", str(grant["person"])))
    for ref in grant.get("covers") or []:
        type_, _, id_ = str(ref).partition("/")
        values.references.append(ReferenceValue("covers", type_, id_))
    values.tokens.extend(TokenValue("scope", holder, code) for holder, code in grant_scopes(grant))
    values.tokens.append(TokenValue("kind", "", str(grant.get("kind"))))
    period = grant.get("period") or {}
    start, end = period.get("start"), period.get("end")
    values.dates.append(DateValue("period", MIN_MS if start is None else int(start),
                                  MAX_MS if end is None else int(end)))
    return values


class AccessIndexer:
    """The store's indexer with the access layer's values added (see the module doc).
    ``base`` gives the values of the registry's search parameters."""

    def __init__(self, base: Callable[[dict[str, Any]], IndexValues],
                 registry: Registry) -> None:
        self.base = base
        self.registry = registry

    def __call__(self, resource: dict[str, Any]) -> IndexValues:
        type_ = resource.get("resourceType")
        if type_ == GRANT_TYPE:
            return grant_values(resource)
        values = self.base(resource)
        if type_ not in PERSON_TYPES:
            return values
        values.references.extend(ReferenceValue(PERSON.code, "Patient", p)
                                 for p in persons(self.registry, resource, values))
        klass = content_class(resource)
        if klass is not None:
            values.tokens.append(TokenValue(CLASS.code, CONTENT_CLASS_SYSTEM, klass))
        values.references.extend(ReferenceValue(RESPONSIBLE.code, t, i)
                                 for t, i in responsible(self.registry, resource))
        return values
