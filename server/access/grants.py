"""Who may see whom, materialised at write time: access grants.

A grant is a server-internal record (type :data:`~.index.GRANT_TYPE`, never served) written
in the same unit of work as the write that changes it, so that a search can ask "does this
caller hold a grant for this person covering this content class now?" inside the storage
query. Three kinds:

``care-team``
    Derived for one person from their ACTIVE CareTeams (``subject`` = the person) and their
    ACTIVE Consents. A participant's organisation - the member Organization, the
    organisation of a member PractitionerRole, or ``onBehalfOf`` - gets a grant when a consent
    permits it: the consent's ``organization`` (the organisation that took the consent and
    makes the plan) and the ``actor`` s of ``permit`` provisions (an Organization; a
    PractitionerRole, meaning its organisation; a CareTeam, meaning all its participants; a
    ``participant-role`` code in ``actor.role``, meaning whoever holds that role; a
    Practitioner, meaning that health worker only - the grant is then for
    ``orgnr/HPR``). A provision's ``securityLabel`` codes of ``content-class`` limit it to
    those classes; nested ``deny`` provisions take classes away. The grant's period is the
    overlap of the participant's period and the provision's period, so a grant ends by
    itself. The coordinator's organisation (role ``koordinator`` or ``koordinerende-enhet``)
    and the plan's responsible organisation also ``maintain`` the plan.
``notification``
    For each notification Task (``task-code#ip-notification``): its requester's and its
    owner's organisations see the Task and, while it is open, what it carries (``for``,
    ``focus``, input and output references), and nothing else of the person; the owner (the
    coordinating unit it is addressed to) is marked ``received`` while it is open. Once the
    notification is answered (completed, rejected, cancelled, failed) both parties keep the
    Task with its outcome and nothing more: what they see of the person from then on is what
    the person's consent gives them as members of the care team.
    A Communication about a notification Task (a reminder that the green form is overdue)
    gets a notification grant of its own: its sender's and its recipients' organisations see
    it.
``emergency``
    Opened when a practitioner states a reason for emergency access: that practitioner
    (``orgnr/HPR``) sees all of the person's data until it expires.

A holder is an organisation number, or ``orgnr/HPR`` for one health worker of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..fhir.search.ast import (
    MAX_MS,
    MIN_MS,
    Clause,
    DateQuery,
    ReferenceQuery,
    SearchQuery,
    TokenQuery,
)
from ..fhir.search.normalize import parse_reference, period_range
from ..fhir.service import Reader
from ..plans.identifiers import ENH_SYSTEM, HPR_SYSTEM
from ..plans.tasks import FINAL as FINAL_TASK_STATUSES
from ..store.port import UnitOfWork
from .index import GRANT_KIND, GRANT_PERIOD, GRANT_PERSON, GRANT_SCOPE, GRANT_TYPE
from .labels import CLASSES, CONTENT_CLASS_SYSTEM, is_notification

PARTICIPANT_ROLE_SYSTEM = "http://planbro.no/fhir/CodeSystem/participant-role"
MAINTAINER_ROLES = frozenset({"koordinator", "koordinerende-enhet"})
RESPONSIBLE_ORG_URLS = (
    "http://planbro.no/fhir/StructureDefinition/ip-responsible-organization",
    "http://planbro.no/fhir/StructureDefinition/sip-overall-responsible",
)
CARE_TEAM, NOTIFICATION, EMERGENCY = "care-team", "notification", "emergency"
_OPEN_PLAN_STATUSES = "draft,active,on-hold"
_MAX_FOUND = 1000

Lookup = Callable[[Reader, str, dict[str, str]], list[dict[str, Any]]]
"""Resources of a type matching search parameters, read through a reader (no caller)."""


def holder_key(organization: str | None, practitioner: str | None = None) -> str:
    """The holder a grant names: ``orgnr`` or ``orgnr/HPR``."""
    return f"{organization or ''}/{practitioner}" if practitioner else organization or ""


def _ref(node: Any) -> tuple[str, str] | None:
    """(type, id) of a Reference (a dict) or a reference string, if it names one."""
    text = node.get("reference") if isinstance(node, dict) else node
    parts = parse_reference(text) if isinstance(text, str) else None
    if parts is None or not parts.target_type or not parts.target_id:
        return None
    return parts.target_type, parts.target_id


def _patient_id(node: Any) -> str | None:
    """The id of the Patient a Reference names (None for anything else)."""
    found = _ref(node)
    return found[1] if found and found[0] == "Patient" else None


def about_tasks(message: dict[str, Any]) -> list[str]:
    """The ids of the Tasks a Communication is ``about``."""
    return [found[1] for node in message.get("about") or []
            if (found := _ref(node)) and found[0] == "Task"]


def _identifier(resource: dict[str, Any] | None, system: str) -> str | None:
    for ident in (resource or {}).get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == system and ident.get("value"):
            return str(ident["value"])
    return None


class Directory:
    """Organisation numbers and HPR numbers behind references, read through one reader (the
    unit of work deriving grants, so that it sees its own writes)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self._read: dict[tuple[str, str], dict[str, Any] | None] = {}

    def resource(self, type_: str, id_: str) -> dict[str, Any] | None:
        key = (type_, id_)
        if key not in self._read:
            version = self.reader.read(type_, id_)
            self._read[key] = None if version is None or version.deleted else version.resource
        return self._read[key]

    def orgnr(self, node: Any) -> str | None:
        """The organisation number of a Reference to an Organization (or its identifier)."""
        if isinstance(node, dict) and isinstance(node.get("identifier"), dict):
            ident = node["identifier"]
            if ident.get("system") == ENH_SYSTEM and ident.get("value"):
                return str(ident["value"])
        ref = _ref(node)
        if ref is None or ref[0] != "Organization":
            return None
        return _identifier(self.resource(*ref), ENH_SYSTEM)

    def member(self, node: Any) -> tuple[str | None, str | None]:
        """(orgnr, HPR) behind a Reference to an Organization, PractitionerRole or
        Practitioner."""
        ref = _ref(node)
        if ref is None:
            return self.orgnr(node), None
        if ref[0] == "Organization":
            return self.orgnr(node), None
        if ref[0] == "Practitioner":
            return None, _identifier(self.resource(*ref), HPR_SYSTEM)
        if ref[0] == "PractitionerRole":
            role = self.resource(*ref) or {}
            hpr = self.member(role.get("practitioner"))[1] if role.get("practitioner") else None
            return self.orgnr(role.get("organization")), hpr
        return None, None


