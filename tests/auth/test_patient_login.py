"""Patient sign-in through the demo page: authorization code + PKCE, id_token, refresh
rotation, and the ways the flow is refused. Redirects are driven by hand with requests."""

from __future__ import annotations

import pytest
import requests
from authsupport import SCOPE, Env, Flow, dpop_proof, ec_key, pkce, query_of, refresh
from joserfc import jwt
from joserfc.jwk import KeySet

from server.auth.demo import PATIENT_APP_ID


def test_demo_page_is_labelled_and_lists_people(env: Env, people: list) -> None:
    page = Flow(env).authorize()
    assert page.status_code == 200
    assert "DEMO SIGN-IN" in page.text
    for _, name, fnr in people:
        assert name in page.text and fnr in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_full_sign_in(env: Env, people: list) -> None:
    flow = Flow(env)
    body = flow.tokens()
    assert body["patient"] == "pat-1"
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"]
    assert set(body["scope"].split()) == set(SCOPE.split())
    who = env.whoami(body["access_token"])
    assert who.status_code == 200, who.text
    p = who.json()
    assert p["kind"] == "patient"
    assert p["patient"] == "pat-1"
    assert p["fhir_user"] == env.config.fhir_audience + "/Patient/pat-1"
    assert p["client_id"] == PATIENT_APP_ID
    keys = KeySet.import_key_set(requests.get(env.config.endpoint("jwks"), timeout=10).json())
    id_token = jwt.decode(body["id_token"], keys, algorithms=["ES256"])
    assert id_token.claims["pid"] == people[0][2]
    assert id_token.claims["acr"] == "idporten-loa-high"
    assert id_token.claims["nonce"] == flow.params["nonce"]
    assert id_token.claims["aud"] == [PATIENT_APP_ID]
    assert id_token.claims["iss"] == env.config.issuer
    assert id_token.claims["fhirUser"].endswith("/Patient/pat-1")
    assert id_token.claims["sub"] == "Patient/pat-1"
    assert id_token.claims["at_hash"]


def test_no_refresh_token_without_offline_access(env: Env) -> None:
    body = Flow(env, scope="openid patient/*.rs").tokens()
    assert "refresh_token" not in body


def test_refresh_rotation_and_reuse(env: Env) -> None:
    first = Flow(env).tokens()["refresh_token"]
    resp = refresh(env, first)
    assert resp.status_code == 200, resp.text
    second = resp.json()["refresh_token"]
    assert second != first
    assert env.whoami(resp.json()["access_token"]).json()["patient"] == "pat-1"
    reused = refresh(env, first)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    # reuse of a rotated token ends the session: the current token is revoked too
    assert refresh(env, second).json()["error"] == "invalid_grant"


def test_refresh_may_narrow_but_not_widen(env: Env) -> None:
    token = Flow(env).tokens()["refresh_token"]
    wider = refresh(env, token, scope="patient/*.cruds offline_access")
    assert wider.status_code == 400
    assert wider.json()["error"] == "invalid_scope"
    other = refresh(env, token, scope="user/*.rs")
    assert other.json()["error"] == "invalid_scope"
    narrower = refresh(env, token, scope="patient/Goal.rs offline_access")
    assert narrower.status_code == 200, narrower.text
    assert narrower.json()["scope"] == "patient/Goal.rs offline_access"
    again = refresh(env, narrower.json()["refresh_token"], scope="patient/*.rs offline_access")
    assert again.json()["error"] == "invalid_scope"


def test_refresh_token_revocation_by_public_client(env: Env) -> None:
    token = Flow(env).tokens()["refresh_token"]
    resp = requests.post(env.config.endpoint("revoke"), timeout=10,
                         data={"token": token, "client_id": PATIENT_APP_ID})
    assert resp.status_code == 200, resp.text
    assert refresh(env, token).json()["error"] == "invalid_grant"


