"""Storage engines behind one port (:mod:`server.store.port`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .port import Indexer, Store

if TYPE_CHECKING:
    from ..config import Config


def open_store(config: Config, indexer: Indexer, *,
               records_process: Sequence[str] | None = None) -> Store:
    """MongoDB when ``config.mongodb_uri`` is set, else the embedded engine in the data
    folder (``records_process``: see :class:`.embedded.EmbeddedStore`). Engines are imported
    on demand, so each needs only its own driver."""
    if config.mongodb_uri:
        from .mongo import MongoStore

        return MongoStore(indexer, uri=config.mongodb_uri, db_name=config.mongodb_db)
    from .embedded import EmbeddedStore

    return EmbeddedStore(indexer, config.embedded_path, records_process=records_process)
