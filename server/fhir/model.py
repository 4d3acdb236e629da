"""Basic FHIR R4 validation of resource JSON: the one place that decides "is this valid?".

Every write (create, update, the result of a patch, transaction entries) and ``$validate`` go
through :func:`validate`. It walks the JSON against the official R4 element definitions in
``definitions/elements.json`` and reports every problem at once, each with the FHIRPath
location of what was wrong:

- structure: unknown elements, choice types (``value[x]``), ``_element`` primitive extension
  siblings, cardinality, required elements, empty and null values;
- primitives: strict JSON types and the R4 regular expressions (plus calendar validity of
  dates), decimals as JSON numbers, integers in range;
- required bindings whose value set is enumerated in ``definitions/valuesets.json``;
- reference targets (``CarePlan.subject`` -> ``Patient | Group``), local references to
  contained resources, and a few core invariants (ext-1, dom-2/3/4, bdl-3/4/7, ref-1).

The fhir.resources R4B models run afterwards as a second net. R4 is what we serve, so the
walker wins: an R4B error is reported only where the walker found nothing and the location is
not an element R4 defines, that is, inside contained or bundled resources of types the R4
definitions here do not cover (every other location is an element R4 defines, or an unknown
or malformed one the walker reports itself). So the net runs when the walker met such a
resource, and not otherwise, where it could not change the answer: on a 5 KB CarePlan it
took 0.87 ms, four times the walker. Skipped R4B errors are logged at debug level.

Every issue produced here means HTTP 400.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .outcome import FhirError, Issue, issue
from .types import STORED_TYPES

log = logging.getLogger(__name__)

_DEFINITIONS = Path(__file__).resolve().parent / "definitions"
_RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types|"
_HL7_SD = "http://hl7.org/fhir/StructureDefinition/"
_MODES = ("create", "update")
_INT32 = (-(2**31), 2**31 - 1)
_SHOW = 60  # characters of a bad value quoted in a message

# A primitive check returns None when the value is fine, else (issue code, message).
Problem = tuple[str, str]
Check = Callable[[Any], Problem | None]


# --------------------------------------------------------------------------- compiled model


@dataclass(slots=True, eq=False)
class _ValueSet:
    url: str
    name: str
    pairs: frozenset[str]  # "system|code"
    codes: frozenset[str]  # bare codes, for ``code`` elements

    def label(self) -> str:
        return f"{self.name} ({self.url})"


@dataclass(slots=True, eq=False)
class _Node:
    """The children of one complex type, backbone element or resource."""

    path: str
    children: dict[str, _Elem] = field(default_factory=dict)
    required: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Elem:
    """One JSON property of a node (a choice element yields one per allowed type)."""

    key: str
    path: str  # definition path, e.g. "CarePlan.activity.detail.status"
    type: str  # FHIR type code of this property
    max: int | None  # None: unbounded
    node: _Node | None = None  # complex types and backbone elements
    check: Check | None = None  # primitives
    choice: str | None = None  # "value" for valueString
    targets: frozenset[str] | None = None  # Reference targets; None: any resource
    valueset: _ValueSet | None = None  # required binding we can enumerate
    binding: str | None = None  # the value set it is bound to (any strength), unversioned
    is_resource: bool = False


@dataclass(slots=True, eq=False)
class _Schema:
    resources: dict[str, _Node]  # resource type -> root node
    ext_node: _Node  # what a ``_element`` primitive extension sibling may hold
    resource_names: frozenset[str]  # every R4 resource type name
    unenforced: tuple[str, ...]  # required bindings without an enumerable value set
    nodes: dict[str, _Node]  # every type and backbone element, by path


# --------------------------------------------------------------------------- primitives


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_boolean(value: Any) -> Problem | None:
    if value is True or value is False:
        return None
    return "structure", f"expected a JSON boolean (true/false), got {_json_kind(value)} " \
        f"{_show(value)}"


def _integer_check(type_code: str, low: int) -> Check:
    def check(value: Any) -> Problem | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "structure", f"expected a JSON integer ({type_code}), got " \
                f"{_json_kind(value)} {_show(value)}"
        if not low <= value <= _INT32[1]:
            return "value", f"{value} is out of range for {type_code} ({low}..{_INT32[1]})"
        return None

    return check


def _check_decimal(value: Any) -> Problem | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return "structure", f"expected a JSON number (decimal), got {_json_kind(value)} " \
            f"{_show(value)}"
    finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
    return None if finite else ("value", f"{value} is not a finite decimal")


def _check_xhtml(value: Any) -> Problem | None:
    if not isinstance(value, str):
        return "structure", f"expected a JSON string (xhtml), got {_json_kind(value)}"
    text = value.strip()
    if not text.startswith("<div") or not text.endswith(("</div>", "/>")):
        return "value", "narrative must be an XHTML <div> element"
    return None


_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII)
_WS = re.compile(r"\s+", re.ASCII)


def _check_base64(value: str) -> Problem | None:
    # The R4 regex backtracks badly on long invalid input; this is the same grammar, linear.
    if _B64.fullmatch(_WS.sub("", value)) is None:
        return "value", "is not valid base64"
    return None


def _check_calendar(value: str) -> Problem | None:
    if len(value) < 10:
        return None
    try:
        date(int(value[0:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return "value", f"{_show(value)} is not a valid calendar date"
    return None


def _string_check(type_code: str, regex: str | None, max_length: int | None) -> Check:
    # Java regex semantics (what the definitions are written for): \s and \S are ASCII.
    pattern = re.compile(regex, re.ASCII) if regex else None
    extra: Callable[[str], Problem | None] | None = None
    if type_code == "base64Binary":
        pattern, extra = None, _check_base64
    elif type_code in ("date", "dateTime", "instant"):
        extra = _check_calendar

    def check(value: Any) -> Problem | None:
        if not isinstance(value, str):
            return "structure", f"expected a JSON string ({type_code}), got " \
                f"{_json_kind(value)} {_show(value)}"
        if not value:
            return "value", "empty strings are not allowed in FHIR JSON (omit the element)"
        if max_length is not None and len(value) > max_length:
            return "value", f"is longer than {max_length} characters"
        if pattern is not None and pattern.fullmatch(value) is None:
            return "value", f"{_show(value)} is not a valid {type_code}"
        return extra(value) if extra is not None else None

    return check


def _primitive_checks(primitives: dict[str, Any]) -> dict[str, Check]:
    checks: dict[str, Check] = {}
    for code, spec in primitives.items():
        checks[code] = _string_check(code, spec.get("regex"), spec.get("maxLength"))
    checks["boolean"] = _check_boolean
    checks["integer"] = _integer_check("integer", _INT32[0])
    checks["unsignedInt"] = _integer_check("unsignedInt", 0)
    checks["positiveInt"] = _integer_check("positiveInt", 1)
    checks["decimal"] = _check_decimal
    checks["xhtml"] = _check_xhtml
    return checks


# --------------------------------------------------------------------------- compiling


def _choice_key(base: str, type_code: str) -> str:
    return base + type_code[0].upper() + type_code[1:]


class _Compiler:
    """Turns elements.json + valuesets.json into linked nodes, once."""

    def __init__(self, elements: dict[str, Any], valuesets: dict[str, Any]) -> None:
        self.types: dict[str, Any] = elements["types"]
        self.checks = _primitive_checks(elements["primitives"])
        self.valuesets = {
            url: _ValueSet(
                url,
                vs.get("name") or url,
                frozenset(vs["codes"]),
                frozenset(c.split("|", 1)[1] for c in vs["codes"]),
            )
            for url, vs in valuesets.items()
        }
        self.nodes: dict[str, _Node] = {}
        self.unenforced: set[str] = set()
        for type_name, spec in self.types.items():
            self.nodes[type_name] = _Node(type_name)
            for path, el in spec["elements"].items():
                codes = [t["code"] for t in el.get("types", ())]
                if codes and codes[0] in ("BackboneElement", "Element"):
                    self.nodes[path] = _Node(path)

    def compile(self, resource_names: frozenset[str]) -> _Schema:
        for type_name, spec in self.types.items():
            is_resource = spec["kind"] == "resource"
            for path, el in spec["elements"].items():
                parent, _, name = path.rpartition(".")
                node = self.nodes[parent]
                if is_resource and path == f"{type_name}.id":
                    el = {**el, "types": [{"code": "id"}]}  # Resource.id is an id
                elems = self._elems(path, name, el)
                for elem in elems:
                    node.children[elem.key] = elem
                keys = tuple(elem.key for elem in elems)
                base = name.removesuffix("[x]")
                if base != name:
                    node.choices[base] = keys
                if el["min"] >= 1:
                    node.required.append((base, keys))
        ext_node = _Node("Element")
        ext_node.children["id"] = _Elem("id", "Element.id", "string", 1,
                                        check=self.checks["string"])
        ext_node.children["extension"] = _Elem("extension", "Element.extension", "Extension",
                                               None, node=self.nodes["Extension"])
        resources = {n: self.nodes[n] for n, s in self.types.items() if s["kind"] == "resource"}
        return _Schema(resources, ext_node, resource_names, tuple(sorted(self.unenforced)),
                       self.nodes)

    def _elems(self, path: str, name: str, el: dict[str, Any]) -> list[_Elem]:
        max_ = None if el["max"] == "*" else int(el["max"])
        if "contentReference" in el:
            return [_Elem(name, path, "BackboneElement", max_,
                          node=self.nodes[el["contentReference"]])]
        types = el.get("types", [])
        base = name.removesuffix("[x]")
        choice = base if name.endswith("[x]") else None
        out = []
        for t in types:
            key = _choice_key(base, t["code"]) if choice else name
            out.append(self._elem(key, path, t, el, max_, choice))
        return out

    def _elem(self, key: str, path: str, t: dict[str, Any], el: dict[str, Any],
              max_: int | None, choice: str | None) -> _Elem:
        code = t["code"]
        elem = _Elem(key, path, code, max_, choice=choice)
        if code in ("BackboneElement", "Element"):
            elem.node = self.nodes[path]
        elif code == "Resource":
            elem.is_resource = True
        elif code in self.checks:
            elem.check = self.checks[code]
        else:
            elem.node = self.nodes[code]
        if code == "Reference":
            targets = frozenset(t.get("targetProfile", ()))
            elem.targets = None if not targets or "Resource" in targets else targets
        binding = el.get("binding")
        if binding:
            elem.binding = str(binding["valueSet"]).partition("|")[0]
        if binding and binding["strength"] == "required" and code in ("code", "Coding",
                                                                      "CodeableConcept"):
            elem.valueset = self.valuesets.get(binding["valueSet"])
            if elem.valueset is None:
                self.unenforced.add(binding["valueSet"])
        return elem


@cache
def _schema() -> _Schema:
    elements = json.loads((_DEFINITIONS / "elements.json").read_text(encoding="utf-8"))
    valuesets = json.loads((_DEFINITIONS / "valuesets.json").read_text(encoding="utf-8"))
    all_types = valuesets["http://hl7.org/fhir/ValueSet/all-types"]["codes"]
    names = frozenset(
        c.removeprefix(_RESOURCE_TYPES_SYSTEM) for c in all_types
        if c.startswith(_RESOURCE_TYPES_SYSTEM)
    ) - {"Resource", "DomainResource"}
    return _Compiler(elements, valuesets).compile(names)


def validate_element(value: dict[str, Any], definition: str, path: str) -> list[Issue]:
    """The problems of ``value`` as the complex element ``definition`` (a backbone element or
    data type, e.g. ``Bundle.entry``), each at its place under ``path`` (e.g.
    ``Bundle.entry[2]``): a part of a resource checked on its own."""
    schema = _schema()
    walker = _Walker(schema)
    try:
        walker.object(value, schema.nodes[definition], path,
                      _Container(definition.split(".")[0], {}))
    except RecursionError:
        walker.error("structure", path, "the element is nested too deeply")
    return walker.issues


def unenforced_bindings() -> tuple[str, ...]:
    """Value sets bound ``required`` in R4 that are not enumerable here, so not checked."""
    return _schema().unenforced


def _code_element(owner: str, key: str) -> _Elem | None:
    """The element ``key`` of ``owner`` (a type or a backbone element's path, as ``Task``
    or ``CarePlan.activity.detail``) when it is a ``code``; None otherwise."""
    node = _schema().nodes.get(owner)
    elem = node.children.get(key) if node is not None else None
    return elem if elem is not None and elem.type == "code" else None


def bound_codings(owner: str, key: str) -> frozenset[str]:
    """The ``system|code`` pairs the ``code`` element ``key`` of ``owner`` may hold: the
    value set its required binding names, when it is enumerated here; empty otherwise."""
    elem = _code_element(owner, key)
    return elem.valueset.pairs if elem is not None and elem.valueset is not None else frozenset()


GRAMMAR_SYSTEMS = {
    "http://hl7.org/fhir/ValueSet/mimetypes": "urn:ietf:bcp:13",
    "http://hl7.org/fhir/ValueSet/languages": "urn:ietf:bcp:47",
    "http://hl7.org/fhir/ValueSet/all-languages": "urn:ietf:bcp:47",
}
"""Value sets whose codes are those of one code system defined by a grammar, not a list
(R4 terminologies-systems: BCP-13 mime types, BCP-47 language tags), by URL: that system."""


def grammar_system(owner: str, key: str) -> str | None:
    """The code system every value of the ``code`` element ``key`` of ``owner`` comes from,
    when its binding (of any strength) names a value set of :data:`GRAMMAR_SYSTEMS` (e.g.
    ``Attachment.contentType``: ``urn:ietf:bcp:13``); None otherwise."""
    elem = _code_element(owner, key)
    return GRAMMAR_SYSTEMS.get(elem.binding or "") if elem is not None else None


# --------------------------------------------------------------------------- walking

_REFERENCE = re.compile(
    r"(?:[A-Za-z][A-Za-z0-9+.\-]*://\S*/)?(?P<type>[A-Z][A-Za-z]*)/[A-Za-z0-9\-.]{1,64}"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)
_CONDITIONAL = re.compile(r"(?P<type>[A-Z][A-Za-z]*)\?\S+")
_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")


@dataclass(slots=True, eq=False)
class _Container:
    """One resource with its contained resources: the scope of ``#id`` references."""

    type: str
    contained: dict[str, tuple[str, int]]  # contained id -> (resourceType, index)
    referenced: set[str] = field(default_factory=set)