def _period(node: Any) -> tuple[int, int]:
    if not isinstance(node, dict):
        return MIN_MS, MAX_MS
    try:
        return period_range(node.get("start"), node.get("end"))
    except ValueError:
        return MIN_MS, MAX_MS


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo <= hi else None


def _classes(provision: dict[str, Any]) -> frozenset[str]:
    return frozenset(str(c.get("code")) for c in provision.get("securityLabel") or []
                     if isinstance(c, dict) and c.get("system") == CONTENT_CLASS_SYSTEM
                     and c.get("code") in CLASSES)


@dataclass(frozen=True)
class Participant:
    """A participant of a care team with an organisation."""

    org: str
    hpr: str | None
    roles: frozenset[str]
    team: str
    period: tuple[int, int]


@dataclass(frozen=True)
class Permit:
    """Who a consent provision names (``kind`` org | practitioner | role | team) and which
    classes it permits (or, ``deny``, takes away) in which period."""

    kind: str
    value: str
    classes: frozenset[str]
    period: tuple[int, int]
    deny: bool = False

    def holder(self, p: Participant) -> str | None:
        """The holder this provision makes of participant ``p``, if it names them."""
        if self.kind == "org" and p.org == self.value:
            return p.org
        if self.kind == "practitioner" and p.hpr == self.value:
            return holder_key(p.org, p.hpr)
        if (self.kind == "role" and self.value in p.roles) or (
                self.kind == "team" and p.team == self.value):
            return p.org
        return None


