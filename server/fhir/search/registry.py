"""The search-parameter registry: which parameters each resource type offers, and extraction.

Loaded from the official R4 definitions (``definitions/search-parameters.json``), extended with
our own SearchParameter resources (:meth:`Registry.add`). For every parameter and resource type
the expression is narrowed to the parts about that type and compiled once
(:mod:`server.fhir.search.extract`); parameters that cannot be evaluated or indexed (composite,
special, no expression, values of an unindexable type) are not offered, so searching them is
rejected by the parser as unsupported.

``_id`` and ``_lastUpdated`` are answered by engines from the resource row: they are offered
with an empty expression and never extracted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..model import bound_codings, grammar_system
from ..types import STORED_TYPES
from .ast import MODIFIERS, IndexValues, ReferenceValue, SearchParam
from .extract import (
    ElementModel,
    Extractor,
    NotIndexable,
    Unsupported,
    compile_extractor,
    extract_all,
)

ROW_PARAMS: tuple[SearchParam, ...] = (
    SearchParam("_id", "token", ("Resource",),
                url="http://hl7.org/fhir/SearchParameter/Resource-id"),
    SearchParam("_lastUpdated", "date", ("Resource",),
                url="http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"),
)
"""Parameters engines answer from the resource row (no extraction)."""

_RESOURCE_BASES = ("Resource", "DomainResource")
_EXAMPLE_URL = "http://hl7.org/fhir/SearchParameter/example"
_TEXT_TYPES = frozenset({"CodeableConcept", "Coding", "Identifier", "Extension"})
_MODIFIERS = MODIFIERS
BOOLEAN_CODINGS = frozenset((system, code) for code in ("true", "false") for system in (
    "http://hl7.org/fhir/special-values",  # R4 search.html, token: "the implicit system"
    "http://terminology.hl7.org/CodeSystem/special-values"))  # the R4 value set's system
"""What a boolean token value stands for (R4 search, token: "The implicit system for boolean
values is http://hl7.org/fhir/special-values"; R4's value set names the code system by its
terminology.hl7.org URL, which is taken as well)."""


@dataclass(frozen=True)
class Coverage:
    """How the registry's parameters are evaluated."""

    fast: int  # compiled to plain dict walkers
    fallback: int  # evaluated with fhirpathpy
    skipped: tuple[str, ...]  # "Type.code: reason" of definitions not offered


def expression_for(expression: str, type_: str) -> str:
    """The parts of a (multi-type) expression about ``type_``: those starting with the type,
    ``(Type.`` or ``Resource.``/``DomainResource.``."""
    heads = tuple(f"{name}." for name in (type_, *_RESOURCE_BASES))
    parts = [p.strip() for p in expression.split(" | ")]
    return " | ".join(p for p in parts if p.lstrip("(").startswith(heads))


def _modifiers(param_type: str, extractor: Extractor) -> tuple[str, ...]:
    modifiers = _MODIFIERS[param_type]
    if param_type == "token" and extractor.fast and not extractor.types & _TEXT_TYPES:
        return tuple(m for m in modifiers if m != "text")
    if param_type == "reference" and extractor.fast and not extractor.types & {
            "Reference", "Extension"}:
        return tuple(m for m in modifiers if m != "identifier")
    return modifiers


def _token_yields(extractor: Extractor) -> frozenset[str]:
    """The FHIR types a token parameter's values come from (empty for another parameter
    type, or one evaluated by fhirpathpy, whose elements are not known)."""
    if extractor.param_type != "token" or not extractor.fast:
        return frozenset()
    return frozenset(extractor.types & extractor.emitters.keys())


def _implicit_codings(extractor: Extractor) -> frozenset[tuple[str, str]]:
    """The (system, code) pairs a token parameter's values stand for, when every value it
    yields is a boolean, or a ``code`` of an element bound (required) to a value set
    enumerated here; empty otherwise (its values then match as indexed)."""
    yielded = _token_yields(extractor)
    if yielded == {"boolean"}:
        return BOOLEAN_CODINGS
    bound = [bound_codings(owner, key) for owner, key in extractor.sources]
    if yielded != {"code"} or not bound or not all(bound):
        return frozenset()
    pairs = (pair.partition("|") for codings in bound for pair in codings)
    return frozenset((system, code) for system, _, code in pairs)


def _implicit_system(extractor: Extractor) -> str | None:
    """The one code system of every value a token parameter yields, when they are ``code``
    elements bound to a grammar's value set (:func:`~..model.grammar_system`); else None."""
    if _token_yields(extractor) != {"code"}:
        return None
    systems = {grammar_system(owner, key) for owner, key in extractor.sources}
    return systems.pop() if len(systems) == 1 else None


def _definition_problem(definition: Mapping[str, Any]) -> str | None:
    """Why a definition cannot be offered for any type, if it cannot."""
    if definition["code"] in (p.code for p in ROW_PARAMS):
        return "answered from the resource row"
    if definition["type"] not in _MODIFIERS:
        return f"{definition['type']} parameters are not supported"
    if not definition.get("expression"):
        return "no expression"
    return None


INDEX_RULES = 2
"""The version of the rules that turn a resource into index values beside its search
parameters' expressions: extraction (:mod:`.extract`), normalisation (:mod:`.normalize`), and
the values the access and audit layers add (:func:`server.audit.store_indexer`). Bump it with
any change to them that changes a stored value: a store built by other rules is indexed again
when the server starts (:meth:`server.store.port.Store.ensure_indexed`). 2: string values fold
the letters Unicode collation reads as base letters (ø, æ, ß ...)."""


