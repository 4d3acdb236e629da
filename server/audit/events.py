"""The records the audit layer writes: FHIR R4 AuditEvent (an access) and Provenance (a write).

An AuditEvent names one person at most (``entity`` with the Patient, role *patient*), so that
``AuditEvent?patient=<id>`` gives that person their own log and nothing of anyone else's: an
interaction that touched several people is recorded once per person.

- ``agent``: the requestor - the person (``Patient``), the health worker (HPR identifier) or
  the client system (its client id) - and the organisation it acts for (organisation number);
- ``subtype``: the RESTful interaction; ``action`` C/R/U/D/E; ``outcome`` 0 (success),
  4 (refused or not found), 8 (failed);
- ``purposeOfEvent`` (v3-ActReason): ``TREAT`` (care team), ``ETREAT`` (emergency access,
  also tagged :data:`EMERGENCY_TAG`, with the stated reason in an entity detail), ``PATRQT``
  (the person themself), ``HSYSADMIN`` (administrative systems and auditors);
- ``entity``: the person, the resources read or written (versioned references, at most
  :data:`MAX_ENTITIES`), and for searches the query.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from ..access.caller import ADMIN, PATIENT, PRACTITIONER, Caller
from ..access.index import PERSON_EXTENSION
from ..access.labels import CLASS_DISPLAY, CONTENT_CLASS_SYSTEM
from ..fhir.search.ast import IndexValues
from ..fhir.search.extract import EMITTERS
from ..plans.identifiers import ENH_SYSTEM, HPR_SYSTEM

CLIENT_ID_SYSTEM = "http://planbro.no/fhir/NamingSystem/client-id"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
EMERGENCY_TAG = {"system": "http://planbro.no/fhir/CodeSystem/audit-flag", "code": "emergency",
                 "display": "Nødtilgang"}
MAX_ENTITIES = 50

TREAT, ETREAT, PATRQT, HSYSADMIN = "TREAT", "ETREAT", "PATRQT", "HSYSADMIN"
_PURPOSE_DISPLAY = {TREAT: "treatment", ETREAT: "emergency treatment",
                    PATRQT: "patient requested", HSYSADMIN: "health system administration"}
_ACTIONS = {"create": "C", "read": "R", "vread": "R", "update": "U", "patch": "U",
            "delete": "D", "history-instance": "R", "history-type": "R",
            "history-system": "R"}


@dataclass(frozen=True)
class Access:
    """One access of one person's data (or of nobody's: a search that found nothing)."""

    caller: Caller
    interaction: str  # a restful-interaction code, or operation / batch / transaction
    recorded: str  # FHIR instant
    person: str | None
    resources: tuple[str, ...] = ()  # versioned references
    query: str | None = None  # Type?params of a search or a conditional write
    outcome: str = "0"
    outcome_text: str | None = None
    purpose: str = TREAT
    reason: str | None = None  # the reason stated for emergency access


def purpose_of(caller: Caller, emergency: bool) -> str:
    if caller.kind == PATIENT:
        return PATRQT
    if caller.kind == ADMIN or (caller.auditor and not caller.organization):
        return HSYSADMIN
    return ETREAT if emergency else TREAT


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def requestor(caller: Caller) -> dict[str, Any]:
    """A Reference to who asked: the person, the health worker, or the client system."""
    if caller.kind == PATIENT and caller.patient:
        return {"reference": f"Patient/{caller.patient}"}
    if caller.kind == PRACTITIONER and caller.practitioner:
        return {"type": "Practitioner",
                "identifier": {"system": HPR_SYSTEM, "value": caller.practitioner}}
    return {"type": "Device", "identifier": {"system": CLIENT_ID_SYSTEM,
                                             "value": caller.client_id or "unknown"},
            "display": f"Client system {caller.client_id}"}


def organisation(caller: Caller) -> dict[str, Any] | None:
    if not caller.organization:
        return None
    return {"type": "Organization",
            "identifier": {"system": ENH_SYSTEM, "value": caller.organization}}


def audit_event(access: Access) -> dict[str, Any]:
    """The AuditEvent of one access."""
    purpose = [{"coding": [_coding(ACT_REASON, access.purpose,
                                   _PURPOSE_DISPLAY[access.purpose])]}]
    agents: list[dict[str, Any]] = [{
        "type": {"coding": [_coding("http://dicom.nema.org/resources/ontology/DCM", "110153",
                                    "Source Role ID")]},
        "who": requestor(access.caller), "requestor": True, "purposeOfUse": purpose}]
    if access.caller.client_id:
        agents[0]["altId"] = access.caller.client_id
    org = organisation(access.caller)
    if org is not None:
        agents.append({"who": org, "requestor": False,
                       "role": [{"text": "The organisation the requestor acts for"}]})
    entities: list[dict[str, Any]] = []
    if access.person:
        entities.append({
            "what": {"reference": f"Patient/{access.person}"},
            "type": _coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1",
                            "Person"),
            "role": _coding("http://terminology.hl7.org/CodeSystem/object-role", "1",
                            "Patient")})
    entities += [{"what": {"reference": ref},
                  "type": _coding("http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                  "2", "System Object")}
                 for ref in access.resources[:MAX_ENTITIES]]
    if access.query:
        entities.append({
            "type": _coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2",
                            "System Object"),
            "role": _coding("http://terminology.hl7.org/CodeSystem/object-role", "24",
                            "Query"),
            "description": access.query[:1000],
            "query": base64.b64encode(access.query.encode()).decode()})
    if access.reason:
        entities.append({"description": "Reason stated for emergency access",
                         "detail": [{"type": "emergency-reason",
                                     "valueString": access.reason}]})
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest",
                        "Restful Operation"),
        "subtype": [_subtype(access.interaction)],
        "action": _ACTIONS.get(access.interaction, "E"),
        "recorded": access.recorded,
        "outcome": access.outcome,
        "purposeOfEvent": purpose,
        "agent": agents,
        "source": {"observer": {"display": "Planbro"},
                   "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type",
                                    "4", "Application Server")]},
    }
    if access.outcome_text:
        event["outcomeDesc"] = access.outcome_text[:1000]
    if entities:
        event["entity"] = entities
    if access.purpose == ETREAT:
        event["meta"] = {"tag": [EMERGENCY_TAG]}
    return event


_KEYS = {
    "": {"resourceType", "id", "meta", "type", "subtype", "action", "recorded", "outcome",
         "outcomeDesc", "purposeOfEvent", "agent", "source", "entity"},
    "meta": {"versionId", "lastUpdated", "tag"},
    "agent": {"type", "who", "requestor", "purposeOfUse", "altId", "role"},
    "source": {"observer", "type"},
    "entity": {"what", "type", "role", "description", "query", "detail"},
}
"""The elements of the AuditEvents :func:`audit_event` makes (stamped by a store)."""
_CODING = EMITTERS["token"]["Coding"]
_CONCEPT = EMITTERS["token"]["CodeableConcept"]
_CODE = EMITTERS["token"]["code"]
_STRING = EMITTERS["token"]["string"]
_REFERENCE = EMITTERS["reference"]["Reference"]
_INSTANT = EMITTERS["date"]["instant"]


def event_values(event: dict[str, Any]) -> IndexValues | None:
    """The values of AuditEvent's search parameters in an AuditEvent made by
    :func:`audit_event`, computed straight from the elements it has, with the emitters the
    registry's extractors use (the same values: ``tests/access/test_audit_index.py``), at a
    fraction of the cost of evaluating each parameter's expression. None for an AuditEvent
    of any other shape: the registry computes those."""
    if not _shaped(event):
        return None
    out = IndexValues()
    for tag in event.get("meta", {}).get("tag", ()):
        _CODING("_tag", tag, out)
    _CODE("action", event["action"], out)
    _CODE("outcome", event["outcome"], out)
    _INSTANT("date", event["recorded"], out)
    _CODING("type", event["type"], out)
    for subtype in event["subtype"]:
        _CODING("subtype", subtype, out)
    for agent in event["agent"]:
        who = agent.get("who")
        _REFERENCE("agent", who, out)
        if _is_patient(who):
            _REFERENCE("patient", who, out)
        for role in agent.get("role", ()):
            _CONCEPT("agent-role", role, out)
        _STRING("altid", agent.get("altId"), out)
    _REFERENCE("source", event["source"].get("observer"), out)
    for entity in event.get("entity", ()):
        what = entity.get("what")
        _REFERENCE("entity", what, out)
        if _is_patient(what):
            _REFERENCE("patient", what, out)
        _CODING("entity-type", entity.get("type"), out)
        _CODING("entity-role", entity.get("role"), out)
    for name in ("tokens", "references"):
        values = getattr(out, name)
        setattr(out, name, list(dict.fromkeys(values)))
    return out


def _shaped(event: dict[str, Any]) -> bool:
    """Whether ``event`` has only the elements, and of the kinds, :func:`audit_event` makes."""
    if not event.keys() <= _KEYS[""] or not all(
            isinstance(event.get(k), str) for k in ("action", "outcome", "recorded")):
        return False
    meta, source = event.get("meta", {}), event.get("source")
    agents, entities = event.get("agent"), event.get("entity", [])
    return (type(meta) is dict and meta.keys() <= _KEYS["meta"]
            and type(meta.get("tag", [])) is list
            and type(event.get("type")) is dict and type(event.get("subtype")) is list
            and type(source) is dict and source.keys() <= _KEYS["source"]
            and type(agents) is list and type(entities) is list
            and all(type(a) is dict and a.keys() <= _KEYS["agent"]
                    and type(a.get("role", [])) is list for a in agents)
            and all(type(e) is dict and e.keys() <= _KEYS["entity"] for e in entities))


def _is_patient(reference: Any) -> bool:
    """``resolve() is Patient`` for the references :func:`audit_event` makes (literal ones
    name their type; the others are a health worker's, an organisation's or a system's)."""
    return type(reference) is dict and isinstance(reference.get("reference"), str) \
        and reference["reference"].startswith("Patient/")


def _subtype(interaction: str) -> dict[str, str]:
    if interaction in _ACTIONS or interaction == "search-type":
        return _coding("http://hl7.org/fhir/restful-interaction", interaction)
    return _coding("http://planbro.no/fhir/CodeSystem/interaction", interaction)


def provenance(*, target: str, activity: str, recorded: str, caller: Caller,
               people: list[str], content_class: str | None) -> dict[str, Any]:
    """The Provenance of one write (``target`` a versioned reference; ``activity`` CREATE,
    UPDATE or DELETE): who wrote it, on behalf of which organisation, whose data it is."""
    if caller.kind == "internal":
        who: dict[str, Any] = {"display": "Planbro (a rule of the server)"}
    else:
        who = requestor(caller)
    agent: dict[str, Any] = {
        "type": {"coding": [_coding(
            "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author",
            "Author")]},
        "who": who}
    org = organisation(caller)
    if org is not None and caller.kind != PATIENT:
        agent["onBehalfOf"] = org
    out: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": recorded,
        "activity": {"coding": [_coding(
            "http://terminology.hl7.org/CodeSystem/v3-DataOperation", activity)]},
        "agent": [agent],
    }
    if people:
        out["extension"] = [{"url": PERSON_EXTENSION,
                             "valueReference": {"reference": f"Patient/{p}"}} for p in people]
    if content_class is not None:
        out["meta"] = {"security": [_coding(CONTENT_CLASS_SYSTEM, content_class,
                                            CLASS_DISPLAY[content_class])]}
    return out
