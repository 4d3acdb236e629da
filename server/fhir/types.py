"""The resource types this server supports (FHIR R4 4.0.1)."""

from __future__ import annotations

FHIR_VERSION = "4.0.1"

RESOURCE_TYPES: tuple[str, ...] = (
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "RelatedPerson",
    "CarePlan",
    "CareTeam",
    "Goal",
    "Consent",
    "Task",
    "ServiceRequest",
    "Condition",
    "Communication",
    "DocumentReference",
    "QuestionnaireResponse",
    "AuditEvent",
    "Provenance",
    "Subscription",
)

# Bundle is accepted for batch/transaction at the base URL, and stored only if posted as such.
STORED_TYPES: tuple[str, ...] = RESOURCE_TYPES + ("Bundle",)
