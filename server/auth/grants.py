"""The authlib parts of the authorisation server: client authentication with
``private_key_jwt``, the three grants, PKCE (S256 only), id_tokens, revocation and
introspection. :class:`server.auth.server.AuthServer` wires them together.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.util import create_half_hash
from flask import Request

from .clients import ClientRecord
from .jwtutil import TokenInvalid, check_times, parse, registry_for, verify
from .scopes import ScopeError, ScopeSet
from .tokens import CodeRecord, RefreshRecord, Subject, new_secret

if TYPE_CHECKING:
    from .server import AuthServer

ASSERTION_ALGS = ("RS256", "RS384", "ES256", "ES384")
MAX_ASSERTION_LIFETIME = 300
_ASSERTION_REGISTRY = registry_for(ASSERTION_ALGS)
_HPR_RE = re.compile(r"^[0-9]{1,9}$")
REFRESH_SCOPES = ("offline_access", "online_access")


# -- requests ------------------------------------------------------------------------------


class TokenRequest(FlaskOAuth2Request):
    """A Flask request seen by authlib, with our public URL (not the one the WSGI server
    saw behind a proxy) and the DPoP key thumbprint the token is to be bound to."""

    def __init__(self, request: Request, uri: str, dpop_jkt: str | None = None) -> None:
        OAuth2Request.__init__(self, method=request.method, uri=uri, headers=request.headers)
        self._request = request
        self.payload = FlaskOAuth2Payload(request)
        self.dpop_jkt = dpop_jkt
        self.practitioner: str | None = None
        self.token_family: str | None = None
        self.refresh_raw: str | None = None


class StoredAuthorizationRequest(OAuth2Request):
    """An authorisation request replayed from the parameters saved when sign-in began."""

    def __init__(self, uri: str, params: dict[str, str]) -> None:
        super().__init__("GET", uri, headers={})
        self.payload = BasicOAuth2Payload(params)
        self._params = params

    @property
    def args(self) -> dict[str, str]:
        return self._params

    @property
    def form(self) -> dict[str, str]:
        return {}


# -- client authentication -----------------------------------------------------------------


class PrivateKeyJwt(JWTBearerClientAssertion):
    """``private_key_jwt`` (RFC 7523): RS256/RS384/ES256/ES384 assertions signed with a key
    from the client's JWKS, ``aud`` = our token endpoint, lifetime at most five minutes,
    ``jti`` used once."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: AuthServer) -> None:
        super().__init__(validate_jti=True, leeway=server.config.clock_skew)
        self.core = server

    def get_audiences(self) -> list[str]:
        return [self.core.config.token_endpoint]

    def __call__(self, query_client: Any, request: OAuth2Request) -> ClientRecord | None:
        form = request.form
        if form.get("client_assertion_type") != self.CLIENT_ASSERTION_TYPE:
            return None
        assertion = form.get("client_assertion")
        if not assertion:
            raise InvalidClientError(description="Missing client_assertion.")
        try:
            parsed = parse(assertion)
        except TokenInvalid as exc:
            raise InvalidClientError(description="Invalid client assertion.") from exc
        client_id = parsed.claims.get("sub")
        client = query_client(client_id) if isinstance(client_id, str) else None
        if client is None:
            raise InvalidClientError(description="The client does not exist on this server.")
        if form.get("client_id") not in (None, client_id):
            raise InvalidClientError(description="client_id does not match the assertion.")
        self._verify(parsed, client)
        request.client = client
        return self.authenticate_client(client)

    def _verify(self, parsed: Any, client: ClientRecord) -> None:
        if client.token_endpoint_auth_method != self.CLIENT_AUTH_METHOD:
            raise InvalidClientError(description="The client does not use private_key_jwt.")
        try:
            key = self.core.clients.keys_for(client).key(parsed.header.get("kid"))
            verify(parsed, key, _ASSERTION_REGISTRY)
            check_times(parsed.claims, skew=self.leeway)
        except TokenInvalid as exc:
            raise InvalidClientError(description=_ascii(exc.description)) from exc
        claims = parsed.claims
        issued = claims.get("iat") if isinstance(claims.get("iat"), int | float) else time.time()
        if claims["exp"] - issued > MAX_ASSERTION_LIFETIME:
            raise InvalidClientError(description="Client assertion lifetime exceeds 5 minutes.")
        self.verify_claims(claims)

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            return False
        until = claims["exp"] + self.leeway
        return self.core.replay.first_use(f"assertion:{claims['iss']}", jti, until)


def _ascii(text: str) -> str:
    """authlib only accepts printable ASCII without quote or backslash in descriptions."""
    return re.sub(r'[^\x20-\x21\x23-\x5b\x5d-\x7e]', "?", text)


# -- grants --------------------------------------------------------------------------------


