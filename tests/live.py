"""Running Planbro for real in tests: a WSGI server on a free loopback port, and access
tokens obtained the way a system gets them (client_credentials with private_key_jwt)."""

from __future__ import annotations

import os
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from flask import Flask
from joserfc import jwk
from werkzeug.serving import make_server

from server.auth.assertion import client_assertion_form
from server.auth.clients import ClientRecord
from server.auth.server import AuthServer
from server.config import Config

ADMIN_SCOPE = "system/*.cruds planbro/admin"
"""An administrative system's scopes: every person's data (Planbro's own issuer only)."""
AUDITOR_SCOPE = "system/AuditEvent.rs planbro/audit"
"""An auditor's scopes: every AuditEvent."""
ORG_SCOPE = "system/*.cruds"
"""An organisation's system: every type, limited by the access layer."""


class LiveServer:
    """A WSGI server on a free loopback port; the app is mounted after the port is known."""

    def __init__(self) -> None:
        self.app: Flask | None = None
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


FHIR_JSON = "application/fhir+json"


def engine_config(kind: str, *, suite: str, **fields: Any) -> tuple[Config, Callable[[], None]]:
    """A configuration of storage engine ``kind`` ("embedded" or "mongo") with ``fields``,
    and its cleanup. MongoDB: a fresh database on the server at ``MONGODB_URI``, dropped by
    the cleanup; without ``MONGODB_URI`` the test is skipped, saying why."""
    if kind == "embedded":
        return Config(**fields), lambda: None
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip(f"MONGODB_URI is not set: the {suite} on MongoDB needs a real MongoDB "
                    "server (docker compose up mongo)")
    db_name = f"planbro_{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        import pymongo

        with pymongo.MongoClient(uri) as client:
            client.drop_database(db_name)

    return Config(**fields, mongodb_uri=uri, mongodb_db=db_name), drop


@dataclass
class Parties:
    """A running Planbro and one HTTP session per party, each with its access token."""

    live: LiveServer
    app: Flask
    tokens: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, requests.Session] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"{self.live.url}/fhir"

    @property
    def planbro(self) -> Any:
        return self.app.extensions["planbro"]

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base}/{path.lstrip('/')}"

    def session(self, party: str) -> requests.Session:
        """The party's session (its token, FHIR JSON accepted)."""
        if party not in self.sessions:
            session = requests.Session()
            session.headers.update({"Authorization": f"Bearer {self.tokens[party]}",
                                    "Accept": FHIR_JSON})
            self.sessions[party] = session
        return self.sessions[party]

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.live.close()
        self.planbro.close()


def register_system(auth: AuthServer, *, scope: str = ORG_SCOPE,
                    organization: str | None = None,
                    client_id: str | None = None) -> tuple[str, jwk.Key]:
    """Register a private_key_jwt system client; returns its id and private key."""
    client_id = client_id or f"test-{secrets.token_hex(6)}"
    key = jwk.ECKey.generate_key("P-256", parameters={"kid": f"{client_id}-1"})
    public = {**key.as_dict(private=False), "kid": f"{client_id}-1"}
    auth.clients.put(ClientRecord(client_id=client_id, name=f"Test system {client_id}",
                                  scope=scope, organization=organization,
                                  jwks={"keys": [public]}))
    return client_id, key


def client_token(auth: AuthServer, client_id: str, key: jwk.Key, scope: str) -> str:
    """An access token from the token endpoint, over HTTP."""
    endpoint = auth.config.token_endpoint
    response = requests.post(endpoint, data={
        "grant_type": "client_credentials", "scope": scope,
        **client_assertion_form(client_id, key, alg="ES256", kid=key.kid, audience=endpoint)},
        timeout=30)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def system_token(auth: AuthServer, *, scope: str = ORG_SCOPE,
                 organization: str | None = None) -> str:
    """Register a system client with ``scope`` and return an access token for it."""
    client_id, key = register_system(auth, scope=scope, organization=organization)
    return client_token(auth, client_id, key, scope)
