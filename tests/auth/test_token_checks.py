"""Access-token checks at the resource (the test-only protected route), revocation and
introspection, over real HTTP."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import pytest
import requests
from authsupport import Env, assertion, hs256_with, unsigned

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _refused(resp: requests.Response, fragment: str) -> None:
    assert resp.status_code == 401, resp.text
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "login"
    assert fragment in outcome["issue"][0]["diagnostics"]
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge


def test_missing_token_is_challenged(env: Env) -> None:
    resp = env.whoami(None)
    assert resp.status_code == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert 'Bearer realm="planbro"' in challenge and "DPoP " in challenge
    assert "error=" not in challenge
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_malformed_authorization_header(env: Env) -> None:
    resp = env.whoami("abc def", scheme="Basic")
    assert resp.status_code == 401
    assert 'error="invalid_request"' in resp.headers["WWW-Authenticate"]


def test_valid_forged_token_passes(env: Env) -> None:
    """The forging helper itself makes acceptable tokens (so the rejections below are due
    to the one thing each changes)."""
    assert env.whoami(env.forge()).status_code == 200


def test_expired_token(env: Env) -> None:
    now = int(time.time())
    _refused(env.whoami(env.forge({"iat": now - 600, "exp": now - 60})), "expired")


def test_expiry_within_clock_skew_is_accepted(env: Env) -> None:
    now = int(time.time())
    assert env.whoami(env.forge({"iat": now - 600, "exp": now - 5})).status_code == 200


def test_a_token_accepted_before_is_refused_once_it_expires(
        make_env: Callable[..., Env]) -> None:
    """A token is verified once and remembered; its expiry is still checked on every use."""
    env = make_env(clock_skew=0)
    token = env.forge({"exp": int(time.time()) + 2})
    assert env.whoami(token).status_code == 200
    assert env.whoami(token).status_code == 200
    time.sleep(max(0.0, json.loads(_payload(token))["exp"] - time.time()) + 1.1)
    _refused(env.whoami(token), "expired")


def _payload(token: str) -> bytes:
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_not_yet_valid_token(env: Env) -> None:
    _refused(env.whoami(env.forge({"nbf": int(time.time()) + 120})), "not yet valid")


def test_token_without_exp(env: Env) -> None:
    _refused(env.whoami(env.forge(drop=("exp",))), "exp")


def test_wrong_audience(env: Env) -> None:
    _refused(env.whoami(env.forge({"aud": env.config.fhir_audience + "/other"})), "aud")
    _refused(env.whoami(env.forge({"aud": env.url})), "aud")


def test_wrong_issuer(env: Env) -> None:
    _refused(env.whoami(env.forge({"iss": "https://evil.example"})), "issuer is not trusted")


def test_unknown_key_id(env: Env) -> None:
    _refused(env.whoami(env.forge(header={"kid": "no-such-key"})), "unknown key id")


def test_wrong_typ(env: Env) -> None:
    _refused(env.whoami(env.forge(header={"typ": "JWT"})), "at+jwt")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(env: Env, alg: str) -> None:
    header = {"alg": alg, "typ": "at+jwt", "kid": env.auth.keys.active.kid}
    claims = env.auth.resource.check_own(env.forge())
    _refused(env.whoami(unsigned(header, claims)), "")


@pytest.mark.parametrize("signing_alg", ["ES256", "RS256"])
def test_hs256_signed_with_our_public_key(make_env: Callable[..., Env], signing_alg: str) -> None:
    env = make_env(signing_alg=signing_alg)
    claims = env.auth.resource.check_own(env.forge())
    public = env.auth.keys.active.public
    header = {"typ": "at+jwt", "kid": env.auth.keys.active.kid}
    for secret in (public.as_pem(private=False), json.dumps(public.as_dict()).encode()):
        _refused(env.whoami(hs256_with(secret, header, claims)), "does not match its key")


def test_tampered_payload(env: Env) -> None:
    token = env.forge({"scope": "system/Task.r"})
    head, _, sig = token.split(".")
    evil = env.forge({"scope": "system/*.cruds"}).split(".")[1]
    _refused(env.whoami(f"{head}.{evil}.{sig}"), "signature")


def test_garbage_token(env: Env) -> None:
    _refused(env.whoami("not.a.jwt"), "malformed")


# -- revocation ----------------------------------------------------------------------------


def _client_form(env: Env, client_id: str = "ehr", **extra: str) -> dict[str, str]:
    return {
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(client_id, env.client_keys["ec256"], "ES256",
                                      env.token_url),
        **extra,
    }


def test_revoked_token_is_refused(env: Env) -> None:
    token = env.access_token()
    assert env.whoami(token).status_code == 200
    resp = requests.post(env.config.endpoint("revoke"),
                         data=_client_form(env, token=token), timeout=10)
    assert resp.status_code == 200, resp.text
    _refused(env.whoami(token), "revoked")
    assert env.whoami(env.access_token()).status_code == 200


def test_only_the_owner_may_revoke(env: Env) -> None:
    token = env.access_token()
    resp = requests.post(env.config.endpoint("revoke"),
                         data=_client_form(env, "kommune", token=token), timeout=10)
    assert resp.status_code == 400
    assert env.whoami(token).status_code == 200


def test_revocation_needs_client_authentication(env: Env) -> None:
    token = env.access_token()
    resp = requests.post(env.config.endpoint("revoke"), data={"token": token}, timeout=10)
    assert resp.status_code in (400, 401)
    assert env.whoami(token).status_code == 200


# -- introspection -------------------------------------------------------------------------


def _introspect(env: Env, token: str, client_id: str = "gateway") -> dict:
    resp = requests.post(env.config.endpoint("introspect"),
                         data=_client_form(env, client_id, token=token), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_introspection_active(env: Env) -> None:
    token = env.access_token(scope="system/Task.rs")
    body = _introspect(env, token)
    assert body["active"] is True
    assert body["client_id"] == "ehr"
    assert body["scope"] == "system/Task.rs"
    assert body["token_type"] == "Bearer"
    assert body["organization"]


def test_introspection_inactive(env: Env) -> None:
    now = int(time.time())
    assert _introspect(env, env.forge({"iat": now - 900, "exp": now - 600})) == {"active": False}
    assert _introspect(env, "garbage") == {"active": False}
    token = env.access_token()
    requests.post(env.config.endpoint("revoke"), data=_client_form(env, token=token), timeout=10)
    assert _introspect(env, token) == {"active": False}


def test_introspection_of_anothers_token_needs_permission(env: Env) -> None:
    token = env.access_token()
    assert _introspect(env, token, "kommune") == {"active": False}
    assert _introspect(env, token, "ehr")["active"] is True


@pytest.mark.parametrize("reason", ["Akutt innleggelse, bevisstlos", "x" * 600])
def test_emergency_reason_header(env: Env, reason: str) -> None:
    resp = env.whoami(env.access_token(hpr="1234567"),
                      headers={"X-Planbro-Emergency-Reason": reason})
    got = resp.json()["emergency_reason"]
    assert got == reason[:500]
