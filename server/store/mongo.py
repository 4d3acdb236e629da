"""The MongoDB engine (pymongo): the production store.

Collections of the database ``db_name``:

* ``resources`` - the current version of each resource, ``_id`` ``Type/id``, with its index
  values (document shape and queries: :mod:`server.store.mongo_query`). The resource JSON is
  kept as text written by :func:`server.fhir.jsonio.dumps`: BSON cannot hold Python decimals,
  and FHIR decimals must come back exactly as the client wrote them.
* ``history`` - every version including tombstones, ``_id`` ``Type/id/version``.
* ``keys`` - unique keys, ``_id`` the key, with the owner's type and id.
* ``locks`` - one counter per lock key, incremented inside the transaction of each unit of
  work that locks the key: two transactions that lock the same key conflict.
* ``leases`` - short-lived mutexes (owner, expiry) that make a second locker wait for the first
  instead of failing.
* ``kv`` - server records that are not FHIR resources (the ``kv_*`` methods).

**With a replica set** (or a sharded cluster) every unit of work is one multi-document
transaction: snapshot reads, majority writes, on the primary. MongoDB reports a write that
collides with a concurrent transaction as a ``TransientTransactionError``, after which the
whole transaction must run again - including the caller's code inside the ``with`` block,
which the engine cannot replay (the reads it made and what it decided from them may no longer
hold). Such an error, at any statement or at commit, aborts the transaction and surfaces as
:class:`TransactionConflict` (HTTP 409 with ``Retry-After``): nothing was written and the
request can be retried as a whole. Two exceptions name the real cause instead, once the
other writer has committed: a collision on a resource written with ``if_match`` is the
:class:`VersionConflict` (412) it is, and one on a unique key the :class:`UniqueConflict`
(409) with its holder. A commit whose outcome is unknown
(``UnknownTransactionCommitResult``) is committed again - which is safe - a few times, then
reported as 503. :meth:`UnitOfWork.lock` first waits for the key's lease (outside the
transaction), then increments the key's counter inside it, so concurrent conditional writes on
the same key run one after the other, and should a lease expire, the counter still makes the
later transaction conflict rather than overlap.

**Without a replica set** (a standalone server, ``supports_transactions`` False) each write is
applied at once: unique keys first, then the current document - the commit point, replaced
only if it still holds the version that was read, so a concurrent writer is never overwritten
(without ``if_match`` the write re-reads and retries: two concurrent updates give n+1 and n+2;
with it, the loser gets 412) - then the history row, an idempotent upsert. A unit of work may
then write one resource: a second write raises 501 (transaction bundles need a replica set).
If the unit of work ends with an exception, its write is undone, best effort. Locks use the
leases alone.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from bson.decimal128 import Decimal128
from pymongo import IndexModel, MongoClient, ReadPreference, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import CollectionInvalid, DuplicateKeyError, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from ..fhir.jsonio import dumps, loads
from ..fhir.outcome import FhirError, conflict, issue
from ..fhir.search.ast import SearchQuery, SearchResult
from .mongo_query import (
    ABSOLUTE_REFERENCE,
    RESOURCE_INDEXES,
    compile_query,
    history_at_pipeline,
    index_document,
    scope_filter,
)
from .port import (
    REINDEX_BATCH,
    Expected,
    HistoryQuery,
    Indexed,
    Indexer,
    Store,
    UniqueConflict,
    UnitOfWork,
    Version,
    VersionConflict,
    check_version,
    index_values,
    iter_chunks,
    new_id,
    now_instant,
    satisfies,
    stamp,
)

log = logging.getLogger(__name__)

Document = dict[str, Any]
P = ParamSpec("P")
R = TypeVar("R")

LEASE_MS = 30_000  # a lock lease outlives any unit of work (transactions end after 60 s)
LOCK_WAIT_S = 10.0  # how long lock() waits for another holder before giving up (503)
KEY_SETTLE_S = 2.0  # how long a collision in a transaction waits for the other writer
COMMIT_ATTEMPTS = 3
WRITE_ATTEMPTS = 10  # standalone: re-read and retry a write that lost a race
CHUNK = 1000

HISTORY_INDEXES = (
    IndexModel([("type", 1), ("id", 1), ("version", -1)], name="type_id_version"),
    IndexModel([("type", 1), ("lum", -1), ("version", -1), ("_id", 1)], name="type_lum"),
    IndexModel([("lum", -1), ("version", -1), ("_id", 1)], name="lum"),
)
KV_INDEXES = (
    IndexModel([("ns", 1), ("key", 1)], name="ns_key"),
    IndexModel([("xat", 1)], name="expiry", expireAfterSeconds=0),
)
_HISTORY_FIELDS = ("type", "id", "version", "lu", "lum", "deleted", "method", "json")


def _key_value(value: Any) -> Any:
    """A sort value as the search layer has it (Decimal128 as Decimal)."""
    return value.to_decimal() if isinstance(value, Decimal128) else value


class TransactionConflict(FhirError):
    """A concurrent writer made this unit of work's transaction fail: HTTP 409. Nothing was
    written; the request can be retried as a whole."""

    def __init__(self, detail: str = "a concurrent request wrote the same data") -> None:
        super().__init__(
            409, [issue(f"Transaction conflict: {detail}; retry the request", code="conflict")],
            {"Retry-After": "1"})


class _Raced(Exception):
    """A standalone write found the current document changed since it was read."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _transient(exc: PyMongoError) -> bool:
    return exc.has_error_label("TransientTransactionError")


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a transaction conflict inside a unit-of-work operation into TransactionConflict."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except PyMongoError as exc:
            if _transient(exc):
                raise TransactionConflict() from exc
            raise

    return wrapper


