"""JSON Patch (RFC 6902) applied to a FHIR resource.

Status codes: a patch document that is not a well-formed JSON Patch is the client's syntax
error (400); a well-formed patch that cannot be applied to the current resource (a path that
does not exist, a ``test`` that fails) is 422 Unprocessable Entity. A patch may not change the
resource's ``id`` or ``resourceType``; the patched resource is then validated like an update by
the caller.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from .outcome import FhirError

JSON_PATCH_MEDIA_TYPE = "application/json-patch+json"

_OPS_NEEDING_VALUE = frozenset({"add", "replace", "test"})
_OPS_NEEDING_FROM = frozenset({"move", "copy"})
_OPS = _OPS_NEEDING_VALUE | _OPS_NEEDING_FROM | {"remove"}


def check_patch_document(doc: Any) -> list[dict[str, Any]]:
    """Check the shape of a JSON Patch document; returns its operations."""
    if not isinstance(doc, list):
        raise FhirError.of(400, "A JSON Patch document must be a JSON array of operations",
                           code="structure")
    for index, op in enumerate(doc):
        where = f"Patch[{index}]"
        if not isinstance(op, dict):
            raise FhirError.of(400, f"{where} is not a JSON object", code="structure",
                               expression=where)
        name = op.get("op")
        if name not in _OPS:
            raise FhirError.of(400, f"{where}: unknown operation {name!r}", code="structure",
                               expression=f"{where}.op")
        if not isinstance(op.get("path"), str):
            raise FhirError.of(400, f"{where}: 'path' is required and must be a string",
                               code="required", expression=f"{where}.path")
        if name in _OPS_NEEDING_VALUE and "value" not in op:
            raise FhirError.of(400, f"{where}: '{name}' needs a 'value'", code="required",
                               expression=f"{where}.value")
        if name in _OPS_NEEDING_FROM and not isinstance(op.get("from"), str):
            raise FhirError.of(400, f"{where}: '{name}' needs a 'from' string",
                               code="required", expression=f"{where}.from")
    return doc


def apply_json_patch(resource: dict[str, Any], doc: Any) -> dict[str, Any]:
    """Return a patched copy of ``resource`` (the original is left untouched)."""
    patched: Any = copy.deepcopy(resource)
    for index, op in enumerate(check_patch_document(doc)):
        patched = _apply_one(patched, op, f"Patch[{index}]")
    if not isinstance(patched, dict):
        raise FhirError.of(422, "The patch replaced the whole resource with a non-object",
                           code="processing")
    for element in ("resourceType", "id"):
        if patched.get(element) != resource.get(element):
            raise FhirError.of(422, f"A patch may not change '{element}'", code="business-rule",
                               expression=element)
    return patched


def _apply_one(target: Any, op: dict[str, Any], where: str) -> Any:
    """Apply one operation; failures name the operation (``Patch[i]``) and its path."""
    for key in ("path", "from"):
        if key in op:
            try:
                jsonpointer.JsonPointer(op[key])
            except jsonpointer.JsonPointerException as exc:
                raise FhirError.of(400, f"{where}: '{key}' is not a JSON Pointer: {exc}",
                                   code="structure", expression=where) from exc
    try:
        return jsonpatch.JsonPatch([op]).apply(target, in_place=True)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise FhirError.of(422, f"{where}: the 'test' of {op['path']!r} failed",
                           code="processing", expression=where) from exc
    except jsonpointer.JsonPointerException as exc:  # a well-formed pointer to nothing here
        raise FhirError.of(422, f"{where}: {op['path']!r} does not exist in the resource",
                           code="processing", expression=where) from exc
    except (jsonpatch.JsonPatchConflict, jsonpatch.InvalidJsonPatch) as exc:
        raise FhirError.of(422, f"{where}: cannot be applied: {exc}", code="processing",
                           expression=where) from exc
