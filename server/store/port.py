"""The storage port: what every engine must do.

An engine stores FHIR resources as the client's JSON (plus ``id`` and ``meta.versionId`` /
``meta.lastUpdated``, which the engine assigns) with server-owned fields beside it: the
version, the time, a deleted flag, the index values extracted at write time and the unique
keys the resource holds. Every version is kept (history); the current row and the history row
are written in one unit of work.

All writes go through a :class:`UnitOfWork`, which is atomic: either everything it did is
committed or nothing is. Reads inside a unit of work see its own writes.

The records the server writes about what happened (:data:`RECORD_TYPES`: the AuditEvent of
every access, the Provenance of every write) are written with :meth:`UnitOfWork.record`: they
are never changed afterwards, so an engine may index them after the commit, off the request's
path, as long as every read and search that begins after the commit sees them.

Engines:
- :mod:`server.store.embedded` - stdlib sqlite3 (the default, one file, no server);
- :mod:`server.store.mongo` - pymongo (production; transactions need a replica set).
"""

from __future__ import annotations

import abc
import datetime as _dt
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import uuid_utils

from ..fhir.outcome import FhirError, issue
from ..fhir.search.ast import IndexValues, SearchQuery, SearchResult

RECORD_TYPES = frozenset({"AuditEvent", "Provenance"})
"""The types of :meth:`UnitOfWork.record` (records the server writes, never changed)."""


def check_record_type(type_: str) -> None:
    """Refuse a type :meth:`UnitOfWork.record` does not take (a programming error)."""
    if type_ not in RECORD_TYPES:
        raise ValueError(f"{type_} is not a record type")

Indexer = Callable[[dict[str, Any]], IndexValues]
"""Extracts the index values of one resource (given its JSON, with ``resourceType``)."""


@dataclass(frozen=True)
class Version:
    """One stored version of a resource."""

    type: str
    id: str
    version: int
    last_updated: str  # FHIR instant, UTC, millisecond precision, e.g. 2026-01-02T03:04:05.678Z
    deleted: bool
    resource: dict[str, Any] | None  # None for a deletion (tombstone)
    method: str = "PUT"  # POST | PUT | PATCH | DELETE: how this version was made

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True)
class ETags:
    """An ``If-Match`` or ``If-None-Match`` value (RFC 9110 13.1.1, 13.1.2): ``*`` (any
    current version) or a list of entity tags, compared weakly (``W/"3"`` matches version 3).
    ``name`` is how the client gave it (``If-Match``, ``ifMatch``), ``expression`` where
    (the header, or ``Bundle.entry[2].request.ifMatch``), ``text`` the value as given."""

    name: str
    expression: str
    text: str
    tags: frozenset[str] = frozenset()  # the opaque tags (a version number for ours)
    any: bool = False  # ``*``

    def matches(self, live: int | None) -> bool:
        """Whether the current version ``live`` (None: no current resource) matches."""
        return live is not None and (self.any or str(live) in self.tags)


@dataclass(frozen=True)
class Precondition:
    """What a client's ``If-Match`` and ``If-None-Match`` ask of the current version of the
    resource a write changes: If-Match, that it matches (``*``: that there is one);
    If-None-Match, that it does not (``*``: that there is none, a create-only PUT)."""

    if_match: ETags | None = None
    if_none_match: ETags | None = None

    @classmethod
    def of(cls, if_match: ETags | None, if_none_match: ETags | None) -> Precondition | None:
        """The precondition of these values; None when neither is given."""
        if if_match is None and if_none_match is None:
            return None
        return cls(if_match, if_none_match)

    def failing(self, live: int | None) -> ETags | None:
        """The value the current version ``live`` fails (If-Match first, as RFC 9110
        13.2.2 evaluates them), or None when it satisfies both."""
        if self.if_match is not None and not self.if_match.matches(live):
            return self.if_match
        if self.if_none_match is not None and self.if_none_match.matches(live):
            return self.if_none_match
        return None


Expected = int | Precondition | None
"""What a write expects of the current version of its resource: nothing (None), exactly the
version the caller read (an int), or a client's :class:`Precondition`."""


def satisfies(expected: Expected, live: int | None) -> bool:
    """Whether the current version ``live`` (None: no current resource) is as expected."""
    if expected is None:
        return True
    if isinstance(expected, Precondition):
        return expected.failing(live) is None
    return expected == live