class _Walker:
    def __init__(self, schema: _Schema) -> None:
        self.schema = schema
        self.issues: list[Issue] = []
        self.unjudged = False  # it met a resource it has no R4 definition of (the R4B net's)

    def error(self, code: str, path: str, message: str, severity: str = "error") -> None:
        self.issues.append(issue(f"{path}: {message}", code=code, severity=severity,
                                 expression=path))

    # ---- resources

    def resource(self, value: Any, path: str, *, root: bool = False,
                 container: _Container | None = None) -> None:
        """Validate a resource; ``container`` is set for a contained resource."""
        if not isinstance(value, dict):
            self.error("structure", path, f"a resource must be a JSON object, got "
                                          f"{_json_kind(value)}")
            return
        rtype = value.get("resourceType")
        if container is not None:
            self._contained_rules(value, path)
        node = self.schema.resources.get(rtype) if isinstance(rtype, str) else None
        if node is None:
            self._unknown_resource(rtype, path, root=root)
            return
        if container is not None:
            self.object(value, node, path, container)
            return
        scope = _Container(rtype, self._contained_ids(value))
        self.object(value, node, path, scope)
        for cid, (_, index) in scope.contained.items():
            if cid not in scope.referenced:
                self.error("invariant", f"{path}.contained[{index}]", f"contained resource "
                           f"'{cid}' is not referenced from the resource (dom-3)",
                           severity="warning")
        if rtype == "Bundle":
            self._bundle_rules(value, path)

    def _unknown_resource(self, rtype: Any, path: str, *, root: bool) -> None:
        """No R4 definition here: other R4 types inside a resource go to the R4B net."""
        if not isinstance(rtype, str):
            self.error("required", f"{path}.resourceType", "resourceType (a string) is required")
        elif root or rtype not in self.schema.resource_names or not _r4b_known(rtype):
            supported = ", ".join(STORED_TYPES)
            self.error("not-supported", f"{path}.resourceType",
                       f"resource type {_show(rtype)} is not supported (supported: {supported})")
        else:
            self.unjudged = True

    def _contained_ids(self, value: dict[str, Any]) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        contained = value.get("contained")
        if isinstance(contained, list):
            for i, c in enumerate(contained):
                if isinstance(c, dict) and isinstance(c.get("id"), str):
                    out[c["id"]] = (str(c.get("resourceType")), i)
        return out

    def _contained_rules(self, value: dict[str, Any], path: str) -> None:
        if "id" not in value:
            self.error("required", f"{path}.id", "a contained resource needs an id")
        if "contained" in value:
            self.error("invariant", f"{path}.contained",
                       "a contained resource must not contain resources (dom-2)")
        meta = value.get("meta")
        if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
            self.error("invariant", f"{path}.meta", "a contained resource must not have "
                       "meta.versionId or meta.lastUpdated (dom-4)")

    def _bundle_rules(self, bundle: dict[str, Any], path: str) -> None:
        entries = bundle.get("entry")
        if not isinstance(entries, list):
            return
        btype = bundle.get("type")
        needs = {"batch": "request", "transaction": "request", "batch-response": "response",
                 "transaction-response": "response", "history": "request"}.get(str(btype))
        seen: set[tuple[str, Any]] = set()
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            epath = f"{path}.entry[{i}]"
            if needs and needs not in entry:
                self.error("invariant", f"{epath}.{needs}", f"entry.{needs} is required in a "
                           f"{btype} bundle (bdl-3/bdl-4)")
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str) and btype != "history":
                version = _version_of(entry.get("resource"))
                if (full_url, version) in seen:
                    self.error("invariant", f"{epath}.fullUrl", f"fullUrl {_show(full_url)} is "
                               "not unique in the bundle (bdl-7)")
                seen.add((full_url, version))

    # ---- objects and values

    def object(self, obj: dict[str, Any], node: _Node, path: str, scope: _Container) -> None:
        children = node.children
        chosen: dict[str, str] = {}
        for key, value in obj.items():
            elem = children.get(key)
            if elem is None:
                self._other_key(obj, key, value, node, path, scope)
                continue
            if elem.choice is not None:
                if elem.choice in chosen:
                    self.error("structure", f"{path}.{key}", f"only one of {elem.choice}[x] "
                               f"is allowed, also got {chosen[elem.choice]}")
                chosen[elem.choice] = key
            ext = obj.get("_" + key) if elem.check is not None else None
            self.value(value, elem, f"{path}.{key}", scope, ext)
        for name, keys in node.required:
            if not any(k in obj or "_" + k in obj for k in keys):
                self.error("required", f"{path}.{name}", f"{node.path}.{name} is required "
                           "(minimum cardinality 1)")

    def _other_key(self, obj: dict[str, Any], key: str, value: Any, node: _Node, path: str,
                   scope: _Container) -> None:
        if key == "resourceType" and node.path in self.schema.resources:
            return
        if key.startswith("_"):
            elem = node.children.get(key[1:])
            if elem is not None and elem.check is not None:
                self._primitive_extension(obj.get(key[1:]), value, elem, path, scope)
                return
        for base, keys in node.choices.items():
            if key.startswith(base) and key[len(base):len(base) + 1].isupper():
                self.error("structure", f"{path}.{key}", f"{key} is not an allowed type for "
                           f"{node.path}.{base}[x] (allowed: {', '.join(keys)})")
                return
        self.error("structure", f"{path}.{key}", f"unknown element '{key}' in {node.path}")

    def value(self, value: Any, elem: _Elem, path: str, scope: _Container,
              ext: Any = None) -> None:
        if elem.max == 1:
            if isinstance(value, list):
                self.error("structure", path, f"{elem.path} has max cardinality 1 and must "
                           "not be an array")
            elif value is None:
                self.error("structure", path, "null is not allowed (omit the element)")
            else:
                self.single(value, elem, path, scope)
            return
        if not isinstance(value, list):
            self.error("structure", path, f"{elem.path} repeats (max {elem.max or '*'}) and "
                       f"must be an array, got {_json_kind(value)}")
            return
        if not value:
            self.error("structure", path, "empty arrays are not allowed (omit the element)")
            return
        if elem.max is not None and len(value) > elem.max:
            self.error("structure", path, f"at most {elem.max} values allowed")
        aligned = ext if isinstance(ext, list) and len(ext) == len(value) else None
        for i, item in enumerate(value):
            if item is None:
                if aligned is None or aligned[i] is None:
                    self.error("structure", f"{path}[{i}]", "null is not allowed here (only "
                               "as a placeholder aligned with a _element extension)")
                continue
            self.single(item, elem, f"{path}[{i}]", scope)

    def single(self, value: Any, elem: _Elem, path: str, scope: _Container) -> None:
        if elem.check is not None:
            problem = elem.check(value)
            if problem is not None:
                self.error(problem[0], path, problem[1])
            elif elem.valueset is not None and value not in elem.valueset.codes:
                self.error("code-invalid", path, f"{_show(value)} is not in the required "
                           f"value set {elem.valueset.label()} for {elem.path}")
            return
        if elem.is_resource:
            contained = scope if elem.key == "contained" else None
            self.resource(value, path, container=contained)
            return
        if not isinstance(value, dict):
            self.error("structure", path, f"{elem.path} ({elem.type}) must be a JSON object, "
                       f"got {_json_kind(value)}")
            return
        if not value:
            self.error("structure", path, "empty objects are not allowed (omit the element)")
            return
        if value.keys() == {"id"}:
            self.error("structure", path, "an element must have a value or children (ele-1)")
            return
        assert elem.node is not None
        self.object(value, elem.node, path, scope)
        self._type_rules(value, elem, path, scope)

    def _type_rules(self, value: dict[str, Any], elem: _Elem, path: str,
                    scope: _Container) -> None:
        if elem.type == "Reference":
            self._reference(value, elem, path, scope)
        elif elem.type == "Extension":
            has_value = any(k.startswith(("value", "_value")) for k in value)
            if has_value == ("extension" in value):
                self.error("invariant", path, "an extension must have either extensions or "
                           "value[x], not both and not neither (ext-1)")
        if elem.valueset is not None:
            self._binding(value, elem, path)

    def _primitive_extension(self, base: Any, ext: Any, elem: _Elem, path: str,
                             scope: _Container) -> None:
        """``_name`` sibling of a primitive: {id, extension}, arrays aligned with nulls."""
        where = f"{path}.{elem.key}"
        node = self.schema.ext_node
        if elem.max == 1:
            if not isinstance(ext, dict):
                self.error("structure", f"{path}._{elem.key}", "must be a JSON object")
            elif not ext:
                self.error("structure", f"{path}._{elem.key}", "empty objects are not allowed")
            else:
                self.object(ext, node, where, scope)
            return
        if not isinstance(ext, list) or not ext:
            self.error("structure", f"{path}._{elem.key}", "must be a non-empty array aligned "
                       f"with {elem.key}")
            return
        if base is not None and (not isinstance(base, list) or len(base) != len(ext)):
            self.error("structure", f"{path}._{elem.key}", f"must have as many items as "
                       f"{elem.key}")
            return
        for i, item in enumerate(ext):
            ipath = f"{where}[{i}]"
            if item is None:
                if base is None:
                    self.error("structure", ipath, "null is not allowed here")
            elif not isinstance(item, dict) or not item:
                self.error("structure", ipath, "must be a non-empty JSON object or null")
            else:
                self.object(item, node, ipath, scope)

    # ---- bindings and references

    def _binding(self, value: dict[str, Any], elem: _Elem, path: str) -> None:
        vs = elem.valueset
        assert vs is not None
        codings = [value] if elem.type == "Coding" else value.get("coding")
        if not isinstance(codings, list) or not codings:
            self.error("code-invalid", path, f"a code from the required value set "
                       f"{vs.label()} is needed for {elem.path}")
            return
        shown = []
        for coding in codings:
            if not isinstance(coding, dict):
                return  # the structure walk reported it
            system, code = coding.get("system"), coding.get("code")
            if f"{system}|{code}" in vs.pairs:
                return
            shown.append(f"{system or '(no system)'}|{code}")
        self.error("code-invalid", path, f"{', '.join(shown)} is not in the required value set "
                   f"{vs.label()} for {elem.path}")

    def _reference(self, value: dict[str, Any], elem: _Elem, path: str,
                   scope: _Container) -> None:
        ref = value.get("reference")
        rtype = self._reference_type(ref, path, scope) if isinstance(ref, str) else None
        where = f"{path}.reference"
        declared = value.get("type")
        if isinstance(declared, str):
            dtype = declared.removeprefix(_HL7_SD)
            if dtype not in self.schema.resource_names:
                self.error("value", f"{path}.type", f"{_show(declared)} is not a FHIR "
                           "resource type")
                return
            if rtype is not None and rtype != dtype:
                self.error("value", f"{path}.type", f"type {dtype} does not match the "
                           f"reference {_show(ref)}")
                return
            if rtype is None:
                rtype, where = dtype, f"{path}.type"
        if rtype is not None and elem.targets is not None and rtype not in elem.targets:
            allowed = " | ".join(sorted(elem.targets))
            self.error("value", where, f"{elem.path} must reference {allowed}, not {rtype}")

    def _reference_type(self, ref: str, path: str, scope: _Container) -> str | None:
        """The resource type a reference string points at (None: not knowable here)."""
        where = f"{path}.reference"
        if ref.startswith("#"):
            if ref == "#":
                return scope.type
            cid = ref[1:]
            scope.referenced.add(cid)
            if cid not in scope.contained:
                self.error("invariant", where, f"no contained resource with id {_show(cid)} "
                           "(ref-1)")
                return None
            return scope.contained[cid][0]
        if ref.startswith("urn:"):
            if not (_UUID.fullmatch(ref) or _OID.fullmatch(ref)):
                self.error("value", where, f"{_show(ref)} is not a valid urn:uuid or urn:oid")
            return None
        match = _REFERENCE.fullmatch(ref) or _CONDITIONAL.fullmatch(ref)
        if match is None:
            self.error("value", where, f"{_show(ref)} is not a valid reference (expected "
                       "Type/id, Type/id/_history/vid, an absolute URL ending in Type/id, "
                       "#id or urn:uuid:...)")
            return None
        rtype = match["type"]
        if rtype not in self.schema.resource_names:
            self.error("value", where, f"{rtype} in {_show(ref)} is not a FHIR resource type")
            return None
        return rtype


