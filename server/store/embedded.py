"""The embedded storage engine: one SQLite file, stdlib :mod:`sqlite3`, no server to run.

Layout (schema version in ``PRAGMA user_version``):

* ``resource`` - the current version of every resource (tombstones included), the JSON as
  stored, and the server-owned fields beside it;
* ``history`` - every version, tombstones included, in commit order (``seq``); a record's
  version (see below) leaves its JSON to its ``resource`` row, which holds the same version:
  a record is stored once, not twice (a version that is changed later gets its JSON back
  first);
* ``idx_token``, ``idx_reference``, ``idx_date``, ``idx_string``, ``idx_uri``, ``idx_number``,
  ``idx_quantity`` - the index values of the current, non-deleted versions, filled at write
  time from the indexer and keyed by resource ``pk``, resource ``type`` and parameter code;
* ``unique_key`` - the unique keys current resources hold;
* ``journal`` - records the server wrote in a unit of work (:meth:`UnitOfWork.record`: a
  write's Provenance and AuditEvent) that are not yet in the tables above;
* ``journal_mark`` - how far the records file has been moved into the tables.

Records: a write's records are rows appended to ``journal`` in the write's own transaction;
the AuditEvents of reads (:meth:`EmbeddedStore.record`) are appended to the records file
``<file>.records``, which has a writer lock of its own, so reads never queue behind writes
(:mod:`.journal`). Either way a record is durable when the answer is returned. The records
process of the file (when the store is given its command: the server's is
:mod:`server.mover`), or else a background thread of each process that records, moves both
journals into ``resource``, ``history`` and the index tables in batches, one transaction
each, one mover at a time across all processes (an advisory lock on ``<file>.move.lock``);
every read, search or history that concerns a record type first does the same for
everything journalled before it began, so nothing recorded is ever missing from an answer.

Concurrency: the file is in WAL mode, so readers never block the writer nor each other. Each
thread uses its own connection (``isolation_level=None``: transactions are explicit). Writers
queue on a mutex (threads) and an advisory lock on ``<file>.lock`` (processes), then a unit
of work starts with ``BEGIN IMMEDIATE``, which takes the database's single write lock at once,
so units of work are serialised across all threads and processes that share the file, and a
search followed by a write inside one unit of work cannot race another writer. That is why
:meth:`UnitOfWork.lock` has nothing to do here. A writer waits up to :data:`BUSY_TIMEOUT_S`
seconds for the lock, then gets a 503 (retry) instead.

Durability: ``synchronous=NORMAL`` (the default) makes every committed transaction survive a
crash or ``kill -9`` of the process (the WAL is written before ``COMMIT`` returns); only an
operating-system crash or power loss may lose the last transactions. Pass
``synchronous="FULL"`` to fsync the WAL on every commit and survive those too. The WAL is
copied into the file (a checkpoint, with its fsync) by the records process or thread every
:data:`CHECKPOINT_EVERY_S` seconds, not by the committing request while it holds the writer
lock, and rewound by it, holding the writer lock, when it has grown long
(:func:`.journal.checkpoint`; at 300 creates a second, every three seconds or so, for
35-40 ms). A commit checkpoints itself only when the WAL has grown past
:data:`AUTOCHECKPOINT_PAGES` pages: before the rewinds, commits did so about once a second
under steady writes, 25-60 ms each inside the writer lock, and several in a row.

Memory: every connection keeps a page cache of :data:`CACHE_KIB` (the file is not memory
mapped: at 100,000 resources that made no measurable difference, and a mapped file turns an
I/O error into a crash).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ..fhir import jsonio
from ..fhir.outcome import conflict
from ..fhir.search.ast import MAX_MS, IndexValues, SearchQuery, SearchResult, types_read
from .journal import (
    INSERT_JOURNAL,
    JOURNAL_TABLE,
    REWIND_FRAMES,
    NewRow,
    RecordFile,
    RecordsProcess,
    Row,
    WriterLock,
    begin_immediate,
    checkpoint,
    enable_wal,
    journal_rows,
    last_seq,
    records_process_lock,
)
from .port import (
    RECORD_TYPES,
    REINDEX_BATCH,
    Expected,
    HistoryQuery,
    Indexed,
    Indexer,
    Store,
    UniqueConflict,
    UnitOfWork,
    Version,
    check_record_type,
    check_version,
    index_values,
    iter_chunks,
    new_id,
    now_instant,
    stamp,
)
from .sql_query import MAX_CHAR, CompiledSearch, Plan, compile_scope, compile_search

ORDERED_PLAN_FROM = 500
"""A search in the default order walks the order (the ordered plan) when its driving index
condition has at least this many rows; fewer are read and sorted (the driven plan)."""
ORDERED_WINDOW = 5000
"""How far the ordered plan walks (resources of the type, in page order) before the driven
plan answers instead: it bounds the cost of a page whose matches are sparse."""
ORDERED_BOUND_TTL_S = 1.0
"""How long a connection reuses the end of the ordered plan's window it found (finding it
walks the window)."""

_log = logging.getLogger(__name__)

SCHEMA_VERSION = 6
DRAIN_BATCH = 100
"""Journalled records moved into the tables per transaction, of each journal. Their index
values are computed before the transaction, which holds the write lock for the inserts, so
writes wait for at most one batch's inserts."""
BACKLOG_LIMIT = 500
"""Records the mover (process or thread) may be behind (about half a second of work) before the
requests that record wait for it (or move batches themselves when nobody else does): a reader
of the records never waits longer than that."""
BACKLOG_CHECK_EVERY = 8
"""A process looks at the backlog after every this many requests that recorded (looking
costs three queries; the backlog cannot grow much in between)."""
CHECKPOINT_EVERY_S = 0.5
"""How often the mover (process or thread) copies the write-ahead logs into the files."""
AUTOCHECKPOINT_PAGES = 2 * REWIND_FRAMES
"""A commit that finds the write-ahead log this long checkpoints it itself (only when the
mover does not: a process that never records)."""
DRAIN_DELAY_S = 0.01
"""How long the background thread lets records gather before it moves them."""
HELP_PAUSE_S = 0.01
"""How often a request that waits for the mover (:meth:`EmbeddedStore._recorded`) looks at
the backlog again (a look costs three queries; a batch takes tens of milliseconds)."""
RECORDS_POLL_S = 0.02
"""How often the records process looks for records to move."""
RECORDS_GATHER_S = 0.1
"""How long the records process lets records gather before it moves them, unless a batch
(:data:`DRAIN_BATCH`) is waiting. A batch writes each index page it touches once, and many
pages are touched by every record (the newest entries of a code, of the time index): at
100,000 resources (schema version 3) an AuditEvent moved in batches of 10 wrote 21 pages and
cost 0.65-0.70 ms of CPU, in batches of 100 8.8 pages and 0.39-0.54 ms. A reader of the
records does not wait for it: before it reads, it moves what is waiting itself."""
CACHE_KIB = 32768
"""The page cache of each connection, in KiB (SQLite's default is 2,000). It is what the
records mover's index inserts and a large search's probes reuse within a transaction."""
BUSY_TIMEOUT_S = 60.0
READ_MANY_CHUNK = 400

