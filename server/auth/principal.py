"""Who is calling: the result of checking a token, handed to the access-control layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .scopes import ScopeSet

Kind = Literal["system", "practitioner", "patient"]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request.

    - ``kind``: ``patient`` (the person themself, through the patient app or an ID-porten
      style token), ``practitioner`` (a health worker identified by an HPR number, acting
      through a system) or ``system`` (an organisation's system with no person named).
    - ``organization``: the organisation number (orgnr) the caller acts for; the access layer
      matches it against the person's care team and consent.
    - ``practitioner``: the HPR number of the acting health worker.
    - ``patient``: the logical id of the Patient the caller IS (patients only).
    - ``scopes``: what the token may do (SMART); never sufficient alone to see a person.
    - ``emergency_reason``: a stated reason for emergency access ("break the glass"), from the
      ``X-Planbro-Emergency-Reason`` header or a token claim; the access layer decides whether
      it opens anything and audits it.
    """

    kind: Kind
    client_id: str
    scopes: ScopeSet
    issuer: str
    subject: str
    token_id: str | None = None
    organization: str | None = None
    practitioner: str | None = None
    patient: str | None = None
    fhir_user: str | None = None
    emergency_reason: str | None = None
    dpop_jkt: str | None = None
    expires_at: int | None = None
    claims: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON view without the raw claims (for logs and diagnostics)."""
        return {
            "kind": self.kind,
            "client_id": self.client_id,
            "scopes": str(self.scopes),
            "issuer": self.issuer,
            "subject": self.subject,
            "token_id": self.token_id,
            "organization": self.organization,
            "practitioner": self.practitioner,
            "patient": self.patient,
            "fhir_user": self.fhir_user,
            "emergency_reason": self.emergency_reason,
            "dpop_jkt": self.dpop_jkt,
            "expires_at": self.expires_at,
        }
