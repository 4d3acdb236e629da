"""The FHIR RESTful interactions (R4 http.html) over the storage port, without HTTP.

:class:`FhirService` implements every interaction the server offers and returns a plain
:class:`Result` (status, body, headers); the Flask layer only translates HTTP to calls and
results back to HTTP. Every interaction takes a :class:`RequestContext` first: the base URL for
links, the caller's ``Prefer`` choices and the authenticated principal (None until an
authentication layer attaches one).

Extension points for the layers above FHIR mechanics:

* ``before_write`` - hooks called inside the unit of work with a :class:`WriteContext` just
  before a resource version is stored (create, update, patch, delete). A hook may raise
  :class:`FhirError` to refuse the write, adjust ``resource`` in place, or set ``keys`` (the
  unique keys the resource holds, enforced by the store).
* ``after_write`` - hooks called inside the same unit of work with the stored version
  (audit records and notification outboxes commit or roll back with the write).
* ``validators`` - profile validation: called with a resource and the profiles asked for
  (empty: the ones the resource claims in ``meta.profile``); their issues are reported by
  ``$validate`` and refuse writes with 422 when any is an error.
* ``before_commit`` - hooks called with the caller's context and the unit of work when all of
  its writes are done, just before it commits (checks of what the writes leave behind).
* ``access`` - which stored resources the caller may see (:class:`Access`). It is applied
  INSIDE the storage queries by the read seams (``_load``, ``_execute``, ``_read_many``,
  ``_history``), so that totals, paging, includes, chains, ``_has``, history and vread
  never show more; what it hides is "not found" (404), never "forbidden".
* ``observers`` - called when an interaction of a caller ends (:class:`Interaction`, with its
  result or its error); an observer that raises fails the interaction (audit).
* ``server_records`` - types the server writes about interactions itself (audit records),
  left out of the system-level history.

Decisions where R4 leaves a choice: deleting a resource that is already deleted or never
existed is a successful no-op (204, no new version); a conditional delete with no match is the
same; a JSON Patch that cannot be applied is 422; a conditional patch with no match is 404.

Conditional requests (RFC 9110 13): ``If-Match`` and ``If-None-Match`` take ``*`` or a list
of version ETags, on every write (PUT, PATCH, DELETE, and their conditional forms) and on
read. A write proceeds only if the current version satisfies both (``If-Match: *``: there is
one; ``If-None-Match: *``: there is none, a create-only PUT), else 412; a read whose
If-None-Match matches is 304. As RFC 9110 13.2.1 asks, a precondition never turns an error
the request would get without it into a 412: a PATCH of a missing resource stays 404, a write
to a resource the caller may not see stays 404.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import inspect
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

from ..config import Config
from ..store.port import (
    ETags,
    Expected,
    HistoryQuery,
    Indexed,
    Store,
    UnitOfWork,
    Version,
    VersionConflict,
    check_version,
    iter_chunks,
    new_id,
    now_instant,
    satisfies,
)
from . import capability, model
from .outcome import FhirError, Issue, issue, not_found, outcome
from .patch import apply_json_patch
from .references import foreign_patient_issues, placeholder_issues, references_in
from .search.ast import (
    Clause,
    Condition,
    Keyset,
    KeyValue,
    ReferenceQuery,
    SearchQuery,
    SearchResult,
)
from .search.normalize import ID_RE, date_range
from .search.parse import BareId, Include, ParsedSearch, page_token, parse_search
from .search.registry import Registry
from .types import STORED_TYPES

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
MAX_INCLUDE_DEPTH = 3  # rounds of _include:iterate / _revinclude:iterate
MAX_INCLUDED = 1000  # resources added to one page by _include / _revinclude
PREFER_RETURN = ("minimal", "representation", "OperationOutcome")
_SUMMARY_MODES = ("true", "text", "data", "count", "false")
_PAGING_PARAMS = ("_count", "_offset", "_page")
Ref = tuple[str, str, str]
"""A resource, or one version of it: (type, id, version), version "" for the current one."""

# The interactions this service implements, read by the CapabilityStatement.
TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance",
                     "history-type", "create", "search-type")
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")
OPERATIONS = (("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate"),)


class Reader(Protocol):
    """What reads need: the store itself, or a unit of work (which sees its own writes)."""

    def read(self, type_: str, id_: str) -> Version | None: ...

    def vread(self, type_: str, id_: str, version: int) -> Version | None: ...

    def search(self, query: SearchQuery) -> SearchResult: ...

    def history(self, query: HistoryQuery) -> tuple[list[Version], int]: ...

    def deleted_versions(self, versions: Sequence[tuple[str, str, int]]
                         ) -> set[tuple[str, str, int]]: ...


class Guard(Protocol):
    """What the caller's token allows: consulted for every interaction, every batch or
    transaction entry and every included type. The authentication layer supplies one that
    reads SMART scopes; the default allows everything (internal callers)."""

    def check(self, ctx: RequestContext, interaction: str, type_: str | None) -> None:
        """Raise a FhirError (403) unless ``interaction`` on ``type_`` is allowed."""

    def restriction(self, ctx: RequestContext, type_: str, perm: str) -> list[tuple[str, str]]:
        """Search parameters every resource the caller reads (``perm`` r or s) must also
        match; [] when unrestricted."""


class OpenGuard:
    """Allows everything: for callers inside the server (demo loading, the CLI)."""

    def check(self, ctx: RequestContext, interaction: str, type_: str | None) -> None:
        return None

    def restriction(self, ctx: RequestContext, type_: str, perm: str) -> list[tuple[str, str]]:
        return []


class Access(Protocol):
    """Which stored resources a caller may see, and how much of each. The access-control
    layer supplies one; the default (:class:`OpenAccess`) shows everything."""

    def conditions(self, ctx: RequestContext, type_: str) -> list[Condition] | None:
        """Conditions every resource of ``type_`` the caller sees must match; None when the
        caller sees every resource of the type (deleted ones included)."""

    def restrict(self, ctx: RequestContext, query: SearchQuery) -> SearchQuery:
        """``query`` limited to what the caller may see: its own type, and the types its
        chains and ``_has`` conditions reach."""

    def shown(self, ctx: RequestContext, resource: dict[str, Any]) -> dict[str, Any]:
        """``resource`` as the caller may see it (a partial view hides parts of it)."""

    def matches(self, ctx: RequestContext, reader: Reader,
                query: SearchQuery) -> list[dict[str, Any]]:
        """The resources a conditional interaction's criteria (``query``) match, as the
        caller may see them."""


class OpenAccess:
    """Shows everything: no access control (callers inside the server, unit tests)."""

    def conditions(self, ctx: RequestContext, type_: str) -> list[Condition] | None:
        return None

    def restrict(self, ctx: RequestContext, query: SearchQuery) -> SearchQuery:
        return query

    def shown(self, ctx: RequestContext, resource: dict[str, Any]) -> dict[str, Any]:
        return resource

    def matches(self, ctx: RequestContext, reader: Reader,
                query: SearchQuery) -> list[dict[str, Any]]:
        return list(reader.search(query).resources)


@dataclass(frozen=True)
class RequestContext:
    """Who asks, and how they want answers."""

    base_url: str
    principal: Any = None  # set by the authentication layer
    prefer_return: str = "representation"  # minimal | representation | OperationOutcome
    lenient: bool = False  # Prefer: handling=lenient (search ignores unknown parameters)


@dataclass
class Result:
    """One interaction's answer: HTTP status, FHIR JSON body (or None) and headers."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WriteContext:
    """A write about to happen, as seen by ``before_write`` / ``after_write`` hooks.

    ``previous`` is the current version being replaced or deleted (None for a create, and
    when the resource was deleted before). ``resource`` is None for a delete."""

    ctx: RequestContext
    uow: UnitOfWork
    interaction: str  # create | update | patch | delete
    type: str
    id: str
    resource: dict[str, Any] | None
    previous: Version | None
    keys: tuple[str, ...] | None = None


