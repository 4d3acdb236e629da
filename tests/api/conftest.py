"""The FHIR API over real HTTP: a werkzeug server on a free local port, per test, on each
storage engine (MongoDB only when MONGODB_URI is set)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from live import ADMIN_SCOPE, FHIR_JSON, LiveServer, engine_config, system_token

from server.app import Planbro, create_app
from server.plans import identifiers

FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"
MAX_BODY = 64 * 1024

def synthetic_fnr(seed: int) -> str:
    """A synthetic Norwegian fødselsnummer (month + 80) that passes both modulus-11 checks;
    different seeds give different numbers."""
    return identifiers.synthetic_fnr(dt.date(1985, 1, 1) + dt.timedelta(days=seed), seed // 5000)


def patient(seed: int = 0, family: str = "Nordmann", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient",
            "identifier": [{"system": FNR_SYSTEM, "value": synthetic_fnr(seed)}],
            "name": [{"family": family, "given": ["Kari"]}], **extra}


def refused(response: requests.Response, status: int, code: str,
            expression: list[str] | None = None) -> dict[str, Any]:
    """Assert that ``response`` is an error as every error must be: the status, and an
    OperationOutcome whose first issue is an error with ``code``, a text and (when the error
    has a place) ``expression``. Returns that issue."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    first: dict[str, Any] = body["issue"][0]
    assert first["severity"] == "error" and first["code"] == code, first
    assert first["diagnostics"], first
    assert first.get("expression") == expression, first
    return first


class Fhir:
    """A tiny FHIR client for the tests: paths are relative to the base URL."""

    def __init__(self, base: str, app: Flask) -> None:
        self.base = base
        self.app = app
        self.http = requests.Session()

    @property
    def planbro(self) -> Planbro:
        planbro: Planbro = self.app.extensions["planbro"]
        return planbro

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of this client (for requests made outside its session)."""
        return {"Authorization": str(self.http.headers["Authorization"])}

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base}/{path.lstrip('/')}"

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = FHIR_JSON, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if body is not None:
            headers.setdefault("Content-Type", content_type)
            kwargs["json" if isinstance(body, dict | list) else "data"] = body
        return self.http.request(method, self.url(path), headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, body, **kwargs)

    def patch(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("content_type", "application/json-patch+json")
        return self.request("PATCH", path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        response = self.post(resource["resourceType"], resource)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def search(self, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.get(path, **kwargs)
        assert response.status_code == 200, response.text
        bundle: dict[str, Any] = response.json()
        return bundle

    def ids(self, path: str, mode: str = "match") -> list[str]:
        return [e["resource"]["id"] for e in self.search(path).get("entry", [])
                if e["search"]["mode"] == mode]

    def versions(self) -> int:
        """How many resource versions the server holds (every write adds one)."""
        total: int = self.search("_history?_count=0")["total"]
        return total


@pytest.fixture(params=["embedded", pytest.param("mongo", marks=pytest.mark.mongo)])
def fhir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fhir]:
    """A running server on each storage engine, and a client for it."""
    config, cleanup = engine_config(request.param, suite="API suite",
                                    data_dir=tmp_path / "data", max_body_bytes=MAX_BODY)
    live = LiveServer()
    app = create_app(dataclasses.replace(config, base_url=f"{live.url}/fhir"))
    live.app = app
    client = Fhir(f"{live.url}/fhir", app)
    # An administrative system (scope planbro/admin): these suites test FHIR mechanics, not
    # who may see a person's data (tests/access does).
    client.http.headers["Authorization"] = "Bearer " + system_token(
        app.extensions["planbro"].auth, scope=ADMIN_SCOPE)
    try:
        yield client
    finally:
        client.http.close()
        live.close()
        client.planbro.close()
        cleanup()
