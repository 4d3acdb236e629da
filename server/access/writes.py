"""Who may write what, and keeping the grants current - hooks of the FHIR service.

Administrative systems and callers inside the server write anything. For everyone else:

- AuditEvent and Provenance are written by the server only (403); stored Bundles by
  administrative systems only.
- Directory: an organisation writes its own Organization (its organisation number) and the
  PractitionerRoles of it; Practitioners it may create, not change.
- A Subscription belongs to the caller that created it (the server tags it with
  ``owner`` = the caller's key): only that caller sees, changes and deletes it.
- A person's data: a resource being changed or deleted must be one the caller sees (else
  404, as for a read), and the caller must keep it:
    * the plan's maintainers (the coordinator's and the responsible organisation) keep
      everything of the person;
    * the parties of a notification keep the notification and what it carries;
    * any other participant only its own measures: Tasks it owns, ServiceRequests it
      performs, and the activities of the plan it performs (the rest of the plan must stay
      as it was); it may also write notes (Communication) to the care team;
    * the person keeps their own goals, their own contributions (plan activities they
      perform, their questionnaire answers), notes to the care team and their consents.
  What is CREATED is checked when the unit of work is done (a transaction may create a
  document first and the notification that carries it afterwards): the caller must then
  maintain the person's plan, be the addressee of a notification about the person, have
  the new resource covered by its notification, be a participant creating its own measure
  or a note, or be the person creating a goal, a note, an answer or a consent of their own.

Every write of a CareTeam, Consent or CarePlan derives the person's care-team grants again,
every write of a notification Task its grant, and every write of a Communication about a
notification (a reminder) the grant of its sender and recipients, in the same unit of work:
a withdrawn consent stops access on the very next request. Changes to Organizations and
PractitionerRoles derive again the grants that name them. Person's resources are labelled
with their content class (:mod:`.labels`) before they are stored.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from ..fhir.outcome import FhirError, not_found
from ..fhir.service import FhirService, Interaction, RequestContext, WriteContext
from ..plans.identifiers import ENH_SYSTEM
from ..store.port import RECORD_TYPES, UnitOfWork, Version, now_instant
from .caller import PATIENT, Caller
from .grants import RESPONSIBLE_ORG_URLS, Directory, about_tasks, holder_key
from .index import persons, responsible
from .labels import (
    OPEN_TYPES,
    OWNED_TYPES,
    OWNER_SYSTEM,
    PERSON_TYPES,
    RESPONSIBLE_PARAMS,
    activity_performers,
    is_notification,
)
from .labels import with_class_label as labelled
from .policy import AccessControl, Own, Standing
from .views import merge_hidden

_GRANT_SOURCES = ("CareTeam", "Consent", "CarePlan")
_MEASURES = tuple(RESPONSIBLE_PARAMS)
_PERSON_KEEPS = ("Goal", "Consent", "CarePlan", "QuestionnaireResponse")
_PERSON_CREATES = ("Goal", "Consent", "Communication", "QuestionnaireResponse")


def forbidden(text: str) -> FhirError:
    return FhirError.of(403, text, code="forbidden")


@dataclass
class _Pending:
    """Creations of one unit of work, checked before it commits."""

    created: list[tuple[str, str]] = field(default_factory=list)


class WriteRules:
    """The access layer's write hooks (see the module doc)."""

    def __init__(self, service: FhirService, control: AccessControl,
                 emergency_ttl_ms: int) -> None:
        self.service = service
        self.control = control
        self.emergency_ttl_ms = emergency_ttl_ms
        self._pending: weakref.WeakKeyDictionary[UnitOfWork, _Pending] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()

    # -- before a version is stored --------------------------------------------------------

    def shape(self, ctx: RequestContext, type_: str, resource: dict[str, Any]
              ) -> dict[str, Any]:
        """The service's shaper: ``resource`` as a write of it without a previous version
        stores it (:func:`_shaped`)."""
        caller = self.control.caller(ctx) if type_ in OWNED_TYPES else None
        return _shaped(resource, type_, caller, None)

    def before_write(self, w: WriteContext) -> None:
        caller = self.control.caller(w.ctx)
        if w.resource is not None:
            w.resource = _shaped(w.resource, w.type, caller, w.previous)
        if caller.unrestricted:
            return
        if w.type in OWNED_TYPES:
            if w.previous is not None and not self.service.visible(w.ctx, w.uow, w.type, w.id):
                raise not_found(w.type, w.id)
            return
        if w.type in RECORD_TYPES or w.type not in PERSON_TYPES | OPEN_TYPES | OWNED_TYPES:
            raise forbidden(f"{w.type} resources are written by the server or by "
                            "administrative systems only")
        if w.type in OPEN_TYPES:
            self._directory_write(caller, w)
            return
        if w.previous is None:
            with self._lock:
                self._pending.setdefault(w.uow, _Pending()).created.append((w.type, w.id))
            return
        if not self.service.visible(w.ctx, w.uow, w.type, w.id):
            raise not_found(w.type, w.id)
        self._changing(caller, w)

    def _changing(self, caller: Caller, w: WriteContext) -> None:
        """An update or delete of a resource the caller sees: may it keep it?"""
        assert w.previous is not None and w.previous.resource is not None
        previous = w.previous.resource
        found = persons(self.control.registry, previous)
        if caller.kind == PATIENT:
            self._person_changes(caller, w, previous)
            return
        standing = self.control.standing(w.uow, caller, found[0]) if found else None
        if standing is None:
            raise forbidden(f"{w.type}/{w.id} belongs to no person; only administrative "
                            "systems change it")
        own = self.control.own(w.uow, caller)
        covered = f"{w.type}/{w.id}" in standing.covers  # a notification shows it whole
        if w.type == "CarePlan" and w.resource is not None and not covered:
            w.resource = merge_hidden(w.resource, previous, standing.classes, own)
        if standing.maintain or covered:
            return
        if standing.any and self._own_measure(w, previous, own):
            return
        raise forbidden(f"Only the organisations that maintain the plan may change "
                        f"{w.type}/{w.id}; a participant changes only the measures it is "
                        "responsible for")

    def _own_measure(self, w: WriteContext, previous: dict[str, Any], own: Own) -> bool:
        if w.type == "CarePlan" and w.resource is not None:
            return _only_own_activities(previous, w.resource, own)
        if w.type in _MEASURES:
            refs = self.control.own_refs(w.uow, self.control.caller(w.ctx))
            return self._responsible(previous, refs) and (
                w.resource is None or self._responsible(w.resource, refs))
        return False

    def _responsible(self, resource: dict[str, Any], refs: set[str]) -> bool:
        return bool({f"{t}/{i}" for t, i in responsible(self.control.registry, resource)}
                    & refs)

    def _person_changes(self, caller: Caller, w: WriteContext, previous: dict[str, Any]) -> None:
        mine = f"Patient/{caller.patient}"
        if w.resource is None or w.type not in _PERSON_KEEPS:
            raise forbidden(f"A person may change their goals, their own contributions and "
                            f"their consents, not {w.type}/{w.id}")
        if persons(self.control.registry, w.resource) != [caller.patient]:
            raise forbidden("A person's resources stay theirs")
        if w.type == "CarePlan" and not _only_own_activities(
                previous, w.resource, lambda a: mine in activity_performers(a)):
            raise forbidden("In the plan, a person changes only the measures they perform "
                            "themselves")

    def _directory_write(self, caller: Caller, w: WriteContext) -> None:
        if caller.kind == PATIENT:
            raise forbidden(f"A person does not write {w.type} resources")
        directory = Directory(w.uow)
        versions = [v for v in (w.previous.resource if w.previous else None, w.resource) if v]
        if w.type == "Practitioner":
            if w.previous is not None:
                raise forbidden("Practitioners are changed by administrative systems only")
            return
        for version in versions:
            org = (_enh(version) if w.type == "Organization"
                   else directory.orgnr(version.get("organization")))
            if not caller.organization or org != caller.organization:
                raise forbidden(f"An organisation writes only its own {w.type} resources "
                                f"(organisation number {caller.organization or 'unknown'})")

    # -- after a version is stored ---------------------------------------------------------

    def after_write(self, w: WriteContext, version: Version) -> None:
        """Derive again the grants this write may change (same unit of work)."""
        resources = [r for r in (w.resource, w.previous.resource if w.previous else None) if r]
        if w.type == "CarePlan" and len(resources) == 2 and _grant_facts(resources[0]) == \
                _grant_facts(resources[1]):
            return  # a plan's measures changed, not who keeps it
        if w.type in _GRANT_SOURCES:
            for person in dict.fromkeys(p for r in resources
                                        for p in persons(self.control.registry, r)):
                self.control.grants.sync_person(w.uow, person)
        elif w.type == "Task" and any(is_notification(r) for r in resources):
            self.control.grants.sync_notification(w.uow, w.id)
        elif w.type == "Communication" and any(about_tasks(r) for r in resources):
            self.control.grants.sync_message(w.uow, w.id)
        elif w.type in ("Organization", "PractitionerRole", "Practitioner"):
            self._directory_changed(w.uow, f"{w.type}/{w.id}")

    def _directory_changed(self, uow: UnitOfWork, ref: str) -> None:
        lookup = self.control.grants.lookup
        refs = [ref]
        if ref.startswith("Organization/"):
            refs += [f"PractitionerRole/{r['id']}" for r in
                     lookup(uow, "PractitionerRole", {"organization": ref})]
        people: set[str] = set()
        tasks: set[str] = set()
        for each in refs:
            for team in lookup(uow, "CareTeam", {"participant": each}):
                people |= set(persons(self.control.registry, team))
            for consent in lookup(uow, "Consent", {"actor": each}):
                people |= set(persons(self.control.registry, consent))
            for param in ("requester", "owner"):
                tasks |= {str(t["id"]) for t in lookup(uow, "Task", {param: each})}
        if ref.startswith("Organization/"):
            for consent in lookup(uow, "Consent", {"organization": ref}):
                people |= set(persons(self.control.registry, consent))
        for person in sorted(people):
            self.control.grants.sync_person(uow, person)
        for task in sorted(tasks):
            self.control.grants.sync_notification(uow, task)

    # -- before the unit of work commits ---------------------------------------------------

    def before_commit(self, ctx: RequestContext, uow: UnitOfWork) -> None:
        """What was created must end up in the creator's keeping."""
        with self._lock:
            pending = self._pending.pop(uow, None)
        if pending is None:
            return
        caller = self.control.caller(ctx)
        for type_, id_ in pending.created:
            current = uow.read(type_, id_)
            if current is None or current.deleted or current.resource is None:
                continue
            self._created(caller, uow, current.resource)

    def _created(self, caller: Caller, uow: UnitOfWork, resource: dict[str, Any]) -> None:
        type_ = str(resource["resourceType"])
        found = persons(self.control.registry, resource)
        if not found:
            raise forbidden(f"A {type_} of a person's data must name the person "
                            "(only administrative systems store it otherwise)")
        if caller.kind == PATIENT:
            if found != [caller.patient] or type_ not in _PERSON_CREATES:
                raise forbidden(f"A person may create their own goals, notes to the care "
                                f"team, answers and consents, not this {type_}")
            return
        standing = self.control.standing(uow, caller, found[0])
        if self._may_create(caller, uow, standing, resource):
            return
        raise forbidden(f"The caller's organisation may not add this {type_} to the person's "
                        "data: it is neither on the person's care team with their consent, "
                        "nor a party to a notification carrying it")

    def _may_create(self, caller: Caller, uow: UnitOfWork, standing: Standing,
                    resource: dict[str, Any]) -> bool:
        type_, id_ = str(resource["resourceType"]), str(resource["id"])
        if standing.maintain or standing.received or f"{type_}/{id_}" in standing.covers:
            return True
        if not standing.any:
            return False
        if type_ == "Communication":
            return True
        return type_ in _MEASURES and self._responsible(
            resource, self.control.own_refs(uow, caller))

    # -- emergency access ------------------------------------------------------------------

    def observe(self, interaction: Interaction) -> None:
        """After a successful read by a health worker who stated a reason: open a
        time-limited emergency grant for each person whose data was read."""
        caller = self.control.caller(interaction.ctx)
        if not caller.emergency or interaction.result is None or interaction.error:
            return
        people = sorted({p for r in touched(interaction)
                         for p in persons(self.control.registry, r)})
        if not people:
            return
        start = now_instant()[1]
        holder = holder_key(caller.organization, caller.practitioner)
        with self.service.store.unit_of_work() as uow:
            for person in people:
                self.control.grants.open_emergency(uow, person, holder, caller.emergency,
                                                   start, start + self.emergency_ttl_ms)


