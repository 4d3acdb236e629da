"""The records process of the server's embedded store: ``python -m server.mover FILE PID``.

A server process that records starts it (:class:`server.store.journal.RecordsProcess`), with
the store's file and its own process id. It moves the journalled records (AuditEvents,
Provenances) into the file's tables with the server's indexer, in a process of its own, so
that the processes serving requests spend neither their CPU time nor their interpreter lock
on it, and ends when that process ends.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

COMMAND = (sys.executable, "-m", "server.mover")
"""How a server process starts the records process (the file and its id are appended)."""


def main(argv: Sequence[str] | None = None) -> int:
    from .audit import store_indexer
    from .plans.rules import search_registry
    from .store.embedded import EmbeddedStore

    path, parent = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    store = EmbeddedStore(store_indexer(search_registry()), path)
    return store.serve_records(int(parent))


if __name__ == "__main__":
    sys.exit(main())
