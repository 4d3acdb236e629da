"""Patient sign-in delegated to an external OpenID provider (ID-porten style).

We are a relying party: authorization code + PKCE (S256) to the provider, the code exchanged
at its token endpoint (client authentication ``private_key_jwt`` with our signing key,
``client_secret_post`` or none), the id_token verified against the provider's JWKS (issuer,
audience, nonce, times), then the ``pid`` claim (fødselsnummer) and ``acr`` level are used.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from .assertion import client_assertion_form
from .config import AuthConfig, UpstreamOidc
from .dpop import b64url
from .fetch import FetchError, request_json
from .jwtutil import (
    JwksSource,
    TokenInvalid,
    check_audience,
    check_times,
    parse,
    registry_for,
    verify,
)
from .keys import KeyRing


class UpstreamError(Exception):
    """Sign-in at the upstream provider failed."""


def pkce_pair() -> tuple[str, str]:
    """A fresh (code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url(hashlib.sha256(verifier.encode("ascii")).digest())


class Upstream:
    def __init__(
        self,
        config: AuthConfig,
        keys: KeyRing,
        fetch: Callable[..., dict[str, Any]] = request_json,
    ) -> None:
        assert config.upstream is not None
        self.settings: UpstreamOidc = config.upstream
        self.redirect_uri = config.endpoint("login/callback")
        self._config = config
        self._keys = keys
        self._fetch = fetch
        self._lock = threading.Lock()
        self._meta: dict[str, Any] | None = None
        self._jwks: JwksSource | None = None
        self._registry = registry_for(self.settings.algorithms, strict_header=False)

    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (fetched once, checked against the issuer)."""
        if self._meta is not None:
            return self._meta
        with self._lock:
            if self._meta is None:
                url = self.settings.issuer + "/.well-known/openid-configuration"
                try:
                    meta = self._fetch(url)
                except FetchError as exc:
                    raise UpstreamError(f"cannot read the provider's configuration: {exc}") from exc
                if meta.get("issuer") != self.settings.issuer:
                    raise UpstreamError("the provider's configuration names another issuer")
                for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(meta.get(name), str):
                        raise UpstreamError(f"the provider's configuration lacks {name}")
                self._jwks = JwksSource(url=meta["jwks_uri"], fetch=self._fetch)
                self._meta = meta
        return self._meta

    def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, acr: str | None
    ) -> str:
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.settings.scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if acr:
            params["acr_values"] = acr
        return self.metadata()["authorization_endpoint"] + "?" + urlencode(params)

    def _client_auth(self, token_endpoint: str) -> dict[str, str]:
        s = self.settings
        if s.client_auth == "client_secret_post":
            assert s.client_secret is not None
            return {"client_id": s.client_id, "client_secret": s.client_secret}
        if s.client_auth == "none":
            return {"client_id": s.client_id}
        key = self._keys.active
        return client_assertion_form(s.client_id, key.private, alg=key.alg, kid=key.kid,
                                     audience=s.assertion_audience or token_endpoint)

    def exchange(self, code: str, code_verifier: str) -> dict[str, Any]:
        """Trade the authorisation code for the provider's tokens."""
        endpoint = self.metadata()["token_endpoint"]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": code_verifier,
            **self._client_auth(endpoint),
        }
        try:
            tokens = self._fetch(endpoint, form=form)
        except FetchError as exc:
            detail = exc.body.get("error") if isinstance(exc.body, dict) else None
            raise UpstreamError(f"the code exchange failed ({detail or exc})") from exc
        if not isinstance(tokens.get("id_token"), str):
            raise UpstreamError("the provider sent no id_token")
        return tokens

    def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Check the id_token's signature (provider JWKS), issuer, audience, times and
        nonce; returns its claims."""
        self.metadata()
        assert self._jwks is not None
        try:
            parsed = parse(id_token)
            verify(parsed, self._jwks.key(parsed.header.get("kid")), self._registry)
            claims = parsed.claims
            if claims.get("iss") != self.settings.issuer:
                raise TokenInvalid("id_token issuer does not match")
            check_audience(claims, self.settings.client_id)
            aud = claims.get("aud")
            several = isinstance(aud, list) and len(aud) > 1
            if several and claims.get("azp") != self.settings.client_id:
                raise TokenInvalid("id_token azp does not match")
            check_times(claims, skew=self._config.clock_skew)
        except TokenInvalid as exc:
            raise UpstreamError(f"the id_token was rejected: {exc.description}") from exc
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got, nonce):
            raise UpstreamError("the id_token nonce does not match")
        return claims
