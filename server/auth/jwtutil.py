"""JWT checks shared by access tokens, client assertions, id_tokens and DPoP proofs.

Every check names its algorithms explicitly (asymmetric only), takes the key from the
issuer's own key set by ``kid`` and never from the token, and compares ``iss``/``aud``
exactly.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from joserfc import jwk, jws
from joserfc.errors import JoseError

from .fetch import FetchError, request_json

MAX_TOKEN_BYTES = 16 * 1024
MAX_HEADER_BYTES = 8 * 1024  # DPoP proofs carry a public key (an RSA one is large)


class TokenInvalid(Exception):
    """A JWT failed a check; ``description`` says which (safe to show the caller)."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class ParsedJwt:
    """A compact JWS split into header and claims, signature not yet verified."""

    __slots__ = ("obj", "header", "claims")

    def __init__(self, obj: jws.CompactSignature, header: dict[str, Any], claims: dict) -> None:
        self.obj = obj
        self.header = header
        self.claims = claims


def registry_for(algorithms: Collection[str], *, strict_header: bool = True) -> jws.JWSRegistry:
    registry = jws.JWSRegistry(algorithms=list(algorithms), strict_check_header=strict_header)
    registry.max_header_length = MAX_HEADER_BYTES
    return registry


_EXTRACT = registry_for((), strict_header=False)


def parse(token: str) -> ParsedJwt:
    """Split a compact JWT (no verification yet)."""
    if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise TokenInvalid("not a compact JWT")
    try:
        obj = jws.extract_compact(token.encode("ascii"), registry=_EXTRACT)
        claims = json.loads(obj.payload)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise TokenInvalid("malformed JWT") from exc
    if not isinstance(claims, dict):
        raise TokenInvalid("JWT payload is not a JSON object")
    header = obj.headers()
    if "b64" in header or "crit" in header:
        raise TokenInvalid("JWT header parameters b64/crit are not accepted")
    return ParsedJwt(obj, header, claims)


def verify(parsed: ParsedJwt, key: jwk.Key, registry: jws.JWSRegistry) -> None:
    """Verify the signature with ``key``; the header ``alg`` must be one the registry allows
    and must fit the key type (so an HMAC with a public key, or ``none``, never passes)."""
    alg = parsed.header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise TokenInvalid("unsigned JWT")
    if registry.allowed is not None and alg not in registry.allowed:
        raise TokenInvalid(f"algorithm {alg} is not accepted")
    try:
        ok = jws.validate_compact(parsed.obj, key, registry=registry)
    except JoseError as exc:
        raise TokenInvalid(f"signature check failed: {exc.error}") from exc
    if not ok:
        raise TokenInvalid("bad signature")


def check_times(claims: Mapping[str, Any], *, skew: int, now: float | None = None) -> None:
    """``exp`` required and not passed; ``nbf`` and ``iat`` not in the future (with skew)."""
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise TokenInvalid("missing or invalid exp")
    if now > exp + skew:
        raise TokenInvalid("token has expired")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TokenInvalid(f"invalid {name}")
        if value > now + skew:
            raise TokenInvalid("token is not yet valid" if name == "nbf" else "iat in the future")


def check_audience(claims: Mapping[str, Any], audience: str) -> None:
    aud = claims.get("aud")
    values = aud if isinstance(aud, list) else [aud]
    if audience not in values:
        raise TokenInvalid("token is not meant for this server (aud)")


def _import_public_set(data: Mapping[str, Any]) -> dict[str | None, jwk.Key]:
    """Asymmetric signature keys of a JWKS by kid (symmetric and private keys refused)."""
    keys: dict[str | None, jwk.Key] = {}
    for item in data.get("keys", []):
        if not isinstance(item, dict) or item.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if item.get("use", "sig") != "sig":
            continue
        public = {k: v for k, v in item.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        try:
            key = jwk.import_key(public)
        except JoseError:
            continue
        keys[item.get("kid")] = key
    return keys


class JwksSource:
    """The verification keys of one issuer or client: inline, from a file (read once) or
    from a URL (fetched lazily, refetched at most every ``refresh_interval`` seconds when a
    token names an unknown key id)."""

    def __init__(
        self,
        *,
        jwks: Mapping[str, Any] | None = None,
        file: Path | None = None,
        url: str | None = None,
        refresh_interval: float = 60.0,
        fetch: Callable[[str], dict[str, Any]] = request_json,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._refresh_interval = refresh_interval
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()
        self._keys: dict[str | None, jwk.Key] = {}
        if jwks is not None:
            self._keys = _import_public_set(jwks)
        elif file is not None:
            self._keys = _import_public_set(json.loads(file.read_text(encoding="utf-8")))
        elif url is None:
            raise ValueError("a key source needs jwks, file or url")

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._fetched_at < self._refresh_interval:
                return
            self._fetched_at = time.monotonic()
            assert self.url is not None
            try:
                self._keys = _import_public_set(self._fetch(self.url))
            except FetchError as exc:
                raise TokenInvalid(f"cannot fetch the issuer's keys: {exc}") from exc

    def key(self, kid: str | None) -> jwk.Key:
        key = self.lookup(kid)
        if key is None and self.url is not None:
            self._refresh()
            key = self.lookup(kid)
        if key is None:
            raise TokenInvalid(f"unknown key id {kid!r}")
        return key

    def lookup(self, kid: str | None) -> jwk.Key | None:
        """The key with this id among those held now (no fetch)."""
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)