_JOURNAL = (JOURNAL_TABLE.format(autoincrement=""),
            "CREATE TABLE journal_mark (file TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
_PROBES = ("CREATE INDEX idx_token_pk ON idx_token (pk, param, code, system)",
           "CREATE INDEX idx_reference_pk ON idx_reference (pk, param, target_id, target_type)")
"""The ``(pk, param)`` indexes a search's probes use (a condition that does not drive it) hold
the values those probes compare, so a probe never reads the table row."""
_TARGETS = ("CREATE INDEX idx_reference_target ON idx_reference "
            "(type, target_id, param, target_type)",
            "CREATE INDEX idx_reference_url ON idx_reference (type, param, url) WHERE url != ''",
            "CREATE INDEX idx_token_text ON idx_token (type, param, text) WHERE text != ''")
"""Indexes that cost a write as few pages as they can. A resource's references to one target
(an AuditEvent's ``patient``, ``entity`` and the person it concerns) sit side by side, on one
page, as every search gives the target's type, id and parameter together; only the
references and codes that have a URL or a text are in the indexes that find those. Measured
on a file of 100,000 resources, in batches of 100: 6.5 written pages per AuditEvent moved into
the tables, against 8.8 with ``(type, param, target_id, target_type)`` and indexes of every
row."""
_TOKEN_VALUE = "CREATE INDEX idx_token_value ON idx_token (type, param, system, code, pk)"
"""The one index that finds a token's resources: by system and code, by system alone
(``system|``), and by code alone through the parameter's few systems
(:mod:`.sql_query`). A second index led by the code wrote 7-8 more pages per CarePlan
created (of 72, on 43,000 resources): every new row lands at the end of its run of equal
keys, one page per parameter and system. With ``pk`` in it, a search reads no table row."""
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: _JOURNAL, 2: ("DROP INDEX idx_token_pk", "DROP INDEX idx_reference_pk", *_PROBES),
    3: ("DROP INDEX idx_reference_target", "DROP INDEX idx_reference_url",
        "DROP INDEX idx_token_text", *_TARGETS),
    4: (),
    5: ("DROP INDEX IF EXISTS idx_token_value", _TOKEN_VALUE,
        "DROP INDEX IF EXISTS idx_token_code", "DROP INDEX IF EXISTS idx_token_system")}
"""The statements that bring a file from a schema version to the next one (4 to 5: records
moved from then on leave their JSON out of ``history``, which an older server would take for
a deletion; 5 to 6: one token index instead of two)."""

_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE resource (
        pk INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        last_updated TEXT NOT NULL,
        last_updated_ms INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        method TEXT NOT NULL,
        json TEXT,
        UNIQUE (type, id))""",
    "CREATE INDEX resource_updated ON resource (type, deleted, last_updated_ms, id)",
    """CREATE TABLE history (
        seq INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        last_updated TEXT NOT NULL,
        last_updated_ms INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        method TEXT NOT NULL,
        json TEXT,
        UNIQUE (type, id, version))""",
    "CREATE INDEX history_type_time ON history (type, last_updated_ms)",
    "CREATE INDEX history_time ON history (last_updated_ms)",
    """CREATE TABLE idx_token (pk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
        system TEXT NOT NULL, code TEXT NOT NULL, text TEXT NOT NULL)""",
    _TOKEN_VALUE,
    _TARGETS[2],
    _PROBES[0],
    """CREATE TABLE idx_reference (pk INTEGER NOT NULL, type TEXT NOT NULL,
        param TEXT NOT NULL, target_type TEXT NOT NULL, target_id TEXT NOT NULL,
        url TEXT NOT NULL, version TEXT NOT NULL)""",
    _TARGETS[0],
    _TARGETS[1],
    _PROBES[1],
    """CREATE TABLE idx_date (pk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
        lo INTEGER NOT NULL, hi INTEGER NOT NULL)""",
    "CREATE INDEX idx_date_lo ON idx_date (type, param, lo)",
    "CREATE INDEX idx_date_hi ON idx_date (type, param, hi)",
    "CREATE INDEX idx_date_pk ON idx_date (pk, param)",
    """CREATE TABLE idx_string (pk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
        norm TEXT NOT NULL, exact TEXT NOT NULL)""",
    "CREATE INDEX idx_string_norm ON idx_string (type, param, norm)",
    "CREATE INDEX idx_string_exact ON idx_string (type, param, exact)",
    "CREATE INDEX idx_string_pk ON idx_string (pk, param)",
    """CREATE TABLE idx_uri (pk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
        value TEXT NOT NULL)""",
    "CREATE INDEX idx_uri_value ON idx_uri (type, param, value)",
    "CREATE INDEX idx_uri_pk ON idx_uri (pk, param)",
    """CREATE TABLE idx_number (pk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
        value REAL NOT NULL)""",
    "CREATE INDEX idx_number_value ON idx_number (type, param, value)",
    "CREATE INDEX idx_number_pk ON idx_number (pk, param)",
    """CREATE TABLE idx_quantity (pk INTEGER NOT NULL, type TEXT NOT NULL,
        param TEXT NOT NULL, value REAL NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL,
        unit TEXT NOT NULL)""",
    "CREATE INDEX idx_quantity_value ON idx_quantity (type, param, value)",
    "CREATE INDEX idx_quantity_pk ON idx_quantity (pk, param)",
    """CREATE TABLE unique_key (key TEXT PRIMARY KEY, owner_type TEXT NOT NULL,
        owner_id TEXT NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX unique_key_owner ON unique_key (owner_type, owner_id)",
    """CREATE TABLE kv (ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        expires_ms INTEGER, PRIMARY KEY (ns, key)) WITHOUT ROWID""",
    "CREATE INDEX kv_expiry ON kv (expires_ms) WHERE expires_ms IS NOT NULL",
    *_JOURNAL,
)

_INDEX_TABLES = ("idx_token", "idx_reference", "idx_date", "idx_string", "idx_uri",
                 "idx_number", "idx_quantity")

_VERSION_COLUMNS = "type, id, version, last_updated, deleted, method, json"
_R_VERSION_COLUMNS = ", ".join(f"r.{c}" for c in _VERSION_COLUMNS.split(", "))
_H_VERSION_COLUMNS = _VERSION_COLUMNS.replace(
    "json", "coalesce(json, (SELECT r.json FROM resource AS r WHERE r.type = history.type "
    "AND r.id = history.id AND r.version = history.version))")
"""The columns of a version read from ``history``: a record's JSON is in its ``resource`` row
(a row of a deletion has none)."""


