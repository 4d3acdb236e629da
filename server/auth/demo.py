"""Demo mode: the patient-app client registered out of the box.

In demo mode patients sign in on a clearly labelled demo page (see :mod:`server.auth.login`)
by picking one of the demo people; the same page lets this server act as the upstream OpenID
provider of another instance (an id_token with ``pid`` and ``acr``)."""

from __future__ import annotations

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
