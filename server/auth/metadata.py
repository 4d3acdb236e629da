"""Discovery documents: RFC 8414, OpenID Connect discovery and SMART App Launch v2."""

from __future__ import annotations

from typing import Any

from .config import AuthConfig
from .dpop import DPOP_ALGS
from .grants import ASSERTION_ALGS

SCOPES_SUPPORTED = (
    "openid", "fhirUser", "launch/patient", "offline_access", "online_access",
    "patient/*.cruds", "patient/*.rs", "user/*.cruds", "user/*.rs",
    "system/*.cruds", "system/*.rs",
)
SMART_CAPABILITIES = (
    "launch-standalone",
    "client-public",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "sso-openid-connect",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)


def authorization_server_metadata(config: AuthConfig) -> dict[str, Any]:
    return {
        "issuer": config.issuer,
        "authorization_endpoint": config.endpoint("authorize"),
        "token_endpoint": config.token_endpoint,
        "jwks_uri": config.endpoint("jwks"),
        "revocation_endpoint": config.endpoint("revoke"),
        "introspection_endpoint": config.endpoint("introspect"),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
        "code_challenge_methods_supported": ["S256"],
        "dpop_signing_alg_values_supported": list(DPOP_ALGS),
    }


def openid_configuration(config: AuthConfig) -> dict[str, Any]:
    doc = authorization_server_metadata(config)
    doc.update({
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr",
                             "pid", "fhirUser"],
        "acr_values_supported": list(config.acr_levels),
    })
    return doc


def smart_configuration(config: AuthConfig) -> dict[str, Any]:
    meta = authorization_server_metadata(config)
    keep = (
        "issuer", "jwks_uri", "authorization_endpoint", "token_endpoint",
        "grant_types_supported", "token_endpoint_auth_methods_supported",
        "token_endpoint_auth_signing_alg_values_supported", "scopes_supported",
        "response_types_supported", "code_challenge_methods_supported",
        "revocation_endpoint", "introspection_endpoint", "dpop_signing_alg_values_supported",
    )
    doc = {k: meta[k] for k in keep}
    doc["capabilities"] = list(SMART_CAPABILITIES)
    return doc


OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def capability_security(config: AuthConfig) -> dict[str, Any]:
    """``CapabilityStatement.rest.security``: SMART on FHIR, with the OAuth endpoints in the
    oauth-uris extension (for clients that read them there rather than from
    ``.well-known/smart-configuration``)."""
    uris = [("token", config.token_endpoint), ("authorize", config.endpoint("authorize")),
            ("revoke", config.endpoint("revoke")), ("introspect", config.endpoint("introspect"))]
    return {
        "extension": [{"url": OAUTH_URIS, "extension": [
            {"url": name, "valueUri": uri} for name, uri in uris]}],
        "cors": bool(config.cors_origins),
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR"}]}],
        "description": "OAuth 2.0 with SMART App Launch v2 scopes: private_key_jwt client "
                       "credentials for systems, authorization code with PKCE for people "
                       "(discovery: .well-known/smart-configuration)",
    }