def _history_types(query: HistoryQuery) -> set[str | None]:
    """The types a history lists (None: every type)."""
    if query.type is not None:
        return {query.type}
    if query.types is None and query.within is None:
        return {None}
    return set(query.types or ()).union(*(types_read(q) for q in query.within or ()))


def _index_rows(values: IndexValues) -> dict[str, list[tuple[Any, ...]]]:
    """The rows (without pk and type) each index table gets for ``values``; duplicates
    are dropped."""
    rows = {
        "idx_token": [(v.param, v.system, v.code, v.text) for v in values.tokens],
        "idx_reference": [(v.param, v.target_type, v.target_id, v.url, v.version)
                          for v in values.references],
        "idx_date": [(v.param, v.lo, v.hi) for v in values.dates],
        "idx_string": [(v.param, v.norm, v.exact) for v in values.strings],
        "idx_uri": [(v.param, v.value) for v in values.uris],
        "idx_number": [(v.param, float(v.value)) for v in values.numbers],
        "idx_quantity": [(v.param, float(v.value), v.system, v.code, v.unit)
                         for v in values.quantities],
    }
    return {table: list(dict.fromkeys(r)) for table, r in rows.items() if r}


def _insert_rows(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]], *,
                 alone: bool = False) -> None:
    """Insert ``rows`` (all of one length; ``table`` may name its columns) with one statement
    that reads them from a JSON array. Each step of a statement lets other threads run and
    then waits for its turn again; with one step for all rows, an insert (holding the write
    lock) waits for the request threads once, not once per row. ``alone``: no other thread
    of this process runs (the records process), so a step per row waits for nothing, and
    binding each row costs less than reading it from JSON (a sixth less CPU per record
    moved)."""
    if len(rows) == 1 or alone and rows:
        marks = ", ".join("?" for _ in rows[0])
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    elif rows:
        columns = ", ".join(f"value ->> {i}" for i in range(len(rows[0])))
        conn.execute(f"INSERT INTO {table} SELECT {columns} FROM json_each(?)",
                     (_ROWS_AS_JSON.encode(rows),))


_ROWS_AS_JSON = msgspec.json.Encoder()
_HISTORY = "history (type, id, version, last_updated, last_updated_ms, deleted, method, json)"
"""The history table with the columns a version fills (for :func:`_insert_rows`)."""


def _version(row: tuple[Any, ...]) -> Version:
    type_, id_, version, last_updated, deleted, method, text = row
    resource = None if text is None else jsonio.loads(text)
    return Version(type_, id_, version, last_updated, bool(deleted), resource, method)


class _Connection(sqlite3.Connection):
    """A connection that remembers the process that opened it (never use one across fork),
    and the recent bounds of the ordered plan's window (:meth:`_Reader._bound`)."""

    pid: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bounds: dict[str, tuple[float, tuple[int, str] | None]] = {}


@dataclass(frozen=True)
class _Current:
    pk: int
    version: int
    deleted: bool


