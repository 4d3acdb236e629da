"""Who is asking, as the access layer sees it: one :class:`Caller` per request context."""

from __future__ import annotations

from dataclasses import dataclass

from ..auth.principal import Principal
from ..fhir.outcome import FhirError
from .grants import holder_key

ADMIN_SCOPE = "planbro/admin"
"""Scope of an administrative system (imports, operations, the test and load fixtures): sees
and writes every person's data. Honoured only in tokens of this server's own issuer, so only a
client registered with it can hold it; never from an external issuer."""

AUDIT_SCOPE = "planbro/audit"
"""Scope of an auditor: may read every AuditEvent (the access log). Own issuer only."""

INTERNAL, ADMIN, PATIENT, PRACTITIONER, SYSTEM = (
    "internal", "admin", "patient", "practitioner", "system")


@dataclass(frozen=True)
class Caller:
    """``kind``: ``internal`` (a caller inside the server: no principal), ``admin``,
    ``patient`` (the person ``patient``), ``practitioner`` (HPR ``practitioner`` acting for
    ``organization``) or ``system`` (an organisation's system)."""

    kind: str
    client_id: str | None = None
    organization: str | None = None
    practitioner: str | None = None
    patient: str | None = None
    auditor: bool = False
    emergency: str | None = None  # the reason a practitioner states for emergency access

    @property
    def unrestricted(self) -> bool:
        return self.kind in (INTERNAL, ADMIN)

    @property
    def owner(self) -> str | None:
        """The key an owned resource (a Subscription) of this caller is tagged with: the
        client, and the person or health worker it acts for."""
        if not self.client_id:
            return None
        if self.patient:
            return f"{self.client_id}/Patient/{self.patient}"
        if self.practitioner:
            return f"{self.client_id}/hpr/{self.practitioner}"
        return self.client_id

    @property
    def holders(self) -> tuple[str, ...]:
        """The grant holders this caller answers to: the organisation, and the health worker
        within it."""
        out = [self.organization] if self.organization else []
        if self.practitioner:
            out.append(holder_key(self.organization, self.practitioner))
        return tuple(out)


def caller_of(principal: Principal | None, own_issuer: str, *, strict: bool = True) -> Caller:
    """The caller a request's principal is; 403 when a reason for emergency access comes from
    anyone but a health worker (a practitioner token) - unless not ``strict`` (describing a
    caller for the audit log), when the reason is ignored."""
    if principal is None:
        return Caller(INTERNAL)
    own = principal.issuer == own_issuer
    auditor = own and AUDIT_SCOPE in principal.scopes
    if own and ADMIN_SCOPE in principal.scopes:
        return Caller(ADMIN, principal.client_id, principal.organization, auditor=auditor)
    if strict and principal.emergency_reason and principal.kind != PRACTITIONER:
        raise FhirError.of(403, "Emergency access needs a health worker's token (with an HPR "
                           "number); this token is not one", code="forbidden")
    return Caller(principal.kind, principal.client_id, principal.organization,
                  principal.practitioner, principal.patient, auditor,
                  principal.emergency_reason if principal.kind == PRACTITIONER else None)
