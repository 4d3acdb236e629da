"""Settings of the authorisation server and the token checks, from the environment.

- PLANBRO_ISSUER: our issuer URL; endpoints are ``<issuer>/oauth/...``
  (default: origin of PLANBRO_BASE_URL, else http://localhost:8080). Must be https, or
  loopback for tests.
- PLANBRO_FHIR_AUDIENCE: ``aud`` of our access tokens, the FHIR base URL
  (default: PLANBRO_BASE_URL, else ``<issuer>/fhir``).
- PLANBRO_KEYS_DIR: signing keys, one JWK file per key id (default ``<data>/keys``).
- PLANBRO_SIGNING_ALG: ES256 (default) or RS256 for newly generated keys.
- PLANBRO_ACCESS_TOKEN_TTL, PLANBRO_REFRESH_TOKEN_TTL, PLANBRO_AUTH_CODE_TTL: seconds
  (900, 14 days, 120).
- PLANBRO_CLOCK_SKEW: tolerated clock difference in seconds (30).
- PLANBRO_DPOP_REQUIRED: every token must be DPoP-bound (false).
- PLANBRO_DPOP_NONCE: demand server-issued DPoP nonces (false).
- PLANBRO_DPOP_MAX_AGE: how old a DPoP proof may be, seconds (60).
- PLANBRO_TRUSTED_ISSUERS: JSON file listing external issuers (see :class:`TrustedIssuer`).
- PLANBRO_OIDC_ISSUER, _CLIENT_ID, _CLIENT_AUTH, _CLIENT_SECRET, _SCOPE, _ALGORITHMS,
  _ASSERTION_AUDIENCE: the upstream OpenID provider for patient sign-in (none).
- PLANBRO_ACR_LEVELS: acr values, weakest first (idporten-loa-substantial,idporten-loa-high).
- PLANBRO_MIN_ACR: the weakest acr accepted for access to health data (idporten-loa-high).
- PLANBRO_CORS_ORIGINS: comma-separated origins of the patient app.
- PLANBRO_PATIENT_APP_REDIRECT_URIS: redirect URIs of the demo patient-app client
  (default ``<issuer>/app/callback``).
- PLANBRO_EMERGENCY_CLAIM: token claim carrying an emergency-access reason
  (emergency_reason).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from authlib.common.security import is_secure_transport

ASYMMETRIC_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
SIGNING_ALGS = ("ES256", "RS256")

# Where each Principal field is read from in an external token (first claim present wins).
DEFAULT_CLAIMS: dict[str, tuple[str, ...]] = {
    "client_id": ("client_id", "azp", "cid"),
    "scope": ("scope", "scp"),
    "organization": ("organization",),
    "hpr": ("hpr",),
    "fnr": ("pid",),
    "fhir_user": ("fhirUser",),
    "emergency_reason": ("emergency_reason",),
}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _check_url(name: str, url: str) -> None:
    """An absolute http(s) URL without query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{name} must be an absolute http(s) URL, not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{name} must not have a query or fragment")


@dataclass(frozen=True)
class TrustedIssuer:
    """An external token issuer (HelseID-, ID-porten-style) whose access tokens we accept.

    JSON form (a list of these objects in the PLANBRO_TRUSTED_ISSUERS file)::

        {"issuer": "https://helseid-sts.test.nhn.no",
         "jwks_uri": "https://helseid-sts.test.nhn.no/.well-known/openid-configuration/jwks",
         "audience": "nhn:planbro",
         "algorithms": ["RS256"],
         "token_types": ["at+jwt"],
         "claims": {"organization": ["helseid://claims/client/claims/orgnr_child",
                                     "helseid://claims/client/claims/orgnr_parent"],
                    "hpr": "helseid://claims/hpr/hpr_number"}}

    Exactly one of ``jwks_uri``, ``jwks_file`` or ``jwks`` (inline) gives the keys.
    ``token_types``: accepted ``typ`` header values (a missing ``typ`` counts as ``JWT``).
    ``claims`` overrides :data:`DEFAULT_CLAIMS` per field. ``jwks_refresh_seconds``: how
    often at most the ``jwks_uri`` is fetched again when a token names an unknown key id.
    """

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    token_types: tuple[str, ...] = ("at+jwt", "JWT")
    jwks_uri: str | None = None
    jwks_file: Path | None = None
    jwks: dict[str, Any] | None = None
    claims: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_CLAIMS))
    jwks_refresh_seconds: float = 60.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> TrustedIssuer:
        unknown = set(data) - {
            "issuer", "audience", "algorithms", "token_types", "jwks_uri", "jwks_file",
            "jwks", "claims", "jwks_refresh_seconds",
        }
        if unknown:
            raise ValueError(f"trusted issuer: unknown settings {sorted(unknown)}")
        claims = dict(DEFAULT_CLAIMS)
        for name, value in (data.get("claims") or {}).items():
            if name not in DEFAULT_CLAIMS:
                raise ValueError(f"trusted issuer: cannot map claims to {name!r}")
            claims[name] = (value,) if isinstance(value, str) else tuple(value)
        jwks_file = data.get("jwks_file")
        if jwks_file is not None:
            jwks_file = Path(jwks_file)
            if base_dir is not None and not jwks_file.is_absolute():
                jwks_file = base_dir / jwks_file
        issuer = cls(
            issuer=str(data["issuer"]),
            audience=str(data["audience"]),
            algorithms=tuple(data.get("algorithms") or cls.algorithms),
            token_types=tuple(data.get("token_types") or cls.token_types),
            jwks_uri=data.get("jwks_uri"),
            jwks_file=jwks_file,
            jwks=data.get("jwks"),
            claims=claims,
            jwks_refresh_seconds=float(data.get("jwks_refresh_seconds", 60.0)),
        )
        issuer.validate()
        return issuer

    def validate(self) -> None:
        sources = [s for s in (self.jwks_uri, self.jwks_file, self.jwks) if s is not None]
        if len(sources) != 1:
            raise ValueError(
                f"trusted issuer {self.issuer}: give exactly one of jwks_uri, jwks_file, jwks"
            )
        bad = set(self.algorithms) - ASYMMETRIC_ALGS
        if bad or not self.algorithms:
            raise ValueError(
                f"trusted issuer {self.issuer}: only asymmetric algorithms, not {sorted(bad)}"
            )
        if not self.audience:
            raise ValueError(f"trusted issuer {self.issuer}: an audience is required")


