"""References inside a resource: walking and rewriting every ``Reference.reference`` (at any
depth: extensions, contained resources), and the placeholder forms that only a transaction
Bundle can resolve (``urn:uuid:``/``urn:oid:`` fullUrls and conditional references such as
``Patient?identifier=sys|val``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .outcome import Issue, issue
from .search.normalize import parse_reference, url_names

PLACEHOLDER_RE = re.compile(r"urn:uuid:[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
                            r"|urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
"""A Bundle entry's fullUrl that is not a location (a transaction gives the entry an id)."""
CONDITIONAL_REF_RE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)\?(?P<query>.+)")
"""A conditional reference: the one resource a search finds (a transaction resolves it)."""

Resolve = Callable[[str, str], str | None]
References = list[tuple[str, str]]
"""(reference, path of its Reference) pairs, as :func:`references_in` gives them."""


def rewrite_references(resource: dict[str, Any], path: str, resolve: Resolve) -> dict[str, Any]:
    """A copy of ``resource`` in which every ``Reference.reference`` (at any depth) for which
    ``resolve(reference, element_path)`` returns a string is replaced by it."""
    return _rewrite(resource, path, resolve)


def _rewrite(node: Any, path: str, resolve: Resolve) -> Any:
    if isinstance(node, list):
        return [_rewrite(item, f"{path}[{i}]", resolve) for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {key: _rewrite(value, f"{path}.{key}", resolve) for key, value in node.items()}
    ref = node.get("reference")
    if isinstance(ref, str):
        replaced = resolve(ref, path)
        if replaced is not None:
            out["reference"] = replaced
    return out


def references_in(resource: Any, path: str = "") -> References:
    """Every ``Reference.reference`` in ``resource`` with the path of its Reference."""
    found: References = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")
        elif isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                found.append((ref, where))
            for key, value in node.items():
                if isinstance(value, dict | list):
                    walk(value, f"{where}.{key}")

    walk(resource, path)
    return found


def placeholder_issues(refs: References) -> list[Issue]:
    """Errors for the references of a resource written on its own (not in a transaction)
    that only a transaction can resolve: stored as they are, they would never point at a
    resource (nor tie the resource to the person it is about)."""
    return [issue(f"{ref!r} can only be resolved inside a transaction Bundle; refer to the "
                  "resource by Type/id or its URL", code="invalid",
                  expression=f"{where}.reference")
            for ref, where in refs
            if PLACEHOLDER_RE.fullmatch(ref) or CONDITIONAL_REF_RE.fullmatch(ref)]


def foreign_patient_issues(refs: References) -> list[Issue]:
    """Errors for references to a Patient on another server. A person's data here is kept
    with the person's Patient here: that decides who may see it, and data that named no
    Patient here would be left without that protection."""
    return [issue(f"{ref!r} is a Patient on another server; refer to the person's Patient "
                  "on this server (Patient/<id>)", code="business-rule",
                  expression=f"{where}.reference")
            for ref, where in refs if _foreign_patient(ref)]


def _foreign_patient(ref: str) -> bool:
    if url_names(ref) != "Patient":
        return False
    parts = parse_reference(ref)
    return parts is None or parts.target_type != "Patient"