def touched(interaction: Interaction) -> list[dict[str, Any]]:
    """The resources an interaction's result shows (a resource, or a Bundle's entries)."""
    body = interaction.result.body if interaction.result is not None else None
    if not isinstance(body, dict):
        return []
    if body.get("resourceType") == "Bundle":
        return [e["resource"] for e in body.get("entry") or []
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    return [body]


def _grant_facts(plan: dict[str, Any]) -> tuple[Any, ...]:
    """What of a CarePlan the grants depend on: its person, status and responsible
    organisation."""
    return (plan.get("subject"), plan.get("status"),
            [e for e in plan.get("extension") or [] if e.get("url") in RESPONSIBLE_ORG_URLS])


def _shaped(resource: dict[str, Any], type_: str, caller: Caller | None,
            previous: Version | None) -> dict[str, Any]:
    """``resource`` as it is stored: a person's resource labelled with its content class, an
    owned one tagged with its owner (``caller``, given for those, unless ``previous`` has
    one)."""
    if type_ in PERSON_TYPES:
        resource = labelled(resource)
    if type_ in OWNED_TYPES:
        assert caller is not None
        resource = _owned(resource, caller, previous)
    return resource


def _owned(resource: dict[str, Any], caller: Caller,
           previous: Version | None) -> dict[str, Any]:
    """``resource`` tagged with its owner: the caller that created it (an update keeps the
    owner; a tag a client sends itself is replaced)."""
    kept = [t for t in ((previous.resource or {}).get("meta") or {}).get("tag") or []
            if isinstance(t, dict) and t.get("system") == OWNER_SYSTEM] if previous else []
    owner = kept[:1] or ([{"system": OWNER_SYSTEM, "code": caller.owner}]
                         if caller.owner else [])
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag") or []
            if not (isinstance(t, dict) and t.get("system") == OWNER_SYSTEM)]
    if tags or owner:
        meta["tag"] = [*tags, *owner]
    return {**resource, "meta": meta} if meta else resource


def _enh(resource: dict[str, Any]) -> str | None:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == ENH_SYSTEM:
            return str(ident.get("value"))
    return None


def _only_own_activities(previous: dict[str, Any], new: dict[str, Any], own: Own) -> bool:
    """Whether ``new`` differs from ``previous`` only in activities ``own`` says the writer
    performs (added, removed or changed)."""
    def rest(plan: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in plan.items() if k not in ("activity", "meta", "text", "id")}

    def others(plan: dict[str, Any]) -> list[Any]:
        return [a for a in plan.get("activity") or [] if not own(a)]

    return rest(previous) == rest(new) and others(previous) == others(new)
