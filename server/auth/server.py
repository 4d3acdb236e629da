"""The embedded authorisation server and token checks, as one object the app holds.

Public face: :func:`init_app` registers the endpoints on a Flask app and returns the
:class:`AuthServer`, whose :meth:`AuthServer.authenticate` the FHIR layer calls per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Request, request

from ..store.port import Store
from .clients import ClientRecord, ClientRegistry
from .config import AuthConfig
from .dpop import DpopVerifier, NonceSource
from .grants import OAuthServer, TokenRequest, wants_refresh_token
from .keys import KeyRing
from .principal import Principal
from .replay import ReplayCache
from .resource import FindPatient, ResourceServer
from .tokens import (
    CodeStore,
    RefreshRecord,
    RefreshStore,
    RevocationList,
    Subject,
    TokenIssuer,
    new_secret,
)
from .upstream import Upstream

Person = tuple[str, str, str]
"""A demo person: (Patient id, display name, fødselsnummer)."""
People = Callable[[], list[Person]]

CORS_HEADERS = "Authorization, Content-Type, DPoP, X-Planbro-Emergency-Reason"
CORS_EXPOSE = "DPoP-Nonce, WWW-Authenticate, Location, ETag"


class AuthServer:
    """Everything of the auth module that lives as long as the app."""

    def __init__(
        self,
        store: Store,
        config: AuthConfig,
        *,
        people: People | None = None,
        find_patient_by_fnr: FindPatient | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.people = people
        self.find_patient_by_fnr = find_patient_by_fnr
        verify_window = config.access_token_ttl + config.clock_skew
        self.keys = KeyRing(config.keys_dir, alg=config.signing_alg, verify_window=verify_window)
        self.clients = ClientRegistry(store)
        self.replay = ReplayCache(store)
        self.codes = CodeStore(store, config.auth_code_ttl)
        self.refresh = RefreshStore(store, config.refresh_token_ttl)
        self.revoked = RevocationList(store, config.clock_skew)
        self.issuer = TokenIssuer(config, self.keys)
        nonces = NonceSource(store) if config.dpop_nonce else None
        self.dpop = DpopVerifier(self.replay, max_age=config.dpop_max_age,
                                 skew=config.clock_skew, nonces=nonces)
        self.resource = ResourceServer(config, self.keys, self.revoked, self.dpop,
                                       find_patient_by_fnr)
        self.upstream = Upstream(config, self.keys) if config.upstream else None
        self.oauth = OAuthServer(self)

    # -- for the FHIR layer --------------------------------------------------------------

    def authenticate(self, req: Request | None = None) -> Principal:
        """The caller of the current (or given) request; raises a 401 FhirError with a
        ``WWW-Authenticate`` challenge when there is no acceptable token."""
        return self.resource.authenticate(request if req is None else req)

    def cors_headers(self, origin: str | None, *, preflight: bool = False) -> dict[str, str]:
        """CORS response headers for an allowed patient-app origin (empty otherwise)."""
        if not origin or origin not in self.config.cors_origins:
            return {}
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": CORS_EXPOSE,
            "Vary": "Origin",
        }
        if preflight:
            headers.update({
                "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": "600",
            })
        return headers

    # -- used by the grants --------------------------------------------------------------

    def oauth_request(self, dpop_jkt: str | None = None) -> TokenRequest:
        """The current Flask request as authlib sees it, under our public URL."""
        uri = self.config.issuer + request.path
        if request.query_string:
            uri += "?" + request.query_string.decode("latin-1")
        return TokenRequest(request, uri, dpop_jkt)

    def issue(
        self,
        req: Any,
        *,
        scope: str,
        subject: Subject | None,
        include_refresh_token: bool,
    ) -> dict[str, Any]:
        """The token response for a grant: a signed access token (DPoP-bound when the token
        request carried a proof), plus a refresh token when asked for and allowed."""
        client: ClientRecord = req.client
        jkt = getattr(req, "dpop_jkt", None)
        access, _ = self.issuer.access_token(
            client, scope, subject=subject,
            practitioner=getattr(req, "practitioner", None), jkt=jkt,
        )
        token: dict[str, Any] = {
            "access_token": access,
            "token_type": "DPoP" if jkt else "Bearer",
            "expires_in": self.config.access_token_ttl,
            "scope": scope,
        }
        if subject is not None:
            token["patient"] = subject.patient
        if include_refresh_token and subject is not None and wants_refresh_token(client, scope):
            token["refresh_token"] = new_secret()
        return token

    def save_token(self, token: dict[str, Any], req: Any) -> None:
        """Keep the refresh token's record (access tokens are self-contained JWTs)."""
        raw = token.get("refresh_token")
        if not raw:
            return
        client: ClientRecord = req.client
        jkt = getattr(req, "dpop_jkt", None)
        record = RefreshRecord(
            client_id=client.client_id,
            scope=token["scope"],
            subject=req.user,
            family=getattr(req, "token_family", None) or new_secret(),
            expires_at=int(time.time()) + self.config.refresh_token_ttl,
            jkt=jkt if client.is_public else None,
        )
        self.refresh.save(raw, record)

    def remember_nonce(self, client_id: str, nonce: str) -> None:
        until = int((time.time() + self.config.login_ttl + self.config.auth_code_ttl) * 1000)
        self.store.kv_put("oidc_nonces", f"{client_id}:{nonce}", {"used": True},
                          expires_ms=until)

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        return self.store.kv_get("oidc_nonces", f"{client_id}:{nonce}") is not None


def init_app(
    app: Flask,
    store: Store,
    config: AuthConfig,
    *,
    people: People | None = None,
    find_patient_by_fnr: FindPatient | None = None,
) -> AuthServer:
    """Create the auth server and register its endpoints on ``app``:

    ``/oauth/token``, ``/oauth/authorize``, ``/oauth/login/*``, ``/oauth/revoke``,
    ``/oauth/introspect``, ``/oauth/jwks``, ``/.well-known/oauth-authorization-server``,
    ``/.well-known/openid-configuration`` and ``<FHIR base>/.well-known/smart-configuration``.

    ``people`` lists the demo people for the demo sign-in page (demo mode);
    ``find_patient_by_fnr`` maps a fødselsnummer to our Patient id (sign-in through the
    upstream provider, and external patient tokens)."""
    from .demo import ensure_demo_clients
    from .login import login_blueprint
    from .views import auth_blueprint

    server = AuthServer(store, config, people=people, find_patient_by_fnr=find_patient_by_fnr)
    app.register_blueprint(auth_blueprint(server))
    app.register_blueprint(login_blueprint(server))
    if config.demo:
        ensure_demo_clients(server.clients, config)
    app.extensions["planbro.auth"] = server
    return server