class _IssuesOurTokens:
    """Grants issue through AuthServer.issue (JWT access token, DPoP binding, refresh)."""

    request: Any
    server: Any

    def generate_token(
        self,
        user: Subject | None = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        return self.server.core.issue(
            self.request, scope=scope or "", subject=user,
            include_refresh_token=include_refresh_token,
        )


def _check_scope_syntax(scope: str | None) -> None:
    try:
        ScopeSet.parse(scope)
    except ScopeError as exc:
        raise InvalidScopeError(description=_ascii(str(exc))) from exc


class ClientCredentialsGrant(_IssuesOurTokens, grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        client: ClientRecord = self.request.client
        scope = client.get_allowed_scope(self.request.payload.scope)
        if scope is None:
            raise InvalidScopeError(description="A requested scope is not granted to this client.")
        self.request.scope = scope
        self.request.practitioner = self._acting_practitioner(client)

    def _acting_practitioner(self, client: ClientRecord) -> str | None:
        """An HPR number named in the (already verified) client assertion."""
        claims = parse(self.request.form["client_assertion"]).claims
        hpr = claims.get("hpr")
        if hpr is None:
            return None
        if not client.may_assert_practitioner:
            raise InvalidRequestError("This client may not act for a practitioner (hpr).")
        if not isinstance(hpr, str) or not _HPR_RE.match(hpr):
            raise InvalidRequestError("hpr must be an HPR number.")
        return hpr

    def create_token_response(self) -> tuple[int, dict[str, Any], list]:
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class S256Only(CodeChallenge):
    """PKCE is required and only S256 is accepted (``plain`` is refused)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: code_challenge is missing.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 (plain is refused).")
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationCodeGrant(_IssuesOurTokens, grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "private_key_jwt"]

    def validate_authorization_request(self) -> str:
        if not self.request.payload.redirect_uri:
            raise InvalidRequestError("redirect_uri is required.")
        redirect_uri = super().validate_authorization_request()
        _check_scope_syntax(self.request.scope)
        return redirect_uri

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        record = CodeRecord(
            client_id=request.client.client_id,
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            subject=request.user,
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            nonce=data.get("nonce"),
            family=new_secret(),
        )
        self.server.core.codes.save(code, record)
        if record.nonce:
            self.server.core.remember_nonce(record.client_id, record.nonce)

    def query_authorization_code(self, code: str, client: ClientRecord) -> CodeRecord | None:
        core = self.server.core
        record = core.codes.consume(code, client.client_id)
        if record is None:
            family = core.codes.used_family(code)
            if family:  # a code used twice: end what the first use started
                core.refresh.revoke_family(family)
            return None
        self.request.token_family = record.family
        return record

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        """Nothing to do: the code was removed when it was looked up."""

    def authenticate_user(self, authorization_code: CodeRecord) -> Subject:
        return authorization_code.subject


class RefreshTokenGrant(_IssuesOurTokens, grants.RefreshTokenGrant):
    """Rotation: every use returns a new refresh token and retires the old one; a retired
    token used again ends the whole session (``invalid_grant``). Scopes may only narrow."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "private_key_jwt"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        core = self.server.core
        record = core.refresh.find(refresh_token)
        if record is None:
            family = core.refresh.rotated_family(refresh_token)
            if family:
                core.refresh.revoke_family(family)
            return None
        if record.is_expired():
            return None
        self.request.refresh_raw = refresh_token
        return record

    def _validate_token_scope(self, token: RefreshRecord) -> None:
        scope = self.request.payload.scope
        if not scope:
            return
        _check_scope_syntax(scope)
        if not ScopeSet.parse(token.scope).covers(ScopeSet.parse(scope)):
            raise InvalidScopeError(description="Scopes may only narrow on refresh.")

    def validate_token_request(self) -> None:
        super().validate_token_request()
        record: RefreshRecord = self.request.refresh_token
        if record.jkt and record.jkt != self.request.dpop_jkt:
            raise InvalidGrantError("The refresh token is bound to another DPoP key.")
        scope = self.request.payload.scope or record.scope
        if self.request.client.get_allowed_scope(scope) is None:
            raise InvalidScopeError(description="The client is no longer granted this scope.")

    def create_token_response(self) -> tuple[int, dict[str, Any], list]:
        record: RefreshRecord = self.request.refresh_token
        core = self.server.core
        if not core.refresh.consume(self.request.refresh_raw, record):
            raise InvalidGrantError("The refresh token was already used.")
        self.request.user = record.subject
        self.request.token_family = record.family
        scope = self.request.payload.scope or record.scope
        token = self.generate_token(user=record.subject, scope=scope, include_refresh_token=True)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class IdTokens(OpenIDCode):
    """id_tokens for ``openid`` requests: ``sub``, ``pid`` (fødselsnummer), ``acr``,
    ``auth_time``, ``nonce`` and, with the ``fhirUser`` scope, ``fhirUser``. This is what lets
    a demo instance act as the upstream OpenID provider of another instance."""

    def __init__(self, server: AuthServer) -> None:
        super().__init__(require_nonce=False)
        self.core = server
        self.DEFAULT_EXPIRES_IN = server.config.access_token_ttl

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self.core.nonce_used(request.payload.client_id, nonce)

    def get_client_claims(self, client: ClientRecord) -> dict[str, Any]:
        return {"iss": self.core.config.issuer, "aud": [client.client_id]}

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        """Signed with the active key, taken once (header, hash and signature agree)."""
        key = self.core.keys.active
        claims = self.get_compatible_claims(request)
        claims.update(self.get_authorization_code_claims(request.authorization_code))
        at_hash = create_half_hash(token["access_token"], key.alg)
        if at_hash is not None:
            claims["at_hash"] = at_hash.decode("ascii")
        claims.update(self.generate_user_info(request.user, token["scope"]))
        return self.core.issuer.sign(claims, "JWT", key=key)

    def generate_user_info(self, user: Subject, scope: str) -> dict[str, Any]:
        info: dict[str, Any] = {"sub": user.get_user_id()}
        if user.fnr:
            info["pid"] = user.fnr
        if "fhirUser" in scope.split():
            info["fhirUser"] = f"{self.core.config.fhir_audience}/Patient/{user.patient}"
        return info


# -- revocation and introspection ----------------------------------------------------------


@dataclass(frozen=True)
class AccessTokenHandle:
    claims: dict[str, Any]
    revoked: bool = False

    def check_client(self, client: ClientRecord) -> bool:
        return client.client_id == self.claims.get("client_id")

    def is_expired(self) -> bool:
        return time.time() >= self.claims["exp"]

    def is_revoked(self) -> bool:
        return self.revoked

    def introspection(self) -> dict[str, Any]:
        keep = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "cnf",
                "organization", "hpr", "patient", "fhirUser", "acr")
        out = {k: self.claims[k] for k in keep if k in self.claims}
        out["token_type"] = "DPoP" if "cnf" in self.claims else "Bearer"
        return out

    def revoke(self, core: AuthServer) -> None:
        core.revoked.add(self.claims["iss"], self.claims["jti"], int(self.claims["exp"]))


@dataclass(frozen=True)
class RefreshTokenHandle:
    raw: str
    record: RefreshRecord

    def check_client(self, client: ClientRecord) -> bool:
        return self.record.check_client(client)

    def is_expired(self) -> bool:
        return self.record.is_expired()

    def is_revoked(self) -> bool:
        return False

    def introspection(self) -> dict[str, Any]:
        return {
            "scope": self.record.scope,
            "client_id": self.record.client_id,
            "sub": self.record.subject.get_user_id(),
            "exp": self.record.expires_at,
            "token_type": "refresh_token",
        }

    def revoke(self, core: AuthServer) -> None:
        core.refresh.revoke_family(self.record.family)


def _find_token(core: AuthServer, token: str, hint: str | None, *, expiry: bool) -> Any:
    if hint != "access_token":
        record = core.refresh.find(token)
        if record is not None:
            return RefreshTokenHandle(token, record)
    if hint == "refresh_token":
        return None
    try:
        claims = core.resource.check_own(token, check_expiry=expiry)
    except TokenInvalid:
        return None
    return AccessTokenHandle(claims, core.revoked.contains(claims["iss"], claims["jti"]))


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["private_key_jwt", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return _find_token(self.server.core, token_string, token_type_hint, expiry=False)

    def revoke_token(self, token: Any, request: Any) -> None:
        token.revoke(self.server.core)


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["private_key_jwt"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return _find_token(self.server.core, token_string, token_type_hint, expiry=True)

    def check_permission(self, token: Any, client: ClientRecord, request: Any) -> bool:
        return client.may_introspect or token.check_client(client)

    def introspect_token(self, token: Any) -> dict[str, Any]:
        return token.introspection()


# -- the authlib server --------------------------------------------------------------------


class OAuthServer(AuthorizationServer):
    """authlib's Flask authorisation server with our grants, endpoints and client auth."""

    def __init__(self, core: AuthServer) -> None:
        super().__init__(query_client=core.clients.get, save_token=core.save_token)
        self.core = core
        self.register_client_auth_method("private_key_jwt", PrivateKeyJwt(core))
        self.register_grant(ClientCredentialsGrant)
        self.register_grant(AuthorizationCodeGrant, [S256Only(), IdTokens(core)])
        self.register_grant(RefreshTokenGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return self.core.oauth_request()

    def validate_requested_scope(self, scope: str | None) -> None:
        _check_scope_syntax(scope)


def wants_refresh_token(client: ClientRecord, scope: str) -> bool:
    """Refresh tokens go to clients allowed the grant that asked for offline/online access."""
    return client.check_grant_type("refresh_token") and any(
        s in scope.split() for s in REFRESH_SCOPES
    )