def participants(team: dict[str, Any], directory: Directory) -> list[Participant]:
    """The participants of a care team that act for an organisation."""
    out = []
    for part in team.get("participant") or []:
        if not isinstance(part, dict):
            continue
        roles = frozenset(str(c.get("code")) for role in part.get("role") or []
                          for c in (role.get("coding") or []) if isinstance(c, dict)
                          and c.get("system") == PARTICIPANT_ROLE_SYSTEM)
        org, hpr = directory.member(part.get("member"))
        if part.get("onBehalfOf"):
            org = directory.orgnr(part["onBehalfOf"]) or org
        if org:
            out.append(Participant(org, hpr, roles, str(team.get("id")),
                                   _period(part.get("period"))))
    return out


def _actor_permits(actor: dict[str, Any], classes: frozenset[str], period: tuple[int, int],
                   deny: bool, directory: Directory) -> list[Permit]:
    out = [Permit("role", str(c.get("code")), classes, period, deny)
           for c in (actor.get("role") or {}).get("coding") or []
           if isinstance(c, dict) and c.get("system") == PARTICIPANT_ROLE_SYSTEM]
    ref = _ref(actor.get("reference"))
    kind, value = None, None
    if ref is not None and ref[0] == "CareTeam":
        kind, value = "team", ref[1]
    elif ref is not None and ref[0] == "Practitioner":
        kind, value = "practitioner", directory.member(actor["reference"])[1]
    else:
        kind, value = "org", directory.member(actor.get("reference"))[0]
    if value:
        out.append(Permit(kind, value, classes, period, deny))
    return out


def permits(consent: dict[str, Any], directory: Directory) -> list[Permit]:
    """What an active consent permits (a refusal, ``provision.type`` deny, permits nothing)."""
    provision = consent.get("provision") or {}
    if provision.get("type", "permit") != "permit":
        return []
    period = _period(provision.get("period"))
    base = _classes(provision) or frozenset(CLASSES)
    out = [Permit("org", org, base, period) for org in
           (directory.orgnr(o) for o in consent.get("organization") or []) if org]
    for actor in provision.get("actor") or []:
        out += _actor_permits(actor, base, period, False, directory)
    for nested in provision.get("provision") or []:
        deny = nested.get("type") == "deny"
        within = _overlap(period, _period(nested.get("period")))
        if within is None:
            continue
        classes = _classes(nested) or (frozenset(CLASSES) if deny else base)
        for actor in nested.get("actor") or []:
            out += _actor_permits(actor, classes, within, deny, directory)
    return out


def _responsible_orgs(plan: dict[str, Any], directory: Directory) -> set[str]:
    return {org for ext in plan.get("extension") or [] if ext.get("url") in RESPONSIBLE_ORG_URLS
            if (org := directory.orgnr(ext.get("valueReference")))}


@dataclass
class _Share:
    classes: set[str]
    maintain: bool
    basis: set[str]


def care_team_grants(person: str, teams: Iterable[dict[str, Any]],
                     consents: Iterable[dict[str, Any]], plans: Iterable[dict[str, Any]],
                     directory: Directory) -> list[dict[str, Any]]:
    """The care-team grants of one person (see the module doc), as grant records."""
    members = [(p, team) for team in teams for p in participants(team, directory)]
    given = [(m, consent) for consent in consents for m in permits(consent, directory)]
    maintainers = {p.org for p, _ in members if p.roles & MAINTAINER_ROLES}
    for plan in plans:
        maintainers |= _responsible_orgs(plan, directory)
    shares: dict[tuple[str, int, int], _Share] = {}
    for p, team in members:
        for permit, consent in given:
            holder = None if permit.deny else permit.holder(p)
            within = _overlap(p.period, permit.period) if holder else None
            if holder is None or within is None:
                continue
            denied = {c for d, _ in given if d.deny and d.holder(p) == holder
                      and _overlap(d.period, within) for c in d.classes}
            share = shares.setdefault((holder, *within), _Share(set(), False, set()))
            share.classes |= permit.classes - denied
            share.maintain |= holder == p.org and p.org in maintainers
            share.basis |= {f"CareTeam/{team.get('id')}", f"Consent/{consent.get('id')}"}
    grants = []
    for n, ((holder, lo, hi), share) in enumerate(sorted(shares.items())):
        if share.classes:
            grants.append(_record(
                f"ct.{person}.{holder.replace('/', '-')}.{n}", CARE_TEAM, person, [holder],
                classes=sorted(share.classes), maintain=share.maintain, period=(lo, hi),
                basis=sorted(share.basis)))
    return grants


