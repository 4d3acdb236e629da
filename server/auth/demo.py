"""Demo mode: the patient-app client registered out of the box.

In demo mode patients sign in on a clearly labelled demo page (see :mod:`server.auth.login`)
by picking one of the demo people; the same page lets this server act as the upstream OpenID
provider of another instance (an id_token with ``pid`` and ``acr``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from joserfc import jwk

from .assertion import client_assertion_form
from .clients import ClientRecord, ClientRegistry
from .config import AuthConfig

PATIENT_APP_ID = "planbro-patient-app"
PATIENT_APP_SCOPE = (
    "openid fhirUser launch/patient offline_access online_access "
    "patient/*.rs patient/Goal.cu patient/Consent.cu patient/Communication.c "
    "patient/QuestionnaireResponse.cu"
)


def patient_app_client(config: AuthConfig) -> ClientRecord:
    return ClientRecord(
        client_id=PATIENT_APP_ID,
        name="Planbro patient app (demo)",
        token_endpoint_auth_method="none",
        grant_types=("authorization_code", "refresh_token"),
        scope=PATIENT_APP_SCOPE,
        redirect_uris=config.patient_app_redirect_uris,
    )


def ensure_demo_clients(clients: ClientRegistry, config: AuthConfig) -> bool:
    """Register the demo patient app unless a client with its id exists (an operator's
    changes are kept). True when it was added now."""
    return clients.add(patient_app_client(config))


# Demo organisation systems: client id -> (name, organisation key in server.demo.ORGNR, scope).
DEMO_SYSTEMS: dict[str, tuple[str, str, str]] = {
    "demo-hospital-ehr": ("Demo hospital EHR", "sykehus", "system/*.cruds"),
    "demo-municipality": ("Demo municipality care system", "kommune", "system/*.cruds"),
    "demo-nav": ("Demo NAV office system", "nav",
                 "system/CarePlan.rs system/CareTeam.rs system/Goal.rs system/Task.cruds "
                 "system/Patient.rs system/Organization.rs system/Practitioner.rs "
                 "system/PractitionerRole.rs"),
}


def ensure_demo_system_clients(clients: ClientRegistry, config: AuthConfig,
                               orgnr: dict[str, str], path: Path) -> dict[str, Any]:
    """Register the demo organisations' systems (private_key_jwt, ES384 keys) and write
    their ids, organisation numbers, scopes and private keys to ``path``, so that a script can
    get a token without reading the code. Keys already written are kept."""
    known: dict[str, Any] = {}
    if path.exists():
        known = {c["client_id"]: c for c in json.loads(path.read_text()).get("clients", [])}
    out = []
    for client_id, (name, org_key, scope) in DEMO_SYSTEMS.items():
        private = known.get(client_id, {}).get("private_jwk")
        if private is None:
            private = jwk.ECKey.generate_key("P-384", parameters={
                "kid": f"{client_id}-1", "alg": "ES384", "use": "sig"}).as_dict(private=True)
        public = jwk.import_key(private).as_dict(private=False)
        clients.put(ClientRecord(
            client_id=client_id, name=name, scope=scope, organization=orgnr[org_key],
            jwks={"keys": [{**public, "kid": private["kid"], "alg": "ES384"}]}))
        out.append({"client_id": client_id, "name": name, "organization": orgnr[org_key],
                    "scope": scope, "alg": "ES384", "private_jwk": private})
    patient_app = patient_app_client(config)
    doc = {
        "note": "Demo mode only: synthetic organisations and throw-away keys.",
        "token_endpoint": config.token_endpoint,
        "fhir_base": config.fhir_audience,
        "clients": out,
        "patient_app": {"client_id": patient_app.client_id, "scope": patient_app.scope,
                        "redirect_uris": list(patient_app.redirect_uris),
                        "authorize_endpoint": config.endpoint("authorize")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return doc


def demo_token(path: Path, client_id: str, scope: str | None = None) -> dict[str, Any]:
    """Get an access token for a demo system the way the system itself would: a client
    assertion signed with its private key (private_key_jwt) posted to the token endpoint."""
    import urllib.error
    import urllib.parse
    import urllib.request

    doc = json.loads(path.read_text())
    client = next((c for c in doc["clients"] if c["client_id"] == client_id), None)
    if client is None:
        known = ", ".join(c["client_id"] for c in doc["clients"])
        raise ValueError(f"{client_id} is not a demo client in {path} (known: {known})")
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials", "scope": scope or client["scope"],
        **client_assertion_form(client_id, jwk.import_key(client["private_jwk"]),
                                alg=client["alg"], kid=client["private_jwk"]["kid"],
                                audience=doc["token_endpoint"])}).encode()
    try:
        with urllib.request.urlopen(doc["token_endpoint"], form, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"the token endpoint refused: {exc.read().decode()}") from exc
    return answer
