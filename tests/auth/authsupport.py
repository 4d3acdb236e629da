"""Test support for the auth tests: an in-memory key-value Store (a test double for the
kv part of the storage port only), a live HTTP server on a free loopback port, and helpers
that build client assertions, DPoP proofs, PKCE pairs and synthetic fødselsnumre."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from flask import Flask, jsonify, request
from joserfc import jwk, jwt
from live import LiveServer

from server.auth import AuthConfig, init_app
from server.auth.demo import PATIENT_APP_ID
from server.auth.server import AuthServer
from server.fhir.outcome import FhirError
from server.plans.identifiers import synthetic_fnr
from server.store.port import Store


class MemoryKvStore(Store):
    """TEST DOUBLE: implements only the key-value contract of :class:`Store`
    (kv_put / kv_get / kv_delete / kv_list with expiry and insert-if-absent)."""

    name = "memory-kv"

    def __init__(self) -> None:
        super().__init__(indexer=self._no_indexer)
        self._lock = threading.Lock()
        self._data: dict[tuple[str, str], tuple[dict[str, Any], int | None]] = {}

    @staticmethod
    def _no_indexer(resource: dict[str, Any]) -> Any:
        raise NotImplementedError("the kv test double stores no resources")

    def _live(self, ns: str, key: str) -> dict[str, Any] | None:
        item = self._data.get((ns, key))
        if item is None:
            return None
        value, expires_ms = item
        if expires_ms is not None and expires_ms <= time.time() * 1000:
            del self._data[(ns, key)]
            return None
        return value

    def kv_put(self, ns: str, key: str, value: dict[str, Any], *,
               expires_ms: int | None = None, only_if_absent: bool = False) -> bool:
        with self._lock:
            if only_if_absent and self._live(ns, key) is not None:
                return False
            self._data[(ns, key)] = (dict(value), expires_ms)
            return True

    def kv_get(self, ns: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._live(ns, key)
            return dict(value) if value is not None else None

    def kv_delete(self, ns: str, key: str) -> bool:
        with self._lock:
            present = self._live(ns, key) is not None
            self._data.pop((ns, key), None)
            return present

    def kv_list(self, ns: str, *, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            keys = sorted(k for (n, k) in list(self._data) if n == ns)
            out = [(k, v) for k in keys if (v := self._live(ns, k)) is not None]
            return out[:limit]

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the kv test double stores no resources")

    unit_of_work = read = vread = read_many = deleted_versions = _unsupported
    history = search = reindex = _unsupported


# -- keys and JWTs -------------------------------------------------------------------------


def ec_key(crv: str = "P-256", kid: str | None = None) -> jwk.Key:
    key = jwk.ECKey.generate_key(crv, private=True)
    return jwk.import_key(key.as_dict(private=True), parameters={"kid": kid or key.thumbprint()})


def rsa_key(kid: str | None = None, size: int = 2048) -> jwk.Key:
    key = jwk.RSAKey.generate_key(size, private=True)
    return jwk.import_key(key.as_dict(private=True), parameters={"kid": kid or key.thumbprint()})


def public_jwks(*keys: jwk.Key) -> dict[str, Any]:
    out = []
    for k in keys:
        data = k.as_dict(private=False)
        data["kid"] = k.kid
        out.append(data)
    return {"keys": out}


def sign(header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str) -> str:
    return jwt.encode({"alg": alg, **header}, claims, key, algorithms=[alg])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    import json

    h = b64url(json.dumps(header).encode())
    c = b64url(json.dumps(claims).encode())
    return f"{h}.{c}."


def hs256_with(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    import hmac
    import json

    h = b64url(json.dumps({**header, "alg": "HS256"}).encode())
    c = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{h}.{c}".encode(), hashlib.sha256).digest()
    return f"{h}.{c}.{b64url(mac)}"


def assertion(client_id: str, key: jwk.Key, alg: str, aud: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 60,
            "jti": secrets.token_hex(12)}
    body.update(claims)
    return sign({"kid": key.kid, "typ": "JWT"}, {k: v for k, v in body.items() if v is not None},
                key, alg)


def dpop_proof(key: jwk.Key, method: str, url: str, *, alg: str = "ES256",
               token: str | None = None, **claims: Any) -> str:
    body: dict[str, Any] = {"jti": secrets.token_hex(12), "htm": method, "htu": url,
                            "iat": int(time.time())}
    if token is not None:
        body["ath"] = b64url(hashlib.sha256(token.encode()).digest())
    body.update(claims)
    header = {"typ": "dpop+jwt", "jwk": key.as_dict(private=False)}
    return sign(header, {k: v for k, v in body.items() if v is not None}, key, alg)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def make_fnr(serial: int) -> str:
    """A synthetic fødselsnummer (month + 80) that passes both modulus-11 checks."""
    return synthetic_fnr(dt.date(1990, 1, 1) + dt.timedelta(days=serial), serial // 3000)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# -- a running auth server -----------------------------------------------------------------

ORG_HOSPITAL = "974633574"
ORG_KOMMUNE = "964338531"
APP_REDIRECT = "http://127.0.0.1:9/callback"


@dataclass
class Env:
    live: LiveServer
    app: Flask
    auth: AuthServer
    store: Store
    config: AuthConfig
    client_keys: dict[str, jwk.Key] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.live.url

    @property
    def token_url(self) -> str:
        return self.config.token_endpoint

    def cc_token(self, client_id: str = "ehr", *, key: str = "ec256", alg: str = "ES256",
                 scope: str | None = "system/*.rs", proof: str | None = None,
                 **claims: Any) -> requests.Response:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(client_id, self.client_keys[key], alg,
                                          self.token_url, **claims),
        }
        if scope is not None:
            form["scope"] = scope
        headers = {"DPoP": proof} if proof else {}
        return requests.post(self.token_url, data=form, headers=headers, timeout=10)

    def access_token(self, **kwargs: Any) -> str:
        resp = self.cc_token(**kwargs)
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def whoami(self, token: str | None, *, scheme: str = "Bearer", proof: str | None = None,
               method: str = "GET", headers: dict[str, str] | None = None) -> requests.Response:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"{scheme} {token}"
        if proof is not None:
            h["DPoP"] = proof
        return requests.request(method, self.url + "/test/whoami", headers=h, timeout=10)

    def forge(self, claims: dict[str, Any] | None = None, header: dict[str, Any] | None = None,
              drop: tuple[str, ...] = ()) -> str:
        """An access token signed with our active key, with claims changed as given."""
        key = self.auth.keys.active
        now = int(time.time())
        body = {"iss": self.config.issuer, "sub": "ehr", "aud": self.config.fhir_audience,
                "client_id": "ehr", "scope": "system/*.rs", "iat": now, "exp": now + 300,
                "jti": secrets.token_hex(8)}
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        head = {"kid": key.kid, "typ": "at+jwt", **(header or {})}
        return sign(head, body, key.private, head.pop("alg", key.alg))


SCOPE = "openid fhirUser launch/patient offline_access patient/*.rs"


class Flow:
    """One browser (cookie jar) going through the sign-in."""

    def __init__(self, env: Env, **params: str) -> None:
        self.env = env
        self.session = requests.Session()
        self.verifier, challenge = pkce()
        self.params = {
            "response_type": "code", "client_id": PATIENT_APP_ID, "redirect_uri": APP_REDIRECT,
            "scope": SCOPE, "state": "st-123", "nonce": secrets.token_hex(8),
            "code_challenge": challenge, "code_challenge_method": "S256",
        }
        self.params.update(params)
        self.params = {k: v for k, v in self.params.items() if v != ""}

    def authorize(self) -> requests.Response:
        return self.session.get(self.env.config.endpoint("authorize"), params=self.params,
                                allow_redirects=False, timeout=10)

    def choose(self, page: requests.Response, *, patient: str = "pat-1",
               acr: str = "idporten-loa-high", action: str = "approve") -> requests.Response:
        assert page.status_code == 200, page.text
        login_id = re.search(r'name="login" value="([^"]+)"', page.text).group(1)
        return self.session.post(self.env.config.endpoint("login/demo"), data={
            "login": login_id, "patient": patient, "acr": acr, "action": action,
        }, allow_redirects=False, timeout=10)

    def code(self, **choice: str) -> str:
        resp = self.choose(self.authorize(), **choice)
        assert resp.status_code == 302, resp.text
        location = resp.headers["Location"]
        assert location.startswith(APP_REDIRECT + "?")
        query = query_of(location)
        assert query["state"] == "st-123"
        return query["code"]

    def exchange(self, code: str, *, verifier: str | None = None,
                 redirect_uri: str = APP_REDIRECT, proof: str | None = None) -> requests.Response:
        data = {"grant_type": "authorization_code", "code": code, "client_id": PATIENT_APP_ID,
                "redirect_uri": redirect_uri,
                "code_verifier": self.verifier if verifier is None else verifier}
        data = {k: v for k, v in data.items() if v != ""}
        headers = {"DPoP": proof} if proof else {}
        return requests.post(self.env.token_url, data=data, headers=headers, timeout=10)

    def tokens(self, **choice: str) -> dict[str, Any]:
        resp = self.exchange(self.code(**choice))
        assert resp.status_code == 200, resp.text
        return resp.json()


def refresh(env: Env, token: str, scope: str | None = None,
            proof: str | None = None) -> requests.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": PATIENT_APP_ID}
    if scope:
        data["scope"] = scope
    headers = {"DPoP": proof} if proof else {}
    return requests.post(env.token_url, data=data, headers=headers, timeout=10)


def build_app(live: LiveServer, tmp: Path, people: list[tuple[str, str, str]],
              store: Store | None = None,
              **overrides: Any) -> tuple[Flask, AuthServer, Store, AuthConfig]:
    settings: dict[str, Any] = {
        "issuer": live.url,
        "fhir_audience": live.url + "/fhir",
        "keys_dir": tmp / "keys",
        "demo": True,
        "patient_app_redirect_uris": (APP_REDIRECT,),
        "cors_origins": ("http://127.0.0.1:5173",),
    }
    settings.update(overrides)
    config = AuthConfig(**settings)
    config.validate()
    store = MemoryKvStore() if store is None else store
    app = Flask(f"planbro-test-{live.url}")
    by_fnr = {fnr: pid for pid, _, fnr in people}
    auth = init_app(app, store, config, people=lambda: list(people),
                    find_patient_by_fnr=by_fnr.get)

    @app.route("/test/whoami", methods=["GET", "POST"])
    def whoami() -> Any:
        return jsonify(auth.authenticate(request).to_json())

    @app.errorhandler(FhirError)
    def fhir_error(err: FhirError) -> Any:
        resp = jsonify(err.to_outcome())
        resp.status_code = err.status
        resp.headers.update(err.headers)
        return resp

    live.app = app
    return app, auth, store, config
