"""The CapabilityStatement, generated from the search registry and the interaction table of
the service; nothing in it is written by hand per resource type."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .search.ast import SearchParam
from .search.registry import Registry
from .types import FHIR_VERSION

SOFTWARE = {"name": "Planbro", "version": "0.1.0"}


def build(
    registry: Registry,
    *,
    base_url: str,
    types: Iterable[str],
    type_interactions: Iterable[str],
    system_interactions: Iterable[str],
    operations: Iterable[tuple[str, str]],
    type_operations: dict[str, list[tuple[str, str]]] | None = None,
    security: dict[str, Any] | None = None,
    profiles: dict[str, list[str]] | None = None,
    date: str | None = None,
) -> dict[str, Any]:
    """A CapabilityStatement (kind instance) describing this server at ``base_url``;
    ``operations`` apply to every type, ``type_operations`` to one; ``security`` is
    ``rest.security``; ``profiles`` the canonical URLs of the profiles supported per type
    (``supportedProfile``); ``date`` defaults to now."""
    types = list(types)
    params = {t: registry.params(t) for t in types}
    operation_list = [{"name": name, "definition": url} for name, url in operations]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kind": "instance",
        "software": dict(SOFTWARE),
        "implementation": {"description": "Planbro FHIR R4 server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            **({"security": security} if security else {}),
            "resource": [_resource(t, params, type_interactions, operation_list + [
                {"name": name, "definition": url}
                for name, url in (type_operations or {}).get(t, [])],
                (profiles or {}).get(t, [])) for t in types],
            "interaction": [{"code": code} for code in system_interactions],
        }],
    }


def _resource(type_: str, params: dict[str, dict[str, SearchParam]],
              interactions: Iterable[str], operations: list[dict[str, str]],
              profiles: list[str]) -> dict[str, Any]:
    own = params[type_]
    return {
        "type": type_,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
        **({"supportedProfile": list(profiles)} if profiles else {}),
        "interaction": [{"code": code} for code in interactions],
        "versioning": "versioned-update",  # If-Match is honoured
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",  # If-None-Match and If-Modified-Since
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchInclude": sorted(f"{type_}:{p.code}" for p in own.values()
                                if p.type == "reference"),
        "searchRevInclude": sorted(_rev_includes(type_, params)),
        "searchParam": [_param(p) for p in own.values()],
        "operation": list(operations),
    }


def _rev_includes(target: str, params: dict[str, dict[str, SearchParam]]) -> set[str]:
    """``Source:param`` for every reference parameter (of any type) that can point at
    ``target``."""
    return {f"{source}:{p.code}" for source, own in params.items() for p in own.values()
            if p.type == "reference" and (not p.targets or target in p.targets)}


def _param(param: SearchParam) -> dict[str, str]:
    out = {"name": param.code, "type": param.type}
    if param.url:
        out["definition"] = param.url
    return out
