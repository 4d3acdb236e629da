"""Small helpers the plan workflow modules share: references, codings, extensions, time,
``Parameters`` bodies, and who the caller acts for.

Writes the server makes as a consequence of a request (attaching a contribution to a plan,
revoking plans when consent is withdrawn, sending a reminder) run in the same unit of work
with :func:`as_server`: the server itself, with no principal, so that the caller's token
scopes - which cover the request, not its consequences - are not asked again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..fhir.outcome import FhirError
from ..fhir.search.normalize import date_range
from ..fhir.service import FhirService, Reader, RequestContext
from ..store.port import now_instant
from .identifiers import ENH_SYSTEM
from .invariants import CANON, ref_id

TASK_CODE = f"{CANON}/CodeSystem/task-code"
TASK_OUTPUT = f"{CANON}/CodeSystem/task-output"
STATUS_REASON = f"{CANON}/CodeSystem/plan-status-reason"
EXT_RESPONSIBLE = f"{CANON}/StructureDefinition/ip-responsible-organization"
EXT_SIP_RESPONSIBLE = f"{CANON}/StructureDefinition/sip-overall-responsible"
EXT_EVALUATION = f"{CANON}/StructureDefinition/ip-evaluation-date"
EXT_STATUS_REASON = f"{CANON}/StructureDefinition/ip-status-reason"
EXT_WITHDRAWAL = f"{CANON}/StructureDefinition/ip-consent-withdrawal"
EXT_PARENT_GOAL = f"{CANON}/StructureDefinition/ip-parent-goal"
ORG_NUMBER_SYSTEMS = (ENH_SYSTEM,)
"""Identifier systems of organisation numbers (those a caller's token names)."""


# -- references and codings -------------------------------------------------------------------


def ref_text(reference: Any) -> str | None:
    """The literal ``reference`` string of a Reference, if any."""
    if isinstance(reference, Mapping) and isinstance(reference.get("reference"), str):
        return str(reference["reference"])
    return None


def reference(type_: str, id_: str, display: str | None = None) -> dict[str, str]:
    out = {"reference": f"{type_}/{id_}"}
    if display:
        out["display"] = display
    return out


def codes(concept: Any, system: str) -> list[str]:
    """The codes of ``system`` in a CodeableConcept."""
    if not isinstance(concept, Mapping):
        return []
    return [str(c.get("code")) for c in concept.get("coding", [])
            if isinstance(c, Mapping) and c.get("system") == system and c.get("code")]


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    entry = {"system": system, "code": code}
    if display:
        entry["display"] = display
    return {"coding": [entry]}


def task_code(task: Mapping[str, Any]) -> str | None:
    """The Planbro task-code of a Task (``ip-notification``, ``transfer``, ...)."""
    found = codes(task.get("code"), TASK_CODE)
    return found[0] if found else None


# -- extensions -------------------------------------------------------------------------------


def extensions(resource: Mapping[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension", []) if isinstance(e, dict) and e.get("url") == url]


def replace_extensions(resource: dict[str, Any], url: str,
                       values: Iterable[dict[str, Any]]) -> None:
    """Replace every extension ``url`` of ``resource`` by ``values`` (each an extension)."""
    kept = [e for e in resource.get("extension", []) if not (isinstance(e, dict)
                                                             and e.get("url") == url)]
    kept.extend(values)
    if kept:
        resource["extension"] = kept
    else:
        resource.pop("extension", None)


def responsible_organization(plan: Mapping[str, Any]) -> str | None:
    """The id of the organisation responsible for the plan now (an individual plan's
    ``ip-responsible-organization``, a SIP's ``sip-overall-responsible``)."""
    for url in (EXT_RESPONSIBLE, EXT_SIP_RESPONSIBLE):
        for ext in extensions(plan, url):
            found = ref_id(ext.get("valueReference"), "Organization")
            if found:
                return found
    return None


def set_responsible_organization(plan: dict[str, Any], org_id: str, display: str | None) -> None:
    """Make ``Organization/org_id`` the plan's responsible organisation (on the extension
    the plan already uses; an individual plan's otherwise)."""
    url = EXT_SIP_RESPONSIBLE if extensions(plan, EXT_SIP_RESPONSIBLE) else EXT_RESPONSIBLE
    replace_extensions(plan, url, [{"url": url,
                                    "valueReference": reference("Organization", org_id,
                                                                display)}])


# -- time -------------------------------------------------------------------------------------


def now_ms() -> int:
    return now_instant()[1]


def start_ms(text: str, where: str) -> int:
    """The first millisecond of a FHIR date/dateTime (400 naming ``where`` if invalid)."""
    try:
        return date_range(text)[0]
    except (ValueError, TypeError) as exc:
        raise FhirError.of(400, f"{where}: '{text}' is not a FHIR date or dateTime",
                           code="value", expression=where) from exc


def end_ms(text: str) -> int:
    """The last millisecond a FHIR date/dateTime covers (``2026-09-03``: the whole day)."""
    return date_range(text)[1]


# -- Parameters bodies ------------------------------------------------------------------------


def parameters(body: Any, operation: str) -> dict[str, list[dict[str, Any]]]:
    """The parameters of an operation's ``Parameters`` body, by name (400 otherwise)."""
    if body is None:
        return {}
    if not isinstance(body, Mapping) or body.get("resourceType") != "Parameters":
        raise FhirError.of(400, f"${operation} takes a Parameters resource", code="structure")
    out: dict[str, list[dict[str, Any]]] = {}
    for index, param in enumerate(body.get("parameter") or []):
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise FhirError.of(400, f"${operation}: every parameter needs a name",
                               code="structure", expression=f"Parameters.parameter[{index}]")
        out.setdefault(param["name"], []).append(param)
    return out


def single(params: Mapping[str, list[dict[str, Any]]], name: str, value_key: str,
           operation: str, *, required: bool = False) -> Any:
    """The ``value_key`` value (``valueReference``, ``valueString`` ...) of the one parameter
    ``name``; None when absent and not required."""
    found = params.get(name, [])
    if len(found) > 1:
        raise FhirError.of(400, f"${operation}: '{name}' may be given once", code="value",
                           expression=f"Parameters.parameter:{name}")
    if not found or value_key not in found[0]:
        if required:
            raise FhirError.of(400, f"${operation}: parameter '{name}' ({value_key}) is "
                               "required", code="required",
                               expression=f"Parameters.parameter:{name}")
        return None
    return found[0][value_key]


def date_value(param: Mapping[str, Any] | None) -> str | None:
    """A parameter's date or dateTime value."""
    if not param:
        return None
    value = param.get("valueDateTime") or param.get("valueDate")
    return str(value) if value else None


# -- organisations and callers ----------------------------------------------------------------


def as_server(ctx: RequestContext) -> RequestContext:
    """The context of a write the server makes itself as a consequence of ``ctx``."""
    return RequestContext(base_url=ctx.base_url)


def caller_organization(ctx: RequestContext) -> str | None:
    """The organisation number the caller acts for (None: the server, or a person)."""
    principal = ctx.principal
    if principal is None or getattr(principal, "kind", None) == "patient":
        return None
    org = getattr(principal, "organization", None)
    return str(org) if org else None


def caller_patient(ctx: RequestContext) -> str | None:
    """The Patient id of a caller who is the person themself."""
    principal = ctx.principal
    if principal is not None and getattr(principal, "kind", None) == "patient":
        patient = getattr(principal, "patient", None)
        return str(patient) if patient else None
    return None


def is_party(ctx: RequestContext) -> bool:
    """Whether the caller is a party to plans: an organisation's system or health worker, or
    the person. The server and systems registered for no organisation (integrations the
    operator trusts; access control decides what they reach) are not held to the parties'
    rules."""
    return caller_organization(ctx) is not None or caller_patient(ctx) is not None


def organization_ids(service: FhirService, reader: Reader, number: str) -> set[str]:
    """The ids of the Organizations with organisation number ``number``."""
    out: set[str] = set()
    for system in ORG_NUMBER_SYSTEMS:
        out |= {str(o["id"]) for o in service.lookup(reader, "Organization",
                                                     {"identifier": f"{system}|{number}"})}
    return out


def acts_for(service: FhirService, reader: Reader, ctx: RequestContext,
             org_id: str | None) -> bool:
    """Whether the caller may act for ``Organization/org_id``: an organisation's caller when
    it is that organisation, never the person, always a caller that is no party."""
    if not is_party(ctx):
        return True
    number = caller_organization(ctx)
    if number is None or org_id is None:
        return False
    return org_id in organization_ids(service, reader, number)


def require_acting_for(service: FhirService, reader: Reader, ctx: RequestContext,
                       org_id: str | None, what: str, expression: str | None = None) -> None:
    """403 unless the caller acts for ``Organization/org_id``."""
    if not acts_for(service, reader, ctx, org_id):
        whom = f"Organization/{org_id}" if org_id else "the responsible organisation"
        raise FhirError.of(403, f"Only {whom} may {what}", code="forbidden",
                           expression=expression)


def check_visible(service: FhirService, ctx: RequestContext, type_: str, id_: str) -> None:
    """404 (or 410) unless the caller may read ``type_/id_`` - before an operation on it."""
    service.read(ctx, type_, id_)


def read_current(reader: Reader, type_: str, id_: str, where: str) -> dict[str, Any]:
    """The current version of ``type_/id_`` as JSON (422 naming ``where`` if not there)."""
    found = reader.read(type_, id_)
    if found is None or found.deleted or found.resource is None:
        raise FhirError.of(422, f"{type_}/{id_} is not known", code="not-found",
                           expression=where)
    return dict(found.resource)


def with_keys(current: tuple[str, ...] | None, prefix: str,
              mine: Iterable[str]) -> tuple[str, ...]:
    """The unique keys of a write: ``current`` (another hook's) without those starting with
    ``prefix``, plus ``mine``."""
    kept = tuple(k for k in (current or ()) if not k.startswith(prefix))
    return kept + tuple(mine)
