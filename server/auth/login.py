"""Patient sign-in: the authorisation endpoint and the pages behind it.

``GET /oauth/authorize`` checks the request (client, redirect URI, scopes, PKCE S256), keeps it
server-side for a few minutes under a random id bound to a cookie, then either

- delegates to the upstream OpenID provider (when one is configured) and finishes at
  ``GET /oauth/login/callback``, or
- in demo mode shows a clearly labelled demo page to pick a demo person, finishing at
  ``POST /oauth/login/demo``.

Either way the signed-in person is mapped to our Patient, the sign-in level (``acr``) is checked
against the minimum when the app asks for access to health data, and an authorisation code is
returned to the app.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from authlib.oauth2.rfc6749 import AccessDeniedError, OAuth2Error
from flask import Blueprint, Response, redirect, render_template_string, request

from ..plans.identifiers import parse_person_number
from .grants import StoredAuthorizationRequest
from .scopes import ScopeSet
from .tokens import Subject
from .upstream import UpstreamError, pkce_pair

if TYPE_CHECKING:
    from .server import AuthServer

COOKIE_PREFIX = "planbro_login_"
LOGIN_NS = "auth_login"
UPSTREAM_NS = "auth_upstream"
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}

_STYLE = """body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}
.banner{background:#b00020;color:#fff;padding:.8rem;font-weight:bold;border-radius:.3rem}
label{display:block;margin:.4rem 0}fieldset{margin:1rem 0}button{margin-right:1rem}"""

DEMO_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Planbro demo sign-in</title>
<style>{{ style }}</style></head><body>
<p class="banner">DEMO SIGN-IN: no real identity check is made. Demonstration data only.</p>
<h1>Sign in to {{ client_name }}</h1>
<p>The app asks for: <code>{{ scope }}</code></p>
<form method="post" action="{{ action }}">
<input type="hidden" name="login" value="{{ login_id }}">
<fieldset><legend>Choose a demo person</legend>
{% for pid, name, fnr in people %}
<label><input type="radio" name="patient" value="{{ pid }}"{% if loop.first %} checked{% endif %}>
{{ name }} (demo number {{ fnr }})</label>
{% else %}<p>There are no demo people.</p>{% endfor %}
</fieldset>
<label>Sign-in level (acr)
<select name="acr">{% for level in acr_levels %}
<option value="{{ level }}"{% if level == acr %} selected{% endif %}>{{ level }}</option>
{% endfor %}</select></label>
<button type="submit" name="action" value="approve">Sign in</button>
<button type="submit" name="action" value="deny">Cancel</button>
</form></body></html>"""

ERROR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>{{ style }}</style></head><body><h1>{{ title }}</h1><p>{{ message }}</p></body></html>"""


def _html(body: str, status: int = 200) -> Response:
    return Response(body, status=status, headers=HTML_HEADERS, mimetype="text/html")


def error_page(status: int, title: str, message: str) -> Response:
    return _html(render_template_string(ERROR_PAGE, title=title, message=message,
                                        style=_STYLE), status)


class Login:
    """Pending sign-ins and their completion."""

    def __init__(self, server: AuthServer) -> None:
        self.server = server
        self.config = server.config
        # Cookies are not kept apart by port: name ours after our issuer.
        digest = hashlib.sha256(server.config.issuer.encode()).hexdigest()[:12]
        self.cookie = COOKIE_PREFIX + digest

    # -- pending sign-ins ----------------------------------------------------------------

    def begin(self, params: dict[str, str]) -> str:
        login_id = secrets.token_urlsafe(24)
        expires_ms = int((time.time() + self.config.login_ttl) * 1000)
        self.server.store.kv_put(LOGIN_NS, login_id, {"params": params}, expires_ms=expires_ms)
        return login_id

    def take(self, login_id: object) -> dict[str, str] | None:
        """The saved authorisation request of this browser's sign-in, used up."""
        cookie = request.cookies.get(self.cookie, "")
        if not isinstance(login_id, str) or not login_id:
            return None
        if not hmac.compare_digest(cookie.encode(), login_id.encode()):
            return None
        data = self.server.store.kv_get(LOGIN_NS, login_id)
        if data is None or not self.server.store.kv_delete(LOGIN_NS, login_id):
            return None
        return data["params"]

    def with_cookie(self, resp: Response, login_id: str) -> Response:
        resp.set_cookie(self.cookie, login_id, max_age=self.config.login_ttl, httponly=True,
                        samesite="Lax", path="/oauth",
                        secure=self.config.issuer.startswith("https://"))
        return resp

    def without_cookie(self, resp: Response) -> Response:
        resp.delete_cookie(self.cookie, path="/oauth")
        return resp

    # -- finishing -----------------------------------------------------------------------

    def _stored(self, params: dict[str, str]) -> StoredAuthorizationRequest:
        uri = self.config.endpoint("authorize") + "?" + urlencode(params)
        return StoredAuthorizationRequest(uri, params)

    def complete(self, params: dict[str, str], subject: Subject) -> Response:
        """Issue the authorisation code for ``subject`` (re-validating the request)."""
        oauth = self.server.oauth
        req = self._stored(params)
        try:
            grant = oauth.get_consent_grant(request=req, end_user=subject)
        except OAuth2Error as error:
            return self.without_cookie(self.error_response(req, error))
        if self._below_minimum(subject, req.scope):
            return self.deny(params, "The sign-in level (acr) is below the required minimum.")
        resp = oauth.create_authorization_response(request=req, grant_user=subject, grant=grant)
        return self.without_cookie(resp)

    def deny(self, params: dict[str, str], description: str) -> Response:
        """Send ``access_denied`` back to the app."""
        oauth = self.server.oauth
        req = self._stored(params)
        try:
            grant = oauth.get_consent_grant(request=req, end_user=None)
        except OAuth2Error as error:
            return self.without_cookie(self.error_response(req, error))
        error = AccessDeniedError(description=description, redirect_uri=grant.redirect_uri,
                                  state=params.get("state"))
        return self.without_cookie(oauth.handle_error_response(req, error))

    def error_response(self, req: Any, error: OAuth2Error) -> Response:
        """Redirect the error to the app when its redirect URI is known, else show it."""
        if error.redirect_uri:
            return self.server.oauth.handle_error_response(req, error)
        return error_page(error.status_code or 400, "Sign-in request refused",
                          f"{error.error}: {error.description or ''}")

    def _below_minimum(self, subject: Subject, scope: str | None) -> bool:
        """Access to health data (any resource scope) needs at least the minimum acr."""
        if not ScopeSet.parse(scope, strict=False).resource:
            return False
        return self.config.acr_rank(subject.acr) < self.config.acr_rank(self.config.min_acr)

    # -- upstream ------------------------------------------------------------------------

    def start_upstream(self, login_id: str) -> Response:
        upstream = self.server.upstream
        assert upstream is not None
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        try:
            url = upstream.authorization_url(state=state, nonce=nonce,
                                             code_challenge=challenge, acr=self.config.min_acr)
        except UpstreamError as exc:
            return error_page(502, "Sign-in is not available", str(exc))
        expires_ms = int((time.time() + self.config.login_ttl) * 1000)
        self.server.store.kv_put(UPSTREAM_NS, state,
                                 {"login": login_id, "nonce": nonce, "verifier": verifier},
                                 expires_ms=expires_ms)
        return self.with_cookie(redirect(url, 302), login_id)

    def finish_upstream(self) -> Response:
        store = self.server.store
        state = request.args.get("state", "")
        pending = store.kv_get(UPSTREAM_NS, state) if state else None
        if pending is None or not store.kv_delete(UPSTREAM_NS, state):
            return error_page(400, "Sign-in expired", "Start the sign-in again from the app.")
        params = self.take(pending["login"])
        if params is None:
            return error_page(400, "Sign-in expired", "Start the sign-in again from the app.")
        if request.args.get("error") or not request.args.get("code"):
            return self.deny(params, "Sign-in at the identity provider was not completed.")
        try:
            subject = self._upstream_subject(request.args["code"], pending)
        except UpstreamError as exc:
            return self.deny(params, _ascii(str(exc)))
        return self.complete(params, subject)

    def _upstream_subject(self, code: str, pending: dict[str, str]) -> Subject:
        upstream = self.server.upstream
        assert upstream is not None
        tokens = upstream.exchange(code, pending["verifier"])
        claims = upstream.verify_id_token(tokens["id_token"], pending["nonce"])
        acr = claims.get("acr")
        if self.config.acr_rank(acr) < self.config.acr_rank(self.config.min_acr):
            raise UpstreamError("The sign-in level (acr) is below the required minimum.")
        fnr = claims.get("pid")
        if parse_person_number(fnr) is None:  # fødselsnummer or D-number
            raise UpstreamError("The identity provider sent no valid national identity number.")
        find = self.server.find_patient_by_fnr
        patient = find(fnr) if find else None
        if patient is None:
            raise UpstreamError("There is no patient record for this person here.")
        auth_time = claims.get("auth_time")
        return Subject(patient=patient, fnr=fnr, acr=acr,
                       auth_time=int(auth_time) if isinstance(auth_time, int) else int(time.time()))

    # -- demo ----------------------------------------------------------------------------

    def demo_page(self, login_id: str, params: dict[str, str], client_name: str) -> Response:
        people = self.server.people() if self.server.people else []
        acr = params.get("acr_values", "").split()
        chosen = next((a for a in acr if a in self.config.acr_levels), self.config.acr_levels[-1])
        body = render_template_string(
            DEMO_PAGE, style=_STYLE, client_name=client_name, scope=params.get("scope", ""),
            action=self.config.endpoint("login/demo"), login_id=login_id, people=people,
            acr_levels=self.config.acr_levels, acr=chosen,
        )
        return self.with_cookie(_html(body), login_id)

    def finish_demo(self) -> Response:
        params = self.take(request.form.get("login"))
        if params is None:
            return error_page(400, "Sign-in expired", "Start the sign-in again from the app.")
        if request.form.get("action") != "approve":
            return self.deny(params, "The person cancelled the sign-in.")
        people = self.server.people() if self.server.people else []
        person = next((p for p in people if p[0] == request.form.get("patient")), None)
        acr = request.form.get("acr")
        if person is None or acr not in self.config.acr_levels:
            return self.deny(params, "Unknown demo person or sign-in level.")
        subject = Subject(patient=person[0], fnr=person[2], acr=acr,
                          auth_time=int(time.time()), name=person[1])
        return self.complete(params, subject)


def _ascii(text: str) -> str:
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)


def login_blueprint(server: AuthServer) -> Blueprint:
    bp = Blueprint("planbro_login", __name__)
    login = Login(server)

    @bp.get("/oauth/authorize")
    def authorize() -> Response:
        req = server.oauth_request()
        try:
            grant = server.oauth.get_consent_grant(request=req, end_user=None)
        except OAuth2Error as error:
            return login.error_response(req, error)
        params = request.args.to_dict()
        login_id = login.begin(params)
        if server.upstream is not None:
            return login.start_upstream(login_id)
        if server.config.demo:
            return login.demo_page(login_id, params, grant.client.name)
        return error_page(503, "Sign-in is not configured",
                          "No identity provider is configured for patient sign-in.")

    @bp.post("/oauth/login/demo")
    def demo() -> Response:
        if not server.config.demo:
            return error_page(404, "Not found", "Demo sign-in is off.")
        return login.finish_demo()

    @bp.get("/oauth/login/callback")
    def callback() -> Response:
        if server.upstream is None:
            return error_page(404, "Not found", "No identity provider is configured.")
        return login.finish_upstream()

    return bp
