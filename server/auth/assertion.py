"""Client authentication with ``private_key_jwt`` (RFC 7523), as a client sends it: the form
fields of a token request carrying a short-lived JWT signed with the client's own key."""

from __future__ import annotations

import secrets
import time
from typing import Any

from joserfc import jwt

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def client_assertion_form(client_id: str, key: Any, *, alg: str, kid: str | None,
                          audience: str, lifetime_s: int = 60) -> dict[str, str]:
    """``client_id``, ``client_assertion_type`` and ``client_assertion`` for a token request
    to ``audience`` (the token endpoint, or what the provider names)."""
    now = int(time.time())
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now,
              "exp": now + lifetime_s, "jti": secrets.token_urlsafe(18)}
    return {"client_id": client_id, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": jwt.encode(header, claims, key, algorithms=[alg])}
