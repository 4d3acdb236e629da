"""Pieces of the embedded engine that several SQLite files share: the writer lock, and the
records file (the AuditEvents of reads, journalled beside the main file).

A read changes nothing but must leave an AuditEvent before its answer is returned. Appending
it to the main file would queue every read behind every write (SQLite has one writer per
file). The records file has a writer lock of its own: a read appends its records there (one
short transaction, shared by the reads of a process that end together), and the records are
moved into the main file later, recording in the main file how far it got, so a crash
between the two files neither loses nor repeats a record.

Who moves them: one records process per file (:class:`RecordsProcess`), or a background
thread of each process that records.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from ..fhir.outcome import FhirError

Row = tuple[int, str, str, str, int, str]
"""A journalled record: (seq, type, id, last_updated, last_updated_ms, json)."""
NewRow = tuple[str, str, str, int, str]
"""A record to journal: a :data:`Row` without its number."""

JOURNAL_TABLE = """CREATE TABLE journal (
        seq INTEGER PRIMARY KEY{autoincrement},
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        last_updated TEXT NOT NULL,
        last_updated_ms INTEGER NOT NULL,
        json TEXT NOT NULL)"""
JOURNAL_COLUMNS = "seq, type, id, last_updated, last_updated_ms, json"
INSERT_JOURNAL = ("INSERT INTO journal (type, id, last_updated, last_updated_ms, json) "
                  "VALUES (?, ?, ?, ?, ?)")
_NO_BOUND = 2**62
_log = logging.getLogger(__name__)
RECORDS_PROCESS_CHECK_S = 1.0
"""How often a process that records makes sure that the records process runs."""


def journal_rows(conn: sqlite3.Connection, after: int, upto: int | None,
                 limit: int | None) -> list[Row]:
    """The records of ``conn``'s journal numbered after ``after`` (up to ``upto``), oldest
    first, at most ``limit`` (None: no bound). They are read as one JSON array, in one step
    of the statement: a step per row would wait, each time, for the request threads to let
    this one run again."""
    found = conn.execute(
        f"SELECT json_group_array(json_array({JOURNAL_COLUMNS})) FROM (SELECT "
        f"{JOURNAL_COLUMNS} FROM journal WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?)",
        (after, _NO_BOUND if upto is None else upto, -1 if limit is None else limit)
    ).fetchone()[0]
    return _ROWS.decode(found)


_ROWS = msgspec.json.Decoder(list[Row])


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest record's number in ``conn``'s journal (0 when it is empty)."""
    return conn.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0]


def busy() -> FhirError:
    return FhirError.of(503, "The database is busy with other writes; retry the request",
                        code="transient", headers={"Retry-After": "1"})


def begin_immediate(conn: sqlite3.Connection) -> None:
    """Take the file's write lock (SQLite's), or fail with 503 when it stays taken."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        raise busy() from exc


REWIND_FRAMES = 65536
"""A write-ahead log this long (256 MiB of 4 KiB pages) is rewound by :func:`checkpoint`. The
log file keeps the largest size it reached (SQLite writes it from its start again), so under
steady writes it takes up to that much disk beside the database file."""
REWIND_WAIT_MS = 20
"""How long a rewind waits for readers of the old log (it holds the writer lock meanwhile);
when they take longer, the next checkpoint tries again."""


def checkpoint(conn: sqlite3.Connection, lock: WriterLock) -> None:
    """Copy the write-ahead log of ``conn``'s file into the file (PASSIVE: it neither waits
    for nor blocks readers and writers) and, when the log holds :data:`REWIND_FRAMES`,
    rewind it.

    A log is written from its start again only by a commit that finds all of it copied into
    the file, which a checkpoint beside writers that keep committing never leaves behind: the
    log would grow until a commit checkpoints it itself (``wal_autocheckpoint``), inside the
    writer lock, again at each commit until one succeeds. So a rewind holds ``lock`` (no
    commit adds to the log), copies what the passive checkpoint left and waits up to
    :data:`REWIND_WAIT_MS` for readers of the log to finish (RESTART); the next commit then
    writes the log from its start."""
    frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    if frames < REWIND_FRAMES:
        return
    with lock.hold():
        usual = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout = {REWIND_WAIT_MS}")
        try:
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(usual)}")


def enable_wal(conn: sqlite3.Connection, path: Path, timeout: float) -> None:
    """Switch the file to WAL (a lasting property of the file). Processes that open a new
    file together may see ``database is locked`` here without SQLite's busy wait, so this
    retries for as long as a writer would wait."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if mode.lower() != "wal":
            raise RuntimeError(f"{path}: the file system does not support SQLite's WAL mode "
                               f"(journal_mode is {mode})")
        return