class _Reader:
    """Reads on one connection (inside or outside a transaction)."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Several reads from one consistent state (joins a transaction already open)."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def read(self, type_: str, id_: str) -> Version | None:
        row = self.conn.execute(
            f"SELECT {_VERSION_COLUMNS} FROM resource WHERE type = ? AND id = ?",
            (type_, id_)).fetchone()
        return None if row is None else _version(row)

    def vread(self, type_: str, id_: str, version: int) -> Version | None:
        row = self.conn.execute(
            f"SELECT {_H_VERSION_COLUMNS} FROM history "
            "WHERE type = ? AND id = ? AND version = ?",
            (type_, id_, version)).fetchone()
        return None if row is None else _version(row)

    def read_many(self, refs: list[tuple[str, str]]) -> list[Version]:
        wanted = list(dict.fromkeys(refs))
        found: dict[tuple[str, str], Version] = {}
        with self.snapshot():
            for chunk in iter_chunks(wanted, READ_MANY_CHUNK):
                pairs = ", ".join("(?, ?)" for _ in chunk)
                params = [part for ref in chunk for part in ref]
                rows = self.conn.execute(
                    f"SELECT {_R_VERSION_COLUMNS} FROM (VALUES {pairs}) AS v JOIN resource AS r "
                    "ON r.type = v.column1 AND r.id = v.column2 WHERE r.deleted = 0", params)
                for row in rows:
                    found[(row[0], row[1])] = _version(row)
        return [found[ref] for ref in wanted if ref in found]

    def deleted_versions(self, versions: Sequence[tuple[str, str, int]]
                         ) -> set[tuple[str, str, int]]:
        found: set[tuple[str, str, int]] = set()
        with self.snapshot():
            for chunk in iter_chunks(list(dict.fromkeys(versions)), READ_MANY_CHUNK):
                triples = ", ".join("(?, ?, ?)" for _ in chunk)
                params = [part for ref in chunk for part in ref]
                found.update(self.conn.execute(
                    f"SELECT h.type, h.id, h.version FROM (VALUES {triples}) AS v "
                    "JOIN history AS h ON h.type = v.column1 AND h.id = v.column2 "
                    "AND h.version = v.column3 WHERE h.deleted = 1", params))
        return found

    def history(self, query: HistoryQuery) -> tuple[list[Version], int]:
        where: list[str] = []
        params: dict[str, Any] = {}
        for column, test, value in (
                ("type", "type = :type", query.type), ("id", "id = :id", query.id),
                ("since", "last_updated_ms >= :since", query.since_ms),
                ("until", "last_updated_ms <= :until", query.until_ms)):
            if value is not None:
                where.append(test)
                params[column] = value
        for n, (lo, hi) in enumerate(query.at):  # current at some time in [lo, hi]
            where.append(f"last_updated_ms <= :at_hi{n} AND NOT EXISTS (SELECT 1 FROM history "
                         "AS later WHERE later.type = history.type AND later.id = history.id "
                         "AND later.version = history.version + 1 "
                         f"AND later.last_updated_ms <= :at_lo{n})")
            params[f"at_lo{n}"], params[f"at_hi{n}"] = lo, hi
        ctes = ""
        if query.types is not None or query.within is not None:
            ctes, scope, scope_params = compile_scope(query.types or (), query.within or (),
                                                      now_instant()[1])
            where.append(scope)
            params.update(scope_params)
        condition = " AND ".join(where) or "1"
        # Newest first; ``seq`` (the rowid, which every index ends with) orders versions
        # written in the same millisecond.
        order = "version DESC" if query.id is not None else "last_updated_ms DESC, seq DESC"
        with self.snapshot():
            total = self.conn.execute(
                f"{ctes}SELECT count(*) FROM history WHERE {condition}", params).fetchone()[0]
            rows = self.conn.execute(
                f"{ctes}SELECT {_H_VERSION_COLUMNS} FROM history WHERE {condition} "
                f"ORDER BY {order} LIMIT :count OFFSET :offset",
                {**params, "count": query.count, "offset": query.offset}).fetchall()
        return [_version(row) for row in rows], total

    def search(self, query: SearchQuery) -> SearchResult:
        compiled = compile_search(query, now_instant()[1])
        with self.snapshot():
            plan, large = self.plan(compiled)
            total = None
            if plan.count is not None:
                total = self.conn.execute(plan.count, compiled.params).fetchone()[0]
            rows = self._page(query, compiled, plan, large) if query.count > 0 else []
        return SearchResult([jsonio.loads(row[0]) for row in rows], total,
                            [tuple(row[1:]) for row in rows])

    def plan(self, compiled: CompiledSearch) -> tuple[Plan, bool]:
        """The driven plan to answer by, and whether its driver is large (at least
        :data:`ORDERED_PLAN_FROM` index rows). The first by rank unless its driver is large:
        then the next drivers are estimated in turn, until one is not large, and the
        smallest drives (see :mod:`.sql_query`)."""
        estimates = compiled.estimates
        if not estimates or (len(estimates) == 1 and compiled.window is None):
            return compiled.driven(0), False
        params = {**compiled.params, "cap": ORDERED_PLAN_FROM}
        sized: list[tuple[int, int]] = []  # (estimate, position) of the drivers estimated
        for i, estimate in enumerate(estimates):
            sized.append((self.conn.execute(estimate, params).fetchone()[0], i))
            if sized[-1][0] < ORDERED_PLAN_FROM:
                break
        size, best = min(sized)
        return compiled.driven(best), size >= ORDERED_PLAN_FROM

    def _page(self, query: SearchQuery, compiled: CompiledSearch, plan: Plan,
              large: bool) -> list[tuple[Any, ...]]:
        """The page: by the ordered plan when the driver is large and a bounded prefix of the
        order holds the whole page, else by the driven ``plan`` (see :mod:`.sql_query`)."""
        params = compiled.params
        if compiled.window is not None and large:
            bound = self._bound(str(query.type))
            wms, wid = bound if bound is not None else (MAX_MS, MAX_CHAR)
            rows = self.conn.execute(compiled.window,
                                     {**params, "wms": wms, "wid": wid}).fetchall()
            if len(rows) == query.count or bound is None:
                return rows
        return self.conn.execute(plan.select, params).fetchall()

    def _bound(self, type_: str) -> tuple[int, str] | None:
        """Where the window of the ordered plan ends: the (time, id) of the resource of the
        type :data:`ORDERED_WINDOW` places into the order (None: the type has fewer), as
        found at most :data:`ORDERED_BOUND_TTL_S` seconds ago on this connection. Any bound
        gives the right page, as a full page within it is the first page of all; writes
        since it was found only make the walk a little longer or shorter."""
        now = time.monotonic()
        found = self.conn.bounds.get(type_)
        if found is not None and found[0] > now:
            return found[1]
        row = self.conn.execute(
            "SELECT last_updated_ms, id FROM resource WHERE type = ? AND deleted = 0 "
            "ORDER BY last_updated_ms, id LIMIT 1 OFFSET ?", (type_, ORDERED_WINDOW)).fetchone()
        bound = (row[0], row[1]) if row is not None else None
        self.conn.bounds[type_] = (now + ORDERED_BOUND_TTL_S, bound)
        return bound


class _EmbeddedUnitOfWork(UnitOfWork):
    """Reads and writes inside one SQLite transaction. Each write runs in a savepoint, so a
    write that fails (a conflict) leaves nothing behind even when the caller goes on."""

    def __init__(self, conn: _Connection, indexer: Indexer, records: RecordFile) -> None:
        self._reader = _Reader(conn)
        self._conn = conn
        self._indexer = indexer
        self._records = records
        self._open = True
        self.recorded = False  # whether record() added to the journal

    def close(self) -> None:
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("this unit of work has ended")

    @contextmanager
    def _step(self) -> Iterator[None]:
        self._check_open()
        self._conn.execute("SAVEPOINT step")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK TO step")
            self._conn.execute("RELEASE step")
            raise
        self._conn.execute("RELEASE step")

    # -- reads ---------------------------------------------------------------------------------

    def read(self, type_: str, id_: str) -> Version | None:
        self._check_open()
        if type_ in RECORD_TYPES:
            self.catch_up()
        return self._reader.read(type_, id_)

    def vread(self, type_: str, id_: str, version: int) -> Version | None:
        self._check_open()
        if type_ in RECORD_TYPES:
            self.catch_up()
        return self._reader.vread(type_, id_, version)

    def search(self, query: SearchQuery) -> SearchResult:
        self._check_open()
        if types_read(query) & RECORD_TYPES:
            self.catch_up()
        return self._reader.search(query)

    def history(self, query: HistoryQuery) -> tuple[list[Version], int]:
        self._check_open()
        if _history_types(query) & {None, *RECORD_TYPES}:
            self.catch_up()
        return self._reader.history(query)

    def deleted_versions(self, versions: Sequence[tuple[str, str, int]]
                         ) -> set[tuple[str, str, int]]:
        self._check_open()
        return self._reader.deleted_versions(versions)

    # -- records ---------------------------------------------------------------------------------

    def record(self, type_: str, resource: dict[str, Any]) -> None:
        self._check_open()
        self._conn.execute(INSERT_JOURNAL, _journal_row(type_, resource))
        self.recorded = True

    def catch_up(self) -> None:
        """Move every record of both journals into the tables, in this unit of work (it
        holds the write lock): its own records included."""
        self.move(None, (None, None))

    def move(self, limit: int | None, upto: tuple[int | None, int | None],
             prepared: Prepared | None = None, *, alone: bool = False) -> _Pending:
        """Move the oldest ``limit`` records of each journal (those up to ``upto``: the
        journal's and the records file's numbers; None: no bound) into the resource, history
        and index tables; the journal loses them and the records file's mark moves past them
        (the records file keeps them until the caller has committed:
        :meth:`RecordFile.forget`). They are read here, under the write lock: what a caller
        read before taking it may have been moved by another process meanwhile.
        ``prepared``: index rows computed beforehand, by record; ``alone``: see
        :func:`_insert_rows`. A record's history row leaves its JSON to its ``resource``
        row (:data:`_H_VERSION_COLUMNS`). Returns what was moved."""
        self._check_open()
        now = _pending(self._conn, self._records, limit, upto)
        rows = now.journal + now.side
        if not rows:
            return now
        given = prepared or {}
        index_rows = {**given, **_prepare(self._indexer, [r for r in rows if r[2] not in given])}
        first = self._conn.execute("SELECT coalesce(max(pk), 0) + 1 FROM resource").fetchone()[0]
        current: list[tuple[Any, ...]] = []
        history: list[tuple[Any, ...]] = []
        index: dict[str, list[tuple[Any, ...]]] = {}
        for pk, row in enumerate(rows, first):
            _, type_, id_, instant, ms, text = row
            current.append((pk, type_, id_, 1, instant, ms, 0, "POST", text))
            history.append((type_, id_, 1, instant, ms, 0, "POST", None))
            for table, found in index_rows[id_].items():
                index.setdefault(table, []).extend((pk, type_, *value) for value in found)
        _insert_rows(self._conn, "resource (pk, type, id, version, last_updated, "
                     "last_updated_ms, deleted, method, json)", current, alone=alone)
        _insert_rows(self._conn, _HISTORY, history, alone=alone)
        for table, values_ in index.items():
            _insert_rows(self._conn, table, values_, alone=alone)
        if now.journal:
            self._conn.execute("DELETE FROM journal WHERE seq <= ?", (now.journal[-1][0],))
        if now.side:
            self._conn.execute("INSERT OR REPLACE INTO journal_mark (file, seq) VALUES (?, ?)",
                               (self._records.id, now.side[-1][0]))
        return now

    # -- writes --------------------------------------------------------------------------------

    def create(self, type_: str, resource: dict[str, Any], *, id_: str | None = None,
               keys: tuple[str, ...] = (), method: str = "POST",
               indexed: Indexed | None = None) -> Version:
        with self._step():
            if id_ is None:
                id_ = new_id()
            elif self._current(type_, id_) is not None:
                raise conflict(f"{type_}/{id_} already exists; update it instead")
            self._claim_keys(type_, id_, keys, replace=False)
            return self._write(type_, id_, 1, resource, method, pk=None, indexed=indexed)

    def update(self, type_: str, id_: str, resource: dict[str, Any], *,
               if_match: Expected = None, keys: tuple[str, ...] | None = None,
               method: str = "PUT", indexed: Indexed | None = None) -> tuple[Version, bool]:
        with self._step():
            current = self._current(type_, id_)
            live = None if current is None or current.deleted else current.version
            check_version(type_, id_, if_match, live)
            if keys is not None:
                self._claim_keys(type_, id_, keys, replace=True)
            if current is None:
                return self._write(type_, id_, 1, resource, method, pk=None,
                                   indexed=indexed), True
            self._keep_json(type_, id_, current)
            version = self._write(type_, id_, current.version + 1, resource, method,
                                  pk=current.pk, indexed=indexed)
            return version, live is None

    def delete(self, type_: str, id_: str, *, if_match: Expected = None) -> Version | None:
        with self._step():
            current = self._current(type_, id_)
            live = None if current is None or current.deleted else current.version
            check_version(type_, id_, if_match, live)
            if live is None or current is None:
                return None
            self._keep_json(type_, id_, current)
            instant, ms = now_instant()
            tombstone = Version(type_, id_, live + 1, instant, True, None, "DELETE")
            self._conn.execute(
                "UPDATE resource SET version = ?, last_updated = ?, last_updated_ms = ?, "
                "deleted = 1, method = 'DELETE', json = NULL WHERE pk = ?",
                (tombstone.version, instant, ms, current.pk))
            self._clear_index(current.pk)
            self._conn.execute("DELETE FROM unique_key WHERE owner_type = ? AND owner_id = ?",
                               (type_, id_))
            self._add_history(tombstone, ms, None)
            return tombstone

    def lock(self, key: str) -> None:
        """Nothing to do: the unit of work already holds the database's write lock
        (``BEGIN IMMEDIATE``), which serialises it against every other one."""

    def key_holder(self, key: str) -> tuple[str, str] | None:
        self._check_open()
        row = self._conn.execute("SELECT owner_type, owner_id FROM unique_key WHERE key = ?",
                                 (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    # -- helpers -------------------------------------------------------------------------------

    def _current(self, type_: str, id_: str) -> _Current | None:
        row = self._conn.execute(
            "SELECT pk, version, deleted FROM resource WHERE type = ? AND id = ?",
            (type_, id_)).fetchone()
        return None if row is None else _Current(row[0], row[1], bool(row[2]))

    def _claim_keys(self, type_: str, id_: str, keys: tuple[str, ...], *,
                    replace: bool) -> None:
        wanted = list(dict.fromkeys(keys))
        if wanted:
            marks = ", ".join("?" for _ in wanted)
            held = self._conn.execute(
                f"SELECT key, owner_type, owner_id FROM unique_key WHERE key IN ({marks})",
                wanted).fetchall()
            for key, owner_type, owner_id in held:
                if (owner_type, owner_id) != (type_, id_):
                    raise UniqueConflict(key, owner_type, owner_id)
        if replace:
            self._conn.execute(
                "DELETE FROM unique_key WHERE owner_type = ? AND owner_id = ? "
                "AND key NOT IN (SELECT value FROM json_each(?))",
                (type_, id_, jsonio.dumps(wanted)))
        if wanted:
            self._conn.executemany(
                "INSERT OR IGNORE INTO unique_key (key, owner_type, owner_id) VALUES (?, ?, ?)",
                [(key, type_, id_) for key in wanted])

    def _write(self, type_: str, id_: str, number: int, resource: dict[str, Any],
               method: str, *, pk: int | None, indexed: Indexed | None = None) -> Version:
        instant, ms = now_instant()
        stored = stamp(resource, type_, id_, number, instant)
        text = jsonio.dumps(stored)
        index = _index_rows(index_values(self._indexer, stored, indexed))
        if pk is None:
            pk = self._conn.execute(
                "INSERT INTO resource (type, id, version, last_updated, last_updated_ms, "
                "deleted, method, json) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                (type_, id_, number, instant, ms, method, text)).lastrowid
        else:
            self._conn.execute(
                "UPDATE resource SET version = ?, last_updated = ?, last_updated_ms = ?, "
                "deleted = 0, method = ?, json = ? WHERE pk = ?",
                (number, instant, ms, method, text, pk))
            self._clear_index(pk)
        for table, rows in index.items():
            _insert_rows(self._conn, table, [(pk, type_, *row) for row in rows])
        version = Version(type_, id_, number, instant, False, stored, method)
        self._add_history(version, ms, text)
        return version

    def _keep_json(self, type_: str, id_: str, current: _Current) -> None:
        """Before the current version of a record is replaced: its history row gets the JSON
        it left to the ``resource`` row (:meth:`move`)."""
        if type_ in RECORD_TYPES and not current.deleted:
            self._conn.execute(
                "UPDATE history SET json = (SELECT json FROM resource WHERE pk = ?) "
                "WHERE type = ? AND id = ? AND version = ? AND json IS NULL",
                (current.pk, type_, id_, current.version))

    def reindex(self, after: int, limit: int) -> tuple[int, int]:
        """Index again the next ``limit`` current resources after ``pk`` ``after`` (in
        ``pk`` order): how many there were, and the last ``pk`` done."""
        self._check_open()
        rows = self._conn.execute(
            "SELECT pk, type, json FROM resource WHERE pk > ? AND deleted = 0 ORDER BY pk "
            "LIMIT ?", (after, limit)).fetchall()
        self._index_again(rows)
        return len(rows), rows[-1][0] if rows else after

    def reindex_some(self, pks: list[int]) -> int:
        """Index again the current resources among ``pks``: how many there were."""
        self._check_open()
        rows = self._conn.execute(
            "SELECT pk, type, json FROM resource WHERE pk IN (SELECT value FROM json_each(?)) "
            "AND deleted = 0 ORDER BY pk", (jsonio.dumps(pks),)).fetchall()
        self._index_again(rows)
        return len(rows)

    def _index_again(self, rows: list[tuple[int, str, str]]) -> None:
        for pk, type_, text in rows:
            self._clear_index(pk)
            for table, index in _index_rows(self._indexer(jsonio.loads(text))).items():
                _insert_rows(self._conn, table, [(pk, type_, *row) for row in index])

    def _clear_index(self, pk: int) -> None:
        for table in _INDEX_TABLES:
            self._conn.execute(f"DELETE FROM {table} WHERE pk = ?", (pk,))

    def _add_history(self, version: Version, ms: int, text: str | None) -> None:
        _insert_rows(self._conn, _HISTORY, [
            (version.type, version.id, version.version, version.last_updated, ms,
             int(version.deleted), version.method, text)])


_ABSOLUTE_REFERRERS = ("SELECT DISTINCT pk FROM idx_reference INDEXED BY idx_reference_url "
                       "WHERE url != '' AND pk > ? ORDER BY pk")
"""The resources after a ``pk`` whose index holds an absolute reference or canonical URL, from
the index of those references only (by the ``pk`` index, SQLite would read every reference:
4 s at 125,000 resources, to find none)."""

Prepared = dict[str, dict[str, list[tuple[Any, ...]]]]
"""Index rows (without pk and type) of journalled records, by record id."""


@dataclass(frozen=True)
class _Pending:
    """Journalled records waiting to be moved into the tables: those of the main file's
    journal and those of the records file after the main file's mark."""

    journal: list[Row]
    side: list[Row]