def _version_of(resource: Any) -> Any:
    if isinstance(resource, dict) and isinstance(resource.get("meta"), dict):
        return resource["meta"].get("versionId")
    return None


# --------------------------------------------------------------------------- R4B net


@cache
def _r4b_class(rtype: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(rtype)


def _r4b_known(rtype: str) -> bool:
    try:
        _r4b_class(rtype)
    except ValueError:
        return False
    return True


def _loc_path(root: str, loc: tuple[Any, ...], data: Any) -> tuple[str, list[Any]]:
    """FHIRPath for a pydantic error location, following the data (drops internal tags)."""
    path, steps = root, []
    for part in loc:
        if isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
            path, data = f"{path}[{part}]", data[part]
        elif isinstance(part, str) and isinstance(data, dict) and part in data:
            path, data = f"{path}.{part}", data[part]
        elif isinstance(part, str) and isinstance(data, dict):
            path = f"{path}.{part}"  # a missing or unknown key: the location ends here
            steps.append(part)
            break
        else:
            break
        steps.append(part)
    return path, steps


def _defined_in_r4(schema: _Schema, resource: dict[str, Any], steps: list[Any]) -> bool:
    """Whether a location names an element R4 defines (the walker has judged it)."""
    node: _Node | None = schema.resources[resource["resourceType"]]
    data: Any = resource
    for part in steps:
        if isinstance(part, int):
            data = data[part]
            if isinstance(data, dict) and node is None and "resourceType" in data:
                node = schema.resources.get(data["resourceType"])
                if node is None:
                    return False
            continue
        if node is None or not isinstance(data, dict):
            return False
        elem = node.children.get(part.lstrip("_"))
        if elem is None:
            return False
        if elem.check is not None:
            return True
        data = data.get(part)
        node = elem.node
        if elem.is_resource and isinstance(data, dict):
            node = schema.resources.get(str(data.get("resourceType")))
            if node is None:
                return False
    return True


def _overlaps(path: str, taken: list[str]) -> bool:
    for other in taken:
        if other == path or other.startswith((path + ".", path + "[")) \
                or path.startswith((other + ".", other + "[")):
            return True
    return False


def _r4b_issues(schema: _Schema, resource: dict[str, Any], path: str,
                taken: list[str]) -> list[Issue]:
    try:
        _r4b_class(resource["resourceType"]).model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
    else:
        return []
    out = []
    for err in errors:
        where, steps = _loc_path(path, err["loc"], resource)
        if _overlaps(where, taken) or _defined_in_r4(schema, resource, steps):
            log.debug("R4B model check skipped (walker wins) at %s: %s", where, err["msg"])
            continue
        code = "structure" if err["type"] in ("extra_forbidden", "missing") else "value"
        out.append(issue(f"{where}: {err['msg']} (R4B model check)", code=code,
                         expression=where))
    return out


# --------------------------------------------------------------------------- public API


def validate(resource: Any, *, type_: str | None = None, id_: str | None = None,
             mode: str = "create") -> list[Issue]:
    """All problems at once (Issue from server.fhir.outcome; severity error/warning),
    each with `expression` = FHIRPath location like "CarePlan.activity[0].detail.status".
    type_: the type the URL names (resourceType must equal it). id_: for update, the URL id
    (body id must be present and equal, per FHIR); mode "create": body id is ignored (allowed)."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
    if not isinstance(resource, dict):
        return [issue(f"a resource must be a JSON object, got {_json_kind(resource)}",
                      code="structure")]
    schema = _schema()
    rtype = resource.get("resourceType")
    root = rtype if isinstance(rtype, str) and rtype in STORED_TYPES else (type_ or "Resource")
    walker = _Walker(schema)
    out = walker.issues
    if type_ is not None and isinstance(rtype, str) and rtype != type_:
        walker.error("invalid", f"{root}.resourceType", f"resourceType {_show(rtype)} does not "
                     f"match the type in the URL ({type_})")
    if mode == "update":
        _update_id(walker, resource.get("id"), id_, root)
    try:
        walker.resource(resource, root, root=True)
        if rtype in STORED_TYPES and walker.unjudged:
            taken = [e for i in out if i.severity == "error" for e in i.expression]
            out.extend(_r4b_issues(schema, resource, root, taken))
    except RecursionError:
        walker.error("structure", root, "the resource is nested too deeply")
    return out


def _update_id(walker: _Walker, body_id: Any, id_: str | None, root: str) -> None:
    if body_id is None:
        walker.error("required", f"{root}.id", "an update must carry the resource id in the "
                     "body")
    elif id_ is not None and body_id != id_:
        walker.error("invalid", f"{root}.id", f"the id in the body ({_show(body_id)}) does not "
                     f"match the id in the URL ({_show(id_)})")


def ensure_valid(resource: Any, *, type_: str | None = None, id_: str | None = None,
                 mode: str = "create") -> None:
    """Raise FhirError(400, issues) when validate() returns any error (warnings don't fail)."""
    issues = validate(resource, type_=type_, id_=id_, mode=mode)
    if any(i.severity in ("error", "fatal") for i in issues):
        raise FhirError(400, issues)