@dataclass
class Interaction:
    """One interaction of a caller as :attr:`FhirService.observers` see it when it has ended:
    ``result`` when it succeeded, ``error`` when it failed. ``name``: read, vread,
    search-type, history-instance/-type/-system, create, update, patch, delete, operation,
    validate, transaction, or batch-entry (a failed write entry of a batch)."""

    ctx: RequestContext
    name: str
    type: str | None = None
    id: str | None = None
    params: list[tuple[str, str]] = field(default_factory=list)
    detail: str | None = None  # the version of a vread, the name of an operation
    result: Result | None = None
    error: Exception | None = None


WriteHook = Callable[[WriteContext], None]
Shaper = Callable[[RequestContext, str, dict[str, Any]], dict[str, Any]]
AfterWriteHook = Callable[[WriteContext, Version], None]
CommitHook = Callable[[RequestContext, UnitOfWork], None]
Observer = Callable[[Interaction], None]
Validator = Callable[[dict[str, Any], tuple[str, ...]], list[Issue]]
Operation = Callable[["RequestContext", str, Any], "Result"]
ReportHook = Callable[["RequestContext", "Reader", dict[str, Any]], list[Issue]]


_OBSERVING: ContextVar[bool] = ContextVar("planbro_observing", default=False)
_Method = TypeVar("_Method", bound=Callable[..., Result])


def _history_name(args: dict[str, Any]) -> str:
    if args.get("type_") is None:
        return "history-system"
    return "history-type" if args.get("id_") is None else "history-instance"


def observed(name: str | Callable[[dict[str, Any]], str]) -> Callable[[_Method], _Method]:
    """Make a public interaction report to :attr:`FhirService.observers` when it ends.

    An interaction that another observed one runs (a read inside an operation) is part of
    that one and is not reported on its own."""

    def decorate(method: _Method) -> _Method:
        signature = inspect.signature(method)

        @functools.wraps(method)
        def run(self: FhirService, *args: Any, **kwargs: Any) -> Result:
            if not self.observers or _OBSERVING.get():
                return method(self, *args, **kwargs)
            bound = signature.bind(self, *args, **kwargs).arguments
            interaction = Interaction(
                bound["ctx"], name if isinstance(name, str) else name(bound),
                bound.get("type_"), bound.get("id_"), list(bound.get("params") or []),
                bound.get("version_id") or bound.get("name"))
            token = _OBSERVING.set(True)
            try:
                interaction.result = method(self, *args, **kwargs)
            except Exception as exc:
                interaction.error = exc
                raise
            finally:
                _OBSERVING.reset(token)
                self.observe(interaction)
            return interaction.result

        return run  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class Written:
    """The outcome of one write inside a unit of work.

    ``version`` is the stored version (for a conditional create that matched: the existing
    one, with ``matched`` set; None when a delete found nothing to delete). ``status``: 201,
    200 or 204."""

    type: str
    version: Version | None
    status: int
    matched: bool = False


def http_date(instant: str) -> str:
    """A FHIR instant as an HTTP date (for Last-Modified)."""
    parsed = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    return email.utils.format_datetime(parsed.astimezone(UTC), usegmt=True)


def modified_since(version: Version, since: str) -> bool:
    """Whether ``version`` was made after the FHIR instant or dateTime ``since``, at the
    precision ``since`` has (:func:`~.search.normalize.date_range`): an HTTP date
    (If-Modified-Since) has whole seconds, as Last-Modified, so a version made within the
    second it names was not made after it."""
    return date_range(version.last_updated)[0] > date_range(since)[1]


def version_headers(version: Version) -> dict[str, str]:
    return {"ETag": version.etag, "Last-Modified": http_date(version.last_updated)}


# An entity tag (RFC 9110 8.8.3), weak or strong, or a bare version number.
_ETAG = r'(?:W/)?"([\x21\x23-\x7e\x80-\xff]*)"|(\d+)'
_ETAG_RE = re.compile(_ETAG)
# A list of them (RFC 9110 5.6.1: empty elements are allowed, one tag at least).
_ETAG_LIST_RE = re.compile(rf'[\s,]*(?:{_ETAG})(?:[\s,]*,[\s,]*(?:{_ETAG}))*[\s,]*')


def parse_etags(value: str, name: str = "If-Match", expression: str | None = None) -> ETags:
    """An ``If-Match`` / ``If-None-Match`` value: ``*`` or a list of entity tags
    (``W/"3", W/"4"``; ``"3"`` and a bare ``3`` are read as ``W/"3"``); anything else is
    400. ``name``: how the client gave it (a header, ``ifMatch``); ``expression``: where
    (default: ``name``)."""
    where = expression or name
    if value.strip() == "*":
        return ETags(name, where, "*", any=True)
    if not _ETAG_LIST_RE.fullmatch(value):
        raise FhirError.of(400, f"{name} must be * or a list of version ETags like "
                           f"W/\"3\", not {value!r}", code="value", expression=where)
    tags = frozenset(m[1] if m[1] is not None else m[2] for m in _ETAG_RE.finditer(value))
    return ETags(name, where, value.strip(), tags)


def information(text: str) -> dict[str, Any]:
    """An OperationOutcome with one information issue."""
    return outcome([issue(text, code="informational", severity="information")])