def _version(doc: Document) -> Version:
    deleted = bool(doc["deleted"])
    return Version(
        type=doc["type"],
        id=doc["id"],
        version=int(doc["version"]),
        last_updated=doc["lu"],
        deleted=deleted,
        resource=None if deleted else loads(doc["json"]),
        method=doc.get("method", "PUT"),
    )


def _held_keys(doc: Document | None) -> list[str]:
    """The unique keys a current document holds (a tombstone holds none)."""
    if doc is None or doc["deleted"]:
        return []
    return list(doc.get("keys", []))


def _live_version(doc: Document | None) -> int | None:
    """The version of a current, non-deleted document, else None."""
    return None if doc is None or doc["deleted"] else int(doc["version"])


def _commit(session: ClientSession) -> None:
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            session.commit_transaction()
            return
        except PyMongoError as exc:
            if exc.has_error_label("UnknownTransactionCommitResult"):
                if attempt < COMMIT_ATTEMPTS:
                    continue
                raise FhirError.of(
                    503, "The database did not confirm the commit, so it may or may not have "
                    "been applied; read the resources before retrying", code="transient",
                ) from exc
            if _transient(exc):
                raise TransactionConflict() from exc
            raise


class MongoStore(Store):
    """The MongoDB engine. Transactions when the server is a replica set (see module doc)."""

    name = "mongo"

    def __init__(self, indexer: Indexer, *, uri: str, db_name: str = "planbro") -> None:
        super().__init__(indexer)
        self._client: MongoClient[Document] = MongoClient(uri, appname="planbro")
        try:
            hello = self._client.admin.command("hello")
        except PyMongoError:
            self._client.close()
            raise
        self.supports_transactions = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
        concern = WriteConcern("majority") if self.supports_transactions else WriteConcern()
        self._db = self._client.get_database(db_name, write_concern=concern)
        self._resources: Collection[Document] = self._db["resources"]
        self._history: Collection[Document] = self._db["history"]
        self._keys: Collection[Document] = self._db["keys"]
        self._locks: Collection[Document] = self._db["locks"]
        self._leases: Collection[Document] = self._db["leases"]
        self._kv: Collection[Document] = self._db["kv"]
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._ensure_schema()

    # -- schema ---------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        """Create the collections and indexes (idempotent; again after :meth:`drop_all`)."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            self._resources.create_indexes(
                [IndexModel(list(keys), name=name) for name, keys in RESOURCE_INDEXES])
            self._history.create_indexes(list(HISTORY_INDEXES))
            self._kv.create_indexes(list(KV_INDEXES))
            existing = set(self._db.list_collection_names())
            for coll in (self._keys, self._locks, self._leases):
                if coll.name not in existing:  # created up front: transactions write to them
                    try:
                        self._db.create_collection(coll.name)
                    except CollectionInvalid:  # created concurrently
                        pass
            self._schema_ready = True

    # -- units of work --------------------------------------------------------------------------

    @contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        self._ensure_schema()
        if not self.supports_transactions:
            uow = _MongoUnitOfWork(self, None)
            try:
                yield uow
            except BaseException:
                uow.undo()
                raise
            finally:
                uow.release_leases()
            return
        with self._client.start_session() as session:
            session.start_transaction(
                read_concern=ReadConcern("snapshot"),
                write_concern=WriteConcern("majority"),
                read_preference=ReadPreference.PRIMARY,
            )
            uow = _MongoUnitOfWork(self, session)
            try:
                try:
                    yield uow
                except BaseException:
                    if session.in_transaction:
                        session.abort_transaction()
                    raise
                _commit(session)
            finally:
                uow.release_leases()

    def acquire_lease(self, key: str, owner: str) -> None:
        """Wait until ``owner`` holds the lease on ``key`` (503 after :data:`LOCK_WAIT_S`)."""
        deadline = time.monotonic() + LOCK_WAIT_S
        pause = 0.005
        while True:
            now = _now_ms()
            try:  # takes a free or expired lease; a live one makes the upsert collide
                self._leases.update_one(
                    {"_id": key, "until": {"$lt": now}},
                    {"$set": {"owner": owner, "until": now + LEASE_MS}},
                    upsert=True,
                )
                return
            except DuplicateKeyError:
                if time.monotonic() >= deadline:
                    raise FhirError.of(
                        503, f"'{key}' stays locked by a concurrent request; retry later",
                        code="lock-error", headers={"Retry-After": "1"},
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)

    def release_lease(self, key: str, owner: str) -> None:
        self._leases.delete_one({"_id": key, "owner": owner})

    def key_conflict(self, key: str, type_: str, id_: str) -> FhirError:
        """A transaction collided on unique key ``key``: wait for the concurrent holder to
        commit and name it (UniqueConflict), else report a TransactionConflict."""
        deadline = time.monotonic() + KEY_SETTLE_S
        while True:
            holder = self._keys.find_one({"_id": key})
            if holder is not None and (holder["type"], holder["id"]) != (type_, id_):
                return UniqueConflict(key, holder["type"], holder["id"])
            if time.monotonic() >= deadline:
                return TransactionConflict(f"the unique key '{key}' is being taken concurrently")
            time.sleep(0.02)

    def version_conflict(self, type_: str, id_: str, if_match: Expected) -> FhirError:
        """A transaction that expected ``if_match`` of the current version collided with a
        concurrent writer of the resource: wait for that writer to commit and report the
        VersionConflict, else (it did not commit) a TransactionConflict."""
        deadline = time.monotonic() + KEY_SETTLE_S
        while True:
            actual = _live_version(self._resources.find_one({"_id": f"{type_}/{id_}"}))
            if not satisfies(if_match, actual):
                return VersionConflict(type_, id_, if_match, actual)
            if time.monotonic() >= deadline:
                return TransactionConflict(f"{type_}/{id_} is being written concurrently")
            time.sleep(0.02)

    # -- reads ----------------------------------------------------------------------------------

    def read(self, type_: str, id_: str) -> Version | None:
        return self.read_in(type_, id_, None)

    def read_in(self, type_: str, id_: str, session: ClientSession | None) -> Version | None:
        doc = self._resources.find_one({"_id": f"{type_}/{id_}"}, session=session)
        return None if doc is None else _version(doc)

    def vread(self, type_: str, id_: str, version: int) -> Version | None:
        return self.vread_in(type_, id_, version, None)

    def vread_in(self, type_: str, id_: str, version: int,
                 session: ClientSession | None) -> Version | None:
        doc = self._history.find_one({"_id": f"{type_}/{id_}/{version}"}, session=session)
        return None if doc is None else _version(doc)

    def read_many(self, refs: list[tuple[str, str]]) -> list[Version]:
        wanted = list(dict.fromkeys(f"{type_}/{id_}" for type_, id_ in refs))
        found: dict[str, Version] = {}
        for chunk in iter_chunks(wanted, CHUNK):
            for doc in self._resources.find({"_id": {"$in": chunk}, "deleted": False}):
                found[doc["_id"]] = _version(doc)
        return [found[key] for key in wanted if key in found]

    def deleted_versions(self, versions: Sequence[tuple[str, str, int]]
                         ) -> set[tuple[str, str, int]]:
        return self.deleted_versions_in(versions, None)

    def deleted_versions_in(self, versions: Sequence[tuple[str, str, int]],
                            session: ClientSession | None) -> set[tuple[str, str, int]]:
        wanted = list(dict.fromkeys(f"{type_}/{id_}/{number}" for type_, id_, number in versions))
        found: set[tuple[str, str, int]] = set()
        for chunk in iter_chunks(wanted, CHUNK):
            for doc in self._history.find({"_id": {"$in": chunk}, "deleted": True},
                                          projection=["type", "id", "version"],
                                          session=session):
                found.add((doc["type"], doc["id"], int(doc["version"])))
        return found

    def history(self, query: HistoryQuery) -> tuple[list[Version], int]:
        return self.history_in(query, None)

    def history_in(self, query: HistoryQuery,
                   session: ClientSession | None) -> tuple[list[Version], int]:
        """:meth:`history`, inside ``session`` when given."""
        filter_: Document = {}
        if query.type is not None:
            filter_["type"] = query.type
        if query.id is not None:
            filter_["id"] = query.id
        written = {op: ms for op, ms in (("$gte", query.since_ms), ("$lte", query.until_ms))
                   if ms is not None}
        if written:
            filter_["lum"] = written
        if query.types is not None or query.within is not None:
            filter_ = {"$and": [filter_, scope_filter(query.types or (), query.within or (),
                                                      self._resolver(session), _now_ms())]}
        if query.id is not None:
            sort = [("version", -1)]
        else:
            sort = [("lum", -1), ("version", -1), ("_id", 1)]
        if query.at:
            return self._history_at(filter_, query, sort, session)
        total = self._history.count_documents(filter_, session=session)
        if query.count <= 0:
            return [], total
        docs = self._history.find(filter_, sort=sort, skip=query.offset, limit=query.count,
                                  session=session)
        return [_version(doc) for doc in docs], total

    def _history_at(self, filter_: Document, query: HistoryQuery,
                    sort: list[tuple[str, int]],
                    session: ClientSession | None) -> tuple[list[Version], int]:
        """:meth:`history` of the versions matching ``filter_`` that were current at some
        time in each period of ``query.at``: written by its end, and the next version
        (looked up by ``type_id_version``) not written by its start."""
        pipeline = history_at_pipeline(filter_, query.at, self._history.name)
        facet = {"total": [{"$count": "n"}],
                 "page": [{"$sort": dict(sort)}, {"$skip": query.offset},
                          {"$limit": max(query.count, 1)}, {"$project": {"later": 0}}]}
        found = next(self._history.aggregate([*pipeline, {"$facet": facet}], session=session))
        total = found["total"][0]["n"] if found["total"] else 0
        page = found["page"] if query.count > 0 else []
        return [_version(doc) for doc in page], total

    def reindex(self, batch: int = REINDEX_BATCH,
                progress: Callable[[int, Any], None] | None = None,
                after: Any = None, *, absolute: bool = False) -> int:
        done, after = 0, str(after or "")  # the last _id done
        while True:
            chosen: Document = {"_id": {"$gt": after}, "deleted": False}
            if absolute:
                chosen["ix.ref"] = ABSOLUTE_REFERENCE
            docs = list(self._resources.find(chosen, {"json": 1, "version": 1},
                                             sort=[("_id", 1)], limit=batch))
            if not docs:
                return done
            # the version in the filter leaves a resource written meanwhile as it was written
            self._resources.bulk_write([UpdateOne(
                {"_id": doc["_id"], "version": doc["version"]},
                {"$set": {"ix": index_document(self.indexer(loads(doc["json"])))}})
                for doc in docs], ordered=False)
            done += len(docs)
            after = docs[-1]["_id"]
            if progress is not None:
                progress(done, after)

    def search(self, query: SearchQuery) -> SearchResult:
        return self.search_in(query, None)

    def _resolver(self, session: ClientSession | None) -> Callable[[list[Document]], list[str]]:
        """Runs the id pipelines of chains and ``_has`` (inside ``session`` when given)."""

        def resolve(pipeline: list[Document]) -> list[str]:
            return [doc["id"] for doc in self._resources.aggregate(pipeline, session=session)]

        return resolve

    def search_in(self, query: SearchQuery, session: ClientSession | None) -> SearchResult:
        """Run a search; inside a unit of work ``session`` makes it see the unit's writes."""

        compiled = compile_query(query, self._resolver(session), _now_ms())
        docs: list[Document] = []
        if compiled.limit > 0:
            cursor: Iterable[Document]
            if compiled.pipeline is not None:
                cursor = self._resources.aggregate(compiled.pipeline, session=session)
            else:
                cursor = self._resources.find(
                    compiled.page or compiled.filter,
                    {"json": 1, **{f: 1 for f in compiled.key_fields}}, sort=compiled.sort,
                    skip=compiled.skip, limit=compiled.limit, session=session)
            docs = list(cursor)
            if compiled.reverse:
                docs.reverse()
        total = None
        if query.total:
            total = self._resources.count_documents(compiled.filter, session=session)
        return SearchResult([loads(doc["json"]) for doc in docs], total,
                            [tuple(_key_value(doc.get(f)) for f in compiled.key_fields)
                             for doc in docs])

    # -- server records -------------------------------------------------------------------------

    def kv_put(
        self,
        ns: str,
        key: str,
        value: dict[str, Any],
        *,
        expires_ms: int | None = None,
        only_if_absent: bool = False,
    ) -> bool:
        self._ensure_schema()
        expiry = (None if expires_ms is None
                  else _dt.datetime.fromtimestamp(expires_ms / 1000, _dt.UTC))
        doc = {"ns": ns, "key": key, "value": dumps(value), "exp": expires_ms, "xat": expiry}
        if not only_if_absent:
            self._kv.replace_one({"_id": _kv_id(ns, key)}, doc, upsert=True)
            return True
        try:  # replaces an expired entry; a live one makes the upsert collide
            self._kv.update_one({"_id": _kv_id(ns, key), "exp": {"$lte": _now_ms()}},
                                {"$set": doc}, upsert=True)
        except DuplicateKeyError:
            return False
        return True

    def kv_get(self, ns: str, key: str) -> dict[str, Any] | None:
        doc = self._kv.find_one({"_id": _kv_id(ns, key)})
        return loads(doc["value"]) if doc is not None and _live(doc) else None

    def kv_delete(self, ns: str, key: str) -> bool:
        doc = self._kv.find_one_and_delete({"_id": _kv_id(ns, key)})
        return doc is not None and _live(doc)

    def kv_list(self, ns: str, *, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        if limit <= 0:
            return []
        live = {"ns": ns, "$or": [{"exp": None}, {"exp": {"$gt": _now_ms()}}]}
        docs = self._kv.find(live, sort=[("key", 1)], limit=limit)
        return [(doc["key"], loads(doc["value"])) for doc in docs]

    # -- administration -------------------------------------------------------------------------

    def drop_all(self) -> None:
        """Drop the database (the schema is made again before the next write)."""
        with self._schema_lock:
            self._client.drop_database(self._db.name)
            self._schema_ready = False

    def close(self) -> None:
        self._client.close()

    # The unit of work reaches the collections through these.
    @property
    def resources(self) -> Collection[Document]:
        return self._resources

    @property
    def history_rows(self) -> Collection[Document]:
        return self._history

    @property
    def unique_keys(self) -> Collection[Document]:
        return self._keys

    @property
    def lock_counters(self) -> Collection[Document]:
        return self._locks


def _kv_id(ns: str, key: str) -> str:
    return f"{ns}\x1f{key}"


def _live(doc: Document) -> bool:
    return doc.get("exp") is None or doc["exp"] > _now_ms()


class _MongoUnitOfWork(UnitOfWork):
    """One unit of work: inside a transaction when ``session`` is given, else the standalone
    rules (one write, undone on failure)."""

    def __init__(self, store: MongoStore, session: ClientSession | None) -> None:
        self._store = store
        self._session = session
        self._owner = uuid.uuid4().hex
        self._leases: list[str] = []
        self._writes = 0
        self._undo: list[Callable[[], object]] = []

    # -- reads ----------------------------------------------------------------------------------

    @_guarded
    def read(self, type_: str, id_: str) -> Version | None:
        return self._store.read_in(type_, id_, self._session)

    @_guarded
    def vread(self, type_: str, id_: str, version: int) -> Version | None:
        return self._store.vread_in(type_, id_, version, self._session)

    @_guarded
    def search(self, query: SearchQuery) -> SearchResult:
        return self._store.search_in(query, self._session)

    @_guarded
    def history(self, query: HistoryQuery) -> tuple[list[Version], int]:
        return self._store.history_in(query, self._session)

    @_guarded
    def key_holder(self, key: str) -> tuple[str, str] | None:
        holder = self._store.unique_keys.find_one({"_id": key}, session=self._session)
        return None if holder is None else (holder["type"], holder["id"])

    @_guarded
    def deleted_versions(self, versions: Sequence[tuple[str, str, int]]
                         ) -> set[tuple[str, str, int]]:
        return self._store.deleted_versions_in(versions, self._session)

    # -- writes ---------------------------------------------------------------------------------

    @_guarded
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
        with self._step():
            if id_ is None:
                id_ = new_id()
            elif self._current(type_, id_) is not None:
                raise conflict(f"{type_}/{id_} already exists; update it instead")
            try:
                return self._write(type_, id_, None, resource, method, list(dict.fromkeys(keys)),
                                   indexed)
            except _Raced:
                raise conflict(f"{type_}/{id_} was created by a concurrent request") from None

    @_guarded
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
        with self._step():
            for _ in range(WRITE_ATTEMPTS):
                prev = self._current(type_, id_)
                check_version(type_, id_, if_match, _live_version(prev))
                new_keys = _held_keys(prev) if keys is None else list(dict.fromkeys(keys))
                try:
                    version = self._write_expecting(type_, id_, prev, resource, method,
                                                    new_keys, if_match, indexed)
                except _Raced:
                    continue
                return version, _live_version(prev) is None
        raise TransactionConflict(f"{type_}/{id_} is being written by many concurrent requests")

    @_guarded
    def delete(self, type_: str, id_: str, *, if_match: Expected = None) -> Version | None:
        with self._step():
            for _ in range(WRITE_ATTEMPTS):
                prev = self._current(type_, id_)
                check_version(type_, id_, if_match, _live_version(prev))
                if _live_version(prev) is None:
                    return None
                try:
                    return self._write_expecting(type_, id_, prev, None, "DELETE", [], if_match)
                except _Raced:
                    continue
        raise TransactionConflict(f"{type_}/{id_} is being written by many concurrent requests")

    @_guarded
    def lock(self, key: str) -> None:
        if key in self._leases:
            return
        self._store.acquire_lease(key, self._owner)
        self._leases.append(key)
        if self._session is not None:
            try:
                self._store.lock_counters.update_one({"_id": key}, {"$inc": {"n": 1}}, upsert=True,
                                             session=self._session)
            except DuplicateKeyError as exc:  # a concurrent transaction created the counter
                raise TransactionConflict(f"'{key}' was locked concurrently") from exc

    # -- ending ---------------------------------------------------------------------------------

    def release_leases(self) -> None:
        for key in self._leases:
            try:
                self._store.release_lease(key, self._owner)
            except PyMongoError:  # the lease expires by itself
                log.warning("could not release the lock lease %r", key, exc_info=True)
        self._leases.clear()

    def undo(self, mark: int = 0) -> None:
        """Standalone: take back what this unit of work wrote since ``mark`` (best effort)."""
        while len(self._undo) > mark:
            step = self._undo.pop()
            try:
                step()
            except PyMongoError:
                log.exception("could not undo a write of a failed unit of work")

    # -- internals ------------------------------------------------------------------------------

    @contextmanager
    def _step(self) -> Iterator[None]:
        """One write operation: standalone, at most one per unit of work, and one that fails
        leaves nothing behind (inside a transaction, MongoDB aborts on a failed write)."""
        if self._session is None and self._writes:
            raise FhirError.of(
                501, "Writing more than one resource atomically (a transaction bundle, or a "
                "write with its side effects) needs MongoDB as a replica set; this server's "
                "MongoDB is a standalone server without transactions", code="not-supported")
        mark = len(self._undo)
        try:
            yield
        except BaseException:
            self.undo(mark)
            raise
        if len(self._undo) > mark:  # standalone only: something was written
            self._writes += 1

    def _on_undo(self, step: Callable[[], object]) -> None:
        if self._session is None:
            self._undo.append(step)

    def _raced(self) -> Exception:
        # Inside a transaction a collision aborts the transaction: it cannot be retried here.
        return _Raced() if self._session is None else TransactionConflict()

    def _current(self, type_: str, id_: str) -> Document | None:
        return self._store.resources.find_one({"_id": f"{type_}/{id_}"}, session=self._session)

    def _write_expecting(
        self,
        type_: str,
        id_: str,
        prev: Document | None,
        resource: dict[str, Any] | None,
        method: str,
        keys: list[str],
        if_match: Expected,
        indexed: Indexed | None = None,
    ) -> Version:
        """:meth:`_write`; in a transaction, a collision with a concurrent writer of a
        resource whose version the caller named is reported as the version conflict it is."""
        try:
            return self._write(type_, id_, prev, resource, method, keys, indexed)
        except PyMongoError as exc:
            if if_match is not None and self._session is not None and _transient(exc):
                raise self._store.version_conflict(type_, id_, if_match) from exc
            raise

    def _write(
        self,
        type_: str,
        id_: str,
        prev: Document | None,
        resource: dict[str, Any] | None,
        method: str,
        keys: list[str],
        indexed: Indexed | None = None,
    ) -> Version:
        """Write the version after ``prev`` (``resource`` None: a tombstone): take the new
        unique keys, replace the current document, add the history row, release the keys no
        longer held. ``indexed``: see :meth:`UnitOfWork.create`."""
        version = 1 if prev is None else int(prev["version"]) + 1
        instant, ms = now_instant()
        body = None if resource is None else stamp(resource, type_, id_, version, instant)
        doc: Document = {
            "_id": f"{type_}/{id_}", "type": type_, "id": id_, "version": version,
            "lu": instant, "lum": ms, "born": ms if prev is None else prev.get("born"),
            "deleted": body is None, "method": method,
            "keys": keys if body is not None else [],
            "json": None if body is None else dumps(body),
            "ix": {} if body is None else index_document(
                index_values(self._store.indexer, body, indexed)),
        }
        old_keys = _held_keys(prev)
        self._acquire_keys([k for k in doc["keys"] if k not in old_keys], type_, id_)
        self._replace_current(prev, doc)
        self._add_history(doc)
        for key in old_keys:
            if key not in doc["keys"]:
                self._release_key(key, type_, id_)
        return Version(type_, id_, version, instant, body is None, body, method)

    def _replace_current(self, prev: Document | None, doc: Document) -> None:
        resources = self._store.resources
        if prev is None:
            try:
                resources.insert_one(doc, session=self._session)
            except DuplicateKeyError:
                raise self._raced() from None
            self._on_undo(lambda: resources.delete_one(
                {"_id": doc["_id"], "version": doc["version"]}))
            return
        result = resources.replace_one({"_id": doc["_id"], "version": prev["version"]}, doc,
                                       session=self._session)
        if result.matched_count == 0:
            raise self._raced()
        self._on_undo(lambda: resources.replace_one(
            {"_id": doc["_id"], "version": doc["version"]}, prev))

    def _add_history(self, doc: Document) -> None:
        row = {name: doc[name] for name in _HISTORY_FIELDS}
        row["_id"] = f"{doc['_id']}/{doc['version']}"
        history = self._store.history_rows
        history.replace_one({"_id": row["_id"]}, row, upsert=True, session=self._session)
        self._on_undo(lambda: history.delete_one({"_id": row["_id"]}))

    def _acquire_keys(self, wanted: list[str], type_: str, id_: str) -> None:
        """Take unique keys: all are checked before any is written."""
        if not wanted:
            return
        keys = self._store.unique_keys
        for holder in keys.find({"_id": {"$in": wanted}}, session=self._session):
            if (holder["type"], holder["id"]) != (type_, id_):
                raise UniqueConflict(holder["_id"], holder["type"], holder["id"])
        for key in wanted:
            owner = {"_id": key, "type": type_, "id": id_}
            try:
                keys.insert_one(owner, session=self._session)
            except PyMongoError as exc:  # taken by a concurrent writer since the check
                if isinstance(exc, DuplicateKeyError) or _transient(exc):
                    raise self._store.key_conflict(key, type_, id_) from exc
                raise
            self._on_undo(functools.partial(keys.delete_one, dict(owner)))

    def _release_key(self, key: str, type_: str, id_: str) -> None:
        keys = self._store.unique_keys
        owner = {"_id": key, "type": type_, "id": id_}
        keys.delete_one(owner, session=self._session)

        def retake() -> None:
            try:
                keys.insert_one(dict(owner))
            except DuplicateKeyError:
                log.warning("unique key %r was taken before it could be given back", key)

        self._on_undo(retake)
