"""Shared fixtures: every storage engine behind one ``store`` fixture."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_kit import MONGO_SKIP_REASON, embedded_store, index_resource

from server.store.port import Store


@pytest.fixture(params=["embedded", pytest.param("mongo", marks=pytest.mark.mongo)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each storage engine in turn, empty."""
    if request.param == "embedded":
        engine: Store = embedded_store(tmp_path / "data" / "planbro.db")
        try:
            yield engine
        finally:
            engine.close()
        return
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip(MONGO_SKIP_REASON)
    import pymongo

    from server.store.mongo import MongoStore

    db_name = f"planbro_test_{uuid.uuid4().hex[:12]}"
    engine = MongoStore(index_resource, uri=uri, db_name=db_name)
    try:
        yield engine
    finally:
        engine.close()
        with pymongo.MongoClient(uri) as client:
            client.drop_database(db_name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every skip reason once, with how many tests it skipped."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skipped")
        for reason, count in sorted(reasons.items()):
            terminalreporter.write_line(f"{count} skipped: {reason}")
