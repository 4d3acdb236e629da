"""Token issuance (RFC 9068 JWT access tokens) and the server records behind the grants:
authorisation codes, refresh tokens (rotated, reuse detected) and revoked token ids.

Codes and refresh tokens are stored under the SHA-256 of their value, never in clear.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from joserfc import jwt

from ..store.port import Store
from .clients import ClientRecord
from .config import AuthConfig
from .jwtutil import registry_for
from .keys import KeyRing, SigningKey


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Subject:
    """The person who signed in (authorization_code grant): a patient of this server."""

    patient: str
    fnr: str | None = None
    acr: str | None = None
    auth_time: int = 0
    name: str | None = None

    def get_user_id(self) -> str:
        return f"Patient/{self.patient}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Subject:
        return cls(**data)


@dataclass(frozen=True)
class CodeRecord:
    """An issued authorisation code (authlib's AuthorizationCodeMixin and OIDC parts)."""

    client_id: str
    redirect_uri: str
    scope: str
    subject: Subject
    code_challenge: str
    code_challenge_method: str
    nonce: str | None = None
    family: str = ""

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.subject.auth_time

    def get_acr(self) -> str | None:
        return self.subject.acr

    def get_amr(self) -> list[str] | None:
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["subject"] = self.subject.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CodeRecord:
        data = dict(data)
        data["subject"] = Subject.from_json(data["subject"])
        return cls(**data)


@dataclass(frozen=True)
class RefreshRecord:
    """A live refresh token (authlib's TokenMixin parts the refresh grant uses)."""

    client_id: str
    scope: str
    subject: Subject
    family: str
    expires_at: int
    jkt: str | None = None

    def check_client(self, client: ClientRecord) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["subject"] = self.subject.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RefreshRecord:
        data = dict(data)
        data["subject"] = Subject.from_json(data["subject"])
        return cls(**data)


class CodeStore:
    NAMESPACE = "oauth_codes"
    USED = "oauth_codes_used"

    def __init__(self, store: Store, ttl: int) -> None:
        self._store = store
        self._ttl = ttl

    def save(self, code: str, record: CodeRecord) -> None:
        expires_ms = int((time.time() + self._ttl) * 1000)
        self._store.kv_put(self.NAMESPACE, _digest(code), record.to_json(),
                           expires_ms=expires_ms)

    def consume(self, code: str, client_id: str) -> CodeRecord | None:
        """The code's record, removed so it can never be used again (atomic: of two
        concurrent uses only one gets it). None for an unknown, used or foreign code."""
        key = _digest(code)
        data = self._store.kv_get(self.NAMESPACE, key)
        if data is None or data.get("client_id") != client_id:
            return None
        if not self._store.kv_delete(self.NAMESPACE, key):
            return None
        record = CodeRecord.from_json(data)
        expires_ms = int((time.time() + 24 * 3600) * 1000)
        self._store.kv_put(self.USED, key, {"family": record.family}, expires_ms=expires_ms)
        return record

    def used_family(self, code: str) -> str | None:
        """The token family issued from an already used code (to revoke on reuse)."""
        data = self._store.kv_get(self.USED, _digest(code))
        return data.get("family") if data else None


class RefreshStore:
    NAMESPACE = "oauth_refresh"
    USED = "oauth_refresh_used"
    FAMILY = "oauth_refresh_family"

    def __init__(self, store: Store, ttl: int) -> None:
        self._store = store
        self.ttl = ttl

    def save(self, token: str, record: RefreshRecord) -> None:
        expires_ms = record.expires_at * 1000
        key = _digest(token)
        self._store.kv_put(self.NAMESPACE, key, record.to_json(), expires_ms=expires_ms)
        self._store.kv_put(self.FAMILY, record.family, {"current": key}, expires_ms=expires_ms)

    def find(self, token: str) -> RefreshRecord | None:
        data = self._store.kv_get(self.NAMESPACE, _digest(token))
        return RefreshRecord.from_json(data) if data else None

    def consume(self, token: str, record: RefreshRecord) -> bool:
        """Retire a refresh token at rotation; False when another request already did."""
        key = _digest(token)
        if not self._store.kv_delete(self.NAMESPACE, key):
            return False
        self._store.kv_put(self.USED, key, {"family": record.family},
                           expires_ms=record.expires_at * 1000)
        return True

    def rotated_family(self, token: str) -> str | None:
        """The family of a refresh token that was already rotated away (a reuse)."""
        data = self._store.kv_get(self.USED, _digest(token))
        return data.get("family") if data else None

    def revoke_family(self, family: str) -> None:
        """End a whole login session: its current refresh token stops working."""
        current = self._store.kv_get(self.FAMILY, family)
        if current:
            self._store.kv_delete(self.NAMESPACE, current["current"])
        self._store.kv_delete(self.FAMILY, family)


class RevocationList:
    """Token ids (``jti``) revoked before they expired."""

    NAMESPACE = "oauth_revoked"

    def __init__(self, store: Store, skew: int) -> None:
        self._store = store
        self._skew = skew

    def add(self, issuer: str, jti: str, exp: int) -> None:
        expires_ms = int((exp + self._skew + 1) * 1000)
        self._store.kv_put(self.NAMESPACE, f"{issuer} {jti}", {"exp": exp},
                           expires_ms=expires_ms)

    def contains(self, issuer: str, jti: str) -> bool:
        return self._store.kv_get(self.NAMESPACE, f"{issuer} {jti}") is not None


class TokenIssuer:
    """Signs our access tokens with the active key (keys are imported once, in the ring)."""

    def __init__(self, config: AuthConfig, keys: KeyRing) -> None:
        self._config = config
        self._keys = keys
        self._registries = {alg: registry_for([alg]) for alg in ("ES256", "RS256")}

    def sign(self, claims: dict[str, Any], typ: str, *, key: SigningKey | None = None) -> str:
        """Sign ``claims`` with ``key`` (default: the active key)."""
        key = key or self._keys.active
        header = {"alg": key.alg, "kid": key.kid, "typ": typ}
        return jwt.encode(header, claims, key.private, registry=self._registries[key.alg])

    def access_token(
        self,
        client: ClientRecord,
        scope: str,
        *,
        subject: Subject | None = None,
        practitioner: str | None = None,
        jkt: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A signed RFC 9068 access token and its claims."""
        cfg = self._config
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": cfg.issuer,
            "sub": subject.get_user_id() if subject else client.client_id,
            "aud": cfg.fhir_audience,
            "client_id": client.client_id,
            "scope": scope,
            "iat": now,
            "exp": now + cfg.access_token_ttl,
            "jti": secrets.token_urlsafe(18),
        }
        if client.organization:
            claims["organization"] = client.organization
        if practitioner:
            claims["hpr"] = practitioner
        if subject is not None:
            claims["patient"] = subject.patient
            claims["fhirUser"] = f"{cfg.fhir_audience}/Patient/{subject.patient}"
            if subject.acr:
                claims["acr"] = subject.acr
            if subject.auth_time:
                claims["auth_time"] = subject.auth_time
        if jkt:
            claims["cnf"] = {"jkt": jkt}
        return self.sign(claims, "at+jwt"), claims
