"""The main flows again on the real storage engines' key-value part (the ``store`` fixture
of tests/conftest.py: the embedded engine, and MongoDB when MONGODB_URI is set)."""

from __future__ import annotations

from collections.abc import Callable

import requests
from authsupport import Env, Flow, assertion, dpop_proof, ec_key, refresh

from server.store.port import Store

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def test_flows_on_engine(make_env: Callable[..., Env], store: Store) -> None:
    env = make_env(store=store)
    signed = assertion("ehr", env.client_keys["ec256"], "ES256", env.token_url)
    form = {"grant_type": "client_credentials", "scope": "system/Task.rs",
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}
    first = requests.post(env.token_url, data=form, timeout=10)
    assert first.status_code == 200, first.text
    assert requests.post(env.token_url, data=form, timeout=10).json()["error"] == "invalid_client"

    token = first.json()["access_token"]
    assert env.whoami(token).status_code == 200
    revoke = {"client_assertion_type": ASSERTION_TYPE, "token": token,
              "client_assertion": assertion("ehr", env.client_keys["ec256"], "ES256",
                                            env.token_url)}
    assert requests.post(env.config.endpoint("revoke"), data=revoke, timeout=10).ok
    assert env.whoami(token).status_code == 401

    holder = ec_key("P-256", "h")
    bound = env.access_token(proof=dpop_proof(holder, "POST", env.token_url))
    proof = dpop_proof(holder, "GET", env.url + "/test/whoami", token=bound)
    assert env.whoami(bound, scheme="DPoP", proof=proof).status_code == 200
    assert env.whoami(bound, scheme="DPoP", proof=proof).status_code == 401

    rt = Flow(env).tokens()["refresh_token"]
    rotated = refresh(env, rt)
    assert rotated.status_code == 200, rotated.text
    assert refresh(env, rt).json()["error"] == "invalid_grant"
    assert refresh(env, rotated.json()["refresh_token"]).json()["error"] == "invalid_grant"
