"""Storage engines behind one port (:mod:`server.store.port`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .port import Indexer, Store

if TYPE_CHECKING:
    from ..config import Config


def open_store(config: Config, indexer: Indexer) -> Store:
    """MongoDB when ``config.mongodb_uri`` is set, else the embedded engine in the data
    folder. Engines are imported on demand, so each needs only its own driver."""
    if config.mongodb_uri:
        from .mongo import MongoStore

        return MongoStore(indexer, uri=config.mongodb_uri, db_name=config.mongodb_db)
    from .embedded import EmbeddedStore

    return EmbeddedStore(indexer, config.embedded_path)
