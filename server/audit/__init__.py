"""Audit: an AuditEvent for every interaction on a person's data, a Provenance for every write.

- Reads (read, vread, search, history, operations, ``$validate`` of a stored resource, the
  GET entries of batches and transactions) are recorded when they end, before their answer
  is returned, one AuditEvent per person whose data they showed (a search that showed
  nobody's data: one AuditEvent without a person); concurrent requests commit their records
  together (:mod:`.commit`).
- Writes are recorded by a write hook inside the unit of work of the write (the AuditEvent
  and the Provenance commit or roll back with it).
- Records are written with :meth:`~server.store.port.UnitOfWork.record`: durable when the
  request ends, indexed by the engine off the request's path (the embedded engine's journal),
  and in every answer that begins later.
- Refused and failed interactions (404 for what the caller may not see, 403, 412, ...) are
  recorded when they end, with the person they concerned when the resource exists.
- Interactions of callers inside the server are not a person's access (no AuditEvent); their
  writes still get a Provenance with the server as the agent.

A failure to write the audit record fails the request: nothing is shown or stored unaudited.
The person reads their own log with ``AuditEvent?patient=<self>``; auditors (scope
``planbro/audit``) read all of it (:mod:`server.access`). AuditEvents are found by person
and time through the engines' indexes on the ``patient`` reference and the update time;
AuditEvent and Provenance are left out of the system-level history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from ..access.caller import INTERNAL, Caller
from ..access.index import AccessIndexer, persons
from ..access.labels import OPEN_TYPES, OWNED_TYPES, PERSON_TYPES, content_class
from ..access.policy import AccessControl
from ..access.writes import touched
from ..fhir.outcome import FhirError
from ..fhir.search.ast import IndexValues
from ..fhir.search.registry import Registry
from ..fhir.service import FhirService, Interaction, WriteContext
from ..store.port import RECORD_TYPES, Store, UnitOfWork, Version, now_instant
from .commit import GroupCommit
from .events import Access, audit_event, event_values, provenance, purpose_of

__all__ = ["Auditor", "install", "store_indexer"]

_WRITES = frozenset({"create", "update", "patch", "delete"})
_OPERATIONS = {"CREATE": "create", "UPDATE": "update", "DELETE": "delete"}
_ON_AN_INSTANCE = frozenset({"operation", "validate"})  # their answers are not the resource


def store_indexer(registry: Registry) -> AccessIndexer:
    """What the server indexes every resource with (the application and the records
    process): the values of the registry's search parameters - for the AuditEvents this
    layer makes, computed straight from their known elements - plus the access layer's."""
    def base(resource: dict[str, Any]) -> IndexValues:
        if resource.get("resourceType") == "AuditEvent":
            found = event_values(resource)
            if found is not None:
                return found
        return registry.extract(resource)

    return AccessIndexer(base, registry)


def install(service: FhirService, control: AccessControl) -> Auditor:
    """Record every interaction on a person's data of ``service`` (see the module doc)."""
    auditor = Auditor(service.store, control)
    service.after_write.append(auditor.after_write)
    service.observers.append(auditor.observe)
    service.server_records |= RECORD_TYPES
    return auditor