def check_version(type_: str, id_: str | None, expected: Expected, live: int | None) -> None:
    """Raise :class:`VersionConflict` unless the current version ``live`` of ``type_/id_``
    (``id_`` None: of a conditional interaction that matched nothing) is as expected."""
    if not satisfies(expected, live):
        raise VersionConflict(type_, id_, expected, live)


class VersionConflict(FhirError):
    """The current version is not what the write expected (``If-Match``, ``If-None-Match``
    or the version the caller read): HTTP 412."""

    def __init__(self, type_: str, id_: str | None, expected: Expected,
                 actual: int | None) -> None:
        subject = f"No {type_} matches the criteria" if id_ is None else f"{type_}/{id_}"
        now = "" if id_ is None else (" does not exist" if actual is None
                                      else f" is at version {actual}")
        failed = expected.failing(actual) if isinstance(expected, Precondition) else None
        if failed is not None:
            text = f"{subject}{now}, which {failed.name}: {failed.text} does not allow"
            found = issue(text, code="conflict", expression=failed.expression)
        else:
            found = issue(f"{subject}{now}, not version {expected} as If-Match required; "
                          "read it again and retry", code="conflict")
        super().__init__(412, [found])


class UniqueConflict(FhirError):
    """A unique key is already held by another current resource: HTTP 409."""

    def __init__(self, key: str, owner_type: str, owner_id: str) -> None:
        self.key = key
        self.owner_type = owner_type
        self.owner_id = owner_id
        super().__init__(409, [issue(
            f"{owner_type}/{owner_id} already holds the unique key '{key}'", code="duplicate")])


INDEX_NS = "search-index"
"""The key-value namespace of what the search index was built by (:meth:`Store.ensure_indexed`)."""
_BUILT_WITH, _REBUILDING, _PROGRESS = "built-with", "rebuilding", "progress"
INDEX_LEASE_MS = 30_000
"""How long a process that indexes every resource again holds the others off without a sign of
life (it renews the lease after every batch, a fraction of a second)."""
INDEX_WAIT_S = 0.5
"""How often a process that waits for another's indexing looks again."""
REINDEX_BATCH = 500
"""Resources indexed again per transaction."""
INDEX_LOG_EVERY = 10_000
"""Progress of a rebuilt index is told every this many resources."""


def new_id() -> str:
    """A server-assigned logical id: a UUID of version 7, which begins with the time it was
    made. Ids made one after the other sort together, so a new one is added at the end of
    the indexes that hold ids instead of at a random place in them: far fewer index pages
    are read and written per write (records are written on every request)."""
    return str(uuid_utils.uuid7())


_EPOCH = _dt.datetime(1970, 1, 1)  # naive: the ISO form then has no offset (it is UTC)


def format_instant(ms: int) -> str:
    """Epoch milliseconds as a FHIR instant (UTC, millisecond precision)."""
    return f"{_second(ms // 1000)}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=8)
