"""DPoP (RFC 9449): binding at the token endpoint and proofs at the resource."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests
from authsupport import Env, dpop_proof, ec_key, rsa_key


@pytest.fixture(scope="module")
def holder() -> object:
    return ec_key("P-256", "holder")


def _bound_token(env: Env, key: object) -> str:
    resp = env.cc_token(proof=dpop_proof(key, "POST", env.token_url))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "DPoP"
    return body["access_token"]


def _whoami_url(env: Env) -> str:
    return env.url + "/test/whoami"


def _refused(resp: requests.Response, error: str, fragment: str = "") -> None:
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["WWW-Authenticate"]
    assert f'error="{error}"' in challenge
    assert fragment in resp.json()["issue"][0]["diagnostics"]


def test_bound_token_with_valid_proof(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    claims = env.auth.resource.check_own(token)
    assert claims["cnf"]["jkt"] == holder.thumbprint()
    proof = dpop_proof(holder, "GET", _whoami_url(env), token=token)
    resp = env.whoami(token, scheme="DPoP", proof=proof)
    assert resp.status_code == 200, resp.text
    assert resp.json()["dpop_jkt"] == holder.thumbprint()


def test_rsa_proof_key(env: Env) -> None:
    key = rsa_key("rsa-holder")
    token = _bound_token_alg(env, key, "RS256")
    proof = dpop_proof(key, "GET", _whoami_url(env), alg="RS256", token=token)
    assert env.whoami(token, scheme="DPoP", proof=proof).status_code == 200


def _bound_token_alg(env: Env, key: object, alg: str) -> str:
    resp = env.cc_token(proof=dpop_proof(key, "POST", env.token_url, alg=alg))
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def test_query_string_is_not_part_of_htu(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    proof = dpop_proof(holder, "GET", _whoami_url(env), token=token)
    resp = requests.get(_whoami_url(env) + "?a=1", timeout=10,
                        headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert resp.status_code == 200


def test_proof_for_another_url(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    proof = dpop_proof(holder, "GET", env.url + "/fhir/Patient", token=token)
    _refused(env.whoami(token, scheme="DPoP", proof=proof), "invalid_dpop_proof", "htu")


def test_proof_for_another_method(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    proof = dpop_proof(holder, "POST", _whoami_url(env), token=token)
    _refused(env.whoami(token, scheme="DPoP", proof=proof), "invalid_dpop_proof", "htm")


def test_replayed_proof(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    proof = dpop_proof(holder, "GET", _whoami_url(env), token=token)
    assert env.whoami(token, scheme="DPoP", proof=proof).status_code == 200
    _refused(env.whoami(token, scheme="DPoP", proof=proof), "invalid_dpop_proof", "replay")


@pytest.mark.parametrize("offset", [-600, 120])
def test_stale_or_future_iat(env: Env, holder: object, offset: int) -> None:
    token = _bound_token(env, holder)
    proof = dpop_proof(holder, "GET", _whoami_url(env), token=token,
                       iat=int(time.time()) + offset)
    _refused(env.whoami(token, scheme="DPoP", proof=proof), "invalid_dpop_proof", "iat")


def test_bound_token_without_proof(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    _refused(env.whoami(token, scheme="DPoP"), "invalid_dpop_proof", "proof")


def test_bound_token_sent_as_bearer(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    resp = env.whoami(token, scheme="Bearer")
    _refused(resp, "invalid_token", "DPoP-bound")


def test_proof_by_another_key(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    thief = ec_key("P-256", "thief")
    proof = dpop_proof(thief, "GET", _whoami_url(env), token=token)
    _refused(env.whoami(token, scheme="DPoP", proof=proof), "invalid_dpop_proof", "key")


def test_proof_for_another_token(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    other = _bound_token(env, holder)
    proof = dpop_proof(holder, "GET", _whoami_url(env), token=other)
    _refused(env.whoami(token, scheme="DPoP", proof=proof), "invalid_dpop_proof", "ath")


def test_proof_with_wrong_typ_or_private_key(env: Env, holder: object) -> None:
    token = _bound_token(env, holder)
    from authsupport import sign

    claims = {"jti": "x1", "htm": "GET", "htu": _whoami_url(env), "iat": int(time.time())}
    wrong_typ = sign({"typ": "JWT", "jwk": holder.as_dict(private=False)}, claims, holder,
                     "ES256")
    _refused(env.whoami(token, scheme="DPoP", proof=wrong_typ), "invalid_dpop_proof", "typ")
    leaked = sign({"typ": "dpop+jwt", "jwk": holder.as_dict(private=True)}, claims, holder,
                  "ES256")
    _refused(env.whoami(token, scheme="DPoP", proof=leaked), "invalid_dpop_proof", "public")


def test_unbound_token_with_dpop_scheme(env: Env, holder: object) -> None:
    token = env.access_token()
    proof = dpop_proof(holder, "GET", _whoami_url(env), token=token)
    _refused(env.whoami(token, scheme="DPoP", proof=proof), "invalid_token", "not DPoP-bound")


def test_token_endpoint_rejects_bad_proof(env: Env, holder: object) -> None:
    resp = env.cc_token(proof=dpop_proof(holder, "POST", env.url + "/elsewhere"))
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_dpop_proof"


def test_dpop_required(make_env: Callable[..., Env], holder: object) -> None:
    env = make_env(dpop_required=True)
    resp = env.cc_token()
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_dpop_proof"
    token = env.forge()
    resp = env.whoami(token)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("DPoP ")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert "Bearer" not in resp.headers["WWW-Authenticate"]
    bound = _bound_token(env, holder)
    proof = dpop_proof(holder, "GET", _whoami_url(env), token=bound)
    assert env.whoami(bound, scheme="DPoP", proof=proof).status_code == 200


def test_server_nonce(make_env: Callable[..., Env], holder: object) -> None:
    env = make_env(dpop_nonce=True)
    first = env.cc_token(proof=dpop_proof(holder, "POST", env.token_url))
    assert first.status_code == 400
    assert first.json()["error"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    resp = env.cc_token(proof=dpop_proof(holder, "POST", env.token_url, nonce=nonce))
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    no_nonce = dpop_proof(holder, "GET", _whoami_url(env), token=token)
    refused = env.whoami(token, scheme="DPoP", proof=no_nonce)
    _refused(refused, "use_dpop_nonce")
    assert refused.headers["DPoP-Nonce"]
    ok = dpop_proof(holder, "GET", _whoami_url(env), token=token, nonce=nonce)
    assert env.whoami(token, scheme="DPoP", proof=ok).status_code == 200
    bad = dpop_proof(holder, "GET", _whoami_url(env), token=token, nonce="made-up")
    _refused(env.whoami(token, scheme="DPoP", proof=bad), "use_dpop_nonce")