class Auditor:
    """Writes the AuditEvents and Provenances (``store``: where reads are recorded)."""

    def __init__(self, store: Store, control: AccessControl) -> None:
        self.store = store
        self.control = control
        self.commits = GroupCommit(lambda: self.store)

    # -- writes: in the unit of work of the write ----------------------------------------------

    def after_write(self, w: WriteContext, version: Version) -> None:
        caller = self.control.caller(w.ctx, strict=False)
        stored = version.resource or (w.previous.resource if w.previous else None) or {}
        people = persons(self.control.registry, stored)
        target = f"{version.type}/{version.id}/_history/{version.version}"
        activity = ("DELETE" if version.deleted else
                    "CREATE" if w.previous is None else "UPDATE")
        w.uow.record("Provenance", provenance(
            target=target, activity=activity, recorded=version.last_updated, caller=caller,
            people=people, content_class=content_class(stored)))
        if caller.kind == INTERNAL:
            return
        interaction = "patch" if w.interaction == "patch" else _OPERATIONS[activity]
        by_person: dict[str | None, list[str]] = {p: [target] for p in people} or {None: [target]}
        self._write(w.uow, self._accesses(caller, interaction, by_person, outcome="0"))

    # -- reads and refusals: when the interaction ends ------------------------------------------

    def observe(self, interaction: Interaction) -> None:
        caller = self.control.caller(interaction.ctx, strict=False)
        if caller.kind == INTERNAL or not self._concerns_people(interaction):
            return
        matched = _matched(interaction)
        if interaction.error is None and interaction.name in _WRITES and not matched:
            return  # recorded inside the write's unit of work
        outcome, text = "0", None
        if interaction.error is not None:
            outcome = "8" if _status(interaction.error) >= 500 else "4"
            text = _error_text(interaction.error)
        if matched:  # a conditional create that found the resource: a lookup, not a write
            by_person = self._concerned(interaction, matched)
        elif interaction.error is not None or interaction.name in _ON_AN_INSTANCE:
            by_person = self._concerned(interaction)
        else:
            by_person = _by_person(self.control, touched(interaction))
        name = "search-type" if matched else interaction.name
        accesses = self._accesses(caller, name, by_person,
                                  outcome=outcome, text=text, query=_query(interaction))
        try:
            self.commits.write([("AuditEvent", audit_event(a)) for a in accesses])
        except Exception as exc:
            raise FhirError.of(500, "The access could not be recorded in the audit log, so "
                               "nothing is shown; retry later", code="exception") from exc

    # -- building --------------------------------------------------------------------------------

    @staticmethod
    def _concerns_people(interaction: Interaction) -> bool:
        if interaction.name == "validate" and interaction.id is None:
            return False
        return interaction.type is None or interaction.type in PERSON_TYPES or (
            interaction.type not in OPEN_TYPES | OWNED_TYPES and interaction.error is not None)

    def _concerned(self, interaction: Interaction,
                   id_: str | None = None) -> dict[str | None, list[str]]:
        """Whose data a refused or failed interaction (or the resource ``id_`` of its type it
        found) was about (the resource as stored)."""
        id_ = id_ or interaction.id
        if interaction.type is None or id_ is None:
            return {None: []}
        current = self.store.read(interaction.type, id_)
        resource = current.resource if current is not None else None
        ref = f"{interaction.type}/{id_}"
        people = persons(self.control.registry, resource) if resource else []
        return {p: [ref] for p in people} if people else {None: [ref]}

    def _accesses(self, caller: Caller, interaction: str,
                  by_person: dict[str | None, list[str]], *, outcome: str,
                  text: str | None = None, query: str | None = None) -> list[Access]:
        recorded = now_instant()[0]
        out = []
        for person, refs in by_person.items():
            emergency = caller.emergency is not None
            # only a health worker holds emergency grants (``orgnr/HPR``)
            if person is not None and not emergency and not caller.unrestricted \
                    and caller.kind != "patient" and caller.practitioner:
                standing = self.control.standing(self.store, caller, person)
                emergency = standing.emergency and not standing.ordinary
            purpose = purpose_of(caller, emergency)
            out.append(Access(caller, interaction, recorded, person, tuple(refs), query,
                              outcome, text, purpose,
                              caller.emergency if emergency else None))
        return out

    @staticmethod
    def _write(uow: UnitOfWork, accesses: Iterable[Access]) -> None:
        for access in accesses:
            uow.record("AuditEvent", audit_event(access))


def _by_person(control: AccessControl, resources: list[dict[str, Any]]
               ) -> dict[str | None, list[str]]:
    out: dict[str | None, list[str]] = {}
    for resource in resources:
        ref = _versioned(resource)
        if ref is None:
            continue
        for person in persons(control.registry, resource) or [None]:
            out.setdefault(person, []).append(ref)
    people = {k: v for k, v in out.items() if k is not None}
    return people or {None: out.get(None, [])}


def _versioned(resource: dict[str, Any]) -> str | None:
    type_, id_ = resource.get("resourceType"), resource.get("id")
    if not type_ or not id_ or type_ in ("OperationOutcome", "Bundle"):
        return None
    version = (resource.get("meta") or {}).get("versionId")
    return f"{type_}/{id_}/_history/{version}" if version else f"{type_}/{id_}"


def _query(interaction: Interaction) -> str | None:
    if interaction.name not in ("search-type", "update", "patch", "delete", "batch-entry") \
            or not interaction.params:
        return None
    return f"{interaction.type}?{urlencode(interaction.params)}"


def _matched(interaction: Interaction) -> str | None:
    """The id of the resource a successful conditional create found instead of creating."""
    result = interaction.result
    if interaction.name != "create" or result is None or result.status != 200:
        return None
    where = (result.headers or {}).get("Content-Location", "")
    parts = where.split("/_history/")[0].rsplit("/", 1)
    return parts[1] if len(parts) == 2 else None


def _status(error: Exception) -> int:
    return error.status if isinstance(error, FhirError) else 500


def _error_text(error: Exception) -> str:
    return error.message if isinstance(error, FhirError) else "internal error"