class WriterLock:
    """Queues the writers of one SQLite file before they reach SQLite: threads of this
    process on a mutex, processes on an advisory lock of ``<file>.lock``, which the kernel
    hands to the next waiting process when it is let go (and lets go itself when its holder
    dies). SQLite's own busy handler sleeps in steps of up to 100 ms, which would make
    writers that merely queue wait far longer than the writes take, and trying the file lock
    again and again takes the CPU time its holder needs.

    A wait in the kernel cannot be given up, so a process's :class:`_FileWaiter` thread does
    it, and a thread that must give up at its deadline leaves that wait behind: the next
    thread of the process to want the lock takes it over, and when nobody does, the lock is
    let go as soon as it comes."""

    def __init__(self, path: Path, timeout: Callable[[], float]) -> None:
        self._path = Path(f"{path}.lock")
        self._timeout = timeout
        self._thread_lock = threading.Lock()
        self._fd_guard = threading.Lock()
        self._owner = 0
        self._fd = -1
        self._waiter: _FileWaiter | None = None

    @contextmanager
    def hold(self, *, block: bool = True) -> Iterator[bool]:
        """Hold the lock for the ``with`` block, which gets True. ``block`` False: when
        another thread or process holds it, the block gets False at once (and holds
        nothing)."""
        wait = self._timeout() if block else 0.0
        deadline = time.monotonic() + wait
        fd, waiter = self._descriptor()
        if not self._thread_lock.acquire(timeout=wait):
            if block:
                raise busy()
            yield False
            return
        try:
            if waiter.waiting():  # an earlier thread's wait: only that one may take it
                taken = block and waiter.take(deadline)
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    taken = True
                except BlockingIOError:
                    taken = block and waiter.take(deadline)
            if not taken:
                if block:
                    raise busy()
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _descriptor(self) -> tuple[int, _FileWaiter]:
        """This process's descriptor of the lock file and the thread that waits on it. A
        forked child opens its own: a descriptor inherited through fork shares its lock with
        the parent's, and the parent's threads are not in the child."""
        with self._fd_guard:
            if self._owner != os.getpid() or self._waiter is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._waiter = _FileWaiter(self._fd)
                self._owner = os.getpid()
            return self._fd, self._waiter


