"""OAuth 2 / SMART on FHIR: the embedded authorisation server (authlib), token checks for our
own and trusted external issuers, SMART v2 scopes and DPoP.

Wiring: ``init_app(app, store, AuthConfig.from_env(...), people=..., find_patient_by_fnr=...)``
returns the :class:`AuthServer`; the FHIR layer calls ``auth.authenticate(request)`` for a
:class:`Principal` and :func:`require` per interaction.
"""

from .config import AuthConfig, TrustedIssuer, UpstreamOidc
from .principal import Principal
from .scopes import (
    INTERACTION_PERMISSIONS,
    ScopeError,
    ScopeSet,
    entry_interaction,
    require,
    required_permissions,
)
from .server import AuthServer, init_app

__all__ = [
    "AuthConfig",
    "AuthServer",
    "INTERACTION_PERMISSIONS",
    "Principal",
    "ScopeError",
    "ScopeSet",
    "TrustedIssuer",
    "UpstreamOidc",
    "entry_interaction",
    "init_app",
    "require",
    "required_permissions",
]
