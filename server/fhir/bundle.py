"""batch and transaction Bundles POSTed to the base URL (R4 http.html#transaction).

A **batch** processes each entry on its own (its own unit of work) in entry order; a failing
entry gets its status and OperationOutcome in the response and the others go on.

A **transaction** runs in ONE unit of work: all or nothing. Any failing entry fails the whole
transaction with that entry's status and issues, each issue naming the entry
(``Bundle.entry[3].resource.subject``). Processing order is the spec's: DELETE, then POST,
then PUT/PATCH, then GET/HEAD; identities written by more than one DELETE/PUT/PATCH entry are
refused. Before anything is stored, ``fullUrl`` placeholders (``urn:uuid:``, ``urn:oid:``, and
absolute URLs of entries) get the ids the server assigns, and every ``Reference.reference`` in
every resource (recursively: extensions, contained resources) is rewritten to them.
Conditional references (``Patient?identifier=sys|val``) resolve to their single match (none:
400, several: 412). A conditional create (``ifNoneExist``) sees the resources that earlier
entries of the transaction created; a POST that refers to a conditional create's fullUrl is
processed after it, so the reference gets the id the condition resolved to.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from ..store.port import ETags, Precondition, UnitOfWork, check_version, new_id
from . import jsonio, model
from .outcome import FhirError, Issue
from .patch import JSON_PATCH_MEDIA_TYPE
from .references import CONDITIONAL_REF_RE, PLACEHOLDER_RE, references_in, rewrite_references
from .search.normalize import ID_RE, TYPE_RE
from .service import (
    FhirService,
    Interaction,
    Reader,
    RequestContext,
    Result,
    Written,
    parse_etags,
)

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
OPERATION_RE = re.compile(r"[A-Za-z][A-Za-z0-9\-]{0,63}")
_CONDITIONS = {"ifNoneExist": ("POST",), "ifMatch": ("PUT", "PATCH", "DELETE"),
               "ifNoneMatch": ("GET", "HEAD", "PUT", "PATCH", "DELETE"),
               "ifModifiedSince": ("GET", "HEAD")}
_PHASES = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass(frozen=True)
class Target:
    """What an entry's ``request.url`` addresses."""

    type: str | None = None
    id: str | None = None
    version: str | None = None
    history: bool = False
    metadata: bool = False
    params: list[tuple[str, str]] | None = None  # None: no query string
    operation: str | None = None  # ``$name`` of ``Type/$name`` or ``Type/id/$name``

    @property
    def conditional(self) -> bool:
        return self.id is None and self.params is not None and self.operation is None