class _FileWaiter:
    """Waits in the kernel for the file lock of descriptor ``fd`` (``flock`` without
    ``LOCK_NB``), in a thread of its own started on the first wait, for the thread of the
    process that wants it (:meth:`take`). All tries of the lock on ``fd`` while a wait is
    under way are this thread's: a descriptor that holds the lock gets it again at once, so
    another try would take over the lock the wait is about to let go."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._changed = threading.Condition()
        self._wanted = False  # a wait is under way
        self._granted = False  # it got the lock, for the thread that takes it
        self._abandoned = False  # its thread gave up: let go of the lock when it comes
        self._failed: OSError | None = None  # the wait failed, for the thread that takes it
        self._thread: threading.Thread | None = None

    def waiting(self) -> bool:
        with self._changed:
            return self._wanted

    def take(self, deadline: float) -> bool:
        """Wait (or go on waiting) for the lock until ``deadline`` (``time.monotonic``); True
        when this thread holds it now. False: the wait goes on, and is let go when it ends
        unless another thread takes it over meanwhile."""
        with self._changed:
            self._abandoned = False
            if not self._wanted:
                self._wanted, self._granted = True, False
                if self._thread is None:
                    self._thread = threading.Thread(target=self._wait, daemon=True,
                                                    name="writer-lock waiter")
                    self._thread.start()
                self._changed.notify_all()
            while not self._granted:
                if self._failed is not None:
                    failed, self._failed = self._failed, None
                    raise failed
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._abandoned = True
                    return False
                self._changed.wait(remaining)
            self._wanted = self._granted = False
            return True

    def _wait(self) -> None:
        while True:
            with self._changed:
                while not self._wanted or self._granted:
                    self._changed.wait()
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as exc:  # the thread goes on waiting for the next wait
                with self._changed:
                    self._failed = None if self._abandoned else exc
                    self._wanted = self._abandoned = False
                    self._changed.notify_all()
                continue
            with self._changed:
                if self._abandoned:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    self._wanted = self._abandoned = False
                else:
                    self._granted = True
                self._changed.notify_all()


class RecordFile:
    """The records file ``<main file>.records``: a journal table and the file's identity
    (a new file is a new journal, so the main file's progress mark of an old one never
    skips its records)."""

    def __init__(self, path: Path, connect: Callable[[Path], sqlite3.Connection],
                 timeout: Callable[[], float]) -> None:
        self.path = path
        self._connect = connect
        self._local = threading.local()
        self._lock = WriterLock(path, timeout)
        conn = self.connection()
        enable_wal(conn, path, timeout())
        with self._lock.hold():
            begin_immediate(conn)
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                    # numbers are never reused: the main file's mark must not skip a record
                    conn.execute(JOURNAL_TABLE.format(autoincrement=" AUTOINCREMENT"))
                    conn.execute("CREATE TABLE identity (id TEXT NOT NULL)")
                    conn.execute("INSERT INTO identity VALUES (?)", (str(uuid.uuid4()),))
                    conn.execute("PRAGMA user_version = 1")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self.id: str = conn.execute("SELECT id FROM identity").fetchone()[0]

    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the records file."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect(self.path)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def forget_connections(self) -> None:
        """After the store closed its connections (this thread opens a new one)."""
        self._local = threading.local()

    def append(self, rows: Sequence[NewRow]) -> None:
        """Journal records: durable when this returns."""
        conn = self.connection()
        with self._lock.hold():
            begin_immediate(conn)
            try:
                conn.executemany(INSERT_JOURNAL, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def checkpoint(self) -> None:
        """Copy the records file's write-ahead log into it (:func:`checkpoint`)."""
        checkpoint(self.connection(), self._lock)

    def last(self) -> int:
        """The newest record's number (0 when the journal is empty)."""
        return last_seq(self.connection())

    def after(self, mark: int, upto: int | None, limit: int | None) -> list[Row]:
        """The records after ``mark`` (up to ``upto``), oldest first, at most ``limit``."""
        return journal_rows(self.connection(), mark, upto, limit)

    def forget(self, upto: int | None = None) -> None:
        """Delete the records up to ``upto`` (the main file holds them now); all of them
        by default."""
        conn = self.connection()
        with self._lock.hold():
            conn.execute("DELETE FROM journal WHERE seq <= ?",
                         (_NO_BOUND if upto is None else upto,))


class RecordsProcess:
    """The one process that moves the journalled records of the file at ``path`` into its
    tables, so that the processes serving requests do not spend their time (and their
    interpreter lock) on it. It runs ``command`` with the file's path and the starting
    process's id appended, and holds an advisory lock on ``<file>.records-process.lock``
    while it lives; it stops when the process that started it is gone. Any process that
    records may start it: :meth:`ensure` starts one when no process holds that lock (when
    two start one together, the second exits at once)."""

    def __init__(self, path: Path, command: Sequence[str]) -> None:
        self.path = path
        self.command = list(command)
        self._guard = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._owner = 0  # the process that started the child
        self._checked = -RECORDS_PROCESS_CHECK_S
        self.failed = False

    def ensure(self) -> None:
        """Start the records process when none runs (looked at once a second at most).
        When one started here fails, :attr:`failed` is set (the caller moves the records
        itself from then on)."""
        now = time.monotonic()
        if now - self._checked < RECORDS_PROCESS_CHECK_S or self.failed:
            return
        with self._guard:
            if now - self._checked < RECORDS_PROCESS_CHECK_S:
                return
            self._checked = now
            child = self._child
            if child is not None and self._owner == os.getpid():
                code = child.poll()
                if code is None:
                    return  # ours runs
                self._child = None
                if code != 0:
                    _log.error("the records process of %s exited with %s; this process moves "
                               "the records itself from now on", self.path, code)
                    self.failed = True
                    return
            lock = records_process_lock(self.path)
            if lock is None:
                return  # another process's runs
            os.close(lock)
            self._owner = os.getpid()
            self._child = subprocess.Popen(  # the lock was let go: the child takes it
                [*self.command, str(self.path), str(os.getpid())], stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        """Stop the records process this process started (if it runs)."""
        with self._guard:
            child, self._child = self._child, None
        if child is None or self._owner != os.getpid():
            return
        end_process(child, timeout=10)


def end_process(process: subprocess.Popen[Any], timeout: float) -> None:
    """Ask ``process`` to end (SIGTERM) and wait for it; kill it after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def records_process_lock(path: Path) -> int | None:
    """Take the lock the records process of the file at ``path`` holds while it lives
    (``<file>.records-process.lock``): the descriptor that holds it (closing it lets go),
    or None when another process holds it."""
    fd = os.open(f"{path}.records-process.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
