"""Registered OAuth clients: organisations' systems and the patient app, kept in the store.

A system (hospital EHR, municipal system, NAV) authenticates with ``private_key_jwt`` (its
public keys inline as a JWKS, or at a ``jwks_uri``) and uses ``client_credentials``. The
patient app is a public client (``none``) using ``authorization_code`` with PKCE and
``refresh_token``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin

from ..store.port import Store
from .jwtutil import JwksSource
from .scopes import ScopeSet

AUTH_METHODS = ("private_key_jwt", "none")
GRANT_TYPES = ("client_credentials", "authorization_code", "refresh_token")
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
_ORGNR_RE = re.compile(r"^(?:[0-9]{9}|[0-9]{6}-?[0-9]{4})$")
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


def _check_redirect_uri(uri: str) -> None:
    parts = urlsplit(uri)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.fragment or not parts.netloc:
        raise ValueError(f"redirect URI {uri!r} must be absolute and without a fragment")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"redirect URI {uri!r} must use https (http only for loopback)")


def _check_jwks(jwks: dict[str, Any]) -> None:
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError("jwks must be a JSON object with a non-empty 'keys' list")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC", "OKP"):
            raise ValueError("client keys must be asymmetric (RSA, EC or OKP)")
        if any(m in key for m in _PRIVATE_MEMBERS):
            raise ValueError("a client's jwks must hold public keys only")


@dataclass(frozen=True)
class ClientRecord(ClientMixin):
    client_id: str
    name: str
    token_endpoint_auth_method: str = "private_key_jwt"
    grant_types: tuple[str, ...] = ("client_credentials",)
    scope: str = ""
    organization: str | None = None
    redirect_uris: tuple[str, ...] = ()
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    may_introspect: bool = False
    may_assert_practitioner: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    # -- validation and storage ----------------------------------------------------------

    def validate(self) -> None:
        if not _CLIENT_ID_RE.match(self.client_id):
            raise ValueError("client_id: 1-100 characters of A-Z a-z 0-9 . _ : -")
        if not self.name.strip():
            raise ValueError("a client needs a name")
        if self.token_endpoint_auth_method not in AUTH_METHODS:
            raise ValueError(f"token_endpoint_auth_method must be one of {AUTH_METHODS}")
        unknown = set(self.grant_types) - set(GRANT_TYPES)
        if unknown or not self.grant_types:
            raise ValueError(f"grant types must be among {GRANT_TYPES}")
        if self.organization is not None and not _ORGNR_RE.match(self.organization):
            raise ValueError("organization must be an organisation number (9 digits)")
        ScopeSet.parse(self.scope)
        if self.token_endpoint_auth_method == "private_key_jwt":
            if (self.jwks is None) == (self.jwks_uri is None):
                raise ValueError("private_key_jwt needs exactly one of jwks or jwks_uri")
            if self.jwks is not None:
                _check_jwks(self.jwks)
            if self.jwks_uri is not None and not self.jwks_uri.startswith(("https://", "http://")):
                raise ValueError("jwks_uri must be an http(s) URL")
        elif "client_credentials" in self.grant_types:
            raise ValueError("client_credentials needs a confidential client (private_key_jwt)")
        if "authorization_code" in self.grant_types:
            if not self.redirect_uris:
                raise ValueError("authorization_code needs at least one redirect URI")
            for uri in self.redirect_uris:
                _check_redirect_uri(uri)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["grant_types"] = list(self.grant_types)
        data["redirect_uris"] = list(self.redirect_uris)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientRecord:
        data = dict(data)
        data["grant_types"] = tuple(data.get("grant_types") or ())
        data["redirect_uris"] = tuple(data.get("redirect_uris") or ())
        return cls(**data)

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"

    @property
    def allowed_scopes(self) -> ScopeSet:
        return ScopeSet.parse(self.scope)

    def key_fingerprint(self) -> str:
        source = json.dumps(self.jwks, sort_keys=True) if self.jwks else self.jwks_uri or ""
        return hashlib.sha256(source.encode()).hexdigest()

    # -- authlib ClientMixin -------------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The scope to grant: all requested scopes when the registration covers each of
        them, else None (authlib answers ``invalid_scope``); the registered scope when none
        was requested."""
        allowed = self.allowed_scopes
        if not scope:
            return str(allowed)
        try:
            requested = ScopeSet.parse(scope)
        except ValueError:
            return None
        return str(requested) if allowed.covers(requested) else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # no shared secrets: private_key_jwt or public clients only

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


class ClientRegistry:
    """Clients in the store's key-value part, with their key sets imported once."""

    NAMESPACE = "oauth_clients"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._sources: dict[str, tuple[str, JwksSource]] = {}

    def get(self, client_id: str) -> ClientRecord | None:
        if not isinstance(client_id, str) or not _CLIENT_ID_RE.match(client_id):
            return None
        data = self._store.kv_get(self.NAMESPACE, client_id)
        return ClientRecord.from_json(data) if data else None

    def put(self, record: ClientRecord) -> None:
        record.validate()
        self._store.kv_put(self.NAMESPACE, record.client_id, record.to_json())

    def add(self, record: ClientRecord) -> bool:
        """Register a new client; False when the id is taken."""
        record.validate()
        return self._store.kv_put(
            self.NAMESPACE, record.client_id, record.to_json(), only_if_absent=True
        )

    def remove(self, client_id: str) -> bool:
        with self._lock:
            self._sources.pop(client_id, None)
        return self._store.kv_delete(self.NAMESPACE, client_id)

    def list(self, limit: int = 1000) -> list[ClientRecord]:
        return [ClientRecord.from_json(v) for _, v in self._store.kv_list(self.NAMESPACE,
                                                                          limit=limit)]

    def keys_for(self, record: ClientRecord) -> JwksSource:
        """The client's verification keys (imported once per registration version)."""
        fingerprint = record.key_fingerprint()
        cached = self._sources.get(record.client_id)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        source = JwksSource(jwks=record.jwks, url=record.jwks_uri, refresh_interval=30.0)
        with self._lock:
            self._sources[record.client_id] = (fingerprint, source)
        return source