def load_trusted_issuers(path: Path) -> tuple[TrustedIssuer, ...]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("issuers", [])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of trusted issuers")
    return tuple(TrustedIssuer.from_json(item, path.parent) for item in data)


@dataclass(frozen=True)
class UpstreamOidc:
    """The OpenID provider patients sign in with (ID-porten style), when not in demo mode."""

    issuer: str
    client_id: str
    client_auth: str = "private_key_jwt"  # private_key_jwt | client_secret_post | none
    client_secret: str | None = None
    scope: str = "openid"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    assertion_audience: str | None = None  # default: the upstream token endpoint

    def validate(self) -> None:
        _check_url("PLANBRO_OIDC_ISSUER", self.issuer)
        if self.client_auth not in ("private_key_jwt", "client_secret_post", "none"):
            raise ValueError(f"PLANBRO_OIDC_CLIENT_AUTH: unknown method {self.client_auth!r}")
        if self.client_auth == "client_secret_post" and not self.client_secret:
            raise ValueError("PLANBRO_OIDC_CLIENT_SECRET is required for client_secret_post")
        if "openid" not in self.scope.split():
            raise ValueError("PLANBRO_OIDC_SCOPE must contain openid")
        if set(self.algorithms) - ASYMMETRIC_ALGS:
            raise ValueError("PLANBRO_OIDC_ALGORITHMS: only asymmetric algorithms")


