"""References inside a resource: walking and rewriting every ``Reference.reference`` (at any
depth: extensions, contained resources), and the placeholder forms that only a transaction
Bundle can resolve (``urn:uuid:``/``urn:oid:`` fullUrls and conditional references such as
``Patient?identifier=sys|val``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .outcome import Issue, issue

PLACEHOLDER_RE = re.compile(r"urn:uuid:[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
                            r"|urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
"""A Bundle entry's fullUrl that is not a location (a transaction gives the entry an id)."""
CONDITIONAL_REF_RE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)\?(?P<query>.+)")
"""A conditional reference: the one resource a search finds (a transaction resolves it)."""

Resolve = Callable[[str, str], str | None]


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


def references_in(resource: Any, path: str = "") -> list[tuple[str, str]]:
    """Every ``Reference.reference`` in ``resource`` with the path of its Reference."""
    found: list[tuple[str, str]] = []

    def collect(ref: str, where: str) -> None:
        found.append((ref, where))

    _rewrite(resource, path, collect)
    return found


def placeholder_issues(resource: dict[str, Any], type_: str) -> list[Issue]:
    """Errors for the references of a resource written on its own (not in a transaction)
    that only a transaction can resolve: stored as they are, they would never point at a
    resource (nor tie the resource to the person it is about)."""
    return [issue(f"{ref!r} can only be resolved inside a transaction Bundle; refer to the "
                  "resource by Type/id or its URL", code="invalid",
                  expression=f"{where}.reference")
            for ref, where in references_in(resource, type_)
            if PLACEHOLDER_RE.fullmatch(ref) or CONDITIONAL_REF_RE.fullmatch(ref)]