class FhirService:
    """Every FHIR interaction of the server, on one store and one search registry."""

    def __init__(self, store: Store, registry: Registry, config: Config) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.before_write: list[WriteHook] = []
        self.shapers: list[Shaper] = []
        """What the ``before_write`` hooks do to a new resource that depends on nothing
        stored: applied beforehand, it tells the resource a create or update will most
        likely store, whose index values are then computed before the write lock
        (:meth:`_indexed`)."""
        self.after_write: list[AfterWriteHook] = []
        self.validators: list[Validator] = []
        self.before_commit: list[CommitHook] = []
        self.guard: Guard = OpenGuard()
        self.security: dict[str, Any] | None = None
        """``rest.security`` of the CapabilityStatement (set by the auth layer)."""
        self.profiles: dict[str, list[str]] = {}
        """Canonical URLs of the profiles the ``validators`` check, per resource type
        (``rest.resource.supportedProfile`` of the CapabilityStatement)."""
        self.access: Access = OpenAccess()
        self.observers: list[Observer] = []
        self.server_records: set[str] = set()
        # Instance operations beyond $validate: (type, name) -> handler(ctx, id, body).
        self.operations: dict[tuple[str, str], Operation] = {}
        # Extra findings $validate reports (never enforced on writes): (ctx, reader, resource).
        self.report_hooks: list[ReportHook] = []

    # -- checks ------------------------------------------------------------------------------

    @staticmethod
    def check_type(type_: str) -> None:
        if type_ not in STORED_TYPES:
            raise FhirError.of(404, f"Resource type '{type_}' is not supported by this server",
                               code="not-supported")

    @staticmethod
    def check_id(id_: str) -> None:
        if not ID_RE.fullmatch(id_):
            raise FhirError.of(400, f"'{id_}' is not a valid resource id "
                               "(1-64 of A-Z a-z 0-9 - .)", code="value")

    def _check_body(self, type_: str, resource: Any) -> dict[str, Any]:
        if not isinstance(resource, dict):
            raise FhirError.of(400, "A FHIR resource (JSON object) was expected",
                               code="structure")
        if resource.get("resourceType") != type_:
            raise FhirError.of(400, f"The resource is a '{resource.get('resourceType')}', "
                               f"not a '{type_}'", code="invalid",
                               expression=f"{type_}.resourceType")
        return resource

    def _validation_issues(self, resource: dict[str, Any], type_: str, id_: str | None,
                           mode: str, profiles: tuple[str, ...] = ()) -> tuple[list[Issue],
                                                                                 list[Issue]]:
        """(base FHIR issues, issues of profiles and of the server's rules) of
        ``resource``."""
        base = model.validate(resource, type_=type_, id_=id_, mode=mode)
        profiled: list[Issue] = []
        if type_ != "Bundle":  # a Bundle's entries may refer to each other by placeholder
            refs = references_in(resource, type_)
            base.extend(placeholder_issues(refs))
            profiled.extend(foreign_patient_issues(refs))
        for validator in self.validators:
            profiled.extend(validator(resource, profiles))
        return base, profiled

    def ensure_valid(self, resource: dict[str, Any], type_: str, id_: str | None,
                     mode: str) -> None:
        """Refuse ``resource`` (400: not valid FHIR; 422: against a profile) for a write
        in ``mode`` ("create" or "update")."""
        base, profiled = self._validation_issues(resource, type_, id_, mode)
        if _has_error(base):
            raise FhirError(400, base)
        if _has_error(profiled):
            raise FhirError(422, profiled)

    # -- observation and units of work ------------------------------------------------------

    def observe(self, interaction: Interaction) -> None:
        """Report an ended interaction to every observer (an observer's error propagates)."""
        for observer in self.observers:
            observer(interaction)

    @contextmanager
    def unit_of_work(self, ctx: RequestContext) -> Iterator[UnitOfWork]:
        """A unit of work of the store for the writes of ``ctx``'s caller: when they are
        done, the ``before_commit`` hooks check what they leave behind, then it commits."""
        with self.store.unit_of_work() as uow:
            yield uow
            for hook in self.before_commit:
                hook(ctx, uow)

    # -- reads and searches made for a caller (with the caller's context) -------------------
    # Every read of stored resources for a caller goes through these seams, which apply
    # ``self.access`` inside the storage query.

    def _shown(self, ctx: RequestContext, version: Version) -> Version:
        if version.resource is None:
            return version
        return dataclasses.replace(version, resource=self.access.shown(ctx, version.resource))

    def visible(self, ctx: RequestContext, reader: Reader, type_: str, id_: str) -> bool:
        """Whether the caller may see the current resource ``type_/id_`` (through ``reader``:
        inside a unit of work, as its writes leave it)."""
        query = self.access.restrict(ctx, SearchQuery(type=type_, count=1,
                                                      ids=frozenset([id_])))
        return bool(reader.search(query).resources)

    def _load(self, ctx: RequestContext, reader: Reader, type_: str, id_: str) -> Version:
        """The current version of a resource as the caller may see it; 404 if it never
        existed (or the caller may not see it), 410 if deleted."""
        self.check_type(type_)
        self.check_id(id_)
        current = reader.read(type_, id_)
        if self.access.conditions(ctx, type_) is not None and (
                current is None or current.deleted
                or not self.visible(ctx, reader, type_, id_)):
            raise not_found(type_, id_)  # existence is not revealed
        if current is None:
            raise not_found(type_, id_)
        if current.deleted:
            raise FhirError.of(410, f"{type_}/{id_} was deleted (version {current.version})",
                               code="deleted", headers=version_headers(current))
        return self._shown(ctx, current)

    def _check_version(self, ctx: RequestContext, reader: Reader, type_: str, id_: str,
                       expected: Expected, current: Version | None) -> None:
        """412 unless the current version of ``type_/id_`` is as the write ``expected``;
        404 instead when the caller may not see the resource (its existence is not
        revealed, as the write itself would answer)."""
        live = None if current is None or current.deleted else current.version
        if satisfies(expected, live):
            return
        if live is not None and self.access.conditions(ctx, type_) is not None and (
                not self.visible(ctx, reader, type_, id_)):
            raise not_found(type_, id_)
        raise VersionConflict(type_, id_, expected, live)

    def _execute(self, ctx: RequestContext, reader: Reader, query: SearchQuery) -> SearchResult:
        result = reader.search(self.access.restrict(ctx, query))
        return SearchResult([self.access.shown(ctx, r) for r in result.resources],
                            result.total, result.keys)

    def _read_many(self, ctx: RequestContext, refs: list[Ref],
                   reader: Reader | None = None) -> dict[Ref, dict[str, Any]]:
        """The resources ``refs`` (type, id, version) name that the caller may see, by ref in
        the order of ``refs``: the current one where the version is "", else that version
        (R4 search 3.1.1.4.13: "If a resource has a reference that is versioned and _include
        is performed, the specified version SHOULD be provided"), as vread gives it: of a
        resource the caller may see now, and not a deletion. ``reader``: a unit of work
        whose writes the current ones are read as (through its search)."""
        by_type: dict[str, list[str]] = {}
        for type_, id_, _ in refs:
            by_type.setdefault(type_, []).append(id_)
        # Searched (access applied inside the query, writes of a unit of work seen): the
        # types access restricts, or every type when reading through a unit of work; the
        # others are read by key.
        through = reader is not None and reader is not self.store
        searched = {t for t in by_type
                    if through or self.access.conditions(ctx, t) is not None}
        found: dict[Ref, dict[str, Any]] = {
            (v.type, v.id, ""): self.access.shown(ctx, v.resource)
            for v in self.store.read_many([(t, i) for t, i, version in refs
                                           if not version and t not in searched])
            if v.resource is not None}
        for type_ in searched:
            for chunk in iter_chunks(by_type[type_], 100):
                query = SearchQuery(type=type_, count=len(chunk), ids=frozenset(chunk))
                found.update(((type_, str(r["id"]), ""), r)
                             for r in self._execute(ctx, reader or self.store, query).resources)
        for type_, id_, version in refs:
            if version and (type_ not in searched or (type_, id_, "") in found):
                past = (reader or self.store).vread(type_, id_, int(version)) \
                    if version.isdigit() else None
                if past is not None and past.resource is not None:
                    found[(type_, id_, version)] = self.access.shown(ctx, past.resource)
        return {ref: found[ref] for ref in refs if ref in found}

    def _history(self, ctx: RequestContext, reader: Reader,
                 query: HistoryQuery) -> tuple[list[Version], int]:
        """The versions ``query`` asks for of what the caller may see, and their total: of
        one resource the caller may see now, or of the resources of a type (or of every type
        but the server's records) whose current version the caller may see."""
        type_, id_ = query.type, query.id
        if type_ is not None and id_ is not None:
            if self.access.conditions(ctx, type_) is not None:
                self._load(ctx, reader, type_, id_)
            elif reader.read(type_, id_) is None:
                raise not_found(type_, id_)
            versions, total = reader.history(query)
        else:
            listed = [type_] if type_ is not None else [
                t for t in STORED_TYPES if t not in self.server_records]
            open_types = [t for t in listed if self.access.conditions(ctx, t) is None]
            within = [self.access.restrict(ctx, SearchQuery(type=t))
                      for t in listed if t not in open_types]
            narrowed = type_ is None or bool(within)
            versions, total = reader.history(dataclasses.replace(
                query, types=open_types if narrowed else None,
                within=within if narrowed else None))
        return [self._shown(ctx, v) for v in versions], total

    def _parse(self, ctx: RequestContext, type_: str, params: list[tuple[str, str]], *,
               lenient: bool, reader: Reader | None = None) -> ParsedSearch:
        """A caller's search parameters, parsed; 400 for a bad one, and for an id without a
        type that refers to resources of more than one type (:meth:`_refuse_ambiguous`, as
        ``reader`` sees them)."""
        parsed = parse_search(self.registry, type_, params, lenient=lenient,
                              default_count=self.config.default_count,
                              max_count=self.config.max_count)
        if parsed.bare_ids:
            self._refuse_ambiguous(ctx, parsed.bare_ids, reader)
        return parsed

    def _refuse_ambiguous(self, ctx: RequestContext, bare_ids: list[BareId],
                          reader: Reader | None = None) -> None:
        """400 naming the parameter when an id given without a type is the id of resources
        of more than one of the types the parameter may refer to, among those the caller may
        read (R4 search 3.1.1.4.12: "Servers SHOULD reject a search where the logical id
        refers to more than one matching resource across different types")."""
        readable = {t for b in bare_ids for t in b.types if self._may(ctx, "read", t)}
        found = self._read_many(ctx, [(t, b.id, "") for b in bare_ids for t in b.types
                                      if t in readable], reader)
        issues = []
        for bare in bare_ids:
            types = [t for t in bare.types if (t, bare.id, "") in found]
            if len(types) > 1:
                named = " and ".join(f"{t}/{bare.id}" for t in types)
                issues.append(issue(
                    f"Parameter '{bare.name}': the id {bare.id!r} names {named}; name the "
                    f"type, as {bare.name}={types[0]}/{bare.id} or {bare.name}:{types[0]}="
                    f"{bare.id}", code="value", expression=bare.name))
        if issues:
            raise FhirError(400, issues)

    def _may(self, ctx: RequestContext, interaction: str, type_: str) -> bool:
        """Whether the caller's token allows ``interaction`` on ``type_``."""
        try:
            self.guard.check(ctx, interaction, type_)
        except FhirError as exc:
            if exc.status == 403:
                return False
            raise
        return True

    def lookup(self, reader: Reader, type_: str, params: dict[str, str],
               limit: int = 100, *, ctx: RequestContext | None = None) -> list[dict[str, Any]]:
        """Resources of ``type_`` matching search ``params``, for rules inside the server
        (no paging; reads through ``reader``, e.g. a unit of work). Without ``ctx`` every
        resource; with it, what that caller may see (its scopes and access: a type it may
        not search has nothing for it)."""
        restriction: list[tuple[str, str]] = []
        if ctx is not None:
            if not self._may(ctx, "search-type", type_):
                return []
            restriction = self.guard.restriction(ctx, type_, "s")
        parsed = parse_search(self.registry, type_,
                              [*params.items(), *restriction, ("_count", str(limit))],
                              max_count=max(limit, self.config.max_count))
        if ctx is None:
            return list(reader.search(parsed.query).resources)
        return self._execute(ctx, reader, parsed.query).resources

    @observed("operation")
    def operation(self, ctx: RequestContext, type_: str, id_: str, name: str,
                  body: Any = None) -> Result:
        """An instance operation ``Type/id/$name`` registered in :attr:`operations`;
        ``body``: the parsed JSON of a POST (a Parameters resource), None for a GET."""
        self.check_type(type_)
        self.check_id(id_)
        handler = self.operations.get((type_, name))
        if handler is None:
            raise FhirError.of(404, f"Operation ${name} is not supported on {type_}",
                               code="not-supported")
        self.guard.check(ctx, "read", type_)
        return handler(ctx, id_, body)

    # -- read --------------------------------------------------------------------------------

    def _permitted(self, ctx: RequestContext, reader: Reader, type_: str, id_: str,
                   perm: str) -> None:
        """404 (existence is not revealed) when a query-restricted scope excludes the
        resource."""
        extra = self.guard.restriction(ctx, type_, perm)
        if not extra:
            return
        parsed = self._parse(ctx, type_, [("_id", id_), *extra], lenient=False, reader=reader)
        if not self._execute(ctx, reader, parsed.query).resources:
            raise not_found(type_, id_)

    @observed("read")
    def read(self, ctx: RequestContext, type_: str, id_: str, *,
             if_none_match: ETags | None = None, if_modified_since: str | None = None,
             reader: Reader | None = None) -> Result:
        """Read; 304 without the body when ``if_none_match`` matches the current version,
        or, without ``if_none_match`` (RFC 9110 13.1.3), when the current version was not
        made after ``if_modified_since`` (a FHIR instant or dateTime)."""
        self.guard.check(ctx, "read", type_)
        current = self._load(ctx, reader or self.store, type_, id_)
        self._permitted(ctx, reader or self.store, type_, id_, "r")
        headers = version_headers(current)
        if if_none_match is not None:
            unchanged = if_none_match.matches(current.version)
        else:
            unchanged = if_modified_since is not None and not modified_since(
                current, if_modified_since)
        return Result(304, None, headers) if unchanged else Result(200, current.resource,
                                                                   headers)

    @observed("vread")
    def vread(self, ctx: RequestContext, type_: str, id_: str, version_id: str, *,
              reader: Reader | None = None) -> Result:
        """One version; ``reader``: a unit of work whose versions are read as well."""
        self.check_type(type_)
        self.check_id(id_)
        self.guard.check(ctx, "vread", type_)
        reader = reader or self.store
        self._permitted(ctx, reader, type_, id_, "r")
        if self.access.conditions(ctx, type_) is not None:
            self._load(ctx, reader, type_, id_)  # only versions of what the caller sees
        if not version_id.isdigit():
            raise FhirError.of(404, f"{type_}/{id_} has no version '{version_id}'",
                               code="not-found")
        found = reader.vread(type_, id_, int(version_id))
        if found is None:
            raise FhirError.of(404, f"{type_}/{id_} has no version {version_id}",
                               code="not-found")
        if found.deleted:
            raise FhirError.of(410, f"Version {version_id} of {type_}/{id_} is a deletion",
                               code="deleted", headers=version_headers(found))
        return Result(200, self._shown(ctx, found).resource, version_headers(found))

    # -- create ------------------------------------------------------------------------------

    @observed("create")
    def create(self, ctx: RequestContext, type_: str, resource: Any, *,
               if_none_exist: list[tuple[str, str]] | None = None) -> Result:
        # Validate before taking the write lock: other writers need not wait for it.
        self.check_type(type_)
        self.guard.check(ctx, "create" if if_none_exist is None else "conditional-create",
                         type_)
        resource = dict(self._check_body(type_, resource))
        resource.pop("id", None)
        self.ensure_valid(resource, type_, None, "create")
        id_ = new_id()
        indexed = self._indexed(ctx, type_, id_, resource) if if_none_exist is None else None
        with self.unit_of_work(ctx) as uow:
            written = self.create_in(uow, ctx, type_, resource, if_none_exist=if_none_exist,
                                     id_=id_, validated=True, indexed=indexed)
        return self.write_result(ctx, written)

    def _indexed(self, ctx: RequestContext, type_: str, id_: str,
                 resource: dict[str, Any]) -> Indexed:
        """The index values of ``resource`` as the write will most likely store it
        (:attr:`shapers`), computed before the write lock: the store uses them only when
        the resource it stores is that one (:class:`~server.store.port.Indexed`)."""
        for shape in self.shapers:
            resource = shape(ctx, type_, resource)
        return self.store.indexed(type_, id_, resource)

    def create_in(self, uow: UnitOfWork, ctx: RequestContext, type_: str, resource: Any, *,
                  if_none_exist: list[tuple[str, str]] | None = None,
                  id_: str | None = None, validated: bool = False,
                  indexed: Indexed | None = None) -> Written:
        """Create (POST) inside ``uow``; the body's id is ignored. ``if_none_exist``: the
        conditional-create criteria; ``id_``: an id chosen beforehand (transactions, and
        :meth:`create`, which indexes the resource under it before the write lock);
        ``validated``: the caller has validated the body already; ``indexed``: its index
        values, computed beforehand (:meth:`_indexed`)."""
        self.check_type(type_)
        self.guard.check(ctx, "create" if if_none_exist is None else "conditional-create",
                         type_)
        resource = dict(self._check_body(type_, resource))
        resource.pop("id", None)
        if if_none_exist is not None:
            matches = self.conditional_matches(uow, ctx, type_, if_none_exist)
            if len(matches) > 1:
                raise _multiple_matches(type_, "create")
            if matches:
                existing = uow.read(type_, str(matches[0]["id"]))
                assert existing is not None
                shown = dataclasses.replace(existing, resource=matches[0])
                return Written(type_, shown, 200, matched=True)
        if not validated:
            self.ensure_valid(resource, type_, None, "create")
        resource["id"] = id_ or new_id()
        wctx = self._before(ctx, uow, "create", type_, resource["id"], resource, None)
        assert wctx.resource is not None
        version = uow.create(type_, wctx.resource, id_=wctx.id, keys=wctx.keys or (),
                             method="POST", indexed=indexed)
        return self._after(wctx, version, 201)

    # -- update ------------------------------------------------------------------------------

    @observed("update")
    def update(self, ctx: RequestContext, type_: str, id_: str, resource: Any, *,
               if_match: Expected = None) -> Result:
        self.check_type(type_)
        self.check_id(id_)
        self.guard.check(ctx, "update", type_)
        resource = self._check_body(type_, resource)
        self.ensure_valid(resource, type_, id_, "update")  # before taking the write lock
        indexed = self._indexed(ctx, type_, id_, resource)
        with self.unit_of_work(ctx) as uow:
            written = self._store_update(uow, ctx, type_, id_, dict(resource), if_match,
                                         "update", indexed)
        return self.write_result(ctx, written)

    def update_in(self, uow: UnitOfWork, ctx: RequestContext, type_: str, id_: str,
                  resource: Any, *, if_match: Expected = None) -> Written:
        """Update (PUT) inside ``uow``; creates the resource when it does not exist.
        ``if_match``: what the current version must be (the version the caller read, or
        the client's If-Match / If-None-Match), else 412; checked again by the store as it
        writes, so that no concurrent writer comes between."""
        self.check_type(type_)
        self.check_id(id_)
        resource = self._check_body(type_, resource)
        self.ensure_valid(resource, type_, id_, "update")  # the body id must equal id_
        return self._store_update(uow, ctx, type_, id_, dict(resource), if_match, "update")

    def _store_update(self, uow: UnitOfWork, ctx: RequestContext, type_: str, id_: str,
                      resource: dict[str, Any], if_match: Expected,
                      interaction: str, indexed: Indexed | None = None) -> Written:
        self.guard.check(ctx, interaction, type_)
        current = uow.read(type_, id_)
        self._check_version(ctx, uow, type_, id_, if_match, current)
        previous = None if current is None or current.deleted else current
        wctx = self._before(ctx, uow, interaction, type_, id_, resource, previous)
        assert wctx.resource is not None
        version, created = uow.update(type_, id_, wctx.resource, if_match=if_match,
                                      keys=wctx.keys,
                                      method="PATCH" if interaction == "patch" else "PUT",
                                      indexed=indexed)
        return self._after(wctx, version, 201 if created else 200)

    @observed("update")
    def conditional_update(self, ctx: RequestContext, type_: str,
                           params: list[tuple[str, str]], resource: Any, *,
                           if_match: Expected = None) -> Result:
        with self.unit_of_work(ctx) as uow:
            written = self.conditional_update_in(uow, ctx, type_, params, resource,
                                                 if_match=if_match)
        return self.write_result(ctx, written)

    def conditional_update_in(self, uow: UnitOfWork, ctx: RequestContext, type_: str,
                              params: list[tuple[str, str]], resource: Any, *,
                              if_match: Expected = None) -> Written:
        """PUT ``Type?criteria``: no match creates (with the body's id if it has one), one
        match updates it, several are 412."""
        resource = self._check_body(type_, resource)
        target = self.conditional_target(uow, ctx, type_, params, resource.get("id"))
        if target is None:
            check_version(type_, None, if_match, None)
            return self.create_in(uow, ctx, type_, resource)
        return self.update_in(uow, ctx, type_, target, {**resource, "id": target},
                              if_match=if_match)

    def conditional_target(self, uow: UnitOfWork, ctx: RequestContext, type_: str,
                           params: list[tuple[str, str]], body_id: Any) -> str | None:
        """The id a conditional update writes to: the single match, else the body's id
        (when no resource has that id: update as create), else None (create with a new
        id). A body id of a resource the criteria do not match is 409: the criteria guard
        the write, which must not replace a resource they do not select."""
        matches = self.conditional_matches(uow, ctx, type_, params)
        if len(matches) > 1:
            raise _multiple_matches(type_, "update")
        if not matches:
            if body_id is None:
                return None
            existing = uow.read(type_, str(body_id))
            if existing is not None and not existing.deleted:
                self._load(ctx, uow, type_, str(body_id))  # 404 when the caller may not see it
                raise FhirError.of(409, f"No {type_} matches the criteria, and {type_}/{body_id} "
                                   "exists but does not match them", code="conflict",
                                   expression=f"{type_}.id")
            return str(body_id)
        match_id = str(matches[0]["id"])
        if body_id is not None and body_id != match_id:
            raise FhirError.of(400, f"The resource id ({body_id!r}) differs from the id of the "
                               f"resource the criteria match ({match_id!r})", code="invalid",
                               expression=f"{type_}.id")
        return match_id

    # -- patch -------------------------------------------------------------------------------

    @observed("patch")
    def patch(self, ctx: RequestContext, type_: str, id_: str, patch_doc: Any, *,
              if_match: Expected = None) -> Result:
        with self.unit_of_work(ctx) as uow:
            written = self.patch_in(uow, ctx, type_, id_, patch_doc, if_match=if_match)
        return self.write_result(ctx, written)

    def patch_in(self, uow: UnitOfWork, ctx: RequestContext, type_: str, id_: str,
                 patch_doc: Any, *, if_match: Expected = None) -> Written:
        """Apply a JSON Patch to the current version; the result is validated like an
        update and stored only if the resource is still at the version patched."""
        current = self._load(ctx, uow, type_, id_)
        self._check_version(ctx, uow, type_, id_, if_match, current)
        assert current.resource is not None
        patched = apply_json_patch(current.resource, patch_doc)
        self.ensure_valid(patched, type_, id_, "update")
        return self._store_update(uow, ctx, type_, id_, patched, current.version, "patch")

    @observed("patch")
    def conditional_patch(self, ctx: RequestContext, type_: str, params: list[tuple[str, str]],
                          patch_doc: Any, *, if_match: Expected = None) -> Result:
        with self.unit_of_work(ctx) as uow:
            target = self.single_match(uow, ctx, type_, params, "patch")
            written = self.patch_in(uow, ctx, type_, target, patch_doc, if_match=if_match)
        return self.write_result(ctx, written)

    def single_match(self, uow: UnitOfWork, ctx: RequestContext, type_: str,
                     params: list[tuple[str, str]], interaction: str) -> str:
        """The id of the one resource the criteria match (404 none, 412 several)."""
        matches = self.conditional_matches(uow, ctx, type_, params)
        if len(matches) > 1:
            raise _multiple_matches(type_, interaction)
        if not matches:
            raise FhirError.of(404, f"No {type_} matches the criteria", code="not-found")
        return str(matches[0]["id"])

    # -- delete ------------------------------------------------------------------------------

    @observed("delete")
    def delete(self, ctx: RequestContext, type_: str, id_: str, *,
               if_match: Expected = None) -> Result:
        with self.unit_of_work(ctx) as uow:
            written = self.delete_in(uow, ctx, type_, id_, if_match=if_match)
        return self.write_result(ctx, written)

    def delete_in(self, uow: UnitOfWork, ctx: RequestContext, type_: str, id_: str, *,
                  if_match: Expected = None) -> Written:
        self.check_type(type_)
        self.check_id(id_)
        self.guard.check(ctx, "delete", type_)
        current = uow.read(type_, id_)
        self._check_version(ctx, uow, type_, id_, if_match, current)
        if current is None or current.deleted:
            return Written(type_, None, 204)
        wctx = self._before(ctx, uow, "delete", type_, id_, None, current)
        tombstone = uow.delete(type_, id_, if_match=if_match)
        if tombstone is None:  # deleted concurrently; the outcome is the same
            return Written(type_, None, 204)
        return self._after(wctx, tombstone, 204)

    @observed("delete")
    def conditional_delete(self, ctx: RequestContext, type_: str,
                           params: list[tuple[str, str]], *,
                           if_match: Expected = None) -> Result:
        with self.unit_of_work(ctx) as uow:
            written = self.conditional_delete_in(uow, ctx, type_, params, if_match=if_match)
        return self.write_result(ctx, written)

    def conditional_delete_in(self, uow: UnitOfWork, ctx: RequestContext, type_: str,
                              params: list[tuple[str, str]], *,
                              if_match: Expected = None) -> Written:
        """DELETE ``Type?criteria``: no match is a no-op, one is deleted, several are 412."""
        matches = self.conditional_matches(uow, ctx, type_, params)
        if len(matches) > 1:
            raise _multiple_matches(type_, "delete")
        if not matches:
            check_version(type_, None, if_match, None)
            return Written(type_, None, 204)
        return self.delete_in(uow, ctx, type_, str(matches[0]["id"]), if_match=if_match)

    # -- write plumbing ----------------------------------------------------------------------

    def conditional_matches(self, uow: UnitOfWork, ctx: RequestContext, type_: str,
                            params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Up to two current resources matching conditional criteria, searched inside
        ``uow`` after locking the normalised criteria, so that concurrent conditional writes
        with the same criteria are serialised (search-then-write is race-free)."""
        self.check_type(type_)
        self.guard.check(ctx, "search-type", type_)
        parsed = self._parse(ctx, type_, params, lenient=False, reader=uow)
        if not parsed.query.conditions:
            raise FhirError.of(400, f"Conditional {type_} interactions need search criteria",
                               code="required")
        criteria = sorted(p for p in parsed.self_params if p[0] not in _PAGING_PARAMS)
        uow.lock(f"cond:{type_}?{urlencode(criteria)}")
        query = dataclasses.replace(parsed.query, count=2, offset=0, total=False, keyset=None)
        return self.access.matches(ctx, uow, query)

    def _before(self, ctx: RequestContext, uow: UnitOfWork, interaction: str, type_: str,
                id_: str, resource: dict[str, Any] | None,
                previous: Version | None) -> WriteContext:
        wctx = WriteContext(ctx, uow, interaction, type_, id_, resource, previous)
        for hook in self.before_write:
            hook(wctx)
        return wctx

    def _after(self, wctx: WriteContext, version: Version, status: int) -> Written:
        for hook in self.after_write:
            hook(wctx, version)
        return Written(wctx.type, version, status)

    def write_result(self, ctx: RequestContext, written: Written) -> Result:
        """The HTTP answer to a write, shaped by ``Prefer: return=``."""
        version = written.version
        if version is None or version.deleted:
            headers = version_headers(version) if version is not None else {}
            if ctx.prefer_return == "OperationOutcome":
                return Result(200, information(_deleted_text(written)), headers)
            return Result(204, None, headers)
        headers = version_headers(version)
        url = f"{ctx.base_url}/{version.type}/{version.id}/_history/{version.version}"
        headers["Location" if written.status == 201 else "Content-Location"] = url
        if ctx.prefer_return == "minimal":
            body = None
        elif ctx.prefer_return == "OperationOutcome":
            body = information(_written_text(written))
        else:
            body = version.resource
        return Result(written.status, body, headers)

    # -- search ------------------------------------------------------------------------------

    @observed("search-type")
    def search(self, ctx: RequestContext, type_: str, params: list[tuple[str, str]], *,
               reader: Reader | None = None) -> Result:
        """Search one type; a ``searchset`` Bundle with paging links and includes."""
        self.check_type(type_)
        self.guard.check(ctx, "search-type", type_)
        restriction = self.guard.restriction(ctx, type_, "s")
        parsed = self._parse(ctx, type_, [*params, *restriction], lenient=ctx.lenient,
                             reader=reader)
        for rule in parsed.includes:
            for included in self._include_types(rule):
                self.guard.check(ctx, "read", included)
        if parsed.summary not in (None, *_SUMMARY_MODES):
            raise FhirError.of(400, f"_summary={parsed.summary} is not supported",
                               code="not-supported", expression="_summary")
        return Result(200, self._searchset(ctx, type_, parsed, reader or self.store))

    def _searchset(self, ctx: RequestContext, type_: str, parsed: ParsedSearch,
                   reader: Reader) -> dict[str, Any]:
        query = parsed.query
        count_only = parsed.summary == "count"
        if count_only:
            query = dataclasses.replace(query, total=True, count=0)
        keyset = query.keyset
        backward = keyset is not None and keyset.backward
        snapshot = keyset.snapshot_ms if keyset is not None else now_instant()[1]
        # One row more than the page tells whether another page follows it (precedes it,
        # for a page before a resource: that row then comes first).
        page = dataclasses.replace(query, count=query.count + 1)
        result = self._execute(ctx, reader, page)
        more = 0 < query.count < len(result.resources)
        window = slice(1, None) if backward and more else slice(0, query.count)
        matches = result.resources[window]
        keys = (result.keys or [])[window]
        has_next = backward or more
        total = result.total if query.total else None
        if total is None and not has_next and keyset is None and (matches or not query.offset):
            total = query.offset + len(matches)
        bundle: dict[str, Any] = {"resourceType": "Bundle", "id": new_id(),
                                  "meta": {"lastUpdated": _now()}, "type": "searchset"}
        if total is not None:
            bundle["total"] = total
        has_previous = more if backward else keyset is not None
        bundle["link"] = self._search_links(ctx, type_, parsed, query, matches, keys, snapshot,
                                            has_next=has_next, has_previous=has_previous)
        if count_only:
            return bundle
        entries = [self._entry(ctx, _subset(r, parsed), "match") for r in matches]
        included = self._includes(ctx, parsed, matches, reader)
        entries.extend(self._entry(ctx, r, "include") for r in included)
        if parsed.ignored:
            entries.append({"resource": outcome([issue(
                f"Ignored search parameter '{name}'", code="not-supported",
                severity="warning", expression=name) for name in parsed.ignored]),
                "search": {"mode": "outcome"}})
        if entries:  # FHIR JSON has no empty arrays
            bundle["entry"] = entries
        return bundle

    @staticmethod
    def _include_types(rule: Include) -> list[str]:
        """The stored types an _include / _revinclude rule can bring into a result."""
        if rule.reverse:
            return [rule.source_type]
        candidates = [rule.target_type] if rule.target_type else list(rule.param.targets)
        return [t for t in candidates if t in STORED_TYPES]

    def _search_links(self, ctx: RequestContext, type_: str, parsed: ParsedSearch,
                      query: SearchQuery, matches: list[dict[str, Any]],
                      keys: list[tuple[KeyValue, ...]], snapshot_ms: int, *,
                      has_next: bool, has_previous: bool) -> list[dict[str, str]]:
        """``self``, ``first`` and, where there are such pages, ``previous`` and ``next``.

        A search pages by keyset: the next page starts after this page's last resource (its
        values of the order's keys, ``keys``), the previous one ends before its first, among
        the resources first written by the time of the first page (see
        :class:`~.search.ast.Keyset`). A search given ``_offset`` pages by offset."""
        criteria = [p for p in parsed.self_params if p[0] not in _PAGING_PARAMS]

        def url(*paging: tuple[str, str]) -> str:
            return (f"{ctx.base_url}/{type_}?"
                    f"{urlencode([*criteria, ('_count', str(query.count)), *paging])}")

        if query.offset or query.count == 0 or len(keys) != len(matches):
            def at(offset: int) -> str:
                return url(("_offset", str(offset))) if offset else url()

            links = [_link("self", at(query.offset)), _link("first", at(0))]
            if query.offset > 0 and query.count > 0:
                links.append(_link("previous", at(max(0, query.offset - query.count))))
            if has_next:
                links.append(_link("next", at(query.offset + query.count)))
            return links

        def page(at: int, backward: bool) -> str:
            written = date_range(matches[at]["meta"]["lastUpdated"])[0]
            keyset = Keyset(keys[at], snapshot_ms, backward, changed=written > snapshot_ms)
            return url(("_page", page_token(keyset)))

        here = url(("_page", page_token(query.keyset))) if query.keyset else url()
        links = [_link("self", here), _link("first", url())]
        if has_previous and matches:
            links.append(_link("previous", page(0, backward=True)))
        if has_next and matches:
            links.append(_link("next", page(-1, backward=False)))
        return links

    def _entry(self, ctx: RequestContext, resource: dict[str, Any], mode: str) -> dict:
        return {"fullUrl": f"{ctx.base_url}/{resource['resourceType']}/{resource['id']}",
                "resource": resource, "search": {"mode": mode}}

    # -- _include / _revinclude --------------------------------------------------------------

    def _includes(self, ctx: RequestContext, parsed: ParsedSearch,
                  matches: list[dict[str, Any]], reader: Reader) -> list[dict[str, Any]]:
        """Resources added by _include / _revinclude (read through ``reader``); ``:iterate``
        ones are applied again to what was added, up to :data:`MAX_INCLUDE_DEPTH` rounds and
        :data:`MAX_INCLUDED`."""
        if not parsed.includes:
            return []
        # (type, id, "") of the current resources in the bundle, (type, id, versionId) of each
        seen = {key for r in matches for key in (_ref(r, ""), _ref(r))}
        included: list[dict[str, Any]] = []
        frontier = matches
        for depth in range(MAX_INCLUDE_DEPTH):
            rules = [inc for inc in parsed.includes if depth == 0 or inc.iterate]
            if not rules or not frontier:
                break
            added: list[dict[str, Any]] = []
            for rule in rules:
                room = MAX_INCLUDED - len(included) - len(added)
                if room <= 0:
                    break
                if rule.reverse:
                    reverse = self._reverse_include(ctx, rule, frontier, room, reader)
                    found = {_ref(r, ""): r for r in reverse}
                else:
                    found = self._forward_include(ctx, rule, frontier, seen, reader)
                for asked, resource in found.items():
                    keys = {asked, _ref(resource)}
                    if not keys & seen and len(included) + len(added) < MAX_INCLUDED:
                        seen |= keys
                        added.append(resource)
            included.extend(added)
            frontier = added
        return included

    def _forward_include(self, ctx: RequestContext, rule: Include, frontier: list[dict[str, Any]],
                         seen: set[Ref], reader: Reader) -> dict[Ref, dict[str, Any]]:
        wanted: list[Ref] = []
        for resource in frontier:
            if resource["resourceType"] != rule.source_type:
                continue
            for ref in self.registry.references(resource, rule.param.code):
                key = (ref.target_type, ref.target_id, ref.version)
                if (ref.target_type and ref.target_id and key not in seen
                        and key not in wanted
                        and (not rule.target_type or ref.target_type == rule.target_type)):
                    wanted.append(key)
        return self._read_many(ctx, [key for key in wanted if key[0] in STORED_TYPES], reader)

    def _reverse_include(self, ctx: RequestContext, rule: Include,
                         frontier: list[dict[str, Any]], room: int,
                         reader: Reader) -> list[dict[str, Any]]:
        param = rule.param
        targets = [(r["resourceType"], str(r["id"])) for r in frontier
                   if (not rule.target_type or r["resourceType"] == rule.target_type)
                   and (not param.targets or r["resourceType"] in param.targets)]
        found: list[dict[str, Any]] = []
        for chunk in iter_chunks(targets, 100):
            if len(found) >= room:
                break
            clause = Clause(param, None, tuple(ReferenceQuery(t, i) for t, i in chunk))
            query = SearchQuery(type=rule.source_type, conditions=[clause],
                                count=room - len(found))
            found.extend(self._execute(ctx, reader, query).resources)
        return found

    # -- history -----------------------------------------------------------------------------

    @observed(_history_name)
    def history(self, ctx: RequestContext, params: list[tuple[str, str]],
                type_: str | None = None, id_: str | None = None, *,
                reader: Reader | None = None) -> Result:
        """History of one resource, one type, or the whole server, newest first;
        ``reader``: a unit of work whose versions are listed as well."""
        reader = reader or self.store
        self.guard.check(ctx, "history-system" if type_ is None else
                         "history-type" if id_ is None else "history-instance", type_)
        if type_ is not None:
            self.check_type(type_)
        if id_ is not None and type_ is not None:
            self.check_id(id_)
        asked, kept = self._history_params(ctx, params)
        count, offset, until_ms = asked.count, asked.offset, asked.until_ms
        # Pages after the first are of the versions up to the first page's time, which
        # never change: later writes shift nothing (``_page``).
        snapshot = until_ms if until_ms is not None else now_instant()[1]
        if any(lo > snapshot for lo, _hi in asked.at):
            versions, total = [], 0  # a period after now: no version known to be current
        else:
            versions, total = self._history(ctx, reader, dataclasses.replace(
                asked, type=type_, id=id_, until_ms=snapshot))
        path = "/".join(p for p in (type_, id_) if p)
        base = f"{ctx.base_url}/{path}/_history" if path else f"{ctx.base_url}/_history"

        def url(at: int, pinned: bool = True) -> str:
            paging = [("_count", str(count))] + ([("_offset", str(at))] if at else [])
            if pinned:
                paging.append(("_page", str(snapshot)))
            return f"{base}?{urlencode(kept + paging)}"

        links = [_link("self", url(offset, until_ms is not None)),
                 _link("first", url(0, pinned=False))]
        if offset > 0 and count > 0:
            links.append(_link("previous", url(max(0, offset - count))))
        if count > 0 and offset + len(versions) < total:
            links.append(_link("next", url(offset + count)))
        bundle: dict[str, Any] = {
            "resourceType": "Bundle", "id": new_id(), "meta": {"lastUpdated": _now()},
            "type": "history", "total": total, "link": links}
        if versions:
            created = self._created(reader, versions)
            bundle["entry"] = [self._history_entry(ctx, v, (v.type, v.id, v.version) in created)
                               for v in versions]
        return Result(200, bundle)

    @staticmethod
    def _created(reader: Reader, versions: list[Version]) -> set[tuple[str, str, int]]:
        """(type, id, version) of those ``versions`` that created their resource: a POST,
        a version 1, and a PUT after a deletion (update as create answered 201)."""
        created = {(v.type, v.id, v.version) for v in versions
                   if not v.deleted and (v.method == "POST" or v.version == 1)}
        before = [(v.type, v.id, v.version - 1) for v in versions
                  if not v.deleted and v.method == "PUT" and v.version > 1]
        if before:  # the versions before these PUTs: which were deletions
            created.update((t, i, n + 1) for t, i, n in reader.deleted_versions(before))
        return created

    def _history_params(self, ctx: RequestContext, params: list[tuple[str, str]]
                        ) -> tuple[HistoryQuery, list[tuple[str, str]]]:
        """What ``_since``, ``_at``, ``_count``, ``_offset`` and ``_page`` (the first page's
        time: ``until_ms``) ask for, and the parameters the paging links repeat."""
        since_ms: int | None = None
        until_ms: int | None = None
        at: list[tuple[int, int]] = []
        count, offset = self.config.default_count, 0
        kept: list[tuple[str, str]] = []
        for name, value in params:
            if name in ("_since", "_at"):
                try:
                    lo, hi = date_range(value)
                except ValueError as exc:
                    raise FhirError.of(400, f"{name}: {exc}", code="value",
                                       expression=name) from exc
                if name == "_since":
                    since_ms = lo
                else:
                    at.append((lo, hi))
                kept.append((name, value))
            elif name == "_count":
                count = min(_non_negative(name, value), self.config.max_count)
            elif name == "_offset":
                offset = _non_negative(name, value)
            elif name == "_page":
                until_ms = _non_negative(name, value)
            elif not ctx.lenient:
                raise FhirError.of(400, f"Unknown history parameter '{name}'",
                                   code="not-supported", expression=name)
        return HistoryQuery(since_ms=since_ms, until_ms=until_ms, at=at, count=count,
                            offset=offset), kept

    def _history_entry(self, ctx: RequestContext, version: Version,
                       created: bool) -> dict[str, Any]:
        url = f"{version.type}/{version.id}"
        if version.deleted:
            status = "204 No Content"
        else:
            status = "201 Created" if created else "200 OK"
        entry: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{url}"}
        if version.resource is not None:
            entry["resource"] = version.resource
        entry["request"] = {"method": version.method,
                            "url": version.type if version.method == "POST" else url}
        entry["response"] = {"status": status, "etag": version.etag,
                             "lastModified": version.last_updated}
        return entry

    # -- $validate ---------------------------------------------------------------------------

    @observed("validate")
    def validate(self, ctx: RequestContext, type_: str, body: Any,
                 id_: str | None = None) -> Result:
        """``$validate``: an OperationOutcome listing every issue; never stores anything."""
        self.check_type(type_)
        self.guard.check(ctx, "$validate", type_)
        if id_ is not None:
            self.check_id(id_)
        resource, mode, profiles = _validation_request(type_, body, id_)
        if mode == "delete":
            if id_ is None:
                raise FhirError.of(400, "mode=delete needs a resource id in the URL",
                                   code="required")
            self._load(ctx, self.store, type_, id_)
            return Result(200, information("No problems found: the resource may be deleted"))
        if resource is None:
            raise FhirError.of(400, "No resource to validate", code="required")
        self._check_body(type_, resource)
        base, profiled = self._validation_issues(resource, type_, id_, mode, profiles)
        issues = base + profiled
        if not issues:
            for hook in self.report_hooks:
                issues += hook(ctx, self.store, resource)
        if profiles and not self.validators:
            issues.append(issue(f"Profile validation is not available; not checked: "
                                f"{', '.join(profiles)}", code="not-supported",
                                severity="warning"))
        if not issues:
            return Result(200, information("No problems found"))
        return Result(200, outcome(issues))

    # -- capabilities ------------------------------------------------------------------------

    def capabilities(self, ctx: RequestContext) -> Result:
        return Result(200, capability.build(
            self.registry, base_url=ctx.base_url, types=STORED_TYPES,
            type_interactions=TYPE_INTERACTIONS, system_interactions=SYSTEM_INTERACTIONS,
            operations=OPERATIONS, type_operations=self._type_operations(ctx),
            security=self.security, profiles=self.profiles))

    def _type_operations(self, ctx: RequestContext) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for type_, name in sorted(self.operations):
            out.setdefault(type_, []).append(
                (name, f"{ctx.base_url.rsplit('/fhir', 1)[0]}/fhir/OperationDefinition/"
                       f"{type_}-{name}"))
        return out


# -- helpers -----------------------------------------------------------------------------------


def _now() -> str:
    return now_instant()[0]


def _ref(resource: dict[str, Any], version: str | None = None) -> Ref:
    """(type, id, version) of ``resource``: its own version, or ``version`` ("" names the
    current one)."""
    if version is None:
        version = str((resource.get("meta") or {}).get("versionId") or "")
    return resource["resourceType"], str(resource["id"]), version


def _link(relation: str, url: str) -> dict[str, str]:
    return {"relation": relation, "url": url}


def _has_error(issues: Iterable[Issue]) -> bool:
    return any(i.severity in ("error", "fatal") for i in issues)


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit():
        raise FhirError.of(400, f"{name} must be a non-negative integer, not '{value}'",
                           code="value", expression=name)
    return int(value)


def _multiple_matches(type_: str, interaction: str) -> FhirError:
    return FhirError.of(412, f"Conditional {interaction}: several {type_} resources match the "
                        "criteria; make them more selective", code="multiple-matches")


def _written_text(written: Written) -> str:
    v = written.version
    assert v is not None
    verb = "Found existing" if written.matched else {201: "Created", 200: "Updated"}[
        written.status]
    return f"{verb} {v.type}/{v.id} (version {v.version})"


def _deleted_text(written: Written) -> str:
    v = written.version
    if v is None:
        return f"Nothing to delete: no such current {written.type}"
    return f"Deleted {v.type}/{v.id} (version {v.version})"


def _validation_request(type_: str, body: Any, id_: str | None
                        ) -> tuple[dict[str, Any] | None, str, tuple[str, ...]]:
    """(resource, mode, profiles) of a $validate body: the resource itself, or a Parameters
    with ``resource``, ``mode`` and ``profile``."""
    default_mode = "update" if id_ is not None else "create"
    if not isinstance(body, dict):
        raise FhirError.of(400, "A resource or Parameters was expected", code="structure")
    if body.get("resourceType") != "Parameters" or type_ == "Parameters":
        return body, default_mode, ()
    resource: dict[str, Any] | None = None
    mode = default_mode
    profiles: list[str] = []
    for param in body.get("parameter") or []:
        name = param.get("name") if isinstance(param, dict) else None
        if name == "resource":
            resource = param.get("resource")
        elif name == "mode":
            mode = str(param.get("valueCode") or param.get("valueString") or "")
        elif name == "profile":
            profiles.append(str(param.get("valueUri") or param.get("valueCanonical") or ""))
    if mode not in ("create", "update", "delete"):
        raise FhirError.of(400, f"mode '{mode}' is not supported (create, update, delete)",
                           code="not-supported", expression="Parameters.parameter")
    return resource, mode, tuple(p for p in profiles if p)


# -- _elements and _summary --------------------------------------------------------------------

_ALWAYS = frozenset({"resourceType", "id", "meta"})


def _subset(resource: dict[str, Any], parsed: ParsedSearch) -> dict[str, Any]:
    """The resource reduced by _elements or _summary, tagged SUBSETTED when reduced."""
    summary = parsed.summary
    if parsed.elements is not None:
        prefix = resource["resourceType"] + "."
        # mandatory elements are returned whether asked for or not (R4 search 3.1.1.5.9)
        keep = _ALWAYS | _required_elements(resource["resourceType"]) | {
            e.removeprefix(prefix) for e in parsed.elements if "." not in e.removeprefix(prefix)}
        out = {k: v for k, v in resource.items() if k.lstrip("_") in keep}
    elif summary == "true":
        elements = _summary_elements(resource["resourceType"])
        out = {k: v for k, v in resource.items() if k.lstrip("_") in elements}
    elif summary == "text":
        required = _required_elements(resource["resourceType"])
        out = {k: v for k, v in resource.items()
               if k.lstrip("_") in required or k in _ALWAYS or k == "text"}
    elif summary == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    else:
        return resource
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


@functools.cache
def _summary_elements(type_: str) -> frozenset[str]:
    """Top-level elements of ``type_`` marked isSummary in R4 (from the R4B models)."""
    from fhir.resources.R4B import get_fhir_model_class

    fields = get_fhir_model_class(type_).model_fields.values()
    names = {f.alias for f in fields
             if isinstance(f.json_schema_extra, dict)
             and f.json_schema_extra.get("summary_element_property")}
    return frozenset(names) | _ALWAYS


@functools.cache
def _required_elements(type_: str) -> frozenset[str]:
    """Top-level elements of ``type_`` with min >= 1 (choice types: every variant name)."""
    path = Path(__file__).parent / "definitions" / "elements.json"
    elements = json.loads(path.read_text())["types"].get(type_, {}).get("elements", {})
    names: set[str] = set()
    for key, definition in elements.items():
        parts = key.split(".")
        if len(parts) == 2 and definition.get("min", 0) >= 1:
            name = parts[1]
            if name.endswith("[x]"):
                stem = name[:-3]
                names.update(stem + t["code"][:1].upper() + t["code"][1:]
                             for t in definition.get("types", []))
            else:
                names.add(name)
    return frozenset(names)
