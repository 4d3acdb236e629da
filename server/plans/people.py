"""Finding people: a person is one Patient, found by national identity number."""

from __future__ import annotations

from typing import Any

from ..fhir.service import FhirService, RequestContext
from .identifiers import DNR_SYSTEM, FNR_SYSTEM

_INTERNAL = RequestContext(base_url="")


def _identity(patient: dict[str, Any]) -> str:
    for ident in patient.get("identifier", []):
        if ident.get("system") in (FNR_SYSTEM, DNR_SYSTEM):
            return str(ident.get("value", ""))
    return ""


def _name(patient: dict[str, Any]) -> str:
    for name in patient.get("name", []):
        if name.get("text"):
            return str(name["text"])
        parts = [*name.get("given", []), name.get("family", "")]
        if any(parts):
            return " ".join(p for p in parts if p)
    return f"Patient/{patient['id']}"


def patient_by_national_id(service: FhirService, number: str) -> str | None:
    """The id of the Patient with this fødselsnummer or D-number, or None."""
    for system in (FNR_SYSTEM, DNR_SYSTEM):
        result = service.search(_INTERNAL, "Patient", [("identifier", f"{system}|{number}"),
                                                       ("_count", "2")])
        entries = (result.body or {}).get("entry", [])
        if entries:
            return str(entries[0]["resource"]["id"])
    return None


def listed_people(service: FhirService, limit: int = 50) -> list[tuple[str, str, str]]:
    """(Patient id, display name, national id) of people with a Norwegian identity number,
    for the demo sign-in page."""
    result = service.search(_INTERNAL, "Patient", [("_count", str(limit)), ("_sort", "name")])
    people = []
    for entry in (result.body or {}).get("entry", []):
        patient = entry["resource"]
        number = _identity(patient)
        if number:
            people.append((str(patient["id"]), _name(patient), number))
    return people
