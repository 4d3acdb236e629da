"""SMART App Launch scopes (v2 with v1 accepted) and the permission each FHIR interaction needs.

Grammar (v2): ``(patient|user|system)/(<ResourceType>|*).<perms>[?<query>]`` where ``perms`` is a
non-empty subsequence of ``cruds`` (create, read, update, delete, search) and the optional query
restricts the scope to resources matching those search parameters
(``patient/Task.rs?category=http://snomed.info/sct|734163000``).
v1 forms ``.read`` (= ``rs``), ``.write`` (= ``cud``) and ``.*`` (= ``cruds``) are accepted.
Other scopes (``openid``, ``fhirUser``, ``launch/patient``, ``offline_access`` ...) are kept as
plain names.

A scope never grants access to a person's data on its own: the access-control layer decides
which people a caller may see. This module answers only "may this token do this kind of
interaction on this resource type at all".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl

from ..fhir.outcome import FhirError
from .principal import Principal

PERMISSION_ORDER = "cruds"
CONTEXTS = ("patient", "user", "system")
_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE_RE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{0,63})"
    r"\.(?P<perms>[a-z]{1,5}|\*)(?:\?(?P<query>.+))?$"
)
_OTHER_RE = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]{1,200}$")  # RFC 6749 scope-token

ANY = "*"
"""Marker: the interaction needs some permission (any letter) on the resource type."""

# Which permission letters each interaction needs (all of them). SMART v2: r covers read, vread
# and instance history; s covers type/system search and type/system history; u covers update
# and patch. Conditional writes search first, so they also need s. An empty string: no
# resource permission (the container itself, or public metadata).
INTERACTION_PERMISSIONS: dict[str, str] = {
    "read": "r",
    "vread": "r",
    "history": "r",
    "history-instance": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "create": "c",
    "search": "s",
    "search-type": "s",
    "search-system": "s",
    "history-type": "s",
    "history-system": "s",
    "conditional-create": "cs",
    "conditional-update": "us",
    "conditional-patch": "us",
    "conditional-delete": "ds",
    "$validate": ANY,
    "capabilities": "",
    "batch": "",
    "transaction": "",
}

# The scope contexts each kind of caller may use.
KIND_CONTEXTS: dict[str, tuple[str, ...]] = {
    "patient": ("patient",),
    "practitioner": ("user", "system"),
    "system": ("system",),
}


class ScopeError(ValueError):
    """A scope string that is not valid SMART / OAuth syntax."""


def required_permissions(interaction: str) -> str:
    """The permission letters ``interaction`` needs ("" for none, :data:`ANY` for any)."""
    try:
        return INTERACTION_PERMISSIONS[interaction]
    except KeyError:
        raise ValueError(f"unknown FHIR interaction {interaction!r}") from None


@dataclass(frozen=True)
class ResourceScope:
    """One SMART resource scope."""

    context: str  # patient | user | system
    resource_type: str  # a resource type or "*"
    permissions: str  # subsequence of "cruds"
    query: tuple[tuple[str, str], ...] = ()  # sorted restriction parameters
    text: str = ""

    def matches(self, resource_type: str) -> bool:
        return self.resource_type == "*" or self.resource_type == resource_type

    def covers(self, other: ResourceScope) -> bool:
        """True when every access ``other`` grants is also granted by this scope."""
        return (
            self.context == other.context
            and (self.resource_type == "*" or self.resource_type == other.resource_type)
            and set(other.permissions) <= set(self.permissions)
            and (not self.query or self.query == other.query)
        )


def _permissions(raw: str, text: str) -> str:
    if raw in _V1_PERMISSIONS:
        return _V1_PERMISSIONS[raw]
    letters = [c for c in PERMISSION_ORDER if c in raw]
    if "".join(letters) != raw:
        raise ScopeError(f"scope {text!r}: permissions must be a subsequence of 'cruds'")
    return raw


@lru_cache(maxsize=4096)
def parse_scope(text: str) -> ResourceScope | str:
    """Parse one scope: a :class:`ResourceScope`, or the plain name of any other scope.
    Every request parses its token's scopes: the answers (immutable) are kept for the
    scopes met most recently."""
    m = _SCOPE_RE.match(text)
    if m is None:
        if "/" in text and text.split("/", 1)[0] in CONTEXTS:
            raise ScopeError(f"scope {text!r} is not a valid SMART resource scope")
        if not _OTHER_RE.match(text):
            raise ScopeError(f"scope {text!r} has characters a scope may not contain")
        return text
    perms = _permissions(m.group("perms"), text)
    query: tuple[tuple[str, str], ...] = ()
    if m.group("query"):
        if m.group("perms") in _V1_PERMISSIONS:
            raise ScopeError(f"scope {text!r}: query restrictions need v2 permissions")
        pairs = parse_qsl(m.group("query"), keep_blank_values=True, strict_parsing=False)
        if not pairs or any(not name for name, _ in pairs):
            raise ScopeError(f"scope {text!r} has an empty query restriction")
        query = tuple(sorted(pairs))
    return ResourceScope(m.group("context"), m.group("type"), perms, query, text)


class ScopeSet:
    """The scopes of one token: resource scopes plus other scope names."""

    __slots__ = ("resource", "other", "_text")

    def __init__(self, resource: Iterable[ResourceScope] = (), other: Iterable[str] = ()):
        self.resource: tuple[ResourceScope, ...] = tuple(resource)
        self.other: frozenset[str] = frozenset(other)
        names = [s.text for s in self.resource] + sorted(self.other)
        self._text = " ".join(dict.fromkeys(names))

    @classmethod
    def parse(cls, value: str | Iterable[str] | None, *, strict: bool = True) -> ScopeSet:
        """Parse a space-separated scope string (or a list of scopes, as some issuers send).

        ``strict``: raise :class:`ScopeError` on an invalid scope; otherwise skip it (used for
        tokens, where an unknown scope must not make the whole token unusable)."""
        if value is None:
            return cls()
        items = value.split() if isinstance(value, str) else [str(v) for v in value]
        resource: list[ResourceScope] = []
        other: list[str] = []
        for item in items:
            try:
                parsed = parse_scope(item)
            except ScopeError:
                if strict:
                    raise
                continue
            (resource if isinstance(parsed, ResourceScope) else other).append(parsed)
        return cls(resource, other)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"ScopeSet({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScopeSet) and set(self._text.split()) == set(
            other._text.split()
        )

    def __hash__(self) -> int:
        return hash(frozenset(self._text.split()))

    def __contains__(self, name: str) -> bool:
        return name in self.other or any(s.text == name for s in self.resource)

    def __bool__(self) -> bool:
        return bool(self._text)

    def names(self) -> list[str]:
        return self._text.split()

    def _granting(
        self, resource_type: str, letter: str, contexts: Iterable[str] | None
    ) -> list[ResourceScope]:
        ctx = None if contexts is None else set(contexts)
        return [
            s for s in self.resource
            if (ctx is None or s.context in ctx)
            and s.matches(resource_type)
            and (letter == ANY or letter in s.permissions)
        ]

    def allows(
        self,
        interaction: str,
        resource_type: str,
        *,
        contexts: Iterable[str] | None = None,
    ) -> bool:
        """Whether some scope grants every permission ``interaction`` needs on the type.

        ``contexts`` limits the scopes considered (e.g. only ``patient/`` scopes for a patient).
        A query-restricted scope allows the interaction; :meth:`restrictions` then tells which
        search parameters the access layer must add."""
        needed = required_permissions(interaction)
        if needed == ANY:
            return bool(self._granting(resource_type, ANY, contexts))
        ctx = None if contexts is None else tuple(contexts)
        return all(self._granting(resource_type, letter, ctx) for letter in needed)

    def restrictions(
        self,
        resource_type: str,
        perm: str,
        *,
        contexts: Iterable[str] | None = None,
    ) -> list[list[tuple[str, str]]]:
        """The query restrictions that apply to ``perm`` (one letter) on ``resource_type``.

        Returns ``[]`` when some granting scope is unrestricted; otherwise one list of
        ``(name, value)`` search parameters per granting scope - a resource is permitted when it
        matches ALL parameters of ANY one list. Raises ``ValueError`` when no scope grants
        ``perm`` at all (check :meth:`allows` first)."""
        if len(perm) != 1 or perm not in PERMISSION_ORDER:
            raise ValueError(f"permission must be one of {PERMISSION_ORDER!r}, not {perm!r}")
        granting = self._granting(resource_type, perm, contexts)
        if not granting:
            raise ValueError(f"no scope grants {perm!r} on {resource_type}")
        if any(not s.query for s in granting):
            return []
        alternatives = {s.query for s in granting}
        return [list(q) for q in sorted(alternatives)]

    def covers(self, other: ScopeSet) -> bool:
        """True when every scope of ``other`` is granted by some scope of this set."""
        if not other.other <= self.other:
            return False
        return all(any(mine.covers(s) for mine in self.resource) for s in other.resource)


def suggest_scope(principal: Principal, interaction: str, resource_type: str) -> str:
    """The narrowest v2 scope that would allow the interaction, for error messages."""
    contexts = KIND_CONTEXTS.get(principal.kind, CONTEXTS)
    needed = required_permissions(interaction)
    perms = "cruds" if needed == ANY else needed
    return f"{contexts[0]}/{resource_type}.{perms}"


def require(principal: Principal, interaction: str, resource_type: str) -> None:
    """Raise a 403 FhirError (naming the missing scope) unless the principal's scopes allow
    ``interaction`` on ``resource_type``. Scopes are read in the contexts the principal's kind
    may use (``patient/`` for a patient, ``user/`` or ``system/`` for a practitioner,
    ``system/`` for a system)."""
    needed = required_permissions(interaction)
    if needed == "":
        return
    contexts = KIND_CONTEXTS.get(principal.kind, ())
    if principal.scopes.allows(interaction, resource_type, contexts=contexts):
        return
    wanted = suggest_scope(principal, interaction, resource_type)
    have = str(principal.scopes) or "(none)"
    scheme = "DPoP" if principal.dpop_jkt else "Bearer"
    raise FhirError.of(
        403,
        f"{interaction} on {resource_type} needs a scope such as '{wanted}'; "
        f"the token has: {have}",
        code="forbidden",
        headers={
            "WWW-Authenticate": f'{scheme} error="insufficient_scope", scope="{wanted}"'
        },
    )


_ENTRY_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


def entry_interaction(
    method: str, url: str, *, conditional: bool = False
) -> tuple[str, str | None]:
    """The interaction and resource type of one batch/transaction entry request.

    ``url`` is the entry's ``request.url`` (relative, possibly with a query); ``conditional``
    says the entry carries ``ifNoneExist`` (POST) or uses a search URL (PUT/PATCH/DELETE).
    The resource type is None for system-level interactions."""
    method = method.upper()
    path, _, query = url.partition("?")
    parts = [p for p in path.strip("/").split("/") if p]
    rtype = parts[0] if parts and _ENTRY_TYPE_RE.match(parts[0]) else None
    if method == "GET":
        return _entry_read(parts, rtype, bool(query))
    if method == "POST":
        if len(parts) == 2 and parts[1] == "_search":
            return "search-type", rtype
        if parts and parts[-1] == "$validate":
            return "$validate", rtype
        return ("conditional-create" if conditional else "create"), rtype
    verbs = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    if method not in verbs:
        raise ValueError(f"unsupported entry method {method!r}")
    verb = verbs[method]
    if conditional or (len(parts) == 1 and query):
        return f"conditional-{verb}", rtype
    return verb, rtype


def _entry_read(parts: list[str], rtype: str | None, has_query: bool) -> tuple[str, str | None]:
    if not parts:
        return "search-system", None
    if parts == ["metadata"]:
        return "capabilities", None
    if parts == ["_history"]:
        return "history-system", None
    if rtype is None:
        raise ValueError(f"cannot tell the resource type of {'/'.join(parts)!r}")
    if len(parts) == 1:
        return "search-type", rtype
    if len(parts) == 2:
        return ("history-type" if parts[1] == "_history" else "read"), rtype
    if len(parts) == 3 and parts[2] == "_history":
        return "history-instance", rtype
    if len(parts) == 4 and parts[2] == "_history":
        return "vread", rtype
    return "read", rtype
