"""Fixtures for the access tests (see :mod:`access_kit`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from access_kit import World, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One server for the read tests of a module (they only add audit records)."""
    built = build_world(tmp_path_factory.mktemp("access") / "data")
    yield built
    built.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[World]:
    """A server of its own, for tests that change who may see what."""
    built = build_world(tmp_path / "data", emergency_seconds=2)
    yield built
    built.close()
