"""DPoP (RFC 9449): proof-of-possession for access tokens, on joserfc.

A client sends a proof JWT in the ``DPoP`` header with every token request and every API
request. At the token endpoint the proof's key thumbprint (``jkt``) is written into the access
token (``cnf.jkt``); the API then accepts that token only with a fresh proof made by the same
key for the same method and URL, carrying the hash of the token (``ath``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import struct
import time
from urllib.parse import urlsplit, urlunsplit

from joserfc import jwk
from joserfc.errors import JoseError

from ..store.port import Store
from .jwtutil import TokenInvalid, parse, registry_for, verify
from .replay import ReplayCache

DPOP_ALGS = ("ES256", "ES384", "RS256", "RS384", "PS256", "EdDSA")
_REGISTRY = registry_for(DPOP_ALGS)
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
_MAX_JTI = 256


class DpopError(Exception):
    """A DPoP proof was missing or wrong. ``use_nonce``: the client must retry with the
    server nonce sent in the ``DPoP-Nonce`` header."""

    def __init__(self, description: str, *, use_nonce: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.use_nonce = use_nonce


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(token: str) -> str:
    """The ``ath`` value for ``token``."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def normalise_htu(url: str) -> str:
    """Scheme and host lower-cased, default port dropped, query and fragment removed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path or "/", "", ""))


class NonceSource:
    """Server nonces: an HMAC of the current time window, valid for this window and the
    previous one. The secret lives in the store so that every process agrees."""

    NAMESPACE = "auth_secrets"

    def __init__(self, store: Store, window: int = 300) -> None:
        self._store = store
        self._window = window
        self._secret: bytes | None = None

    def _key(self) -> bytes:
        if self._secret is None:
            fresh = {"secret": secrets.token_hex(32)}
            self._store.kv_put(self.NAMESPACE, "dpop_nonce", fresh, only_if_absent=True)
            stored = self._store.kv_get(self.NAMESPACE, "dpop_nonce") or fresh
            self._secret = bytes.fromhex(stored["secret"])
        return self._secret

    def _make(self, slot: int) -> str:
        packed = struct.pack(">Q", slot)
        mac = hmac.new(self._key(), packed, hashlib.sha256).digest()[:16]
        return b64url(packed + mac)

    def current(self) -> str:
        return self._make(int(time.time()) // self._window)

    def valid(self, nonce: object) -> bool:
        if not isinstance(nonce, str) or len(nonce) > 64:
            return False
        slot = int(time.time()) // self._window
        return any(hmac.compare_digest(nonce, self._make(s)) for s in (slot, slot - 1))


@functools.lru_cache(maxsize=4096)
def _import_public(canonical: str) -> tuple[jwk.Key, str]:
    """A proof key and its thumbprint, imported once per distinct key (clients reuse theirs)."""
    data = json.loads(canonical)
    try:
        key = jwk.import_key(data)
    except (JoseError, ValueError, TypeError) as exc:
        raise DpopError("DPoP proof jwk cannot be read") from exc
    if data["kty"] == "RSA" and getattr(key.raw_value, "key_size", 0) < 2048:
        raise DpopError("DPoP proof RSA key is shorter than 2048 bits")
    return key, key.thumbprint()


def _proof_key(header: dict) -> tuple[jwk.Key, str]:
    data = header.get("jwk")
    if not isinstance(data, dict):
        raise DpopError("DPoP proof has no jwk header")
    if any(m in data for m in _PRIVATE_MEMBERS) or data.get("kty") not in ("RSA", "EC", "OKP"):
        raise DpopError("DPoP proof jwk must be an asymmetric public key")
    return _import_public(json.dumps(data, sort_keys=True))


class DpopVerifier:
    def __init__(
        self,
        replay: ReplayCache,
        *,
        max_age: int,
        skew: int,
        nonces: NonceSource | None = None,
    ) -> None:
        self._replay = replay
        self._max_age = max_age
        self._skew = skew
        self.nonces = nonces

    def verify(
        self, proof: str, *, method: str, url: str, access_token: str | None = None
    ) -> str:
        """Check one proof for a request; returns the key thumbprint (``jkt``)."""
        try:
            parsed = parse(proof)
        except TokenInvalid as exc:
            raise DpopError(f"DPoP proof: {exc.description}") from exc
        header, claims = parsed.header, parsed.claims
        if header.get("typ") != "dpop+jwt":
            raise DpopError("DPoP proof typ must be dpop+jwt")
        key, jkt = _proof_key(header)
        try:
            verify(parsed, key, _REGISTRY)
        except TokenInvalid as exc:
            raise DpopError(f"DPoP proof: {exc.description}") from exc
        self._check_claims(claims, method, url, access_token)
        if self.nonces is not None and not self.nonces.valid(claims.get("nonce")):
            raise DpopError("a fresh DPoP nonce is required", use_nonce=True)
        digest = hashlib.sha256(f"{jkt} {claims['jti']}".encode()).hexdigest()
        if not self._replay.first_use("dpop", digest, claims["iat"] + self._max_age + self._skew):
            raise DpopError("DPoP proof was used before (jti replay)")
        return jkt

    def _check_claims(
        self, claims: dict, method: str, url: str, access_token: str | None
    ) -> None:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI:
            raise DpopError("DPoP proof needs a jti")
        if claims.get("htm") != method.upper():
            raise DpopError("DPoP proof is for another HTTP method (htm)")
        htu = claims.get("htu")
        if not isinstance(htu, str) or normalise_htu(htu) != normalise_htu(url):
            raise DpopError("DPoP proof is for another URL (htu)")
        iat = claims.get("iat")
        now = time.time()
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise DpopError("DPoP proof needs a numeric iat")
        if iat > now + self._skew or iat < now - self._max_age - self._skew:
            raise DpopError("DPoP proof iat is outside the accepted window")
        if access_token is not None:
            if claims.get("ath") != access_token_hash(access_token):
                raise DpopError("DPoP proof ath does not match the access token")
