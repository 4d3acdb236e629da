"""The caller's view, compiled into the search: :class:`AccessControl` is the FHIR service's
:class:`~server.fhir.service.Access`.

Per caller and resource type, :meth:`AccessControl.conditions` gives conditions on the
resource itself that the storage engines answer from their index tables:

- internal callers and administrative systems: none (everything; AuditEvents only with the
  auditor scope);
- directory types (Organization, Practitioner, PractitionerRole): none;
- Subscriptions: the caller's own (``meta.tag`` ``owner`` = the caller's key, set when it
  wrote them);
- the person (a patient token): ``_person`` is themself;
- a health worker who states a reason for emergency access: any person's data (read
  interactions only: writes follow the ordinary rules);
- an organisation's system or health worker: ANY of
    * for each content class ``c`` the type can have: ``_class = c`` AND the resource's
      person has a grant of a holder of the caller, for ``c``, valid now
      (``_person -> Patient <- AccessGrant.person`` with ``scope = holder|c``);
    * (measures) the caller's organisation is ``_responsible`` for it AND the person has
      any grant of the caller valid now;
    * a notification grant of the caller ``covers`` it;
- anything else (AuditEvents without the auditor scope, stored Bundles): nothing.

Identity resolution is the one exception: an organisation's conditional interaction whose
only criteria are a national person identifier (``Patient?identifier=<fnr system>|<number>``:
``If-None-Exist``, a transaction's conditional reference) matches every Patient, so that the
same person is one Patient whoever registers them first. What the caller learns of a person
it may not see is only the Patient's id with the identifier it already had (a stub labelled
``REDACTED``); the access is audited like any other.

:meth:`AccessControl.restrict` adds them to a search and to the types its chains and ``_has``
reach; a search parameter that looks inside a plan's measures (``activity-code`` ...) only
matches plans whose person gave the caller the whole plan. So totals, paging, includes,
chains, ``_has`` and history never count or show more than a read would.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..fhir.outcome import FhirError
from ..fhir.search.ast import (
    AllOf,
    AnyOf,
    Chain,
    Clause,
    Condition,
    Has,
    MissingQuery,
    ReferenceQuery,
    SearchParam,
    SearchQuery,
    TokenQuery,
)
from ..fhir.service import FhirService, Reader, RequestContext
from ..plans.identifiers import ENH_SYSTEM, HPR_SYSTEM, PERSON_SYSTEMS
from ..store.port import now_instant
from .caller import INTERNAL, PATIENT, Caller, caller_of
from .grants import Grants, during
from .index import (
    ANY,
    CLASS,
    FULL,
    GRANT_COVERS,
    GRANT_PERSON,
    GRANT_SCOPE,
    GRANT_TYPE,
    NOTICE,
    PERSON,
    RESPONSIBLE,
    persons,
)
from .labels import (
    CLASSES,
    CONTENT_CLASS_SYSTEM,
    HEALTH,
    OPEN_TYPES,
    OWNED_TYPES,
    OWNER_SYSTEM,
    PERSON_TYPES,
    REDACTED,
    RESPONSIBLE_PARAMS,
    TYPE_CLASS,
    activity_performers,
)
from .views import Own, plan_view

NOTHING: Condition = AnyOf(())
"""A condition no resource matches."""

WHOLE_PLAN_PARAMS: dict[str, frozenset[str]] = {
    "CarePlan": frozenset({"activity-code", "activity-date", "activity-reference", "performer",
                           "condition"}),
}
"""Search parameters that look inside a plan's measures and conditions: they only match the
plans the caller sees whole."""


def possible_classes(type_: str) -> tuple[str, ...]:
    """The content classes a resource of ``type_`` can have."""
    if type_ == "Provenance":
        return CLASSES
    return tuple(dict.fromkeys((TYPE_CLASS[type_], HEALTH)))


def _tokens(holders: tuple[str, ...], code: str) -> tuple[TokenQuery, ...]:
    return tuple(TokenQuery(holder, code) for holder in holders)


@dataclasses.dataclass(frozen=True)
class Standing:
    """What a caller holds for one person now: the classes it sees, whether it maintains
    the plan, and the resources notifications let it see (``covers``)."""

    classes: frozenset[str]
    maintain: bool
    covers: frozenset[str]
    received: bool  # the addressee of a notification about the person
    emergency: bool  # it holds an emergency grant
    ordinary: bool  # it holds a care-team or notification grant

    @property
    def any(self) -> bool:
        return bool(self.classes)


class AccessControl:
    """Who may see what (see the module doc); installed as ``service.access``."""

    def __init__(self, service: FhirService, own_issuer: str) -> None:
        self.service = service
        self.registry = service.registry
        self.own_issuer = own_issuer
        self.grants = Grants(lambda reader, type_, params: service.lookup(
            reader, type_, params, limit=1000))

    def caller(self, ctx: RequestContext, *, strict: bool = True) -> Caller:
        return caller_of(ctx.principal, self.own_issuer, strict=strict)

    # -- the Access protocol ---------------------------------------------------------------

    def conditions(self, ctx: RequestContext, type_: str) -> list[Condition] | None:
        caller = self.caller(ctx)
        if type_ == "AuditEvent":
            if caller.kind == INTERNAL or caller.auditor:
                return None
            return [self._person_is(caller.patient)] if caller.kind == PATIENT else [NOTHING]
        if caller.unrestricted or type_ in OPEN_TYPES:
            return None
        if type_ in OWNED_TYPES:
            return [self._owned_by(caller)]
        if type_ not in PERSON_TYPES:
            return [NOTHING]
        if caller.kind == PATIENT:
            return [self._person_is(caller.patient)]
        if caller.emergency:
            return [Clause(PERSON, "missing", (MissingQuery(False),))]
        if not caller.holders:
            return [NOTHING]
        return [self._granted(caller, type_)]

    def restrict(self, ctx: RequestContext, query: SearchQuery) -> SearchQuery:
        caller = self.caller(ctx)
        conditions = [self._inner(ctx, caller, query.type, c) for c in query.conditions]
        conditions += self.conditions(ctx, query.type) or []
        return dataclasses.replace(query, conditions=conditions)

    def shown(self, ctx: RequestContext, resource: dict[str, Any]) -> dict[str, Any]:
        caller = self.caller(ctx)
        if (resource.get("resourceType") != "CarePlan" or caller.unrestricted
                or caller.kind == PATIENT or caller.emergency):
            return resource
        found = persons(self.registry, resource)
        standing = self.standing(self.service.store, caller, found[0]) if found else None
        if standing is None or f"CarePlan/{resource.get('id')}" in standing.covers:
            return resource
        return plan_view(resource, standing.classes, self.own(self.service.store, caller))

    def matches(self, ctx: RequestContext, reader: Reader,
                query: SearchQuery) -> list[dict[str, Any]]:
        caller = self.caller(ctx)
        wanted = _identities(query)
        if not wanted or caller.kind == PATIENT or not (caller.holders or caller.unrestricted):
            return [self.shown(ctx, r) for r in reader.search(self.restrict(ctx, query)).resources]
        return [r if self.service.visible(ctx, reader, "Patient", str(r["id"]))
                else _identity_stub(r, wanted) for r in reader.search(query).resources]

    # -- what a caller holds ----------------------------------------------------------------

    def standing(self, reader: Reader, caller: Caller, person: str) -> Standing:
        """What ``caller`` holds for ``person`` now (through ``reader``)."""
        now = now_instant()[1]
        grants = self.grants.of_person(reader, person, holders=caller.holders, at_ms=now)
        mine = set(caller.holders)
        classes: set[str] = set()
        maintain = received = emergency = ordinary = False
        covers: set[str] = set()
        for grant in grants:
            if grant.get("kind") == "notification":
                covers |= set(grant.get("covers") or [])
                received |= bool(mine & set(grant.get("received") or []))
                ordinary = True
                continue
            classes |= set(grant.get("classes") or [])
            maintain |= bool(grant.get("maintain"))
            emergency |= grant.get("kind") == "emergency"
            ordinary |= grant.get("kind") != "emergency"
        return Standing(frozenset(classes), maintain, frozenset(covers), received, emergency,
                        ordinary)

    def own_refs(self, reader: Reader, caller: Caller) -> set[str]:
        """``Type/id`` of the Organizations, PractitionerRoles and Practitioner that are the
        caller (its organisation, that organisation's roles, the health worker)."""
        refs: set[str] = set()
        if caller.organization:
            orgs = self.service.lookup(reader, "Organization", {
                "identifier": f"{ENH_SYSTEM}|{caller.organization}"})
            refs |= {f"Organization/{o['id']}" for o in orgs}
            for org in list(refs):
                roles = self.service.lookup(reader, "PractitionerRole", {"organization": org},
                                            limit=1000)
                refs |= {f"PractitionerRole/{r['id']}" for r in roles}
        if caller.practitioner:
            found = self.service.lookup(reader, "Practitioner", {
                "identifier": f"{HPR_SYSTEM}|{caller.practitioner}"})
            refs |= {f"Practitioner/{p['id']}" for p in found}
        if caller.patient:
            refs.add(f"Patient/{caller.patient}")
        return refs

    def own(self, reader: Reader, caller: Caller) -> Own:
        """Whether ``caller`` is responsible for a plan activity (looked up once, lazily)."""
        cache: list[set[str]] = []

        def test(activity: dict[str, Any]) -> bool:
            if not cache:
                cache.append(self.own_refs(reader, caller))
            return bool(cache[0] & set(activity_performers(activity)))

        return test

    # -- conditions ---------------------------------------------------------------------------

    def _param(self, type_: str, code: str) -> SearchParam:
        param = self.registry.param(type_, code)
        if param is None:
            raise FhirError.of(500, f"The search parameter {type_}.{code} the access layer "
                               "needs is missing", code="exception")
        return param

    def _owned_by(self, caller: Caller) -> Condition:
        if not caller.owner:
            return NOTHING
        return Clause(self._param("Subscription", "_tag"), None,
                      (TokenQuery(OWNER_SYSTEM, caller.owner),))

    @staticmethod
    def _person_is(patient: str | None) -> Condition:
        if not patient:
            return NOTHING
        return Clause(PERSON, None, (ReferenceQuery("Patient", patient),))

    @staticmethod
    def _person_holds(caller: Caller, code: str) -> Condition:
        """The resource's person has a grant of the caller for ``code``, valid now."""
        now = now_instant()[1]
        grant = AllOf((Clause(GRANT_SCOPE, None, _tokens(caller.holders, code)), *during(now)))
        return Chain(PERSON, "Patient", Has(GRANT_TYPE, GRANT_PERSON, grant))

    def _granted(self, caller: Caller, type_: str) -> Condition:
        branches: list[Condition] = [
            AllOf((Clause(CLASS, None, (TokenQuery(CONTENT_CLASS_SYSTEM, klass),)),
                   self._person_holds(caller, klass)))
            for klass in possible_classes(type_)]
        if type_ in RESPONSIBLE_PARAMS:
            branches.append(AllOf((self._responsible(caller), self._person_holds(caller, ANY))))
        branches.append(Has(GRANT_TYPE, GRANT_COVERS,
                            Clause(GRANT_SCOPE, None, _tokens(caller.holders, NOTICE))))
        return AnyOf(tuple(branches))

    def _responsible(self, caller: Caller) -> Condition:
        """The caller (its organisation or the health worker) answers for the measure."""
        ways: list[Condition] = []
        identifier = self._param("Organization", "identifier")
        if caller.organization:
            is_org = Clause(identifier, None, (TokenQuery(ENH_SYSTEM, caller.organization),))
            ways.append(Chain(RESPONSIBLE, "Organization", is_org))
            ways.append(Chain(RESPONSIBLE, "PractitionerRole", Chain(
                self._param("PractitionerRole", "organization"), "Organization", is_org)))
        if caller.practitioner:
            ways.append(Chain(RESPONSIBLE, "Practitioner", Clause(
                self._param("Practitioner", "identifier"), None,
                (TokenQuery(HPR_SYSTEM, caller.practitioner),))))
        return AnyOf(tuple(ways))

    def _inner(self, ctx: RequestContext, caller: Caller, type_: str,
               cond: Condition) -> Condition:
        """A client's condition with the caller's view applied to what it reaches."""
        if isinstance(cond, Chain):
            inner = self._inner(ctx, caller, cond.target_type, cond.inner)
            extra = self.conditions(ctx, cond.target_type) or []
            return dataclasses.replace(cond, inner=AllOf((inner, *extra)) if extra else inner)
        if isinstance(cond, Has):
            inner = self._inner(ctx, caller, cond.other_type, cond.inner)
            extra = self.conditions(ctx, cond.other_type) or []
            return dataclasses.replace(cond, inner=AllOf((inner, *extra)) if extra else inner)
        if isinstance(cond, AllOf | AnyOf):
            return dataclasses.replace(cond, conditions=tuple(
                self._inner(ctx, caller, type_, c) for c in cond.conditions))
        if (cond.param.code in WHOLE_PLAN_PARAMS.get(type_, ()) and caller.holders
                and not caller.unrestricted and caller.kind != PATIENT and not caller.emergency):
            return AllOf((cond, self._person_holds(caller, FULL)))
        return cond


def _identities(query: SearchQuery) -> set[tuple[str, str]]:
    """The (system, number) pairs of a Patient query whose only criteria are national person
    identifiers (empty for any other query)."""
    if query.type != "Patient" or not query.conditions:
        return set()
    wanted: set[tuple[str, str]] = set()
    for cond in query.conditions:
        if not (isinstance(cond, Clause) and cond.param.code == "identifier"
                and cond.modifier is None):
            return set()
        for value in cond.values:
            if not (isinstance(value, TokenQuery) and value.system in PERSON_SYSTEMS
                    and value.code):
                return set()
            wanted.add((value.system, value.code))
    return wanted


def _identity_stub(patient: dict[str, Any], wanted: set[tuple[str, str]]) -> dict[str, Any]:
    """What identity resolution shows of a Patient the caller may not see: its id and the
    identifiers the caller searched by."""
    meta = patient.get("meta") or {}
    return {
        "resourceType": "Patient", "id": patient["id"],
        "meta": {**{k: meta[k] for k in ("versionId", "lastUpdated") if k in meta},
                 "security": [REDACTED]},
        "identifier": [i for i in patient.get("identifier") or [] if isinstance(i, dict)
                       and (i.get("system"), i.get("value")) in wanted],
    }