JOURNAL_SPAN = "SELECT (SELECT min(seq) FROM journal), (SELECT max(seq) FROM journal)"
"""The oldest and newest record numbers of the journal, each read from one end of its key
(SQLite reads the whole table for ``SELECT min(seq), max(seq)``)."""


def _pending(conn: sqlite3.Connection, records: RecordFile, limit: int | None,
             upto: tuple[int | None, int | None]) -> _Pending:
    """The oldest ``limit`` records of each journal, up to ``upto`` (see
    :meth:`_EmbeddedUnitOfWork.move`)."""
    return _Pending(journal_rows(conn, 0, upto[0], limit),
                    records.after(_mark(conn, records), upto[1], limit))


def _prepare(indexer: Indexer, rows: Sequence[Row]) -> Prepared:
    """The index rows of journalled records."""
    return {row[2]: _index_rows(indexer(jsonio.loads(row[5]))) for row in rows}


def _journal_row(type_: str, resource: dict[str, Any],
                 at: tuple[str, int] | None = None) -> NewRow:
    """A record as journalled: (type, id, last_updated, last_updated_ms, JSON as stored),
    with its server-assigned id and time (``at``, from :func:`now_instant`: now)."""
    check_record_type(type_)
    instant, ms = at or now_instant()
    id_ = new_id()
    return type_, id_, instant, ms, jsonio.dumps(stamp(resource, type_, id_, 1, instant))


