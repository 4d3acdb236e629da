"""Discovery documents, CORS for the patient app, and settings from the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from authsupport import Env

from server.auth.config import AuthConfig


def test_smart_configuration(env: Env) -> None:
    resp = requests.get(env.config.fhir_audience + "/.well-known/smart-configuration",
                        timeout=10)
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["issuer"] == env.config.issuer
    assert doc["token_endpoint"] == env.token_url
    assert doc["authorization_endpoint"] == env.config.endpoint("authorize")
    assert doc["jwks_uri"] == env.config.endpoint("jwks")
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["grant_types_supported"]) == {
        "authorization_code", "client_credentials", "refresh_token"}
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert {"RS384", "ES384"} <= set(doc["token_endpoint_auth_signing_alg_values_supported"])
    assert {"permission-v2", "client-confidential-asymmetric", "launch-standalone",
            "client-public"} <= set(doc["capabilities"])
    assert "patient/*.rs" in doc["scopes_supported"]


def test_authorization_server_and_openid_metadata(env: Env) -> None:
    rfc8414 = requests.get(env.url + "/.well-known/oauth-authorization-server",
                           timeout=10).json()
    assert rfc8414["issuer"] == env.config.issuer
    assert rfc8414["revocation_endpoint"] == env.config.endpoint("revoke")
    assert rfc8414["introspection_endpoint"] == env.config.endpoint("introspect")
    assert "ES256" in rfc8414["dpop_signing_alg_values_supported"]
    oidc = requests.get(env.url + "/.well-known/openid-configuration", timeout=10).json()
    assert oidc["subject_types_supported"] == ["public"]
    assert oidc["acr_values_supported"] == list(env.config.acr_levels)


def test_jwks_lists_public_keys_only(env: Env) -> None:
    keys = requests.get(env.config.endpoint("jwks"), timeout=10).json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kid"] == env.auth.keys.active.kid
    assert keys[0]["alg"] == "ES256" and keys[0]["use"] == "sig"
    assert "d" not in keys[0]


def test_cors_for_the_patient_app_origin(env: Env) -> None:
    allowed = "http://127.0.0.1:5173"
    pre = requests.options(env.token_url, timeout=10, headers={
        "Origin": allowed, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "DPoP"})
    assert pre.headers["Access-Control-Allow-Origin"] == allowed
    assert "DPoP" in pre.headers["Access-Control-Allow-Headers"]
    other = requests.get(env.config.endpoint("jwks"), headers={"Origin": "https://evil.example"},
                         timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers
    assert env.auth.cors_headers(allowed)["Access-Control-Allow-Origin"] == allowed
    assert env.auth.cors_headers("https://evil.example") == {}


def test_config_from_env_defaults(tmp_path: Path) -> None:
    cfg = AuthConfig.from_env({}, data_dir=tmp_path, demo=False)
    assert cfg.issuer == "http://localhost:8080"
    assert cfg.fhir_audience == "http://localhost:8080/fhir"
    assert cfg.keys_dir == tmp_path / "keys"
    assert cfg.token_endpoint == "http://localhost:8080/oauth/token"
    assert cfg.fhir_path == "/fhir"
    assert cfg.upstream is None and cfg.trusted_issuers == ()
    assert cfg.min_acr == "idporten-loa-high"


def test_config_from_env_full(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": []}))
    trusted = tmp_path / "trusted.json"
    trusted.write_text(json.dumps({"issuers": [{
        "issuer": "https://helseid.example", "audience": "planbro", "jwks_file": "jwks.json",
        "claims": {"hpr": "helseid://claims/hpr/hpr_number"}}]}))
    cfg = AuthConfig.from_env({
        "PLANBRO_ISSUER": "https://planbro.example.no/",
        "PLANBRO_BASE_URL": "https://planbro.example.no/fhir",
        "PLANBRO_SIGNING_ALG": "RS256",
        "PLANBRO_ACCESS_TOKEN_TTL": "300",
        "PLANBRO_DPOP_REQUIRED": "true",
        "PLANBRO_TRUSTED_ISSUERS": str(trusted),
        "PLANBRO_OIDC_ISSUER": "https://idporten.example",
        "PLANBRO_OIDC_CLIENT_ID": "planbro",
        "PLANBRO_MIN_ACR": "idporten-loa-substantial",
        "PLANBRO_CORS_ORIGINS": "https://app.example.no, https://beta.example.no",
        "PLANBRO_DATA": str(tmp_path),
    })
    assert cfg.issuer == "https://planbro.example.no"
    assert cfg.fhir_audience == "https://planbro.example.no/fhir"
    assert cfg.signing_alg == "RS256" and cfg.access_token_ttl == 300
    assert cfg.dpop_required is True
    assert cfg.trusted_issuers[0].jwks_file == tmp_path / "jwks.json"
    assert cfg.trusted_issuers[0].claims["hpr"] == ("helseid://claims/hpr/hpr_number",)
    assert cfg.trusted_issuers[0].claims["fnr"] == ("pid",)
    assert cfg.upstream is not None and cfg.upstream.client_auth == "private_key_jwt"
    assert cfg.cors_origins == ("https://app.example.no", "https://beta.example.no")


@pytest.mark.parametrize("env", [
    {"PLANBRO_ISSUER": "ftp://x"},
    {"PLANBRO_ISSUER": "http://planbro.example.no"},
    {"PLANBRO_SIGNING_ALG": "HS256"},
    {"PLANBRO_MIN_ACR": "level9"},
    {"PLANBRO_CLOCK_SKEW": "3600"},
    {"PLANBRO_OIDC_ISSUER": "https://idp.example"},
    {"PLANBRO_OIDC_ISSUER": "https://idp.example", "PLANBRO_OIDC_CLIENT_ID": "x",
     "PLANBRO_OIDC_CLIENT_AUTH": "client_secret_post"},
    {"PLANBRO_ACCESS_TOKEN_TTL": "0"},
])
def test_config_rejects_bad_settings(env: dict[str, str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
    with pytest.raises(ValueError):
        AuthConfig.from_env(env, data_dir=tmp_path)


@pytest.mark.parametrize("issuer", [
    {"issuer": "https://a.example", "audience": "x", "algorithms": ["HS256"],
     "jwks_uri": "https://a.example/jwks"},
    {"issuer": "https://a.example", "audience": "x"},
    {"issuer": "https://a.example", "audience": "x", "jwks_uri": "https://a/j", "jwks": {}},
    {"issuer": "https://a.example", "audience": "x", "jwks_uri": "https://a/j", "typo": 1},
    {"issuer": "https://a.example", "audience": "x", "jwks_uri": "https://a/j",
     "claims": {"patient": "pid"}},
])
def test_trusted_issuer_file_rejects_bad_entries(issuer: dict, tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps([issuer]))
    with pytest.raises(ValueError):
        AuthConfig.from_env({"PLANBRO_TRUSTED_ISSUERS": str(path)}, data_dir=tmp_path)
