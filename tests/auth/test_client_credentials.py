"""client_credentials with private_key_jwt (SMART Backend Services), over real HTTP."""

from __future__ import annotations

import time

import pytest
import requests
from authsupport import ORG_HOSPITAL, Env, assertion, hs256_with
from joserfc import jws

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _post(env: Env, client_assertion: str, scope: str = "system/*.rs") -> requests.Response:
    return requests.post(env.token_url, data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": ASSERTION_TYPE, "client_assertion": client_assertion,
    }, timeout=10)


@pytest.mark.parametrize(("key", "alg"), [
    ("ec256", "ES256"), ("ec384", "ES384"), ("rsa", "RS256"), ("rsa", "RS384"),
])
def test_token_for_each_assertion_algorithm(env: Env, key: str, alg: str) -> None:
    resp = env.cc_token(key=key, alg=alg, scope="system/Task.rs system/CarePlan.r")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "system/Task.rs system/CarePlan.r"
    assert "refresh_token" not in body
    assert resp.headers["Cache-Control"] == "no-store"
    header = jws.extract_compact(body["access_token"].encode()).headers()
    assert header["typ"] == "at+jwt"
    assert header["kid"] == env.auth.keys.active.kid


def test_access_token_claims_and_principal(env: Env) -> None:
    token = env.access_token(scope="system/Task.cru")
    claims = env.auth.resource.check_own(token)
    assert claims["iss"] == env.config.issuer
    assert claims["aud"] == env.config.fhir_audience
    assert claims["sub"] == claims["client_id"] == "ehr"
    assert claims["organization"] == ORG_HOSPITAL
    assert claims["exp"] - claims["iat"] == env.config.access_token_ttl
    assert claims["jti"]
    who = env.whoami(token)
    assert who.status_code == 200, who.text
    p = who.json()
    assert p["kind"] == "system"
    assert p["organization"] == ORG_HOSPITAL
    assert p["client_id"] == "ehr"
    assert p["scopes"] == "system/Task.cru"
    assert p["practitioner"] is None and p["patient"] is None


def test_default_scope_is_the_registered_scope(env: Env) -> None:
    resp = env.cc_token("kommune", scope=None)
    assert resp.status_code == 200
    assert resp.json()["scope"] == "system/CarePlan.rs system/Task.cruds"


def test_scope_beyond_registration_is_refused(env: Env) -> None:
    resp = env.cc_token("kommune", scope="system/Patient.rs")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_scope"


def test_invalid_scope_syntax_is_refused(env: Env) -> None:
    resp = env.cc_token(scope="system/Task.sr")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_scope"


def test_acting_practitioner_in_assertion(env: Env) -> None:
    token = env.access_token(hpr="1234567")
    p = env.whoami(token).json()
    assert p["kind"] == "practitioner"
    assert p["practitioner"] == "1234567"
    assert p["organization"] == ORG_HOSPITAL


def test_acting_practitioner_needs_permission(env: Env) -> None:
    resp = env.cc_token("kommune", scope="system/Task.r", hpr="1234567")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"


def test_replayed_assertion_is_refused(env: Env) -> None:
    signed = assertion("ehr", env.client_keys["ec256"], "ES256", env.token_url)
    assert _post(env, signed).status_code == 200
    again = _post(env, signed)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_client"
    assert "used before" in again.json()["error_description"]


def test_assertion_lifetime_over_five_minutes_is_refused(env: Env) -> None:
    now = int(time.time())
    signed = assertion("ehr", env.client_keys["ec256"], "ES256", env.token_url,
                       iat=now, exp=now + 301)
    resp = _post(env, signed)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_client"
    assert "5 minutes" in resp.json()["error_description"]


def test_assertion_without_iat_too_long_is_refused(env: Env) -> None:
    signed = assertion("ehr", env.client_keys["ec256"], "ES256", env.token_url,
                       iat=None, exp=int(time.time()) + 600)
    assert _post(env, signed).json()["error"] == "invalid_client"


@pytest.mark.parametrize("aud", ["http://127.0.0.1:1/oauth/token", None])
def test_assertion_audience_must_be_token_endpoint(env: Env, aud: str | None) -> None:
    signed = assertion("ehr", env.client_keys["ec256"], "ES256", aud or env.config.issuer)
    resp = _post(env, signed)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_client"


def test_expired_assertion_is_refused(env: Env) -> None:
    now = int(time.time())
    signed = assertion("ehr", env.client_keys["ec256"], "ES256", env.token_url,
                       iat=now - 200, exp=now - 100)
    assert _post(env, signed).json()["error"] == "invalid_client"


def test_assertion_signed_by_unregistered_key_is_refused(env: Env) -> None:
    resp = env.cc_token(key="other")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_client"
    assert "bad signature" in resp.json()["error_description"]


def test_assertion_with_hs256_from_public_key_is_refused(env: Env) -> None:
    public_pem = env.client_keys["rsa"].as_pem(private=False)
    now = int(time.time())
    forged = hs256_with(public_pem, {"kid": "rsa", "typ": "JWT"}, {
        "iss": "ehr", "sub": "ehr", "aud": env.token_url, "iat": now, "exp": now + 60,
        "jti": "hs-1"})
    resp = _post(env, forged).json()
    assert resp["error"] == "invalid_client"
    assert "HS256 is not accepted" in resp["error_description"]


def test_unknown_client_and_issuer_subject_mismatch(env: Env) -> None:
    stranger = assertion("nobody", env.client_keys["ec256"], "ES256", env.token_url)
    assert _post(env, stranger).json()["error"] == "invalid_client"
    mismatch = assertion("ehr", env.client_keys["ec256"], "ES256", env.token_url, iss="kommune")
    assert _post(env, mismatch).json()["error"] == "invalid_client"


def test_no_client_authentication_is_refused(env: Env) -> None:
    resp = requests.post(env.token_url, data={"grant_type": "client_credentials",
                                              "client_id": "ehr"}, timeout=10)
    assert resp.status_code in (400, 401)
    assert resp.json()["error"] == "invalid_client"


def test_unsupported_grant_type(env: Env) -> None:
    resp = requests.post(env.token_url, data={"grant_type": "password"}, timeout=10)
    assert resp.json()["error"] == "unsupported_grant_type"