def _mark(conn: sqlite3.Connection, records: RecordFile) -> int:
    """How far the main file holds the records file's records (a record number)."""
    row = conn.execute("SELECT seq FROM journal_mark WHERE file = ?", (records.id,)).fetchone()
    return row[0] if row else 0


class EmbeddedStore(Store):
    """The embedded engine on the SQLite file at ``path`` (its folder is created)."""

    name = "embedded"
    supports_transactions = True

    def __init__(self, indexer: Indexer, path: str | Path, *, synchronous: str = "NORMAL",
                 records_process: Sequence[str] | None = None) -> None:
        """``records_process``: the command of the records process (:class:`RecordsProcess`:
        it gets the file's path and this process's id), which then moves the journalled
        records; without it, a background thread of each process that records does."""
        super().__init__(indexer)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._local = threading.local()
        self._generation = 0
        self._kv_writes = 0
        self._writer = WriterLock(self.path, lambda: BUSY_TIMEOUT_S)
        # one mover of journalled records at a time, of all processes: two would compute the
        # same batch's index values and one of them would throw its work away
        self._mover = WriterLock(Path(f"{self.path}.move"), lambda: BUSY_TIMEOUT_S)
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._connections_lock = threading.Lock()
        self._journal = threading.Event()  # set: records were journalled
        self._drainer: threading.Thread | None = None
        self._drainer_guard = threading.Lock()
        self._drainer_pid = 0
        self._unchecked = 0  # requests that recorded since the backlog was last looked at
        self._alone = False  # whether this is the records process (no request threads)
        self._create_schema()
        self._records = RecordFile(Path(f"{self.path}.records"), self._open,
                                   lambda: BUSY_TIMEOUT_S)
        self._process = (RecordsProcess(self.path, records_process)
                         if records_process else None)

    # -- connections ---------------------------------------------------------------------------

    def _connection(self) -> _Connection:
        """This thread's connection (a new one after fork or :meth:`close`)."""
        local = self._local
        conn: _Connection | None = getattr(local, "conn", None)
        if conn is None or conn.pid != os.getpid() or local.generation != self._generation:
            conn = self._open(self.path)
            local.conn, local.generation, local.depth = conn, self._generation, 0
        return conn

    def _open(self, path: Path) -> _Connection:
        """A new connection to ``path`` (this file or its records file), closed by
        :meth:`close`."""
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False, factory=_Connection)
        conn.pid = os.getpid()
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        with self._connections_lock:
            self._connections.add(conn)
        return conn

    def _create_schema(self) -> None:
        conn = self._connection()
        enable_wal(conn, self.path, BUSY_TIMEOUT_S)
        begin_immediate(conn)
        try:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                found = SCHEMA_VERSION
            while found in _MIGRATIONS and found < SCHEMA_VERSION:
                for statement in _MIGRATIONS[found]:
                    conn.execute(statement)
                found += 1
                conn.execute(f"PRAGMA user_version = {found}")
            if found != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {found}; this server "
                                   f"knows version {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close every connection this process opened (at shutdown, when no request is
        running); later calls open new ones. Records still journalled stay in the journal
        (the next reader or drainer moves them)."""
        if self._process is not None:
            self._process.stop()
        with self._drainer_guard:
            drainer, self._drainer = self._drainer, None
        if drainer is not None and self._drainer_pid == os.getpid():
            self._journal.set()
            drainer.join(timeout=BUSY_TIMEOUT_S)
        self._records.forget_connections()
        with self._connections_lock:
            conns = [c for c in self._connections if c.pid == os.getpid()]
            self._connections = weakref.WeakSet()
            self._generation += 1
        for conn in conns:
            conn.close()

    # -- the port ------------------------------------------------------------------------------

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        return self._unit_of_work()

    def in_unit_of_work(self) -> bool:
        """True inside a unit of work of this thread (a new one is then a savepoint of it)."""
        return getattr(self._local, "depth", 0) > 0 and (
            getattr(self._local, "generation", None) == self._generation)

    @contextmanager
    def _unit_of_work(self) -> Iterator[UnitOfWork]:
        """Top level: the writer lock, ``BEGIN IMMEDIATE`` ... ``COMMIT``. Nested in another
        unit of work of the same thread: a savepoint of the outer one (atomic on its own,
        durable with it)."""
        conn = self._connection()
        local = self._local
        if local.depth > 0:
            yield from self._nested(conn)
            return
        with self._writer.hold():
            begin_immediate(conn)
            local.depth += 1
            local.recorded = False
            uow = _EmbeddedUnitOfWork(conn, self.indexer, self._records)
            try:
                yield uow
            except BaseException:
                uow.close()
                local.depth -= 1
                conn.execute("ROLLBACK")
                raise
            uow.close()
            local.depth -= 1
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if uow.recorded or local.recorded:
            self._recorded()

    def _nested(self, conn: _Connection) -> Iterator[UnitOfWork]:
        local = self._local
        conn.execute("SAVEPOINT unit")
        local.depth += 1
        uow = _EmbeddedUnitOfWork(conn, self.indexer, self._records)
        try:
            yield uow
        except BaseException:
            uow.close()
            local.depth -= 1
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
            raise
        uow.close()
        local.depth -= 1
        conn.execute("RELEASE unit")
        local.recorded = local.recorded or uow.recorded

    # -- the journal of records ----------------------------------------------------------------

    def _wake_drainer(self) -> None:
        """Have the records process, or else this process's background thread, move the
        journal into the tables."""
        process = self._process
        if process is not None:
            process.ensure()
            if not process.failed:
                return
        with self._drainer_guard:
            if self._drainer is None or not self._drainer.is_alive() \
                    or self._drainer_pid != os.getpid():
                self._drainer_pid = os.getpid()
                self._drainer = threading.Thread(
                    target=self._drain_loop, name="planbro-journal", daemon=True)
                self._drainer.start()
        self._journal.set()

    def _recorded(self) -> None:
        """After records were stored: the mover moves them; when it is more than
        :data:`BACKLOG_LIMIT` records behind, the request that recorded does not return
        until it is not (so the journal cannot outgrow what a reader of the records waits
        for). While the mover is at work, the request waits for it (a batch moved by a
        request thread took 180-290 ms, several times what the records process takes,
        and requests queued behind each other's batches for up to a second); when nobody
        moves, it moves batches itself. The backlog is looked at every
        :data:`BACKLOG_CHECK_EVERY` requests."""
        self._wake_drainer()
        self._unchecked += 1
        if self._unchecked < BACKLOG_CHECK_EVERY:
            return
        self._unchecked = 0
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        try:
            while self._backlog() > BACKLOG_LIMIT and time.monotonic() < deadline:
                moved = self._drain(DRAIN_BATCH, block=False)
                if moved is None:  # the mover is at work
                    time.sleep(HELP_PAUSE_S)
                elif not moved:
                    return
        except Exception:  # the records are stored; the mover moves them later
            _log.warning("could not help move journalled records into %s", self.path,
                         exc_info=True)

    def _backlog(self) -> int:
        """How many records wait in the journal and the records file (about: the numbers
        between the oldest and the newest)."""
        conn = self._connection()
        lo, hi = conn.execute(JOURNAL_SPAN).fetchone()
        waiting = self._records.last() - _mark(conn, self._records)
        return (hi - lo + 1 if lo is not None else 0) + max(waiting, 0)

    def _drain_loop(self) -> None:
        """The background thread: woken when this process records."""
        me = threading.current_thread()

        def wait(timeout: float) -> bool:
            if not self._journal.wait(timeout):
                return False
            time.sleep(DRAIN_DELAY_S)  # let more gather
            self._journal.clear()
            return True

        self._move_loop(wait, lambda: self._drainer is me)

    def serve_records(self, parent: int) -> int:
        """Be the records process (:class:`RecordsProcess`) of this file until the process
        ``parent`` is gone, SIGTERM arrives or the file is removed: look for records every
        :data:`RECORDS_POLL_S` and move them once a batch or :data:`RECORDS_GATHER_S` has
        gathered. Returns at once when another process is it."""
        assert self._process is None, "the records process is not started by itself"
        lock = records_process_lock(self.path)
        if lock is None:
            return 0
        self._alone = True
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())

        def running() -> bool:
            return not stop.is_set() and os.getppid() == parent and self.path.exists()

        seen: float | None = None  # when the records now waiting were first found

        def wait(timeout: float) -> bool:
            nonlocal seen
            begin = time.monotonic()
            while not stop.wait(RECORDS_POLL_S) and running():
                now = time.monotonic()
                waiting = self._backlog()
                if not waiting:
                    seen = None
                elif seen is None:
                    seen = now
                if waiting >= DRAIN_BATCH or (seen is not None and now - seen >= RECORDS_GATHER_S):
                    seen = None
                    return True
                if now - begin >= timeout:
                    return False
            return False

        try:
            self._move_loop(wait, running)
        finally:
            os.close(lock)
            self.close()
        return 0

    def _move_loop(self, wait: Callable[[float], bool], running: Callable[[], bool]) -> None:
        """Move journalled records while ``running()``, a batch at a time, whenever
        ``wait(timeout)`` says records may have come (it returns after ``timeout`` at the
        latest); copy the write-ahead logs into the files every :data:`CHECKPOINT_EVERY_S`."""
        checkpointed = time.monotonic()
        retry = False
        while running():
            arrived = wait(CHECKPOINT_EVERY_S) or retry
            if not running():
                return
            if time.monotonic() - checkpointed >= CHECKPOINT_EVERY_S:
                checkpointed = time.monotonic()
                self._checkpoint()
            if not arrived:
                continue
            try:
                while self._drain(DRAIN_BATCH):
                    pass
                retry = False
            except Exception:  # left in the journal; the next try moves them
                _log.exception("moving journalled records into %s failed; retrying", self.path)
                time.sleep(1.0)
                retry = True

    def _checkpoint(self) -> None:
        """Copy the write-ahead logs into the files here, in the background, so that no
        request waits for it (and its fsync) while it holds a writer lock, and rewind a
        long one (:func:`.journal.checkpoint`)."""
        for each in (lambda: checkpoint(self._connection(), self._writer),
                     self._records.checkpoint):
            try:
                each()
            except sqlite3.OperationalError:  # busy: the next round does it
                _log.debug("checkpoint of %s deferred", self.path, exc_info=True)

    def record(self, records: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Outside a unit of work (the AuditEvents of reads): appended to the records file,
        which does not wait for the writes of this file."""
        if self.in_unit_of_work():
            super().record(records)
            return
        at = now_instant()  # recorded together: at one time
        rows = [_journal_row(type_, resource, at) for type_, resource in records]
        if rows:
            self._records.append(rows)
            self._recorded()

    def _drain(self, limit: int, upto: tuple[int, int] | None = None, *,
               block: bool = True) -> bool | None:
        """Move up to ``limit`` records of each journal (those up to ``upto``: the journal's
        and the records file's numbers) into the tables; True when more may be left. Their
        index values are computed before the write lock is taken, so writes wait only for
        the inserts. ``block`` False: None at once when another holds the mover's lock."""
        bounds: tuple[int | None, int | None] = upto if upto is not None else (None, None)
        with self._mover.hold(block=block) as held:
            if not held:
                return None
            pending = _pending(self._connection(), self._records, limit, bounds)
            if not pending.journal and not pending.side:
                return False
            prepared = _prepare(self.indexer, pending.journal + pending.side)
            with self.unit_of_work() as uow:
                assert isinstance(uow, _EmbeddedUnitOfWork)
                moved = uow.move(limit, bounds, prepared, alone=self._alone)
            if moved.side:  # the tables hold them now (a crash before this: the mark skips them)
                self._records.forget(moved.side[-1][0])
        return len(moved.journal) == limit or len(moved.side) == limit

    def _catch_up(self, wanted: Iterable[str | None]) -> None:
        """Before a read that concerns a record type: move everything journalled so far into
        the tables (in this thread, if the mover has not yet). Inside a unit of
        work, in it (it holds the write lock), its own records included."""
        types = set(wanted)
        if not (types & RECORD_TYPES or None in types):
            return
        if self.in_unit_of_work():
            _EmbeddedUnitOfWork(self._connection(), self.indexer, self._records).catch_up()
            return
        upto = (last_seq(self._connection()), self._records.last())
        if upto != (0, 0):
            while self._drain(DRAIN_BATCH, upto):
                pass

    def _reader(self) -> _Reader:
        return _Reader(self._connection())

    def read(self, type_: str, id_: str) -> Version | None:
        self._catch_up({type_})
        return self._reader().read(type_, id_)

    def vread(self, type_: str, id_: str, version: int) -> Version | None:
        self._catch_up({type_})
        return self._reader().vread(type_, id_, version)

    def read_many(self, refs: list[tuple[str, str]]) -> list[Version]:
        self._catch_up({type_ for type_, _ in refs})
        return self._reader().read_many(refs)

    def deleted_versions(self, versions: Sequence[tuple[str, str, int]]
                         ) -> set[tuple[str, str, int]]:
        self._catch_up({type_ for type_, _, _ in versions})
        return self._reader().deleted_versions(versions)

    def history(self, query: HistoryQuery) -> tuple[list[Version], int]:
        self._catch_up(_history_types(query))
        return self._reader().history(query)

    def search(self, query: SearchQuery) -> SearchResult:
        self._catch_up(types_read(query))
        return self._reader().search(query)

    def reindex(self, batch: int = REINDEX_BATCH,
                progress: Callable[[int, Any], None] | None = None,
                after: Any = None, *, absolute: bool = False) -> int:
        done, at = 0, int(after or 0)  # the last pk done
        if absolute:  # read without the writer lock; a resource written meanwhile is current
            chosen = [row[0] for row in self._connection().execute(_ABSOLUTE_REFERRERS, (at,))]
            for part in iter_chunks(chosen, batch):
                with self._unit_of_work() as uow:
                    assert isinstance(uow, _EmbeddedUnitOfWork)
                    done += uow.reindex_some(part)
                if progress is not None:
                    progress(done, part[-1])
            return done
        while True:
            with self._unit_of_work() as uow:
                assert isinstance(uow, _EmbeddedUnitOfWork)
                count, at = uow.reindex(at, batch)
            if not count:
                return done
            done += count
            if progress is not None:
                progress(done, at)

    def explain(self, query: SearchQuery) -> list[str]:
        """SQLite's plan for the search ``query`` (``EXPLAIN QUERY PLAN`` details) by the
        driven plan the search would answer by now."""
        compiled = compile_search(query, now_instant()[1])
        reader = self._reader()
        with reader.snapshot():
            plan, _ = reader.plan(compiled)
            rows = reader.conn.execute("EXPLAIN QUERY PLAN " + plan.select,
                                       compiled.params).fetchall()
        return [row[3] for row in rows]

    # -- server records (key-value) --------------------------------------------------------

    def kv_put(self, ns: str, key: str, value: dict[str, Any], *,
               expires_ms: int | None = None, only_if_absent: bool = False) -> bool:
        conn = self._connection()
        text = jsonio.dumps(value)
        self._kv_writes += 1
        if self._kv_writes % 1000 == 0:  # expired entries (replay caches) do not pile up
            conn.execute("DELETE FROM kv WHERE expires_ms <= ?", (now_instant()[1],))
        if not only_if_absent:
            conn.execute("INSERT OR REPLACE INTO kv (ns, key, value, expires_ms) "
                         "VALUES (?, ?, ?, ?)", (ns, key, text, expires_ms))
            return True
        # One statement, so atomic: insert, or take over an expired entry; a live one stays.
        cur = conn.execute(
            "INSERT INTO kv (ns, key, value, expires_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
            "expires_ms = excluded.expires_ms "
            "WHERE kv.expires_ms IS NOT NULL AND kv.expires_ms <= ?",
            (ns, key, text, expires_ms, now_instant()[1]))
        return cur.rowcount == 1

    def kv_get(self, ns: str, key: str) -> dict[str, Any] | None:
        row = self._connection().execute(
            "SELECT value FROM kv WHERE ns = ? AND key = ? "
            "AND (expires_ms IS NULL OR expires_ms > ?)", (ns, key, now_instant()[1])).fetchone()
        return None if row is None else jsonio.loads(row[0])

    def kv_delete(self, ns: str, key: str) -> bool:
        cur = self._connection().execute(
            "DELETE FROM kv WHERE ns = ? AND key = ? AND (expires_ms IS NULL OR expires_ms > ?)",
            (ns, key, now_instant()[1]))
        return cur.rowcount == 1

    def kv_list(self, ns: str, *, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        rows = self._connection().execute(
            "SELECT key, value FROM kv WHERE ns = ? AND (expires_ms IS NULL OR expires_ms > ?) "
            "ORDER BY key LIMIT ?", (ns, now_instant()[1], max(limit, 0))).fetchall()
        return [(key, jsonio.loads(value)) for key, value in rows]

    def drop_all(self) -> None:
        with self.unit_of_work():
            conn = self._connection()
            for table in ("resource", "history", "unique_key", "kv", "journal",
                          "journal_mark", *_INDEX_TABLES):
                conn.execute(f"DELETE FROM {table}")
            self._records.forget()