@dataclass
class Entry:
    index: int
    method: str
    url: str
    target: Target
    full_url: str | None = None
    resource: dict[str, Any] | None = None
    patch: Any = None
    if_none_exist: list[tuple[str, str]] | None = None
    if_match: ETags | None = None
    if_none_match: ETags | None = None
    if_modified_since: str | None = None  # a FHIR instant

    @property
    def path(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def precondition(self) -> Precondition | None:
        """The ifMatch / ifNoneMatch of a write entry, as the headers of a request."""
        return Precondition.of(self.if_match, self.if_none_match)


def process(service: FhirService, ctx: RequestContext, bundle: Any) -> Result:
    """Process a batch or transaction Bundle; the answer is a *-response Bundle."""
    kind, raw_entries = _check_bundle(bundle)
    if kind == "batch":
        entries = _batch(service, ctx, raw_entries)
    else:
        try:
            entries = _Transaction(service, ctx, raw_entries).run()
        except Exception as exc:  # nothing was written; the observers (audit) hear of it
            service.observe(Interaction(ctx, "transaction", error=exc))
            raise
    answer: dict[str, Any] = {"resourceType": "Bundle", "id": new_id(),
                              "type": f"{kind}-response"}
    if entries:
        answer["entry"] = entries
    return Result(200, answer)


# -- parsing -----------------------------------------------------------------------------------


def _check_bundle(bundle: Any) -> tuple[str, list[Any]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError.of(400, "Only a Bundle of type batch or transaction may be posted to "
                           "the base URL", code="invalid", expression="Bundle")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError.of(400, f"Bundle.type must be batch or transaction, not {kind!r}",
                           code="invalid", expression="Bundle.type")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FhirError.of(400, "Bundle.entry must be an array", code="structure",
                           expression="Bundle.entry")
    _check_structure(model.validate({k: v for k, v in bundle.items() if k != "entry"},
                                    type_="Bundle"))
    return kind, entries


def parse_entry(index: int, raw: Any, base_url: str) -> Entry:
    """Check one Bundle entry and take its request apart."""
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise _bad(f"{where} needs a request", f"{where}.request", "required")
    request = raw["request"]
    method, url = request.get("method"), request.get("url")
    if method not in METHODS:
        raise _bad(f"{where}: request.method must be one of {', '.join(METHODS)}",
                   f"{where}.request.method")
    if not isinstance(url, str) or not url:
        raise _bad(f"{where}: request.url is required", f"{where}.request.url", "required")
    target = parse_url(url, base_url, f"{where}.request.url")
    entry = Entry(index, method, url, target, full_url=_full_url(raw, where),
                  resource=_entry_resource(raw, where))
    _check_method(entry)
    if method == "PATCH":
        entry.patch = _patch_document(entry)
    for name, methods in _CONDITIONS.items():
        if request.get(name) is not None and method not in methods:
            raise _bad(f"{where}: request.{name} does not apply to {method}",
                       f"{where}.request.{name}", "not-supported")
    _check_structure(model.validate_element(
        {k: v for k, v in raw.items() if k != "resource"}, "Bundle.entry", where))
    entry.if_none_exist = _query_param(request, "ifNoneExist", where)
    entry.if_match = _etag_param(request, "ifMatch", where)
    entry.if_none_match = _etag_param(request, "ifNoneMatch", where)
    entry.if_modified_since = request.get("ifModifiedSince")  # checked as an instant above
    return entry


def _check_structure(issues: list[Issue]) -> None:
    """400 with the errors among ``issues`` (a part of the Bundle checked on its own: its
    envelope, an entry without its resource, which is checked when it is written)."""
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise FhirError(400, errors)


def _etag_param(request: dict[str, Any], name: str, where: str) -> ETags | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{where}.request.{name} must be a string", f"{where}.request.{name}")
    return parse_etags(value, name, f"{where}.request.{name}")


def parse_url(url: str, base_url: str, where: str) -> Target:
    """``Type``, ``Type?q``, ``Type/id``, ``Type/id/_history[/v]``, ``Type/_history``,
    ``_history``, ``metadata``, ``Type/$name``, ``Type/id/$name`` - relative, or absolute
    under this server's base URL."""
    if "://" in url:
        if not url.startswith(base_url + "/"):
            raise _bad(f"{url!r} is not a URL of this server", where)
        url = url[len(base_url) + 1:]
    path, _, query = url.partition("?")
    params = parse_qsl(query, keep_blank_values=True) if "?" in url else None
    parts = [p for p in path.split("/") if p]
    if parts == ["metadata"]:
        return Target(metadata=True)
    if parts == ["_history"]:
        return Target(history=True, params=params)
    if not parts or not TYPE_RE.fullmatch(parts[0]):
        raise _bad(f"{url!r} is not a resource URL", where)
    type_, rest = parts[0], parts[1:]
    if rest and rest[-1].startswith("$") and len(rest) <= 2:
        name = rest[-1][1:]
        if not OPERATION_RE.fullmatch(name):
            raise _bad(f"{url!r}: {rest[-1]!r} is not an operation name", where)
        if len(rest) == 2 and not ID_RE.fullmatch(rest[0]):
            raise _bad(f"{url!r}: {rest[0]!r} is not a valid id", where)
        return Target(type=type_, id=rest[0] if len(rest) == 2 else None, params=params,
                      operation=name)
    if not rest:
        return Target(type=type_, params=params)
    if rest == ["_history"]:
        return Target(type=type_, history=True, params=params)
    if not ID_RE.fullmatch(rest[0]):
        raise _bad(f"{url!r}: {rest[0]!r} is not a valid id", where)
    if len(rest) == 1:
        return Target(type=type_, id=rest[0], params=params)
    if rest[1:] == ["_history"]:
        return Target(type=type_, id=rest[0], history=True, params=params)
    if len(rest) == 3 and rest[1] == "_history":
        return Target(type=type_, id=rest[0], version=rest[2])
    raise _bad(f"{url!r} is not a supported request URL", where)


def _full_url(raw: dict[str, Any], where: str) -> str | None:
    full_url = raw.get("fullUrl")
    if full_url is None:
        return None
    if not isinstance(full_url, str) or not (
            PLACEHOLDER_RE.fullmatch(full_url) or re.match(r"https?://\S+$", full_url)):
        raise _bad(f"{where}.fullUrl must be an absolute URL, urn:uuid: or urn:oid:",
                   f"{where}.fullUrl")
    return full_url


def _entry_resource(raw: dict[str, Any], where: str) -> dict[str, Any] | None:
    resource = raw.get("resource")
    if resource is None:
        return None
    if not isinstance(resource, dict):
        raise _bad(f"{where}.resource must be a resource", f"{where}.resource", "structure")
    if resource.get("resourceType") == "Bundle" and resource.get("type") in (
            "batch", "transaction"):
        raise _bad(f"{where}: a {resource['type']} Bundle cannot be nested in another",
                   f"{where}.resource", "not-supported")
    return resource


def _check_method(entry: Entry) -> None:
    """Is ``request.method`` meaningful for ``request.url`` and the entry's content?"""
    t, where = entry.target, f"{entry.path}.request.url"
    writes_type = t.type is not None and t.version is None and not t.history
    if t.operation is not None:
        if entry.method not in ("GET", "POST"):
            raise _bad(f"{entry.path}: an operation is invoked with GET or POST, not "
                       f"{entry.method}", f"{entry.path}.request.method")
        return
    if entry.method == "POST":
        ok = writes_type and t.id is None and t.params is None
    elif entry.method in ("PUT", "PATCH", "DELETE"):
        ok = writes_type and (t.id is not None) != (t.params is not None)
    else:
        ok = True
    if not ok:
        raise _bad(f"{entry.path}: {entry.method} {entry.url} is not a supported request", where)
    if entry.method in ("POST", "PUT"):
        if entry.resource is None:
            raise _bad(f"{entry.path}: {entry.method} needs a resource",
                       f"{entry.path}.resource", "required")
        if entry.resource.get("resourceType") != t.type:
            raise _bad(f"{entry.path}: the resource is not a {t.type}",
                       f"{entry.path}.resource.resourceType")


def _patch_document(entry: Entry) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary (contentType json-patch+json)."""
    binary, where = entry.resource, f"{entry.path}.resource"
    if not binary or binary.get("resourceType") != "Binary":
        kind = binary.get("resourceType") if binary else None
        hint = " (FHIRPath Patch is not supported)" if kind == "Parameters" else ""
        raise _bad(f"{entry.path}: a PATCH entry needs a Binary JSON Patch{hint}", where,
                   "not-supported" if hint else "required")
    if str(binary.get("contentType", "")).split(";")[0].strip() != JSON_PATCH_MEDIA_TYPE:
        raise _bad(f"{entry.path}: the Binary's contentType must be {JSON_PATCH_MEDIA_TYPE}",
                   f"{where}.contentType", "not-supported")
    try:
        data = base64.b64decode(str(binary.get("data", "")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"{entry.path}: Binary.data is not base64", f"{where}.data") from exc
    return jsonio.loads_request(data)


def _query_param(request: dict[str, Any], name: str, where: str
                 ) -> list[tuple[str, str]] | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip("?"):
        raise _bad(f"{where}.request.{name} must be a search query", f"{where}.request.{name}")
    return parse_qsl(value.split("?", 1)[-1], keep_blank_values=True)


# -- batch -------------------------------------------------------------------------------------


def _batch(service: FhirService, ctx: RequestContext, raw_entries: list[Any]) -> list[dict]:
    out: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_entries):
        entry: Entry | None = None
        try:
            entry = parse_entry(index, raw, ctx.base_url)
            out.append(_batch_entry(service, ctx, entry))
        except FhirError as exc:
            # reads and operations are recorded (audited) as themselves
            if entry is not None and entry.method not in ("GET", "HEAD") \
                    and entry.target.operation is None:
                t = entry.target
                service.observe(Interaction(ctx, "batch-entry", t.type, t.id,
                                            list(t.params or []), entry.method, error=exc))
            error = at_entry(exc, index, entry)
            out.append({"response": {"status": _status(error.status),
                                     "outcome": error.to_outcome()}})
    return out


def _batch_entry(service: FhirService, ctx: RequestContext, entry: Entry) -> dict[str, Any]:
    if entry.target.operation is not None:
        return read_response(entry, operate(service, ctx, entry), body_too=True)
    if entry.method in ("GET", "HEAD"):
        return read_response(entry, read(service, ctx, entry, service.store))
    with service.unit_of_work(ctx) as uow:
        written = write(service, ctx, uow, entry)
    return write_response(service, ctx, written)


# -- transaction -------------------------------------------------------------------------------


@dataclass
class _Transaction:
    service: FhirService
    ctx: RequestContext
    raw_entries: list[Any]
    # fullUrl -> "Type/id" the entry's resource has (or will have) on this server.
    ids: dict[str, str] = field(default_factory=dict)
    # fullUrls of conditional creates not processed yet: their ids are not known.
    unresolved: set[str] = field(default_factory=set)
    # Placeholder ids of conditional creates not processed yet -> where a stored resource
    # already refers to one (a reference cycle).
    tentative: dict[str, str] = field(default_factory=dict)
    responses: dict[int, dict[str, Any]] = field(default_factory=dict)

    def run(self) -> list[dict[str, Any]]:
        entries = [parse_entry(i, raw, self.ctx.base_url)
                   for i, raw in enumerate(self.raw_entries)]
        for entry in entries:
            if entry.target.operation is not None:
                raise _bad(f"{entry.path}: operations are processed in batch Bundles, not in "
                           "transactions (whose entries are ordered by method)",
                           f"{entry.path}.request.url", "not-supported")
        self._check_full_urls(entries)
        with self.service.unit_of_work(self.ctx) as uow:
            self._assign_ids(entries)
            for entry in _in_phase(entries, 0):
                self._guard(entry, lambda e: self._delete(uow, e))
            conditional = [e for e in entries
                           if e.method in ("PUT", "PATCH") and e.target.conditional]
            named = self._named_by_posts(conditional, _in_phase(entries, 1))
            self._resolve_conditionals(uow, named)
            self._posts(uow, _in_phase(entries, 1))
            self._resolve_conditionals(uow, [e for e in conditional if e not in named])
            self._check_identities(entries)
            for entry in _in_phase(entries, 2):
                self._guard(entry, lambda e: self._put_or_patch(uow, e))
            for entry in _in_phase(entries, 3):
                self._guard(entry, lambda e: self._get(uow, e))
        return [self.responses[i] for i in range(len(entries))]

    def _guard(self, entry: Entry, step: Callable[[Entry], None]) -> None:
        try:
            step(entry)
        except FhirError as exc:
            raise at_entry(exc, entry.index, entry) from exc

    @staticmethod
    def _check_full_urls(entries: list[Entry]) -> None:
        seen: dict[str, int] = {}
        for entry in entries:
            if entry.full_url is None:
                continue
            if entry.full_url in seen:
                raise _bad(f"{entry.path}.fullUrl repeats Bundle.entry[{seen[entry.full_url]}]"
                           f".fullUrl ({entry.full_url})", f"{entry.path}.fullUrl",
                           "duplicate")
            seen[entry.full_url] = entry.index

    def _assign_ids(self, entries: list[Entry]) -> None:
        """Ids for POSTs and entries with literal ids, known before anything is stored."""
        for entry in entries:
            t = entry.target
            if entry.method == "POST":
                entry.target = Target(type=t.type, id=new_id())
                if entry.full_url:
                    self.ids[entry.full_url] = f"{t.type}/{entry.target.id}"
                    if entry.if_none_exist is not None:
                        self.unresolved.add(entry.full_url)
            elif entry.full_url and t.id and entry.method in ("PUT", "PATCH"):
                self.ids[entry.full_url] = f"{t.type}/{t.id}"

    def _delete(self, uow: UnitOfWork, entry: Entry) -> None:
        t = entry.target
        assert t.type is not None
        if t.conditional:
            written = self.service.conditional_delete_in(uow, self.ctx, t.type, t.params or [],
                                                         if_match=entry.precondition)
        else:
            assert t.id is not None
            written = self.service.delete_in(uow, self.ctx, t.type, t.id,
                                              if_match=entry.precondition)
        if written.version is not None:
            entry.target = Target(type=t.type, id=written.version.id)
        self.responses[entry.index] = write_response(self.service, self.ctx, written)

    @staticmethod
    def _named_by_posts(conditional: list[Entry], posts: list[Entry]) -> list[Entry]:
        """The conditional PUT/PATCH entries a POST refers to by fullUrl: their criteria are
        evaluated before the POSTs, which need their ids. The others' criteria are evaluated
        after the POSTs, as the processing order asks (a PUT's criteria see what the POSTs
        created)."""
        named = {ref for post in posts for ref, _ in references_in(post.resource or {})}
        return [e for e in conditional if e.full_url is not None and e.full_url in named]

    def _resolve_conditionals(self, uow: UnitOfWork, entries: list[Entry]) -> None:
        for entry in entries:
            self._guard(entry, lambda e: self._resolve_conditional(uow, e))

    @staticmethod
    def _check_identities(entries: list[Entry]) -> None:
        """Refuse an identity that more than one DELETE/PUT/PATCH entry writes."""
        written: dict[tuple[str, str], int] = {}
        for entry in entries:
            if entry.method not in ("DELETE", "PUT", "PATCH"):
                continue
            t = entry.target
            if t.type is None or t.id is None:  # a conditional delete that matched nothing
                continue
            key = (t.type, t.id)
            if key in written:
                raise _bad(f"{entry.path} and Bundle.entry[{written[key]}] both write "
                           f"{t.type}/{t.id}", f"{entry.path}.request.url", "duplicate")
            written[key] = entry.index

    def _resolve_conditional(self, uow: UnitOfWork, entry: Entry) -> None:
        t = entry.target
        assert t.type is not None and t.params is not None
        if entry.method == "PATCH":
            target = self.service.single_match(uow, self.ctx, t.type, t.params, "patch")
        else:
            assert entry.resource is not None
            found = self.service.conditional_target(uow, self.ctx, t.type, t.params,
                                                    entry.resource.get("id"))
            if found is None:
                check_version(t.type, None, entry.precondition, None)
            target = found or new_id()
            entry.resource = {**entry.resource, "id": target}
        entry.target = Target(type=t.type, id=target)
        if entry.full_url:
            self.ids[entry.full_url] = f"{t.type}/{target}"

    def _posts(self, uow: UnitOfWork, posts: list[Entry]) -> None:
        """Create in entry order, except that a POST referring to a conditional create not
        yet processed waits for it (unless they refer to each other)."""
        pending = list(posts)
        while pending:
            ready = next((e for e in pending if not self._waits(e)), pending[0])
            pending.remove(ready)
            self._guard(ready, lambda e: self._post(uow, e))

    def _waits(self, entry: Entry) -> bool:
        return any(ref in self.unresolved and ref != entry.full_url
                   for ref, _ in references_in(entry.resource or {}))

    def _post(self, uow: UnitOfWork, entry: Entry) -> None:
        t = entry.target
        assert t.type is not None and entry.resource is not None
        resource = self._rewrite(uow, entry)
        written = self.service.create_in(uow, self.ctx, t.type, resource,
                                         if_none_exist=entry.if_none_exist, id_=t.id)
        assert written.version is not None
        if entry.full_url:
            self.unresolved.discard(entry.full_url)
            if written.matched:
                self._check_not_used(entry)
            self.ids[entry.full_url] = f"{t.type}/{written.version.id}"
        self.responses[entry.index] = write_response(self.service, self.ctx, written)

    def _check_not_used(self, entry: Entry) -> None:
        """A conditional create matched an existing resource, but a resource stored before
        (a reference cycle) already refers to the id it would have had."""
        placeholder = self.ids[entry.full_url or ""]
        if placeholder in self.tentative:
            raise _bad(f"{entry.path}: references to {entry.full_url} form a cycle through a "
                       "conditional create that matched an existing resource; they cannot be "
                       "resolved", self.tentative[placeholder], "processing")

    def _put_or_patch(self, uow: UnitOfWork, entry: Entry) -> None:
        t = entry.target
        assert t.type is not None and t.id is not None
        if entry.method == "PATCH":
            written = self.service.patch_in(uow, self.ctx, t.type, t.id, entry.patch,
                                            if_match=entry.precondition)
        else:
            written = self.service.update_in(uow, self.ctx, t.type, t.id,
                                             self._rewrite(uow, entry), if_match=entry.precondition)
        self.responses[entry.index] = write_response(self.service, self.ctx, written)

    def _get(self, uow: UnitOfWork, entry: Entry) -> None:
        self.responses[entry.index] = read_response(
            entry, read(self.service, self.ctx, entry, uow))

    def _rewrite(self, uow: UnitOfWork, entry: Entry) -> dict[str, Any]:
        """The entry's resource with placeholders and conditional references resolved."""

        def resolve(ref: str, where: str) -> str | None:
            if ref in self.ids:
                if ref in self.unresolved:
                    self.tentative.setdefault(self.ids[ref], where)
                return self.ids[ref]
            if PLACEHOLDER_RE.fullmatch(ref):
                raise _bad(f"{ref} is not the fullUrl of any entry", where, "not-found")
            m = CONDITIONAL_REF_RE.fullmatch(ref)
            if m is None:
                return None
            return self._conditional_reference(uow, m["type"], m["query"], where)

        assert entry.resource is not None
        return rewrite_references(entry.resource, f"{entry.path}.resource", resolve)

    def _conditional_reference(self, uow: UnitOfWork, type_: str, query: str,
                               where: str) -> str:
        params = parse_qsl(query, keep_blank_values=True)
        matches = self.service.conditional_matches(uow, self.ctx, type_, params)
        if len(matches) != 1:
            status = 412 if matches else 400
            found = "several resources match" if matches else "no resource matches"
            raise _bad(f"Conditional reference {type_}?{query}: {found}", where,
                       "multiple-matches" if matches else "not-found", status=status)
        return f"{type_}/{matches[0]['id']}"


def _in_phase(entries: list[Entry], phase: int) -> list[Entry]:
    return [e for e in entries if _PHASES[e.method] == phase]


# -- one entry ---------------------------------------------------------------------------------


def read(service: FhirService, ctx: RequestContext, entry: Entry, reader: Reader) -> Result:
    """A GET/HEAD entry: read, vread, search, history or the CapabilityStatement."""
    t = entry.target
    if t.metadata:
        return service.capabilities(ctx)
    if t.history:
        return service.history(ctx, t.params or [], t.type, t.id, reader=reader)
    if t.type is None:
        raise _bad(f"{entry.path}: system-level search is not supported",
                   f"{entry.path}.request.url", "not-supported")
    if t.version is not None:
        assert t.id is not None
        return service.vread(ctx, t.type, t.id, t.version, reader=reader)
    if t.id is not None:
        return service.read(ctx, t.type, t.id, if_none_match=entry.if_none_match,
                            if_modified_since=entry.if_modified_since, reader=reader)
    return service.search(ctx, t.type, t.params or [], reader=reader)


def write(service: FhirService, ctx: RequestContext, uow: UnitOfWork, entry: Entry) -> Written:
    """A write entry of a batch (no references between entries)."""
    t = entry.target
    assert t.type is not None
    if entry.method == "POST":
        return service.create_in(uow, ctx, t.type, entry.resource,
                                 if_none_exist=entry.if_none_exist)
    if entry.method == "PUT":
        if t.conditional:
            return service.conditional_update_in(uow, ctx, t.type, t.params or [],
                                                 entry.resource, if_match=entry.precondition)
        assert t.id is not None
        return service.update_in(uow, ctx, t.type, t.id, entry.resource,
                                 if_match=entry.precondition)
    if entry.method == "PATCH":
        target = (service.single_match(uow, ctx, t.type, t.params or [], "patch")
                  if t.conditional else t.id)
        assert target is not None
        return service.patch_in(uow, ctx, t.type, target, entry.patch,
                                if_match=entry.precondition)
    if t.conditional:
        return service.conditional_delete_in(uow, ctx, t.type, t.params or [],
                                             if_match=entry.precondition)
    assert t.id is not None
    return service.delete_in(uow, ctx, t.type, t.id, if_match=entry.precondition)


def write_response(service: FhirService, ctx: RequestContext,
                   written: Written) -> dict[str, Any]:
    result = service.write_result(ctx, written)
    response: dict[str, Any] = {"status": _status(result.status)}
    version = written.version
    if version is not None:
        if not version.deleted:
            response["location"] = f"{version.type}/{version.id}/_history/{version.version}"
        response["etag"] = version.etag
        response["lastModified"] = version.last_updated
    out: dict[str, Any] = {}
    if result.body is not None and result.body.get("resourceType") == "OperationOutcome":
        response["outcome"] = result.body
    elif result.body is not None:
        out["fullUrl"] = f"{ctx.base_url}/{result.body['resourceType']}/{result.body['id']}"
        out["resource"] = result.body
    out["response"] = response
    return out


def operate(service: FhirService, ctx: RequestContext, entry: Entry) -> Result:
    """An operation entry of a batch, as the same request to its URL: ``$validate`` of a
    type or instance (POSTed), or an instance operation (GET, or POST with its
    Parameters)."""
    t = entry.target
    assert t.type is not None and t.operation is not None
    body = entry.resource if entry.method == "POST" else None
    if t.operation == "validate":
        if entry.method != "POST":
            raise _bad(f"{entry.path}: $validate is POSTed with the resource or Parameters",
                       f"{entry.path}.request.method")
        return service.validate(ctx, t.type, body, t.id)
    if t.id is None:
        raise FhirError.of(404, f"Operation ${t.operation} is not supported on {t.type} "
                           "(only on an instance)", code="not-supported",
                           expression=f"{entry.path}.request.url")
    return service.operation(ctx, t.type, t.id, t.operation, body)


def read_response(entry: Entry, result: Result, *, body_too: bool = False) -> dict[str, Any]:
    """The response entry of a read (``body_too``: of an operation, whose answer is always
    returned)."""
    response: dict[str, Any] = {"status": _status(result.status)}
    if "ETag" in result.headers:
        response["etag"] = result.headers["ETag"]
    body = result.body
    if body is not None and isinstance(body.get("meta"), dict) and body.get("id"):
        last_updated = body["meta"].get("lastUpdated")
        if last_updated and body.get("resourceType") != "Bundle":
            response["lastModified"] = last_updated
    out: dict[str, Any] = {}
    if body is not None and (entry.method == "GET" or body_too):
        out["resource"] = body
    out["response"] = response
    return out


# -- errors ------------------------------------------------------------------------------------


def at_entry(exc: FhirError, index: int, entry: Entry | None = None) -> FhirError:
    """``exc`` with every issue naming the entry: resource paths become
    ``Bundle.entry[i].resource...``; issues without a Bundle path get ``Bundle.entry[i]``."""
    where = f"Bundle.entry[{index}]"
    type_ = (entry.resource or {}).get("resourceType") if entry else None
    prefix = f"{where}: " if entry is None else f"{where} ({entry.method} {entry.url}): "
    issues = []
    for item in exc.issues:
        expression = tuple(_entry_expression(e, where, type_) for e in item.expression)
        if not any(e.startswith(where) for e in expression):
            expression = (where, *expression)
        diagnostics = (item.diagnostics if item.diagnostics.startswith(where)
                       else prefix + item.diagnostics)
        issues.append(Issue(item.severity, item.code, diagnostics, expression))
    return FhirError(exc.status, issues, dict(exc.headers))


def _entry_expression(expression: str, where: str, type_: str | None) -> str:
    if type_ and (expression == type_ or expression.startswith(f"{type_}.")
                  or expression.startswith(f"{type_}[")):
        return f"{where}.resource{expression[len(type_):]}"
    return expression


def _bad(diagnostics: str, expression: str, code: str = "invalid", *,
         status: int = 400) -> FhirError:
    return FhirError.of(status, diagnostics, code=code, expression=expression)


def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"