def notification_grant(task: dict[str, Any], directory: Directory) -> dict[str, Any] | None:
    """The grant of a notification Task's parties (None for other Tasks)."""
    if not is_notification(task):
        return None
    requester = directory.member(task.get("requester"))[0]
    owner = directory.member(task.get("owner"))[0]
    holders = [h for h in dict.fromkeys((requester, owner)) if h]
    covers = [f"Task/{task['id']}"]
    open_ = task.get("status") not in FINAL_TASK_STATUSES
    if open_:
        carried = [task.get("for"), task.get("focus")]
        for part in [*(task.get("input") or []), *(task.get("output") or [])]:
            if isinstance(part, dict):
                carried.append(part.get("valueReference"))
        covers += [f"{t}/{i}" for ref in carried if (found := _ref(ref)) for t, i in [found]]
    return _record(f"nt.{task['id']}", NOTIFICATION, _patient_id(task.get("for")), holders,
                   covers=list(dict.fromkeys(covers)),
                   received=[owner] if owner and open_ else [],
                   basis=[f"Task/{task['id']}"])


def message_grant(message: dict[str, Any], directory: Directory) -> dict[str, Any] | None:
    """The grant of a Communication about a notification Task (None for other
    Communications): its sender and recipients see it."""
    about = about_tasks(message)
    if not any(is_notification(task) for id_ in about
               if (task := directory.resource("Task", id_))):
        return None
    parties = [message.get("sender"), *(message.get("recipient") or [])]
    holders = [h for h in dict.fromkeys(directory.member(p)[0] for p in parties) if h]
    return _record(f"nm.{message['id']}", NOTIFICATION, _patient_id(message.get("subject")),
                   holders, covers=[f"Communication/{message['id']}"],
                   basis=[f"Task/{id_}" for id_ in about])


def emergency_grant(person: str, holder: str, reason: str, start: int,
                    end: int) -> dict[str, Any]:
    """A time-limited grant of everything of ``person`` to one health worker."""
    return _record(f"em.{person}.{holder.replace('/', '-')}", EMERGENCY, person, [holder],
                   classes=list(CLASSES), period=(start, end), reason=reason)


def _record(id_: str, kind: str, person: str | None, holders: list[str], *,
            classes: list[str] | None = None, maintain: bool = False,
            period: tuple[int, int] = (MIN_MS, MAX_MS), covers: list[str] | None = None,
            received: list[str] | None = None, reason: str | None = None,
            basis: list[str] | None = None) -> dict[str, Any]:
    lo, hi = period
    out: dict[str, Any] = {
        "resourceType": GRANT_TYPE, "id": id_, "kind": kind, "person": person,
        "holders": holders, "classes": classes or [], "maintain": maintain,
        "period": {"start": None if lo == MIN_MS else lo, "end": None if hi == MAX_MS else hi},
    }
    for name, value in (("covers", covers), ("received", received), ("reason", reason),
                        ("basis", basis)):
        if value:
            out[name] = value
    return out