@dataclass(frozen=True)
class AuthConfig:
    issuer: str
    fhir_audience: str
    keys_dir: Path
    signing_alg: str = "ES256"
    access_token_ttl: int = 900
    refresh_token_ttl: int = 14 * 24 * 3600
    auth_code_ttl: int = 120
    login_ttl: int = 600
    clock_skew: int = 30
    dpop_required: bool = False
    dpop_nonce: bool = False
    dpop_max_age: int = 60
    trusted_issuers: tuple[TrustedIssuer, ...] = ()
    upstream: UpstreamOidc | None = None
    acr_levels: tuple[str, ...] = ("idporten-loa-substantial", "idporten-loa-high")
    min_acr: str = "idporten-loa-high"
    demo: bool = False
    cors_origins: tuple[str, ...] = ()
    patient_app_redirect_uris: tuple[str, ...] = ()
    emergency_claim: str = "emergency_reason"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/oauth/token"

    @property
    def fhir_path(self) -> str:
        """The path of the FHIR base URL (where smart-configuration is published)."""
        return urlsplit(self.fhir_audience).path.rstrip("/")

    @property
    def fhir_origin(self) -> str:
        return _origin(self.fhir_audience)

    @property
    def issuer_origin(self) -> str:
        return _origin(self.issuer)

    def endpoint(self, name: str) -> str:
        return f"{self.issuer}/oauth/{name}"

    def acr_rank(self, acr: str | None) -> int:
        """Position of ``acr`` in :attr:`acr_levels` (-1 when unknown or absent)."""
        try:
            return self.acr_levels.index(acr) if acr else -1
        except ValueError:
            return -1

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        data_dir: Path | None = None,
        demo: bool | None = None,
        base_url: str | None = None,
    ) -> AuthConfig:
        """Read the settings; ``data_dir``, ``demo`` and ``base_url`` default to the same
        variables the server's own settings read (PLANBRO_DATA, PLANBRO_DEMO,
        PLANBRO_BASE_URL)."""
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("PLANBRO_DATA", "./data")) if data_dir is None else data_dir
        demo = _truthy(env.get("PLANBRO_DEMO")) if demo is None else demo
        base_url = (base_url or env.get("PLANBRO_BASE_URL") or "").rstrip("/") or None
        issuer = (env.get("PLANBRO_ISSUER") or (base_url and _origin(base_url))
                  or "http://localhost:8080").rstrip("/")
        audience = (env.get("PLANBRO_FHIR_AUDIENCE") or base_url or issuer + "/fhir").rstrip("/")
        trusted_path = env.get("PLANBRO_TRUSTED_ISSUERS")
        redirect_uris = _csv(env.get("PLANBRO_PATIENT_APP_REDIRECT_URIS")) or (
            issuer + "/app/callback",
        )
        cfg = cls(
            issuer=issuer,
            fhir_audience=audience,
            keys_dir=Path(env.get("PLANBRO_KEYS_DIR") or data_dir / "keys"),
            signing_alg=env.get("PLANBRO_SIGNING_ALG", "ES256"),
            access_token_ttl=int(env.get("PLANBRO_ACCESS_TOKEN_TTL", 900)),
            refresh_token_ttl=int(env.get("PLANBRO_REFRESH_TOKEN_TTL", 14 * 24 * 3600)),
            auth_code_ttl=int(env.get("PLANBRO_AUTH_CODE_TTL", 120)),
            clock_skew=int(env.get("PLANBRO_CLOCK_SKEW", 30)),
            dpop_required=_truthy(env.get("PLANBRO_DPOP_REQUIRED")),
            dpop_nonce=_truthy(env.get("PLANBRO_DPOP_NONCE")),
            dpop_max_age=int(env.get("PLANBRO_DPOP_MAX_AGE", 60)),
            trusted_issuers=load_trusted_issuers(Path(trusted_path)) if trusted_path else (),
            upstream=_upstream_from_env(env),
            acr_levels=_csv(env.get("PLANBRO_ACR_LEVELS")) or cls.acr_levels,
            min_acr=env.get("PLANBRO_MIN_ACR") or cls.min_acr,
            demo=demo,
            cors_origins=_csv(env.get("PLANBRO_CORS_ORIGINS")),
            patient_app_redirect_uris=redirect_uris,
            emergency_claim=env.get("PLANBRO_EMERGENCY_CLAIM") or cls.emergency_claim,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _check_url("PLANBRO_ISSUER", self.issuer)
        if not is_secure_transport(self.issuer):
            raise ValueError("PLANBRO_ISSUER must be https (http only on loopback, or with "
                             "AUTHLIB_INSECURE_TRANSPORT set for a test setup)")
        _check_url("PLANBRO_FHIR_AUDIENCE", self.fhir_audience)
        if self.signing_alg not in SIGNING_ALGS:
            raise ValueError(f"PLANBRO_SIGNING_ALG must be one of {SIGNING_ALGS}")
        for name in ("access_token_ttl", "refresh_token_ttl", "auth_code_ttl", "login_ttl",
                     "dpop_max_age"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.clock_skew <= 300:
            raise ValueError("PLANBRO_CLOCK_SKEW must be between 0 and 300 seconds")
        if self.min_acr not in self.acr_levels:
            raise ValueError(f"PLANBRO_MIN_ACR {self.min_acr!r} is not in PLANBRO_ACR_LEVELS")
        issuers = [t.issuer for t in self.trusted_issuers]
        if self.issuer in issuers or len(set(issuers)) != len(issuers):
            raise ValueError("trusted issuers must be distinct and differ from PLANBRO_ISSUER")
        for origin in self.cors_origins:
            _check_url("PLANBRO_CORS_ORIGINS", origin)
        if self.upstream is not None:
            self.upstream.validate()


def _upstream_from_env(env: Mapping[str, str]) -> UpstreamOidc | None:
    issuer = env.get("PLANBRO_OIDC_ISSUER")
    if not issuer:
        return None
    client_id = env.get("PLANBRO_OIDC_CLIENT_ID")
    if not client_id:
        raise ValueError("PLANBRO_OIDC_CLIENT_ID is required with PLANBRO_OIDC_ISSUER")
    return UpstreamOidc(
        issuer=issuer.rstrip("/"),
        client_id=client_id,
        client_auth=env.get("PLANBRO_OIDC_CLIENT_AUTH", "private_key_jwt"),
        client_secret=env.get("PLANBRO_OIDC_CLIENT_SECRET") or None,
        scope=env.get("PLANBRO_OIDC_SCOPE", "openid"),
        algorithms=_csv(env.get("PLANBRO_OIDC_ALGORITHMS")) or UpstreamOidc.algorithms,
        assertion_audience=env.get("PLANBRO_OIDC_ASSERTION_AUDIENCE") or None,
    )