def test_pkce_plain_is_refused(env: Env) -> None:
    flow = Flow(env, code_challenge_method="plain")
    flow.params["code_challenge"] = flow.verifier
    resp = flow.authorize()
    assert resp.status_code == 302
    query = query_of(resp.headers["Location"])
    assert query["error"] == "invalid_request"
    assert "plain" in query["error_description"]
    assert query["state"] == "st-123"


def test_pkce_challenge_is_required(env: Env) -> None:
    resp = Flow(env, code_challenge="", code_challenge_method="").authorize()
    assert resp.status_code == 302
    assert query_of(resp.headers["Location"])["error"] == "invalid_request"


def test_missing_or_wrong_verifier(env: Env) -> None:
    flow = Flow(env)
    missing = flow.exchange(flow.code(), verifier="")
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"
    flow = Flow(env)
    wrong = flow.exchange(flow.code(), verifier=pkce()[0])
    assert wrong.json()["error"] == "invalid_grant"


def test_unregistered_redirect_uri_is_not_followed(env: Env) -> None:
    resp = Flow(env, redirect_uri="https://attacker.example/cb").authorize()
    assert resp.status_code == 400
    assert "Location" not in resp.headers
    assert "not supported" in resp.text


def test_redirect_uri_must_match_at_token_endpoint(env: Env) -> None:
    flow = Flow(env)
    resp = flow.exchange(flow.code(), redirect_uri="http://127.0.0.1:9/other")
    assert resp.json()["error"] == "invalid_grant"


def test_code_is_single_use_and_reuse_revokes(env: Env) -> None:
    flow = Flow(env)
    code = flow.code()
    first = flow.exchange(code)
    assert first.status_code == 200
    again = flow.exchange(code)
    assert again.json()["error"] == "invalid_grant"
    assert refresh(env, first.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_scope_outside_registration(env: Env) -> None:
    resp = Flow(env, scope="openid system/*.rs").authorize()
    assert resp.status_code == 302
    assert query_of(resp.headers["Location"])["error"] == "invalid_scope"


def test_acr_below_minimum_is_refused(env: Env) -> None:
    flow = Flow(env)
    resp = flow.choose(flow.authorize(), acr="idporten-loa-substantial")
    assert resp.status_code == 302
    query = query_of(resp.headers["Location"])
    assert query["error"] == "access_denied"
    assert "acr" in query["error_description"]
    assert "code" not in query


def test_cancel_is_access_denied(env: Env) -> None:
    flow = Flow(env)
    resp = flow.choose(flow.authorize(), action="deny")
    assert query_of(resp.headers["Location"])["error"] == "access_denied"


def test_nonce_is_single_use(env: Env) -> None:
    first = Flow(env)
    first.tokens()
    replay = Flow(env, nonce=first.params["nonce"]).authorize()
    assert query_of(replay.headers["Location"])["error"] == "invalid_request"


def test_sign_in_needs_the_same_browser(env: Env) -> None:
    flow = Flow(env)
    page = flow.authorize()
    flow.session.cookies.clear()
    assert flow.choose(page).status_code == 400


def test_unknown_client(env: Env) -> None:
    resp = Flow(env, client_id="nope").authorize()
    assert resp.status_code == 400
    assert "Location" not in resp.headers


@pytest.mark.parametrize("with_proof", [True, False])
def test_dpop_bound_patient_tokens(env: Env, with_proof: bool) -> None:
    key = ec_key("P-256", "app-key")
    flow = Flow(env)
    proof = dpop_proof(key, "POST", env.token_url) if with_proof else None
    body = flow.exchange(flow.code(), proof=proof).json()
    assert body["token_type"] == ("DPoP" if with_proof else "Bearer")
    bare = refresh(env, body["refresh_token"])
    if with_proof:
        assert bare.json()["error"] == "invalid_grant"
        ok = refresh(env, body["refresh_token"], proof=dpop_proof(key, "POST", env.token_url))
        assert ok.status_code == 200, ok.text
        assert ok.json()["token_type"] == "DPoP"
    else:
        assert bare.status_code == 200