def _second(seconds: int) -> str:
    """The instant of a whole second up to its seconds (the same few are asked for again and
    again: every request stamps the current time)."""
    return (_EPOCH + _dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def now_instant() -> tuple[str, int]:
    """The current time as (FHIR instant string with ms, epoch milliseconds)."""
    ms = time.time_ns() // 1_000_000
    return format_instant(ms), ms


def stamp(resource: dict[str, Any], type_: str, id_: str, version: int, instant: str) -> dict:
    """Return a copy of ``resource`` with ``id`` and ``meta.versionId/lastUpdated`` set,
    everything else as the client wrote it."""
    out = dict(resource)
    out["resourceType"] = type_
    out["id"] = id_
    meta = dict(out.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant
    out["meta"] = meta
    return out


_STAMPED = ("versionId", "lastUpdated")


def _unstamped(stored: dict[str, Any]) -> dict[str, Any]:
    """``stored`` (as :func:`stamp` made it) without the ``meta`` fields a write stamps."""
    return {**stored, "meta": {k: v for k, v in stored["meta"].items() if k not in _STAMPED}}


@dataclass(frozen=True)
class Indexed:
    """The index values of a resource about to be written, computed beforehand
    (:meth:`Store.indexed`: outside the writer lock, where extracting them costs no other
    writer any time). A write uses them when it stores the same resource, which it finds out
    by comparing (:func:`index_values`): the hooks of a write may still change the resource
    before it is stored. ``resource``: the resource as stamped for the write, without the
    ``meta.versionId`` and ``meta.lastUpdated`` that the write stamps itself and that no
    index value depends on (``_lastUpdated`` is answered from the resource row)."""

    resource: dict[str, Any]
    values: IndexValues


def index_values(indexer: Indexer, stored: dict[str, Any],
                 indexed: Indexed | None) -> IndexValues:
    """The index values of ``stored`` (a resource as :func:`stamp` made it): those of
    ``indexed`` when it was computed for this very resource, else the indexer's."""
    if indexed is not None and _unstamped(stored) == indexed.resource:
        return indexed.values
    return indexer(stored)


@dataclass(frozen=True)
class HistoryQuery:
    """Which versions a history lists, newest first, and which page of them.

    Of one resource (``type`` and ``id``), one type, or everything. ``since_ms`` /
    ``until_ms``: only those written at or after / at or before then (versions are never
    changed, so the pages of a history up to a time stay put). ``at``: only versions that
    were current at some time in each of these periods (epoch ms, both ends inclusive):
    written by its end, and not replaced by the next version (a deletion included) by its
    start.

    ``types`` / ``within`` (either given) narrow the versions further, inside the query so
    that the total and the paging stay right: a version is listed when its type is one of
    ``types``, or when the CURRENT version of its resource matches one of the ``within``
    searches (each of one type; the access layer's view of that type). Both None: no
    narrowing; both empty: nothing."""

    type: str | None = None
    id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    at: Sequence[tuple[int, int]] = ()
    types: Sequence[str] | None = None
    within: Sequence[SearchQuery] | None = None
    count: int = 20
    offset: int = 0

    def __post_init__(self) -> None:
        if self.id is not None and self.type is None:
            raise ValueError("the history of one resource needs its type")


class UnitOfWork(abc.ABC):
    """An atomic group of reads and writes. Obtain one from :meth:`Store.unit_of_work`."""

    @abc.abstractmethod
    def read(self, type_: str, id_: str) -> Version | None:
        """The current version (a tombstone if deleted), or None if it never existed."""

    @abc.abstractmethod
    def vread(self, type_: str, id_: str, version: int) -> Version | None:
        """One version, or None; a version this unit of work wrote included."""

    @abc.abstractmethod
    def history(self, query: HistoryQuery) -> tuple[list[Version], int]:
        """:meth:`Store.history`, the versions this unit of work wrote included."""

    @abc.abstractmethod
    def deleted_versions(self, versions: Sequence[tuple[str, str, int]]
                         ) -> set[tuple[str, str, int]]:
        """:meth:`Store.deleted_versions`, the versions this unit of work wrote included."""

    @abc.abstractmethod
    def search(self, query: SearchQuery) -> SearchResult:
        """Search current, non-deleted resources, seeing this unit of work's own writes."""

    @abc.abstractmethod
    def create(
        self,
        type_: str,
        resource: dict[str, Any],
        *,
        id_: str | None = None,
        keys: tuple[str, ...] = (),
        method: str = "POST",
        indexed: Indexed | None = None,
    ) -> Version:
        """Store version 1 of a new resource (server-assigned id unless ``id_``).

        ``keys``: unique keys this resource holds (raises :class:`UniqueConflict` when a
        current resource already holds one). ``indexed``: its index values, computed
        beforehand (:meth:`Store.indexed`)."""

    @abc.abstractmethod
    def update(
        self,
        type_: str,
        id_: str,
        resource: dict[str, Any],
        *,
        if_match: Expected = None,
        keys: tuple[str, ...] | None = None,
        method: str = "PUT",
        indexed: Indexed | None = None,
    ) -> tuple[Version, bool]:
        """Store a new version; creates the resource (update-as-create) when it does not exist
        or was deleted (the version number continues after a tombstone). ``if_match``: what
        the current version must be (:func:`check_version`, checked in the same step as the
        write, so that no concurrent writer comes between). ``keys``: the unique
        keys the resource holds from now on (None keeps the current ones). ``indexed`` as
        for :meth:`create`. Returns the new version and whether it was created."""

    @abc.abstractmethod
    def delete(self, type_: str, id_: str, *, if_match: Expected = None) -> Version | None:
        """Write a tombstone version and release the resource's unique keys. Returns the
        tombstone, or None when there was nothing current to delete. ``if_match`` as for
        :meth:`update`."""

    def record(self, type_: str, resource: dict[str, Any]) -> None:
        """Store a record the server writes about what happened (one of
        :data:`RECORD_TYPES`; version 1 with a server-assigned id, never changed). It
        commits or rolls back with this unit of work; every read and search that begins
        after the commit sees it (the engine may index it later, but before such a read)."""
        check_record_type(type_)
        self.create(type_, resource)

    @abc.abstractmethod
    def lock(self, key: str) -> None:
        """Serialise this unit of work against every other one that locks the same key
        (used by conditional create/update/delete so that search-then-write is race-free)."""

    @abc.abstractmethod
    def key_holder(self, key: str) -> tuple[str, str] | None:
        """The (type, id) of the resource that holds unique key ``key`` as this unit of work
        sees it, or None."""


class Store(abc.ABC):
    """A storage engine. Thread-safe: one instance serves all requests of a process."""

    name: str = "abstract"
    supports_transactions: bool = True

    def __init__(self, indexer: Indexer) -> None:
        self.indexer = indexer

    def indexed(self, type_: str, id_: str, resource: dict[str, Any]) -> Indexed:
        """The index values of ``resource`` as ``type_/id_`` will store it, for a unit of
        work's :meth:`~UnitOfWork.create` or :meth:`~UnitOfWork.update` to take."""
        stored = stamp(resource, type_, id_, 1, "")
        return Indexed(_unstamped(stored), self.indexer(stored))

    @abc.abstractmethod
    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        """A context manager: commits on normal exit, rolls back on an exception."""

    @abc.abstractmethod
    def read(self, type_: str, id_: str) -> Version | None:
        """The current version (a tombstone if deleted), or None if it never existed."""

    @abc.abstractmethod
    def vread(self, type_: str, id_: str, version: int) -> Version | None:
        """One version, or None."""

    @abc.abstractmethod
    def read_many(self, refs: list[tuple[str, str]]) -> list[Version]:
        """The current, non-deleted versions of the given (type, id) pairs that exist."""

    @abc.abstractmethod
    def deleted_versions(self, versions: Sequence[tuple[str, str, int]]
                         ) -> set[tuple[str, str, int]]:
        """Those of ``versions`` (type, id, version number) that are deletions
        (tombstones)."""

    @abc.abstractmethod
    def history(self, query: HistoryQuery) -> tuple[list[Version], int]:
        """The page of versions ``query`` asks for, newest first, and their total."""

    @abc.abstractmethod
    def search(self, query: SearchQuery) -> SearchResult:
        """Search current, non-deleted resources."""

    @abc.abstractmethod
    def reindex(self, batch: int = REINDEX_BATCH,
                progress: Callable[[int, Any], None] | None = None,
                after: Any = None, *, absolute: bool = False) -> int:
        """Extract the search values of every current resource again with the store's
        indexer and replace what is stored for it (after the search parameters or their
        extraction changed, or an upgrade says so). Batch by batch, each in a transaction
        of its own, so that the server goes on serving; a resource written meanwhile keeps
        the values its write stored. ``progress`` is called after each batch with the count
        done and where the batch ended (a JSON value); ``after``: such a place, to go on from
        there. ``absolute``: only the resources whose stored values hold an absolute
        reference or canonical URL, the values the server's base URL decides
        (:func:`~server.fhir.search.normalize.serving`). Returns how many resources were
        indexed."""

    def ensure_indexed(self, fingerprint: str, *, base: str = "", force: bool = False,
                       log: Callable[[str], None] | None = None) -> int | None:
        """Make the stored search values those of the indexer ``fingerprint`` names (the
        search parameters and the rules that read their values) under the server's base URL
        ``base`` ("" when it has none): when they were stored by another indexer (an upgrade
        changed it) or ``force``, :meth:`reindex` every resource; when only under another
        base URL, the resources with absolute references. Then record both. Returns how many
        resources were indexed, or None when the index was current.

        One process indexes at a time, across all that share the store: it holds a lease
        (:data:`INDEX_LEASE_MS`, renewed after every batch); the others wait until it is
        done, or until its lease lapses (the process died) and they take over, going on from
        the last batch it finished (a process killed while it indexes, as gunicorn kills a
        worker slow to start, loses one batch, not the work done)."""
        while True:
            work = _index_work(self.kv_get(INDEX_NS, _BUILT_WITH), fingerprint, base, force)
            if work is None:
                return None
            holder = {"pid": os.getpid(), "fingerprint": fingerprint}
            if self.kv_put(INDEX_NS, _REBUILDING, holder, only_if_absent=True,
                           expires_ms=now_instant()[1] + INDEX_LEASE_MS):
                break
            time.sleep(INDEX_WAIT_S)  # another process is indexing
        say = log or (lambda _text: None)
        batch = REINDEX_BATCH
        try:
            # another may have finished meanwhile
            work = _index_work(self.kv_get(INDEX_NS, _BUILT_WITH), fingerprint, base, force)
            if work is None:
                return None
            left = self.kv_get(INDEX_NS, _PROGRESS)
            if force or left is None or any(left.get(k) != v for k, v in work.items()):
                left = {**work, "after": None, "done": 0}
            before = int(left["done"])
            told = [before]  # the count last told
            what = (f"again the resources with absolute references, by this server's base "
                    f"URL ({base or 'none'})" if work["absolute"] else
                    "every resource again, by this server's search parameters and rules")

            def renew(done: int, after: Any) -> None:
                self.kv_put(INDEX_NS, _PROGRESS, {**left, "after": after, "done": before + done})
                self.kv_put(INDEX_NS, _REBUILDING, holder,
                            expires_ms=now_instant()[1] + INDEX_LEASE_MS)
                if done <= batch:
                    again = f", going on after {before:,}" if before else ""
                    say(f"Search index: indexing {what}{again}")
                total = before + done
                if total // INDEX_LOG_EVERY > told[0] // INDEX_LOG_EVERY:
                    say(f"  {total:,} resources indexed")
                told[0] = total

            count = before + self.reindex(batch, renew, left["after"],
                                          absolute=bool(work["absolute"]))
            self.kv_put(INDEX_NS, _BUILT_WITH, {"fingerprint": fingerprint, "base": base,
                                                "resources": count, "at": now_instant()[0]})
            self.kv_delete(INDEX_NS, _PROGRESS)
            if count or force:
                say(f"Search index rebuilt: {count:,} resources indexed")
            return count
        finally:
            self.kv_delete(INDEX_NS, _REBUILDING)

    # -- server records that are not FHIR resources ------------------------------------------
    # OAuth clients, authorisation codes, refresh tokens, replay caches (jti), outbox entries.
    # Namespaced key -> JSON object, with an optional expiry (epoch ms; expired = absent).

    def kv_put(
        self,
        ns: str,
        key: str,
        value: dict[str, Any],
        *,
        expires_ms: int | None = None,
        only_if_absent: bool = False,
    ) -> bool:
        """Store ``value``. With ``only_if_absent`` the write is atomic insert-if-absent
        (used for replay detection) and returns False when a live entry already exists."""
        raise NotImplementedError

    def kv_get(self, ns: str, key: str) -> dict[str, Any] | None:
        """The live value, or None (absent or expired)."""
        raise NotImplementedError

    def kv_delete(self, ns: str, key: str) -> bool:
        """Remove an entry; True when one was there."""
        raise NotImplementedError

    def kv_list(self, ns: str, *, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        """Live entries of a namespace, ordered by key."""
        raise NotImplementedError

    def record(self, records: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Store records the server writes about what happened (:meth:`UnitOfWork.record`)
        on their own, e.g. the AuditEvents of a read: durable when this returns. Inside a
        unit of work of this thread they are part of it."""
        with self.unit_of_work() as uow:
            for type_, resource in records:
                uow.record(type_, resource)

    def in_unit_of_work(self) -> bool:
        """Whether the calling thread is inside a unit of work of this store (a new one would
        then be part of it). Engines whose units of work are independent of the thread say
        False."""
        return False

    def close(self) -> None:  # noqa: B027 - engines without resources need not override
        """Release connections."""

    def drop_all(self) -> None:
        """Delete every resource and version (tests and demo resets only)."""
        raise NotImplementedError


def _index_work(built: dict[str, Any] | None, fingerprint: str, base: str,
                force: bool) -> dict[str, Any] | None:
    """What :meth:`Store.ensure_indexed` has to do after an index ``built`` so: None
    (nothing), or the fingerprint and base URL it indexes by and whether only the resources
    with absolute references (``absolute``)."""
    whole = force or built is None or built.get("fingerprint") != fingerprint
    if not whole and built is not None and built.get("base", "") == base:
        return None
    return {"fingerprint": fingerprint, "base": base, "absolute": not whole}


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
