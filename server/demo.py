"""Synthetic demo data: the published examples of our profiles (``profiles/examples/``),
loaded as one FHIR R4 transaction Bundle.

They are the one source of demo content, so the demo shows exactly what the profiles define:
Kari's Norwegian individual plan (care team with a coordinator, goals with a sub-goal,
measures, consents, the hospital's notification and the municipality's green form) and the
Swedish SIP example "Rut, 82" as its source gives it, with the organisations and health
personnel they refer to. Person numbers are synthetic (month + 80), organisation numbers start
with 3 (real ones start with 8 or 9); nothing refers to a real person or organisation.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from .fhir import bundle as fhir_bundle
from .fhir.conformance import PROFILES_DIR
from .fhir.service import FhirService, RequestContext
from .plans.identifiers import ENH_SYSTEM, FNR_SYSTEM

EXAMPLES_DIR = PROFILES_DIR / "examples"

# The demo's organisations (example ids) by the role they play.
ORGANISATIONS = {"kommune": "kommune", "sykehus": "sykehus", "nav": "nav"}
PERSON = "kari"  # the Norwegian person with an individual plan
SIP_PLAN = "rut-sip"


@cache
def examples() -> tuple[dict[str, Any], ...]:
    """Every valid example resource, plans last (activating a plan reads its consent and
    care team)."""
    found = [json.loads(p.read_text(encoding="utf-8"))
             for p in sorted(Path(EXAMPLES_DIR).glob("*.json"))]
    return tuple(sorted(found, key=lambda r: r["resourceType"] == "CarePlan"))


def _example(type_: str, id_: str) -> dict[str, Any]:
    return next(r for r in examples() if r["resourceType"] == type_ and r["id"] == id_)


def _identifier(resource: dict[str, Any], system: str) -> str:
    return next(i["value"] for i in resource.get("identifier", []) if i.get("system") == system)


ORGNR: dict[str, str] = {role: _identifier(_example("Organization", id_), ENH_SYSTEM)
                         for role, id_ in ORGANISATIONS.items()}
KARI_FNR = _identifier(_example("Patient", PERSON), FNR_SYSTEM)


def demo_bundle() -> dict[str, Any]:
    """The demo data as one R4 transaction Bundle of updates (PUT) with the examples' ids."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r,
         "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in examples()]}


def load_demo(service: FhirService, base_url: str = "http://localhost/fhir") -> dict[str, int]:
    """Load the demo data as one transaction, unless it is there already (then nothing is
    written: loading again adds no versions). Returns how many resources were ``created``
    and how many were ``existing``."""
    ctx = RequestContext(base_url=base_url)
    present = [r for r in examples() if service.store.read(r["resourceType"], r["id"])]
    if present:
        return {"created": 0, "existing": len(present)}
    result = fhir_bundle.process(service, ctx, demo_bundle())
    statuses = [entry["response"]["status"] for entry in (result.body or {})["entry"]]
    created = sum(status.startswith("201") for status in statuses)
    return {"created": created, "existing": len(statuses) - created}
