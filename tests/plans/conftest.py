"""Fixtures for the plan workflow tests: a running Planbro on each storage engine (MongoDB
only when MONGODB_URI is set) with tokens for every party, and a notification receiver."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from plansupport import Receiver, Running, start

from server.config import Config

MONGO_SKIP_REASON = ("MONGODB_URI is not set: the plan workflow suite on MongoDB needs a real "
                     "MongoDB server (docker compose up mongo)")
WORKFLOW = {"allow_loopback_endpoints": True, "delivery_backoff_s": 0.2,
            "delivery_attempts": 3, "delivery_timeout_s": 5.0, "scan_interval_s": 3600.0}


def engine_config(kind: str, data: Path, **workflow: Any) -> tuple[Config, Callable[[], None]]:
    """A configuration of engine ``kind`` with the test workflow settings, and its cleanup."""
    extra = {"workflow": {**WORKFLOW, **workflow}}
    if kind == "embedded":
        return Config(data_dir=data, extra=extra), lambda: None
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip(MONGO_SKIP_REASON)
    db_name = f"planbro_plans_{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        import pymongo

        with pymongo.MongoClient(uri) as client:
            client.drop_database(db_name)

    return Config(data_dir=data, mongodb_uri=uri, mongodb_db=db_name, extra=extra), drop


ENGINES = ["embedded", pytest.param("mongo", marks=pytest.mark.mongo)]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def planbro(engine: str, tmp_path: Path) -> Iterator[Running]:
    """Planbro with the directory loaded and the background worker running."""
    config, cleanup = engine_config(engine, tmp_path / "data")
    running = start(config)
    try:
        yield running
    finally:
        running.close()
        cleanup()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()