class Registry:
    """Search parameters by resource type, each with its compiled extractor."""

    def __init__(self, model: ElementModel, types: Iterable[str] = STORED_TYPES) -> None:
        self._model = model
        self._params: dict[str, dict[str, SearchParam]] = {
            t: {p.code: p for p in ROW_PARAMS} for t in types}
        self._extractors: dict[str, dict[str, Extractor]] = {t: {} for t in self._params}
        self._skipped: list[str] = []

    @classmethod
    def load_default(cls) -> Registry:
        """The official R4 parameters of our resource types (example definitions excluded)."""
        text = (resources.files("server.fhir")
                .joinpath("definitions/search-parameters.json").read_text())
        registry = cls(ElementModel.load_default())
        for definition in json.loads(text):
            if not definition.get("url", "").startswith(_EXAMPLE_URL):
                registry._load(definition, strict=False)
        return registry

    # -- definition ------------------------------------------------------------------------

    def add(self, search_parameter: Mapping[str, Any]) -> None:
        """Add (or replace, by code) an R4 SearchParameter for each of its base types.

        Raises :class:`ValueError` when it cannot be offered for any base type we store.
        """
        if search_parameter.get("resourceType", "SearchParameter") != "SearchParameter":
            raise ValueError("not a SearchParameter resource")
        for key in ("code", "type", "base"):
            if not search_parameter.get(key):
                raise ValueError(f"SearchParameter.{key} is required")
        self._load(search_parameter, strict=True)

    def _load(self, definition: Mapping[str, Any], *, strict: bool) -> None:
        code, type_ = str(definition["code"]), str(definition["type"])
        bases = [str(b) for b in definition["base"]]
        problem = _definition_problem(definition)
        if problem:
            problems = [f"{'|'.join(bases)}.{code}: {problem}"]
            offered = 0
        else:
            types = [t for b in bases
                     for t in (self._params if b in _RESOURCE_BASES else [b])
                     if t in self._params]
            problems = [f"{t}.{code}: {why}" for t in types
                        if (why := self._load_for(definition, code, type_, bases, t))]
            offered = len(types) - len(problems)
        if strict and (offered <= 0 or problems):
            raise ValueError(f"SearchParameter {code!r} cannot be offered: "
                             + ("; ".join(problems) or f"no supported base in {bases}"))
        self._skipped.extend(problems)

    def _load_for(self, definition: Mapping[str, Any], code: str, type_: str, bases: list[str],
                  resource_type: str) -> str | None:
        """Compile and register one parameter for one type; returns why not, if not."""
        expression = expression_for(str(definition["expression"]), resource_type)
        if not expression:
            return "no expression for this type"
        try:
            extractor = compile_extractor(code, type_, expression, resource_type, self._model)
        except (Unsupported, NotIndexable) as exc:
            return str(exc)
        self._params[resource_type][code] = SearchParam(
            code=code,
            type=type_,  # type: ignore[arg-type]
            base=tuple(bases),
            expression=expression,
            targets=tuple(definition.get("target") or ()),
            url=str(definition.get("url") or ""),
            modifiers=_modifiers(type_, extractor),
            implicit=_implicit_codings(extractor),
            implicit_system=_implicit_system(extractor),
        )
        self._extractors[resource_type][code] = extractor
        return None

    # -- lookup ----------------------------------------------------------------------------

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self._params)

    def param(self, type_: str, code: str) -> SearchParam | None:
        return self._params.get(type_, {}).get(code)

    def params(self, type_: str) -> dict[str, SearchParam]:
        """Every searchable parameter of ``type_`` (incl. ``_id``, ``_lastUpdated``, ``_tag``,
        ``_profile``, ``_security``, ``_source``), by code."""
        return dict(self._params.get(type_, {}))

    def fingerprint(self) -> str:
        """What the index values of this registry depend on: :data:`INDEX_RULES` and every
        parameter's type, expression and targets (a digest: equal when nothing changed).
        The server's base URL (:func:`.normalize.serving`), which decides what absolute
        references name, is recorded beside it (:meth:`server.store.port.Store.ensure_indexed`)."""
        params = sorted((t, p.code, p.type, p.expression, p.targets)
                        for t, by_code in self._params.items() for p in by_code.values())
        text = json.dumps([INDEX_RULES, params], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def coverage(self) -> Coverage:
        extractors = [e for by_code in self._extractors.values() for e in by_code.values()]
        fast = sum(1 for e in extractors if e.fast)
        return Coverage(fast, len(extractors) - fast, tuple(self._skipped))

    # -- extraction ------------------------------------------------------------------------

    def extract(self, resource: dict[str, Any]) -> IndexValues:
        """The index values of every parameter of the resource's type."""
        extractors = self._extractors.get(str(resource.get("resourceType")), {})
        return extract_all(extractors.values(), resource)

    def references(self, resource: dict[str, Any], code: str) -> list[ReferenceValue]:
        """The references a resource holds in reference parameter ``code`` (for _include).

        Raises :class:`KeyError` when its type has no such reference parameter.
        """
        type_ = str(resource.get("resourceType"))
        extractor = self._extractors.get(type_, {}).get(code)
        if extractor is None or extractor.param_type != "reference":
            raise KeyError(f"{type_} has no reference search parameter {code!r}")
        return extract_all([extractor], resource).references
