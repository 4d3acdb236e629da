"""Fixtures for the plan workflow tests: a running Planbro on each storage engine (MongoDB
only when MONGODB_URI is set) with tokens for every party, and a notification receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from plansupport import Receiver, Running, engine_config, start

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
