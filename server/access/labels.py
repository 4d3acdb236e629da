"""Content classes: what kind of content a resource (or a measure inside a plan) is, so that a
consent can share some classes with an actor and not others.

Codes of ``http://planbro.no/fhir/CodeSystem/content-class``:

- ``plan`` - the plan's frame and who takes part: the person, next of kin, the plan itself
  (period, responsible organisation, evaluations), the care team with its coordinator,
  consents, notes to the care team;
- ``goal`` - the person's goals;
- ``measure`` - measures (``Task``, plan activities) that are not health care;
- ``health`` - health information: conditions, clinical documents, questionnaire answers,
  requests for health services, health-care measures, the notification from a hospital.

A resource's class follows from its type (:data:`TYPE_CLASS`); a writer may mark any resource
as health information with ``meta.security`` = ``content-class#health`` (it can only narrow,
never widen). The server writes the class it assigned into ``meta.security`` of every
person's resource it stores. A plan activity is health information when its writer marks it
(the extension :data:`ACTIVITY_CLASS_URL` = ``content-class#health``), when it is a health
request (its ``detail.kind`` or ``reference``), or when a health worker in person (a
``Practitioner``) performs it; otherwise it is a ``measure``. The code system, its value set
and the extension are published in ``profiles/``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CONTENT_CLASS_SYSTEM = "http://planbro.no/fhir/CodeSystem/content-class"
ACTIVITY_CLASS_URL = "http://planbro.no/fhir/StructureDefinition/activity-content-class"
PLAN, GOAL, MEASURE, HEALTH = "plan", "goal", "measure", "health"
CLASSES: tuple[str, ...] = (PLAN, GOAL, MEASURE, HEALTH)
CLASS_DISPLAY = {PLAN: "Plan og samarbeid", GOAL: "Mål", MEASURE: "Tiltak",
                 HEALTH: "Helseopplysninger"}

REDACTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "REDACTED", "display": "redacted"}
"""``meta.security`` of a resource shown in part (a partial view by consent)."""

TASK_CODE_SYSTEM = "http://planbro.no/fhir/CodeSystem/task-code"
NOTIFICATION_CODE = "ip-notification"

TYPE_CLASS: dict[str, str] = {
    "Patient": PLAN,
    "RelatedPerson": PLAN,
    "CarePlan": PLAN,
    "CareTeam": PLAN,
    "Consent": PLAN,
    "Communication": PLAN,
    "Provenance": PLAN,
    "Goal": GOAL,
    "Task": MEASURE,
    "ServiceRequest": HEALTH,
    "Condition": HEALTH,
    "DocumentReference": HEALTH,
    "QuestionnaireResponse": HEALTH,
}
"""The class of each type of a person's data (AuditEvent, the access log, has none: only the
person and auditors read it)."""

PERSON_TYPES: frozenset[str] = frozenset(TYPE_CLASS) | {"AuditEvent"}
"""Types whose resources are a person's data (the Patient compartment and the plan's
resources)."""

OPEN_TYPES: frozenset[str] = frozenset({"Organization", "Practitioner", "PractitionerRole"})
"""Directory types: any authenticated caller may read them (scopes permitting)."""

OWNED_TYPES: frozenset[str] = frozenset({"Subscription"})
"""Technical types that belong to the caller that created them: only that caller (and
administrative systems) sees and changes them."""

OWNER_SYSTEM = "http://planbro.no/fhir/CodeSystem/owner"
"""``meta.tag`` system of the caller an owned resource belongs to (set by the server)."""

RESPONSIBLE_PARAMS: dict[str, str] = {"Task": "owner", "ServiceRequest": "performer"}
"""The measures a party is responsible for: the reference parameter naming the party."""

_HEALTH_REQUESTS = frozenset({"ServiceRequest", "MedicationRequest", "DeviceRequest",
                              "NutritionOrder", "VisionPrescription"})


def _codes(codings: Iterable[Any]) -> set[str]:
    return {str(c.get("code")) for c in codings
            if isinstance(c, dict) and c.get("system") == CONTENT_CLASS_SYSTEM}


def labelled(resource: dict[str, Any]) -> set[str]:
    """The content classes written in ``meta.security``."""
    meta = resource.get("meta")
    return _codes(meta.get("security") or []) if isinstance(meta, dict) else set()


def is_notification(resource: dict[str, Any]) -> bool:
    """A Task that is a hospital's notification of need for an individual plan."""
    codings = (resource.get("code") or {}).get("coding") or []
    return resource.get("resourceType") == "Task" and any(
        c.get("system") == TASK_CODE_SYSTEM and c.get("code") == NOTIFICATION_CODE
        for c in codings if isinstance(c, dict))


def content_class(resource: dict[str, Any]) -> str | None:
    """The content class of a person's resource (None for other types and AuditEvent)."""
    type_ = str(resource.get("resourceType"))
    if type_ not in TYPE_CLASS:
        return None
    marks = labelled(resource)
    if type_ == "Provenance":  # the server labels it with the class of what it records
        return next((c for c in CLASSES if c in marks), PLAN)
    if HEALTH in marks or is_notification(resource):
        return HEALTH
    return TYPE_CLASS[type_]


def with_class_label(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with its content class as the only ``content-class`` coding of
    ``meta.security`` (unchanged when it has no class)."""
    klass = content_class(resource)
    if klass is None:
        return resource
    meta = dict(resource.get("meta") or {})
    others = [c for c in meta.get("security") or []
              if not (isinstance(c, dict) and c.get("system") == CONTENT_CLASS_SYSTEM)]
    meta["security"] = [*others, {"system": CONTENT_CLASS_SYSTEM, "code": klass,
                                  "display": CLASS_DISPLAY[klass]}]
    return {**resource, "meta": meta}


def _reference_type(node: Any) -> str:
    ref = node.get("reference") if isinstance(node, dict) else None
    return ref.split("/")[-2] if isinstance(ref, str) and ref.count("/") >= 1 else ""


def activity_class(activity: dict[str, Any]) -> str:
    """The content class of one ``CarePlan.activity``: ``health`` or ``measure``."""
    detail = activity.get("detail") or {}
    marks = [c for ext in activity.get("extension") or []
             if isinstance(ext, dict) and ext.get("url") == ACTIVITY_CLASS_URL
             for c in (ext.get("valueCodeableConcept") or {}).get("coding") or []]
    if HEALTH in _codes(marks):
        return HEALTH
    if detail.get("kind") in _HEALTH_REQUESTS:
        return HEALTH
    if _reference_type(activity.get("reference")) in _HEALTH_REQUESTS:
        return HEALTH
    if any(_reference_type(p) == "Practitioner" for p in detail.get("performer") or []):
        return HEALTH
    return MEASURE


def activity_performers(activity: dict[str, Any]) -> list[str]:
    """The references (``Type/id``) of those responsible for an activity."""
    detail = activity.get("detail") or {}
    out = []
    for node in detail.get("performer") or []:
        ref = node.get("reference") if isinstance(node, dict) else None
        if isinstance(ref, str) and "/" in ref:
            out.append("/".join(ref.split("/")[-2:]))
    return out
