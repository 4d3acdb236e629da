"""The ``hapi`` marker: tests that run the official HAPI FHIR validator (Java 17 + Maven).

They run in the default test command; deselect them with ``-m "not hapi"``.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hapi: runs the official HAPI FHIR validator over profiles/ (Java, Maven)")