def _same(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    return stored is not None and {k: v for k, v in stored.items() if k != "meta"} == wanted


class Grants:
    """Derives, stores and finds grants (through a unit of work or a reader)."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup

    # -- writing -------------------------------------------------------------------------

    def sync_person(self, uow: UnitOfWork, person: str) -> None:
        """Derive the care-team grants of ``person`` again and store what changed. Without
        an active care team there are none, and without an active consent neither: the
        consents and the plans are looked up only when they can make a grant."""
        subject = f"Patient/{person}"
        teams = self.lookup(uow, "CareTeam", {"subject": subject, "status": "active"})
        consents = teams and self.lookup(uow, "Consent", {"patient": subject,
                                                          "status": "active"})
        plans = consents and self.lookup(uow, "CarePlan", {"subject": subject,
                                                           "status": _OPEN_PLAN_STATUSES})
        wanted = {g["id"]: g for g in care_team_grants(person, teams, consents, plans,
                                                       Directory(uow))}
        for stored in self.of_person(uow, person, kind=CARE_TEAM):
            if stored["id"] not in wanted:
                uow.delete(GRANT_TYPE, str(stored["id"]))
            elif _same(stored, wanted[stored["id"]]):
                del wanted[stored["id"]]
        for grant in wanted.values():
            uow.update(GRANT_TYPE, grant["id"], grant)

    def sync_notification(self, uow: UnitOfWork, task_id: str) -> None:
        """Store (or remove) the grant of a notification Task as it is now."""
        self._sync_one(uow, "Task", task_id, f"nt.{task_id}", notification_grant)

    def sync_message(self, uow: UnitOfWork, message_id: str) -> None:
        """Store (or remove) the grant of a Communication about a notification as it is
        now."""
        self._sync_one(uow, "Communication", message_id, f"nm.{message_id}", message_grant)

    @staticmethod
    def _sync_one(uow: UnitOfWork, type_: str, id_: str, grant_id: str,
                  derive: Callable[[dict[str, Any], Directory], dict[str, Any] | None]) -> None:
        current = uow.read(type_, id_)
        resource = None if current is None or current.deleted else current.resource
        grant = derive(resource, Directory(uow)) if resource is not None else None
        stored = uow.read(GRANT_TYPE, grant_id)
        live = stored is not None and not stored.deleted
        if grant is None:
            if live:
                uow.delete(GRANT_TYPE, grant_id)
        elif not (live and stored is not None and _same(stored.resource, grant)):
            uow.update(GRANT_TYPE, grant["id"], grant)

    def open_emergency(self, uow: UnitOfWork, person: str, holder: str, reason: str,
                       start: int, end: int) -> None:
        grant = emergency_grant(person, holder, reason, start, end)
        uow.update(GRANT_TYPE, grant["id"], grant)

    # -- finding -------------------------------------------------------------------------

    @staticmethod
    def of_person(reader: Reader, person: str, *, kind: str | None = None,
                  holders: Iterable[str] = (), at_ms: int | None = None) -> list[dict]:
        """The stored grants of ``person`` (of one kind, of some holders, valid at a time)."""
        conditions = [Clause(GRANT_PERSON, None, (ReferenceQuery("Patient", person),))]
        if kind is not None:
            conditions.append(Clause(GRANT_KIND, None, (TokenQuery("", kind),)))
        wanted = list(holders)
        if wanted:
            conditions.append(Clause(GRANT_SCOPE, None, tuple(TokenQuery(h, None)
                                                              for h in wanted)))
        if at_ms is not None:
            conditions += during(at_ms)
        found = reader.search(SearchQuery(type=GRANT_TYPE, conditions=conditions,
                                          count=_MAX_FOUND))
        return [dict(r) for r in found.resources]


def during(at_ms: int) -> list[Clause]:
    """Grant conditions: valid at ``at_ms`` (its period contains the instant)."""
    return [Clause(GRANT_PERIOD, None, (DateQuery("le", at_ms, at_ms),)),
            Clause(GRANT_PERIOD, None, (DateQuery("ge", at_ms, at_ms),))]

