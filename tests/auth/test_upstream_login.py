"""Patient sign-in delegated to an upstream OpenID provider: a SECOND server instance, started
separately on its own port in demo mode, plays ID-porten (id_token with ``pid`` and ``acr``)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import requests
from authsupport import APP_REDIRECT, Env, make_fnr, pkce, query_of

from server.auth.clients import ClientRecord
from server.auth.config import UpstreamOidc
from server.auth.demo import PATIENT_APP_ID, patient_app_client

DOWNSTREAM_ID = "planbro-downstream"


@pytest.fixture
def pair(make_env: Callable[..., Env], people: list) -> tuple[Env, Env]:
    """(upstream provider, downstream server delegating to it)."""
    stranger = ("pat-9", "Per Ukjent", make_fnr(9))
    upstream = make_env(people=[*people, stranger])
    downstream = make_env(
        demo=False,
        upstream=UpstreamOidc(issuer=upstream.url, client_id=DOWNSTREAM_ID,
                              client_auth="private_key_jwt"),
    )
    downstream.auth.clients.put(patient_app_client(downstream.config))
    upstream.auth.clients.put(ClientRecord(
        client_id=DOWNSTREAM_ID, name="Planbro (downstream)",
        token_endpoint_auth_method="private_key_jwt",
        grant_types=("authorization_code",), scope="openid",
        redirect_uris=(downstream.config.endpoint("login/callback"),),
        jwks_uri=downstream.config.endpoint("jwks"),
    ))
    return upstream, downstream


def _sign_in(upstream: Env, downstream: Env, *, patient: str, acr: str
             ) -> tuple[requests.Response, str]:
    """Drive the browser through both servers; returns the final redirect to the app and
    the PKCE verifier."""
    browser = requests.Session()
    verifier, challenge = pkce()
    start = browser.get(downstream.config.endpoint("authorize"), allow_redirects=False,
                        timeout=10, params={
        "response_type": "code", "client_id": PATIENT_APP_ID, "redirect_uri": APP_REDIRECT,
        "scope": "openid launch/patient patient/*.rs", "state": "app-state",
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    assert start.status_code == 302, start.text
    to_upstream = start.headers["Location"]
    assert to_upstream.startswith(upstream.config.endpoint("authorize"))
    sent = query_of(to_upstream)
    assert sent["client_id"] == DOWNSTREAM_ID
    assert sent["code_challenge_method"] == "S256"
    assert sent["acr_values"] == downstream.config.min_acr
    page = browser.get(to_upstream, allow_redirects=False, timeout=10)
    assert page.status_code == 200 and "DEMO SIGN-IN" in page.text
    login_id = re.search(r'name="login" value="([^"]+)"', page.text).group(1)
    back = browser.post(upstream.config.endpoint("login/demo"), allow_redirects=False,
                        timeout=10, data={"login": login_id, "patient": patient, "acr": acr,
                                          "action": "approve"})
    assert back.status_code == 302, back.text
    callback = back.headers["Location"]
    assert callback.startswith(downstream.config.endpoint("login/callback"))
    final = browser.get(callback, allow_redirects=False, timeout=10)
    assert final.status_code == 302, final.text
    assert final.headers["Location"].startswith(APP_REDIRECT + "?")
    return final, verifier


def test_delegated_sign_in(pair: tuple[Env, Env], people: list) -> None:
    upstream, downstream = pair
    final, verifier = _sign_in(upstream, downstream, patient="pat-2", acr="idporten-loa-high")
    query = query_of(final.headers["Location"])
    assert query["state"] == "app-state"
    resp = requests.post(downstream.token_url, timeout=10, data={
        "grant_type": "authorization_code", "code": query["code"], "client_id": PATIENT_APP_ID,
        "redirect_uri": APP_REDIRECT, "code_verifier": verifier,
    })
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["patient"] == "pat-2"
    who = downstream.whoami(body["access_token"]).json()
    assert who["kind"] == "patient" and who["patient"] == "pat-2"
    claims = downstream.auth.resource.check_own(body["access_token"])
    assert claims["acr"] == "idporten-loa-high"
    assert claims["iss"] == downstream.config.issuer


def test_acr_below_minimum_is_refused(pair: tuple[Env, Env]) -> None:
    upstream, downstream = pair
    final, _ = _sign_in(upstream, downstream, patient="pat-2", acr="idporten-loa-substantial")
    query = query_of(final.headers["Location"])
    assert query["error"] == "access_denied"
    assert "acr" in query["error_description"]
    assert "code" not in query


def test_person_without_patient_record_is_refused(pair: tuple[Env, Env]) -> None:
    upstream, downstream = pair
    final, _ = _sign_in(upstream, downstream, patient="pat-9", acr="idporten-loa-high")
    query = query_of(final.headers["Location"])
    assert query["error"] == "access_denied"
    assert "no patient record" in query["error_description"]


def test_callback_with_unknown_state(pair: tuple[Env, Env]) -> None:
    _, downstream = pair
    resp = requests.get(downstream.config.endpoint("login/callback"), timeout=10,
                        params={"code": "x", "state": "forged"}, allow_redirects=False)
    assert resp.status_code == 400


def test_upstream_refuses_unknown_client_key(pair: tuple[Env, Env]) -> None:
    """The upstream only accepts the downstream's assertions signed with its published key."""
    upstream, downstream = pair
    upstream.auth.clients.put(ClientRecord(
        client_id=DOWNSTREAM_ID, name="Planbro (downstream)",
        token_endpoint_auth_method="private_key_jwt",
        grant_types=("authorization_code",), scope="openid",
        redirect_uris=(downstream.config.endpoint("login/callback"),),
        jwks={"keys": [upstream.client_keys["ec256"].as_dict(private=False)]},
    ))
    final, _ = _sign_in(upstream, downstream, patient="pat-2", acr="idporten-loa-high")
    query = query_of(final.headers["Location"])
    assert query["error"] == "access_denied"
    assert "code exchange failed" in query["error_description"]
