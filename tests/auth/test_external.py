"""Access tokens from trusted external issuers (HelseID- and ID-porten-style), with their
keys from a JWKS file or a JWKS URL, and claim mapping onto the Principal."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from authsupport import (
    Env,
    LiveServer,
    dpop_proof,
    ec_key,
    hs256_with,
    public_jwks,
    rsa_key,
    sign,
)
from flask import Flask, jsonify

from server.auth.config import load_trusted_issuers

HELSEID = "https://helseid-sts.test.example"
IDPORTEN = "https://idporten.test.example"
ORGNR_PARENT = "helseid://claims/client/claims/orgnr_parent"
ORGNR_CHILD = "helseid://claims/client/claims/orgnr_child"
HPR = "helseid://claims/hpr/hpr_number"


class ExternalIssuers:
    """Two issuers: HelseID-style (RSA key in a JWKS file) and ID-porten-style (EC keys
    published at a JWKS URL served by a separate little server)."""

    def __init__(self, folder: Path) -> None:
        self.helseid_key = rsa_key("helseid-1")
        self.idporten_key = ec_key("P-256", "idp-1")
        self.idporten_published = [self.idporten_key]
        self.jwks_server = LiveServer()
        app = Flask("jwks")
        app.add_url_rule("/jwks", "jwks",
                         lambda: jsonify(public_jwks(*self.idporten_published)))
        self.jwks_server.app = app
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "helseid.jwks.json").write_text(json.dumps(public_jwks(self.helseid_key)))
        self.file = folder / "trusted.json"
        self.file.write_text(json.dumps([
            {"issuer": HELSEID, "audience": "nhn:planbro", "algorithms": ["RS256"],
             "token_types": ["at+jwt"], "jwks_file": "helseid.jwks.json",
             "claims": {"organization": [ORGNR_CHILD, ORGNR_PARENT], "hpr": HPR}},
            {"issuer": IDPORTEN, "audience": "planbro-api", "algorithms": ["ES256"],
             "jwks_uri": self.jwks_server.url + "/jwks", "jwks_refresh_seconds": 0},
        ]))

    def token(self, issuer: str = HELSEID, *, key: Any = None, alg: str | None = None,
              header: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        helse = issuer != IDPORTEN
        body = {"iss": issuer, "aud": "nhn:planbro" if helse else "planbro-api",
                "client_id": "ehr-abc", "iat": now, "exp": now + 300,
                "jti": secrets.token_hex(8), "scope": ["system/Task.rs", "system/CarePlan.r"]}
        body.update(claims)
        signing = key or (self.helseid_key if helse else self.idporten_key)
        head = {"kid": signing.kid, "typ": "at+jwt", **(header or {})}
        return sign(head, {k: v for k, v in body.items() if v is not None}, signing,
                    alg or ("RS256" if helse else "ES256"))


@pytest.fixture
def ext(tmp_path: Path) -> Any:
    issuers = ExternalIssuers(tmp_path / "ext")
    yield issuers
    issuers.jwks_server.close()


@pytest.fixture
def xenv(make_env: Callable[..., Env], ext: ExternalIssuers) -> Env:
    return make_env(trusted_issuers=load_trusted_issuers(ext.file))


def _refused(resp: Any, fragment: str) -> None:
    assert resp.status_code == 401, resp.text
    assert fragment in resp.json()["issue"][0]["diagnostics"]


def test_helseid_practitioner_token(xenv: Env, ext: ExternalIssuers) -> None:
    token = ext.token(**{ORGNR_PARENT: "983658725", ORGNR_CHILD: "974633574", HPR: "565501872"})
    resp = xenv.whoami(token)
    assert resp.status_code == 200, resp.text
    p = resp.json()
    assert p["kind"] == "practitioner"
    assert p["issuer"] == HELSEID
    assert p["organization"] == "974633574"
    assert p["practitioner"] == "565501872"
    assert p["client_id"] == "ehr-abc"
    assert p["scopes"] == "system/Task.rs system/CarePlan.r"


def test_helseid_system_token_maps_parent_org(xenv: Env, ext: ExternalIssuers) -> None:
    p = xenv.whoami(ext.token(**{ORGNR_PARENT: "983658725"})).json()
    assert p["kind"] == "system"
    assert p["organization"] == "983658725"
    assert p["practitioner"] is None


def test_idporten_token_maps_pid_to_patient(xenv: Env, ext: ExternalIssuers,
                                            people: list) -> None:
    token = ext.token(IDPORTEN, pid=people[1][2], scope="patient/*.rs",
                      header={"typ": "JWT"})
    resp = xenv.whoami(token)
    assert resp.status_code == 200, resp.text
    p = resp.json()
    assert p["kind"] == "patient"
    assert p["patient"] == "pat-2"


def test_idporten_person_without_record_is_forbidden(xenv: Env, ext: ExternalIssuers) -> None:
    from authsupport import make_fnr

    resp = xenv.whoami(ext.token(IDPORTEN, pid=make_fnr(11)))
    assert resp.status_code == 403


def test_untrusted_issuer(xenv: Env, ext: ExternalIssuers) -> None:
    _refused(xenv.whoami(ext.token("https://helseid-sts.evil.example")), "not trusted")


def test_external_wrong_audience(xenv: Env, ext: ExternalIssuers) -> None:
    _refused(xenv.whoami(ext.token(aud="someone-else")), "aud")
    _refused(xenv.whoami(ext.token(aud=xenv.config.fhir_audience)), "aud")


def test_external_expired(xenv: Env, ext: ExternalIssuers) -> None:
    now = int(time.time())
    _refused(xenv.whoami(ext.token(iat=now - 900, exp=now - 600)), "expired")


def test_external_typ_must_be_configured(xenv: Env, ext: ExternalIssuers) -> None:
    _refused(xenv.whoami(ext.token(header={"typ": "JWT"})), "token type")


def test_external_hs256_with_public_key(xenv: Env, ext: ExternalIssuers) -> None:
    now = int(time.time())
    claims = {"iss": HELSEID, "aud": "nhn:planbro", "iat": now, "exp": now + 60, "jti": "h"}
    pem = ext.helseid_key.as_pem(private=False)
    forged = hs256_with(pem, {"kid": "helseid-1", "typ": "at+jwt"}, claims)
    _refused(xenv.whoami(forged), "HS256 is not accepted")


def test_external_algorithm_outside_issuer_list(xenv: Env, ext: ExternalIssuers) -> None:
    _refused(xenv.whoami(ext.token(alg="RS384")), "RS384 is not accepted")


def test_external_wrong_key_same_kid(xenv: Env, ext: ExternalIssuers) -> None:
    impostor = rsa_key("helseid-1")
    _refused(xenv.whoami(ext.token(key=impostor)), "bad signature")


def test_external_jwks_url_rotation(xenv: Env, ext: ExternalIssuers) -> None:
    assert xenv.whoami(ext.token(IDPORTEN)).status_code == 200
    new_key = ec_key("P-256", "idp-2")
    unpublished = ext.token(IDPORTEN, key=new_key)
    _refused(xenv.whoami(unpublished), "unknown key id")
    ext.idporten_published.append(new_key)
    assert xenv.whoami(ext.token(IDPORTEN, key=new_key)).status_code == 200


def test_external_dpop_bound_token(xenv: Env, ext: ExternalIssuers) -> None:
    holder = ec_key("P-256", "h")
    token = ext.token(cnf={"jkt": holder.thumbprint()}, **{ORGNR_PARENT: "983658725"})
    _refused(xenv.whoami(token), "DPoP-bound")
    proof = dpop_proof(holder, "GET", xenv.url + "/test/whoami", token=token)
    assert xenv.whoami(token, scheme="DPoP", proof=proof).status_code == 200
